"""GRPO: its tensor math against values computed by hand (the arithmetic is in the comments), the normalisation of each
loss type under any micro-batch layout, config validation, and GRPO games on the tiny model (end to end, resumed,
without a value adapter)."""

import math

import pytest
import torch

from apo_online import losses
from apo_online.config import ConfigError
from apo_online.optimizers.schedule import UpdateSchedule, policy_logprobs

from conftest import fresh_rollout, make_game

GRPO = {"game.policy_optimizer": "grpo", "rollout.samples_per_prompt": 2}


def close(actual, expected, tol=1e-5):
    assert float(torch.as_tensor(actual).detach()) == pytest.approx(expected, abs=tol)


# ----------------------------------------------------------------------------------------------------------------
# tensor math by hand
# ----------------------------------------------------------------------------------------------------------------
def test_group_relative_advantages_use_the_unbiased_group_std():
    scores = torch.tensor([1.0, 2.0, 6.0, 4.0, 4.0, 4.0])  # two prompts x 3 samples
    # group 0: mean 3, deviations (-2, -1, 3), unbiased std sqrt((4 + 1 + 9) / 2) = sqrt(7) (biased: sqrt(14/3));
    # group 1: every sample ties -> std 0, advantages 0
    root7 = math.sqrt(7.0)
    group = losses.group_relative_advantages(scores, 3, "group", eps=1e-4)
    assert torch.allclose(group, torch.tensor([-2 / (root7 + 1e-4), -1 / (root7 + 1e-4), 3 / (root7 + 1e-4),
                                               0.0, 0.0, 0.0]), atol=1e-6)
    close(group[2], 1.133851)  # 3 / (2.645751 + 1e-4); the biased std would give 3 / (2.160247 + 1e-4) = 1.388666
    none = losses.group_relative_advantages(scores, 3, "none")
    assert none.tolist() == [-2.0, -1.0, 3.0, 0.0, 0.0, 0.0]
    assert torch.allclose(losses.group_std(scores, 3), torch.tensor([root7, 0.0]))
    with pytest.raises(ValueError, match="unknown scale_rewards 'batch'"):
        losses.group_relative_advantages(scores, 3, "batch")


def token_example():
    """Two sequences of 3 and 2 valid tokens (the third token of row 1 is padding)."""
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -3.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.5, -0.5], [-0.5, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -0.5], [-1.0, -2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages = torch.tensor([2.0, -1.0])
    return logprobs, old, ref, mask, advantages


# ratios rho: row 0 (1, e^0.5 = 1.648721, 1); row 1 (e^-0.5 = 0.606531, 1)
# clipped ratio terms, eps 0.2: row 0, A = 2: (-2, max(-3.297443, -2 * 1.2) = -2.4, -2);
#                                row 1, A = -1: (max(0.606531, 0.8) = 0.8, 1)
# k3 = e^(ref - logp) - (ref - logp) - 1: row 0 (e^-0.5 + 0.5 - 1 = 0.106531, 0, 0); row 1 (0, e^-1 = 0.367879)
# with beta 0.1: row 0 (-1.989347, -2.4, -2) sums to -6.389347; row 1 (0.8, 1.036788) sums to 1.836788
ROW_SUMS = (-6.389347, 1.836788)


def test_grpo_token_loss_by_hand():
    logprobs, old, ref, mask, advantages = token_example()
    token_loss, stats = losses.grpo_token_loss(logprobs, old, advantages, mask, 0.2, None, 0.1, ref)
    expected = torch.tensor([[-2 + 0.1 * 0.106531, -2.4, -2.0], [0.8, 1 + 0.1 * 0.367879, 0.0]])
    assert torch.allclose(token_loss, expected, atol=1e-5)
    assert stats["clipped"].tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    close(stats["kl"].sum(), 0.106531 + 0.367879)
    # clip-higher: only the upper bound moves, to 1.28: row 0 token 1 -> -2 * 1.28 = -2.56; row 1 token 0 unchanged
    high, _ = losses.grpo_token_loss(logprobs, old, advantages, mask, 0.2, 0.28, 0.0, ref)
    close(high[0, 1], -2.56)
    close(high[1, 0], 0.8)


def test_the_k3_term_pulls_towards_the_reference():
    """With A = 0 only beta * k3 is left: d/dlogp = beta * (1 - e^(ref - logp)), 0.1 * (1 - e^-0.5) = 0.039347 on row 0
    token 0, and beta * (1 - e^-1) = 0.063212 on row 1 token 1; nothing on padding."""
    logprobs, old, ref, mask, _ = token_example()
    token_loss, _ = losses.grpo_token_loss(logprobs, old, torch.zeros(2), mask, 0.2, None, 0.1, ref)
    token_loss.sum().backward()
    assert torch.allclose(logprobs.grad, torch.tensor([[0.039347, 0.0, 0.0], [0.0, 0.063212, 0.0]]), atol=1e-6)


def test_padding_log_probs_cannot_overflow_the_loss():
    logprobs, old, ref, mask, advantages = token_example()
    far = logprobs.detach().clone()
    far[1, 2] = -500.0  # a padding position: exp(ref - logp) = e^500 would be inf, inf * 0 = nan
    token_loss, stats = losses.grpo_token_loss(far, old, advantages, mask, 0.2, None, 0.1, ref)
    assert torch.isfinite(token_loss).all() and torch.isfinite(stats["kl"]).all()
    assert token_loss[1, 2] == 0


@pytest.mark.parametrize("loss_type, expected", [  # -0.605694, -0.569070, -0.910512: a swapped one cannot pass
    ("grpo", (-6.389347 / 3 + 1.836788 / 2) / 2),  # per-sequence token means (-2.129782, 0.918394), then their mean
    ("dr_grpo", (-6.389347 + 1.836788) / (2 * 4)),  # sum over tokens / (2 sequences x max_tokens 4)
    ("dapo", (-6.389347 + 1.836788) / 5),  # sum over tokens / 5 valid tokens
])
def test_each_loss_type_normalises_by_hand(loss_type, expected):
    logprobs, old, ref, mask, advantages = token_example()
    token_loss, _ = losses.grpo_token_loss(logprobs, old, advantages, mask, 0.2, None, 0.1, ref)
    close(losses.aggregate_token_loss(token_loss, mask, loss_type, max_tokens=4), expected)
    # with a minibatch normaliser (these rows are part of a bigger minibatch): the same sum over a bigger count
    weights = losses.group_loss_weights(mask, loss_type)
    minibatch = float(weights.sum()) * 2
    close(losses.aggregate_token_loss(token_loss, mask, loss_type, minibatch, max_tokens=4), expected / 2)


def test_group_loss_weights_count_sequences_or_tokens():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert losses.group_loss_weights(mask, "grpo").tolist() == [1.0, 1.0]
    assert losses.group_loss_weights(mask, "dr_grpo").tolist() == [1.0, 1.0]
    assert losses.group_loss_weights(mask, "dapo").tolist() == [3.0, 1.0]
    with pytest.raises(ValueError, match="unknown GRPO loss_type 'bnpo'"):
        losses.group_loss_weights(mask, "bnpo")


# ----------------------------------------------------------------------------------------------------------------
# the optimizer in a game
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    ({**GRPO, "rollout.samples_per_prompt": 1}, "'grpo' needs rollout.samples_per_prompt >= 2 \\(advantages compare"),
    ({**GRPO, "grpo.loss_type": "bnpo"}, "grpo.loss_type must be one of grpo, dr_grpo, dapo, got 'bnpo'"),
    ({**GRPO, "grpo.scale_rewards": "batch"}, "grpo.scale_rewards must be one of group, none, got 'batch'"),
    ({**GRPO, "grpo.num_minibatches": 3}, "= 8 rollouts per process must divide evenly into .* = 3 micro-batches"),
    ({**GRPO, "grpo.epochs": 0}, "grpo.epochs, grpo.num_minibatches and grpo.gradient_accumulation_steps must be"),
    ({**GRPO, "grpo.cliprange_high": -0.1}, "grpo.cliprange_high must be > 0 or null, got -0.1"),
    ({**GRPO, "grpo.beta": -1}, "grpo.beta must be >= 0"),
    ({**GRPO, "grpo.eps": 0}, "grpo.eps must be > 0"),
])
def test_grpo_config_is_validated(tiny_config, extra, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**extra).validate()


SCORES = [1.0, 3.0, 0.0, 0.0, -1.0, 1.0, 2.0, 5.0]  # 4 prompts x 2 samples
LENGTHS = [6, 2, 5, 1, 3, 6, 4, 2]  # valid tokens per row: the loss types differ only when lengths do


def uneven_rollout(game):
    """A rollout with the scores and response lengths above, then the policy moved away from the one that sampled it
    (so that ratios differ from 1, some get clipped, and the k3 term is not 0)."""
    rollout = fresh_rollout(game)
    width = rollout.response_mask.shape[1]
    lengths = torch.tensor([min(n, width) for n in LENGTHS])
    rollout.response_mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).float()
    rollout.logprobs = rollout.logprobs * rollout.response_mask
    rollout.ref_logprobs = rollout.ref_logprobs * rollout.response_mask
    rollout.scores = torch.tensor(SCORES)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in game.ctx.backbone.named_parameters():
            if "lora_B" in name and ".policy." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return rollout


def accumulated_gradient(game, rollout, accumulation: int) -> tuple[dict[str, torch.Tensor], dict]:
    """The policy gradient that GRPO's step hands to the optimizer (one minibatch in `accumulation` micro-batches),
    caught before clipping; the weights are left as they were."""
    caught = []

    def catch():
        caught.append({n: p.grad.detach().clone() for n, p in game.ctx.backbone.named_parameters()
                       if p.grad is not None})
        game.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": 0.0, "skipped": 0.0}

    game.policy_optimizer.schedule = UpdateSchedule(1, 1, accumulation)
    game.ctx.optimizer_step = catch
    try:
        metrics = game.policy_optimizer.step(rollout)
    finally:
        del game.ctx.optimizer_step
    assert len(caught) == 1
    return caught[0], metrics


def whole_batch_gradient(game, rollout, loss_type: str) -> dict[str, torch.Tensor]:
    """The gradient of the minibatch loss written out at once over every row, with the batch's own normaliser."""
    cfg = game.policy_optimizer.config
    rows = torch.arange(len(rollout))
    logprobs, mask = policy_logprobs(game.ctx, rollout, rows, rollout.temperature)
    width = mask.shape[1]
    advantages = losses.group_relative_advantages(rollout.scores, 2, cfg.scale_rewards, cfg.eps)
    token_loss, _ = losses.grpo_token_loss(logprobs, rollout.logprobs[:, :width], advantages, mask, cfg.cliprange,
                                           None, cfg.beta, rollout.ref_logprobs[:, :width])
    loss = losses.aggregate_token_loss(token_loss, mask, loss_type, max_tokens=game.config.rollout.max_new_tokens)
    params = {n: p for n, p in game.ctx.backbone.named_parameters() if ".policy." in n}
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


def test_each_loss_type_gives_the_minibatch_gradient_whatever_the_micro_batches(tiny_config, single_accelerator):
    game = make_game(tiny_config, single_accelerator(), **GRPO)
    rollout = uneven_rollout(game)
    wanted = {}
    for loss_type in losses.GRPO_LOSS_TYPES:
        game.policy_optimizer.config.loss_type = loss_type
        wanted[loss_type] = whole_batch_gradient(game, rollout, loss_type)
        for accumulation in (1, 8):  # 8 rows: one micro-batch of 8 rows, or 8 of 1 row
            got, metrics = accumulated_gradient(game, rollout, accumulation)
            assert sorted(got) == sorted(wanted[loss_type])  # the policy role alone
            for name, value in wanted[loss_type].items():
                assert torch.allclose(got[name], value, atol=1e-7, rtol=1e-4), (loss_type, accumulation, name)
        assert 0 < metrics["grpo/clipfrac"] < 1 and metrics["grpo/kl"] > 0  # every term of the loss took part
    # the three normalisations give different gradients on these rows: a wrong one cannot pass for the right one
    for a, b in (("grpo", "dr_grpo"), ("grpo", "dapo"), ("dr_grpo", "dapo")):
        name = next(n for n, v in wanted[a].items() if v.abs().sum() > 0)
        assert not torch.allclose(wanted[a][name], wanted[b][name], rtol=1e-2), (a, b)


def test_grpo_metrics_by_hand(tiny_config, single_accelerator):
    game = make_game(tiny_config, single_accelerator(), **GRPO)
    rollout = uneven_rollout(game)
    metrics = game.policy_optimizer.step(rollout)
    # pairs (1, 3), (0, 0), (-1, 1), (2, 5): unbiased std |a - b| / sqrt 2 = sqrt 2, 0, sqrt 2, 3 / sqrt 2
    close(metrics["grpo/reward_std"], (2 * math.sqrt(2) + 3 / math.sqrt(2)) / 4)
    # |A| = (|a - b| / 2) / (std + eps): about 1 / sqrt 2 for the 3 groups that do not tie, 0 for the one that does
    abs_advantages = [1 / (math.sqrt(2) + 1e-4), 1.5 / (3 / math.sqrt(2) + 1e-4)]
    close(metrics["grpo/advantage_abs"], (4 * abs_advantages[0] + 2 * abs_advantages[1]) / 8)
    assert metrics["grpo/updates"] == 1 and metrics["grpo/grad_norm"] > 0 and math.isfinite(metrics["grpo/loss"])


def test_grpo_game_has_no_value_adapter_and_a_ppo_game_still_has_one(tiny_config, single_accelerator):
    grpo = make_game(tiny_config, single_accelerator(), **GRPO)
    names = [n for n, _ in grpo.ctx.backbone.named_parameters()]
    assert not [n for n in names if "value" in n] and grpo.ctx.backbone.value_head is None
    assert grpo.ctx.backbone.adapter_roles == ("policy", "reward")
    assert sorted(grpo.ctx.backbone.peft_model.peft_config) == ["policy", "reward"]
    assert {g["role"] for g in grpo.ctx.role_optimizer.param_groups} == {"policy", "reward"}
    with pytest.raises(ValueError, match="this backbone has no 'value' adapter"):
        with grpo.ctx.backbone.role("value"):
            pass
    ppo = make_game(tiny_config, single_accelerator())
    ppo_names = {n for n, _ in ppo.ctx.backbone.named_parameters()}
    value = [n for n in ppo_names if ".value." in n or n.startswith("value_head.")]
    assert value and ppo.ctx.backbone.adapter_roles == ("policy", "value", "reward")
    # the value adapter is all the difference; the shared roles start from the same weights in both games
    assert ppo_names - set(names) == set(value)
    grpo_weights, ppo_weights = dict(grpo.ctx.backbone.named_parameters()), dict(ppo.ctx.backbone.named_parameters())
    assert all(torch.equal(grpo_weights[n], ppo_weights[n]) for n in names)


def test_grpo_game_plays_two_steps_end_to_end(tiny_config, single_accelerator, tmp_path):
    from apo_online.run.loading import load_run

    game = make_game(tiny_config, single_accelerator(), **GRPO, **{"grpo.loss_type": "dapo"})
    metrics = game.run()
    for key in ("grpo/loss", "grpo/clipfrac", "grpo/kl", "grpo/advantage_abs", "grpo/reward_std", "grpo/grad_norm",
                "objective/kl", "objective/scores", "rm/loss_apo"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert game.step == 2
    final = tmp_path / "run" / "final"
    assert sorted(p.name for p in final.iterdir() if (p / "adapter_config.json").is_file()) == ["policy", "reward"]
    assert set(torch.load(final / "heads.pt", weights_only=True)) == {"reward_head"}
    card = (final / "README.md").read_text()
    assert "| `policy/` | the policy: answers prompts | `grpo` policy optimizer |" in card and "`value/`" not in card
    loaded = load_run(tmp_path / "run")  # the eval scripts' loader copes without a value adapter
    assert loaded.backbone.adapter_roles == ("policy", "reward")
    trained = game.ctx.backbone.state_dict()
    assert all(torch.equal(value, trained[name]) for name, value in loaded.backbone.state_dict().items())


def test_grpo_resumes_exactly_from_a_checkpoint_without_a_value_adapter(tiny_config, single_accelerator, tmp_path):
    """Step 3 after resuming from step 2's checkpoint is the same step (weights, optimizer, shuffling generator)."""
    extra = {**GRPO, "grpo.num_minibatches": 2, "game.total_steps": 3, "game.save_every": 2}
    reference = make_game(tiny_config, single_accelerator(), **extra)
    want = reference.run()
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000002"
    assert not [n for n in torch.load(checkpoint / "trainable.pt", weights_only=True) if "value" in n]
    resumed = make_game(tiny_config, single_accelerator(), **extra, **{
        "game.output_dir": tmp_path / "resumed", "game.resume_from_checkpoint": checkpoint})
    got = resumed.run()
    for key in ("grpo/loss", "grpo/kl", "objective/scores", "rm/loss_apo"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    for name, value in reference.ctx.read_role_weights("policy").items():
        assert torch.allclose(resumed.ctx.read_role_weights("policy")[name], value, atol=1e-6), name


def test_an_old_checkpoint_value_adapter_is_dropped_on_load():
    """Checkpoints of DPO/RJS games written while every game built a value adapter still load."""
    from apo_online.run.checkpoint import drop_absent_role_weights

    saved = {"m.q_proj.lora_A.policy.weight": 1, "m.q_proj.lora_A.value.weight": 2, "value_head.weight": 3,
             "m.q_proj.lora_A.reward.weight": 4, "reward_head.bias": 5}
    assert drop_absent_role_weights(saved, ("policy", "reward")) == {
        "m.q_proj.lora_A.policy.weight": 1, "m.q_proj.lora_A.reward.weight": 4, "reward_head.bias": 5}
    assert drop_absent_role_weights(saved, ("policy", "value", "reward")) == saved
