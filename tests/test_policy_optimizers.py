"""DPO, RJS and a user-registered optimizer on the tiny model, behind the same game."""

import copy
import importlib.util
import sys

import pytest
import torch

from apo_online import losses
from apo_online.config import ConfigError
from apo_online.optimizers.registry import _REGISTRY

from conftest import REPO, fresh_rollout, make_game



def role_weights(game):
    backbone = game.accelerator.unwrap_model(game.model)
    return {role: [p.detach().clone() for p in backbone.role_parameters(role)] for role in ("policy", "value", "reward")}


def moved_roles(game, before):
    now = role_weights(game)
    return {role for role in before if any(not torch.equal(a, b) for a, b in zip(before[role], now[role]))}


@torch.no_grad()
def sequence_logprobs(game, rollout, rows, temperature, role="policy"):
    out = game.model(rollout.input_ids[rows], rollout.attention_mask[rows], roles=(role,),
                     response_start=rollout.prompt_length, temperature=temperature)[role]
    return losses.sequence_logprob(out, rollout.response_mask[rows])


DPO = {"game.policy_optimizer": "dpo", "rollout.samples_per_prompt": 3}
RJS = {"game.policy_optimizer": "rjs", "rollout.samples_per_prompt": 3}


def test_dpo_step_raises_the_chosen_minus_rejected_margin(tiny_config, single_accelerator):
    game = make_game(tiny_config, single_accelerator(), **DPO, **{"dpo.epochs": 3, "dpo.learning_rate": 1e-3,
                                                                  "dpo.beta": 0.5})
    rollout = fresh_rollout(game)
    chosen, rejected, _ = losses.pairs_by_score(rollout.scores, 3)
    assert len(chosen) and all(game.tokenizer.decode(rollout.response_ids[c]) != game.tokenizer.decode(
        rollout.response_ids[r]) for c, r in zip(chosen, rejected)), "pairs of identical responses prove nothing"
    T = rollout.temperature

    def margin():
        reference_gap = (sequence_logprobs(game, rollout, chosen, T, "reference")
                         - sequence_logprobs(game, rollout, rejected, T, "reference"))
        return (sequence_logprobs(game, rollout, chosen, T) - sequence_logprobs(game, rollout, rejected, T)
                - reference_gap).mean().item()

    before, weights = margin(), role_weights(game)
    metrics = game.policy_optimizer.step(rollout)
    after = margin()
    assert before == pytest.approx(0.0, abs=1e-4)  # LoRA starts at zero: the policy is the reference
    assert after > before + 0.05, (before, after)
    assert moved_roles(game, weights) == {"policy"}
    assert metrics["dpo/pairs"] == len(chosen) and metrics["dpo/updates"] == 3
    assert metrics["dpo/score_gap"] > 0
    for key in ("dpo/loss", "dpo/margin", "dpo/accuracy", "objective/kl"):  # objective/scores: the game's
        assert key in metrics


def test_dpo_update_is_independent_of_micro_batches_even_empty_ones(tiny_config, single_accelerator):
    """4 prompts, 2 of them all-tied -> 2 pairs; 1 micro-batch vs 4 (two of them empty): the same weights."""
    results, rollout = [], None
    for accumulation in (1, 4):
        game = make_game(tiny_config, single_accelerator(), **DPO,
                         **{"dpo.gradient_accumulation_steps": accumulation, "dpo.learning_rate": 1e-3})
        if rollout is None:
            rollout = fresh_rollout(game)
            rollout.scores[6:] = 1.0  # prompts 2 and 3: every sample ties
        metrics = game.policy_optimizer.step(copy.deepcopy(rollout))
        assert metrics["dpo/pairs"] == 2 and metrics["dpo/ties"] == 2
        backbone = game.accelerator.unwrap_model(game.model)
        results.append({n: p.detach().clone() for n, p in backbone.named_parameters() if ".policy." in n})
    assert any(v.abs().sum() > 0 for n, v in results[0].items() if "lora_B" in n), "no update: nothing compared"
    for name, value in results[0].items():
        assert torch.allclose(value, results[1][name], atol=1e-6), name


def test_dpo_with_all_samples_tied_takes_no_step(tiny_config, single_accelerator):
    game = make_game(tiny_config, single_accelerator(), **DPO)
    rollout = fresh_rollout(game)
    rollout.scores[:] = 0.5
    weights = role_weights(game)
    metrics = game.policy_optimizer.step(rollout)
    assert metrics["dpo/pairs"] == 0 and metrics["dpo/ties"] == 4 and metrics["dpo/updates"] == 0
    assert moved_roles(game, weights) == set()


def test_dpo_logprob_temperature_recomputes_the_reference_at_that_temperature(tiny_config, single_accelerator):
    game = make_game(tiny_config, single_accelerator(), **DPO, **{"dpo.logprob_temperature": 1.0})
    assert game.spec.needs_ref_logprobs is False  # nothing computed at the sampling temperature for nothing
    rollout = fresh_rollout(game)
    assert rollout.ref_logprobs is None
    temperature, policy, reference = game.policy_optimizer.logprobs_at_temperature(rollout)
    rows = torch.arange(len(rollout))
    assert temperature == 1.0
    assert torch.allclose(losses.sequence_logprob(reference, rollout.response_mask),
                          sequence_logprobs(game, rollout, rows, 1.0, "reference"), atol=1e-5)
    assert not torch.allclose(losses.sequence_logprob(reference, rollout.response_mask),
                              sequence_logprobs(game, rollout, rows, rollout.temperature, "reference"), atol=1e-3)
    assert torch.allclose(policy, reference, atol=1e-5)  # same temperature on both sides: KL 0 at the start
    default = make_game(tiny_config, single_accelerator(), **DPO)
    assert default.spec.needs_ref_logprobs is True  # reuses the rollout's reference, at the sampling temperature


def test_rjs_selects_the_argmax_sample_and_raises_its_logprob(tiny_config, single_accelerator):
    game = make_game(tiny_config, single_accelerator(), **RJS, **{"rjs.epochs": 3, "rjs.learning_rate": 1e-3})
    rollout = fresh_rollout(game)
    rollout.scores = torch.tensor([0.0, 2.0, 1.0, 5.0, -1.0, 0.0, -3.0, -2.0, -1.0, 0.1, 0.3, 0.2])
    winners, dropped = game.policy_optimizer.select_winners(rollout)
    assert winners.tolist() == [1, 3, 8, 10] and dropped == 0
    before, weights = sequence_logprobs(game, rollout, winners, 1.0), role_weights(game)
    metrics = game.policy_optimizer.step(rollout)
    after = sequence_logprobs(game, rollout, winners, 1.0)
    assert (after > before).all(), (before, after)
    assert moved_roles(game, weights) == {"policy"}
    assert metrics["rjs/winners"] == 4 and metrics["rjs/winner_score"] == pytest.approx((2 + 5 - 1 + 0.3) / 4)
    assert metrics["rjs/sft_loss"] > 0


def test_rjs_min_score_drops_weak_winners(tiny_config, single_accelerator):
    game = make_game(tiny_config, single_accelerator(), **RJS, **{"rjs.min_score": 0.25})
    rollout = fresh_rollout(game)
    rollout.scores = torch.tensor([0.0, 2.0, 1.0, 5.0, -1.0, 0.0, -3.0, -2.0, -1.0, 0.1, 0.3, 0.2])
    winners, dropped = game.policy_optimizer.select_winners(rollout)
    assert winners.tolist() == [1, 3, 10] and dropped == 1


@pytest.mark.parametrize("extra, message", [
    ({**DPO, "rollout.samples_per_prompt": 1}, "'dpo' needs rollout.samples_per_prompt >= 2"),
    ({**RJS, "rollout.samples_per_prompt": 1}, "'rjs' needs rollout.samples_per_prompt >= 2"),
    ({**DPO, "dpo.loss_type": "kto"}, "dpo.loss_type must be one of sigmoid, ipo, hinge, got 'kto'"),
    ({**DPO, "dpo.loss_type": "ipo", "dpo.label_smoothing": 0.1}, "label_smoothing applies to loss_type 'sigmoid'"),
    ({**DPO, "dpo.pairing": "random"}, "dpo.pairing must be one of best_vs_worst, all_pairs"),
    ({**DPO, "dpo.num_minibatches": 5}, "at most 4 pairs per process and step .* = 5 micro-batches"),
    ({**RJS, "rjs.gradient_accumulation_steps": 8}, "4 winners per process cannot fill .* = 8 micro-batches"),
])
def test_optimizer_configs_are_validated(tiny_config, extra, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**extra).validate()


@pytest.fixture
def custom_optimizer_recipe():
    """Import recipes/custom_optimizer.py as a user would, then forget its registration."""
    spec = importlib.util.spec_from_file_location("custom_optimizer_recipe", REPO / "recipes/custom_optimizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    _REGISTRY.pop("rloo", None)
    sys.modules.pop("custom_optimizer_recipe", None)


def test_user_registered_optimizer_plays_through_the_game(tiny_config, single_accelerator, custom_optimizer_recipe):
    config = tiny_config(**{"game.policy_optimizer": "rloo", "rollout.samples_per_prompt": 2, "rloo.kl_coef": 0.1})
    from apo_online.game import APOGame

    game = APOGame(config, accelerator=single_accelerator())
    assert isinstance(game.policy_optimizer, custom_optimizer_recipe.RLOO)
    game.rm_step.warmup(0)
    weights = role_weights(game)
    metrics = game.play_step()
    assert moved_roles(game, weights) == {"policy", "reward"}  # rloo moves the policy, the APO step the RM
    for key in ("rloo/loss", "rloo/grad_norm", "objective/kl", "rm/loss_apo"):
        assert key in metrics
    # leave-one-out baseline by hand: rewards (1, 3 | 0, 0) -> (1-3, 3-1 | 0, 0)
    advantages = custom_optimizer_recipe.leave_one_out_advantages(torch.tensor([1.0, 3.0, 0.0, 0.0]), 2)
    assert advantages.tolist() == [-2.0, 2.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="'rloo' needs rollout.samples_per_prompt >= 2"):
        tiny_config(**{"game.policy_optimizer": "rloo", "rollout.samples_per_prompt": 1}).validate()


def test_the_game_logs_the_objective_of_every_optimizer_by_hand():
    """objective/* from the rollout alone (rollout.objective_metrics), whatever the optimizer; KL only with reference
    log-probs (RJS has none)."""
    from types import SimpleNamespace

    from apo_online.rollout import objective_metrics

    rollout = SimpleNamespace(scores=torch.tensor([1.0, -2.0]), rm_scores=torch.tensor([1.0, -1.0]),
                              logprobs=torch.tensor([[-1.0, -2.0], [-0.5, 0.0]]),
                              ref_logprobs=torch.tensor([[-1.5, -2.0], [-1.0, 0.0]]), term_scores={})
    metrics = objective_metrics(rollout)
    assert metrics["objective/scores"] == pytest.approx(-0.5) and metrics["objective/rm_scores"] == pytest.approx(0.0)
    assert metrics["objective/kl"] == pytest.approx((0.5 + 0.5) / 2)  # per row sum of (log pi - log pi_ref)
    assert metrics["objective/entropy"] == pytest.approx((3.0 + 0.5) / 2)
    rollout.ref_logprobs = None
    assert set(objective_metrics(rollout)) == {"objective/scores", "objective/rm_scores"}
