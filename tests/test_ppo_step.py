"""PPO on the tiny model: the update lowers its loss and does not depend on the micro-batch layout."""

import copy

import torch

from apo_online import losses

from conftest import fresh_rollout, make_game


def ppo_objective(game, rollout, batch):
    cfg = game.policy_optimizer.config
    with torch.no_grad():
        out = game.model(rollout.input_ids, rollout.attention_mask, roles=("policy", "value"),
                         response_start=rollout.prompt_length, temperature=rollout.temperature)
        pg, _ = losses.ppo_policy_loss(out["policy"], rollout.logprobs, batch["advantages"], rollout.response_mask,
                                       cfg.cliprange)
        vf, _ = losses.ppo_value_loss(out["value"], rollout.values, batch["returns"], rollout.response_mask,
                                      cfg.cliprange_value)
    return (pg + cfg.vf_coef * vf).item()


def test_ppo_step_lowers_its_loss_on_a_fixed_batch(tiny_config, single_accelerator):
    game = make_game(tiny_config, single_accelerator(), **{"ppo.ppo_epochs": 4, "ppo.learning_rate": 1e-3,
                                                           "ppo.value_learning_rate": 1e-3})
    rollout = fresh_rollout(game)
    batch = game.policy_optimizer.compute_advantages(rollout)
    before = ppo_objective(game, rollout, batch)
    metrics = game.policy_optimizer.step(rollout)
    after = ppo_objective(game, rollout, batch)
    assert after < before - 1e-3, (before, after)
    for key in ("ppo/policy_loss", "ppo/value_loss", "ppo/clipfrac", "ppo/approx_kl", "objective/kl"):
        assert key in metrics


def test_ppo_update_is_independent_of_micro_batch_layout(tiny_config, single_accelerator):
    """Same rollout, 1 micro-batch vs 4 accumulated micro-batches: the same weights afterwards."""
    results, initial = [], None
    for accumulation in (1, 4):
        game = make_game(tiny_config, single_accelerator(), **{"ppo.gradient_accumulation_steps": accumulation,
                                                               "ppo.num_minibatches": 1})
        backbone = game.accelerator.unwrap_model(game.model)
        if initial is None:
            initial = {n: p.detach().clone() for n, p in backbone.named_parameters() if p.requires_grad}
            rollout = fresh_rollout(game)
        game.policy_optimizer.step(copy.deepcopy(rollout))
        results.append({n: p.detach().clone() for n, p in backbone.named_parameters() if p.requires_grad})
    for name, value in results[0].items():
        assert torch.allclose(value, results[1][name], atol=1e-6), name
    moved = [n for n, v in results[0].items() if ".policy." in n and not torch.equal(v, initial[n])]
    assert moved, "the update must move the policy adapter, or the comparison proves nothing"


def test_ppo_changes_only_policy_and_value(tiny_config, single_accelerator):
    game = make_game(tiny_config, single_accelerator())
    backbone = game.accelerator.unwrap_model(game.model)
    before = {role: [p.detach().clone() for p in backbone.role_parameters(role)] for role in ("policy", "value", "reward")}
    game.policy_optimizer.step(fresh_rollout(game))
    for role, old in before.items():
        moved = any(not torch.equal(a, b) for a, b in zip(old, backbone.role_parameters(role)))
        assert moved == (role in ("policy", "value")), role
