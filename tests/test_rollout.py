"""Rollouts: stop-token truncation, masks, log-probs at sampling time, missing-EOS penalty."""

import torch

from apo_online.rollout import collect_rollout, truncate_at_stop

from conftest import fresh_rollout, make_game


def test_truncate_at_first_stop_token():
    responses = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    cut, mask, has_stop = truncate_at_stop(responses, stop_ids=[2], pad_id=0)
    assert cut.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert has_stop.tolist() == [True, False, True]


def test_rollout_fields_are_consistent(tiny_config, single_accelerator):
    from apo_online.game import APOGame

    config = tiny_config(**{"rollout.max_new_tokens": 8, "rollout.missing_eos_penalty": 2.5})
    game = APOGame(config, accelerator=single_accelerator())
    positions = game.sampler.next_batch()
    rollout = collect_rollout(game.ctx, [game.prompts[i] for i in positions], positions, config.rollout, game.spec,
                              game.tokenizer)
    rows, width = rollout.response_mask.shape
    assert rows == len(positions) and width <= 8
    pad, eos = game.tokenizer.pad_token_id, game.tokenizer.eos_token_id
    # padding only after the stop token, never inside a response
    assert (rollout.response_ids[rollout.response_mask == 0] == pad).all()
    for row, tokens in enumerate(rollout.response_lists()):
        assert (eos in tokens) == bool(rollout.has_eos[row])
        if eos in tokens:
            assert tokens.index(eos) == len(tokens) - 1
    # missing-EOS penalty on exactly the rows without a stop token
    expected = rollout.rm_scores - 2.5 * (~rollout.has_eos).float()
    assert torch.allclose(rollout.scores, expected)
    # the stored log-probs are the policy's, temperature-scaled, recomputed by a fresh forward
    with torch.no_grad():
        again = game.model(rollout.input_ids, rollout.attention_mask, roles=("policy",),
                           response_start=rollout.prompt_length, temperature=config.rollout.temperature)["policy"]
    assert torch.allclose(rollout.logprobs, again * rollout.response_mask, atol=1e-5)
    with torch.no_grad():
        untempered = game.model(rollout.input_ids, rollout.attention_mask, roles=("policy",),
                                response_start=rollout.prompt_length, temperature=1.0)["policy"]
    assert not torch.allclose(rollout.logprobs, untempered * rollout.response_mask, atol=1e-3)
    assert rollout.values is not None and rollout.ref_logprobs is not None
    assert (rollout.values[rollout.response_mask == 0] == 0).all()


def test_logprobs_from_generation_match_a_full_forward_and_skip_the_policy_forward(tiny_config, single_accelerator,
                                                                                    monkeypatch):
    from apo_online.backbone import SharedBackbone

    game = make_game(tiny_config, single_accelerator(),
                     **{"rollout.max_new_tokens": 8, "rollout.logprobs_from_generation": True})
    for name, param in game.model.named_parameters():  # a policy adapter that differs from the reference
        if "lora_B" in name and ".policy." in name:
            torch.nn.init.normal_(param, std=0.05)
    scored_roles = []
    original_forward = SharedBackbone.forward
    monkeypatch.setattr(SharedBackbone, "forward",
                        lambda self, *a, **kw: scored_roles.append(kw["roles"]) or original_forward(self, *a, **kw))
    rollout = fresh_rollout(game)
    assert scored_roles and all("policy" not in roles for roles in scored_roles)
    with torch.no_grad():
        full = original_forward(game.model, rollout.input_ids, rollout.attention_mask, roles=("policy",),
                                response_start=rollout.prompt_length, temperature=game.config.rollout.temperature)
    assert torch.allclose(rollout.logprobs, full["policy"] * rollout.response_mask, atol=1e-4)
    assert (rollout.logprobs[rollout.response_mask == 1] < 0).all()
