"""The adversarial RM step: it widens the gold-minus-sample gap, touches only the reward role, refits from base."""

import torch

from apo_online.rm.apo_step import SampleBuffer
from apo_online.policy_reward.terms import RewardSum
from apo_online.rollout import collect_rollout


def game_with_buffer(tiny_config, accelerator, **extra):
    from apo_online.game import APOGame

    game = APOGame(tiny_config(**extra), accelerator=accelerator)
    game.rm_step.warmup(0)  # snapshot the base RM
    positions = game.sampler.next_batch()
    rollout = collect_rollout(game.ctx, [game.prompts[i] for i in positions], positions, game.config.rollout,
                              game.spec, game.tokenizer)
    # step 0, every sample counted as finished (the tiny model rarely emits the stop token within 6 tokens)
    game.buffer.add(rollout.prompt_index.tolist(), rollout.response_lists(), step=0)
    return game


def gap(game):
    """Mean over buffered prompts of r(gold) - mean r(samples), no grad."""
    groups = sorted(game.buffer.groups().items())
    with torch.no_grad():
        _, metrics = game.rm_step.loss(groups, [])
    return metrics["rm/gold_minus_sample"]


def test_apo_step_widens_gold_minus_sample_gap(tiny_config, single_accelerator):
    game = game_with_buffer(tiny_config, single_accelerator(), **{"rm.steps_per_update": 5,
                                                                  "rm.learning_rate": 1e-3,
                                                                  "rm.queries_per_step": 4})
    before = gap(game)
    metrics = game.rm_step.update(game.buffer, 0)
    after = gap(game)
    assert after > before + 0.05, (before, after)
    for key in ("rm/loss_apo", "rm/loss_pref", "rm/gold_minus_sample", "rm/pref_accuracy", "rm/loss"):
        assert key in metrics


def test_rm_step_updates_only_the_reward_role(tiny_config, single_accelerator):
    game = game_with_buffer(tiny_config, single_accelerator())
    backbone = game.accelerator.unwrap_model(game.model)
    before = {role: [p.detach().clone() for p in backbone.role_parameters(role)] for role in ("policy", "value", "reward")}
    game.rm_step.update(game.buffer, 0)
    for role, old in before.items():
        moved = any(not torch.equal(a, b) for a, b in zip(old, backbone.role_parameters(role)))
        assert moved == (role == "reward"), role


def test_refit_mode_restarts_from_the_base_rm(tiny_config, single_accelerator):
    game = game_with_buffer(tiny_config, single_accelerator(), **{"rm.mode": "refit"})
    backbone = game.accelerator.unwrap_model(game.model)
    base = {n: v.clone() for n, v in game.rm_step.base_state.items()}
    game.rm_step.update(game.buffer, 0)
    # base_state is a CPU copy (read_role_weights: whole even under ZeRO-3), the parameters may live on a GPU
    assert any(not torch.equal(p.detach().cpu(), base[n]) for n, p in backbone.named_parameters() if n in base)
    game.rm_step.restore_base()
    for name, param in backbone.named_parameters():
        if name in base:
            assert torch.equal(param.detach().cpu(), base[name]), name
    # a fresh optimizer for the reward role: its Adam moments and step count are zero (zeroed in place)
    reward_states = [game.ctx.role_optimizer.state.get(p, {}) for p in backbone.role_parameters("reward")]
    assert any(reward_states) and all(torch.count_nonzero(v) == 0 for s in reward_states for v in s.values())


def test_continue_mode_keeps_training(tiny_config, single_accelerator):
    game = game_with_buffer(tiny_config, single_accelerator(), **{"rm.mode": "continue"})
    game.rm_step.update(game.buffer, 0)
    state = game.scorer.weights()
    game.rm_step.update(game.buffer, 0)  # continues from `state`, does not return to the base RM first
    restarted = {n: v for n, v in game.rm_step.base_state.items()}
    assert any(not torch.equal(state[n], restarted[n]) for n in state)
    assert game.ctx.role_optimizer.state  # Adam moments kept


def test_sample_buffer_is_fifo_and_round_trips():
    buffer = SampleBuffer(capacity=3)
    buffer.add([0, 1, 0, 2], [[1], [2], [3], [4]])
    assert len(buffer) == 3
    assert buffer.groups() == {1: [[2]], 0: [[3]], 2: [[4]]}
    clone = SampleBuffer(1)
    clone.load_state_dict(buffer.state_dict())
    assert clone.groups() == buffer.groups() and clone.samples.maxlen == 3


def test_micro_batched_rm_step_equals_one_batch(tiny_config, single_accelerator):
    """rm.micro_batches splits an RM step into gradient-accumulated slices: same update, same metrics."""
    results = []
    for parts in (1, 3):
        game = game_with_buffer(tiny_config, single_accelerator(), **{"rm.micro_batches": parts,
                                                                      "rm.queries_per_step": 4,
                                                                      "rm.pairs_per_step": 5})
        metrics = game.rm_step.update(game.buffer, 0)
        results.append((metrics, game.scorer.weights()))
    (whole, whole_weights), (sliced, sliced_weights) = results
    assert whole.keys() == sliced.keys()
    for key in whole:
        assert abs(whole[key] - sliced[key]) <= 1e-5 * max(1.0, abs(whole[key])), (key, whole[key], sliced[key])
    base = game.rm_step.base_state
    assert any(not torch.equal(sliced_weights[n], base[n]) for n in base)  # the step did move the RM
    for name, value in whole_weights.items():
        if name.endswith("reward_head.bias"):
            # both losses depend on score differences only: the bias gradient is rounding noise, which Adam's
            # normalisation turns into steps of size ~lr either way
            continue
        assert torch.allclose(value, sliced_weights[name], atol=1e-6), name


def test_rm_micro_batches_are_as_many_on_every_process_even_when_slices_are_empty(tiny_config, single_accelerator):
    game = game_with_buffer(tiny_config, single_accelerator(), **{"rm.micro_batches": 3})
    groups = sorted(game.buffer.groups().items())[:1]
    slices = game.rm_step._micro_batches(groups, game.pairs[:1])
    assert len(slices) == 3
    assert sum(s[2] for s in slices) == 1.0 and sum(s[3] for s in slices) == 1.0  # each item counted once
    assert [(len(g), len(p), a, b) for g, p, a, b in slices][0] == (1, 1, 0.0, 0.0)  # the empty slice, zero-weighted


def _rm_step(**rm_fields):
    """An AdversarialRewardStep without a model: enough for choosing which buffered samples an update may use."""
    from apo_online.config import RewardConfig
    from apo_online.data.canonical import EncodedPrompt
    from apo_online.rm.apo_step import AdversarialRewardStep

    prompts = [EncodedPrompt(i, [1, 2], gold_ids=[3, 9]) for i in range(4)]
    prompts.append(EncodedPrompt(4, [1, 2], gold_ids=None))  # no gold: never in the APO term
    return AdversarialRewardStep(None, RewardConfig(**rm_fields), prompts, [], scorer=None, seed=0, stop_id=0)


def test_sample_window_keeps_only_the_latest_policy_steps():
    buffer = SampleBuffer(capacity=100)
    for step in range(6):  # one sample of prompt step % 4 per policy step
        buffer.add([step % 4], [[10 + step]], step=step)
    fresh = _rm_step(sample_window=2, eos_only=False).fresh_groups(buffer, step=5)
    assert fresh == [(0, [[14]]), (1, [[15]])]  # steps 4 and 5 only
    everything = _rm_step(sample_window=0, eos_only=False).fresh_groups(buffer, step=5)
    assert sum(len(s) for _, s in everything) == 6  # window 0: the whole buffer (the old behaviour)


def test_eos_only_drops_samples_cut_at_max_new_tokens():
    buffer = SampleBuffer(capacity=100)
    buffer.add([0, 0, 1, 4], [[5, 9], [6], [7], [8, 9]], step=3, has_eos=[True, False, False, True])
    assert _rm_step(sample_window=1, eos_only=True).fresh_groups(buffer, step=3) == [(0, [[5, 9]])]
    assert _rm_step(sample_window=1, eos_only=False).fresh_groups(buffer, step=3) == [(0, [[5, 9], [6]]), (1, [[7]])]


def test_score_cut_as_stopped_gives_cut_and_finished_samples_the_same_apo_term():
    """Finish-neutral APO term: a cut sample enters the term as the same tokens followed by the stop token (id 0
    here), i.e. exactly as that sample would had it stopped. With eos_only alone it is dropped, so the APO term only
    ever pushes finished samples down (what taught the study's policies to stop finishing)."""
    cut, finished = SampleBuffer(capacity=10), SampleBuffer(capacity=10)
    cut.add([0], [[5, 6]], step=3, has_eos=[False])
    finished.add([0], [[5, 6, 0]], step=3, has_eos=[True])
    neutral = _rm_step(sample_window=1, eos_only=True, score_cut_as_stopped=True)
    assert neutral.fresh_groups(cut, step=3) == neutral.fresh_groups(finished, step=3) == [(0, [[5, 6, 0]])]
    assert _rm_step(sample_window=1, eos_only=True).fresh_groups(cut, step=3) == []


def test_score_cut_as_stopped_scores_cut_rollouts_with_a_stop_token(tiny_config, single_accelerator):
    """The rollout's reward of a cut response is the RM's score of it followed by the stop token, minus the
    missing-EOS penalty; a finished response is scored as it is."""
    from apo_online.evaluation.game_eval import scorer_scores

    from apo_online.game import APOGame

    game = APOGame(tiny_config(**{"rm.score_cut_as_stopped": "true", "rollout.missing_eos_penalty": 1.5}),
                   accelerator=single_accelerator())
    positions = game.sampler.next_batch()
    prompts = [game.prompts[i] for i in positions]
    rollout = collect_rollout(game.ctx, prompts, positions, game.config.rollout, game.spec, game.tokenizer,
                              RewardSum.rm_only(game.scorer, score_cut_as_stopped=True))
    eos = game.tokenizer.eos_token_id
    responses = [r if e else r + [eos] for r, e in zip(rollout.response_lists(), rollout.has_eos.tolist())]
    assert not all(rollout.has_eos.tolist())  # the tiny model rarely stops: there are cut rows to check
    expected = scorer_scores(game.scorer, [p.input_ids for p in prompts], [p.messages for p in prompts], responses)
    assert torch.allclose(rollout.rm_scores.cpu(), expected, atol=1e-5)
    assert torch.allclose(rollout.scores.cpu(), expected - 1.5 * (~rollout.has_eos.cpu()).float(), atol=1e-5)


def test_offline_samples_stay_eligible_until_pushed_out():
    buffer = SampleBuffer(capacity=3)
    buffer.add([0], [[5]])  # an offline sample (data.seed_buffer_from_samples)
    buffer.add([1], [[6]], step=7)
    assert _rm_step(sample_window=1).fresh_groups(buffer, step=7) == [(0, [[5]]), (1, [[6]])]
    buffer.add([2, 3], [[7], [8]], step=8)  # the FIFO pushes the offline sample out
    assert _rm_step(sample_window=1).fresh_groups(buffer, step=8) == [(2, [[7]]), (3, [[8]])]


def test_update_trains_on_the_fresh_window_only(tiny_config, single_accelerator):
    game = game_with_buffer(tiny_config, single_accelerator(), **{"rm.sample_window": 1, "rm.eos_only": False})
    stale = len(game.buffer)
    game.buffer.add([0, 1], [[5], [6]], step=1)
    metrics = game.rm_step.update(game.buffer, 1)
    assert metrics["rm/fresh_samples"] == 2.0 and metrics["rm/buffer_size"] == stale + 2


def test_warmup_covers_every_human_pair_once_by_default(tiny_config, single_accelerator):
    game = game_with_buffer(tiny_config, single_accelerator(), **{"rm.warmup_steps": "null", "rm.pairs_per_step": 5})
    assert game.rm_step.warmup_steps() == -(-len(game.pairs) // 5)  # ceil: every pair about once
