"""The shared backbone: roles, adapter switching, gradients per phase, reference = untouched base."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from apo_online.backbone import LoraSettings, SharedBackbone, position_ids_from_mask
from apo_online.rm.scorers import reward_role_scores
from apo_online.model_loading import load_causal_lm
from apo_online.config import ModelConfig


@pytest.fixture
def backbone(tiny_model_path):
    torch.manual_seed(0)
    lm, tokenizer = load_causal_lm(ModelConfig(model_name_or_path="tiny-llama"))
    bb = SharedBackbone.build(lm, LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # LoRA B starts at 0; make every adapter change the output so roles are distinguishable
        for name, param in bb.peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return bb


def batch(prompt_len=5, response_len=4, rows=3, vocab=200):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (rows, prompt_len + response_len), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # row 0 is left-padded
    return ids, mask


def role_groups(bb):
    return {role: {id(p) for p in bb.role_parameters(role)} for role in ("policy", "value", "reward")}


def grads_by_owner(bb):
    """owner (policy/value/reward/base) -> whether any of its parameters received a non-zero gradient."""
    groups = role_groups(bb)
    touched = {"policy": False, "value": False, "reward": False, "base": False}
    for _, param in bb.named_parameters():
        owner = next((role for role, ids in groups.items() if id(param) in ids), "base")
        if param.grad is not None and param.grad.abs().sum() > 0:
            touched[owner] = True
    return touched


def test_base_weights_are_frozen_and_roles_trainable(backbone):
    groups = role_groups(backbone)
    trainable = {id(p) for p in backbone.parameters() if p.requires_grad}
    assert trainable == groups["policy"] | groups["value"] | groups["reward"]
    assert all(len(ids) > 0 for ids in groups.values())
    assert not groups["policy"] & groups["value"] and not groups["value"] & groups["reward"]


@pytest.mark.parametrize("roles, expected", [
    (("policy", "value"), {"policy": True, "value": True, "reward": False, "base": False}),  # PPO phase
    (("reward",), {"policy": False, "value": False, "reward": True, "base": False}),  # RM phase
    (("policy",), {"policy": True, "value": False, "reward": False, "base": False}),  # DPO / RJS phase
])
def test_gradients_reach_only_the_phase_roles(backbone, roles, expected):
    ids, mask = batch()
    out = backbone(ids, mask, roles=roles, response_start=5)
    sum(o.sum() for o in out.values()).backward()
    assert grads_by_owner(backbone) == expected


def test_reference_equals_untouched_base_model(backbone, tiny_model_path):
    ids, mask = batch()
    out = backbone(ids, mask, roles=("policy", "reference"), response_start=5, temperature=0.7)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    with torch.no_grad():
        logits = base(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    expected = torch.log_softmax(logits[:, 4:-1] / 0.7, -1).gather(-1, ids[:, 5:, None]).squeeze(-1)
    assert torch.allclose(out["reference"], expected, atol=1e-5)
    assert not torch.allclose(out["policy"], expected, atol=1e-3)  # the policy adapter does change the output


def test_role_switch_restores_active_adapter_even_on_error(backbone):
    assert backbone.active_role == "policy"
    with pytest.raises(RuntimeError):
        with backbone.role("reward"):
            assert backbone.active_role == "reward"
            raise RuntimeError("boom")
    assert backbone.active_role == "policy"
    with pytest.raises(RuntimeError):
        with backbone.role("reference"):
            raise RuntimeError("boom")
    ids, mask = batch()
    # adapters are enabled again and every adapter is still trainable
    assert all(p.requires_grad for p in backbone.role_parameters("value"))
    with torch.no_grad():
        policy = backbone(ids, mask, roles=("policy",), response_start=5)["policy"]
        reference = backbone(ids, mask, roles=("reference",), response_start=5)["reference"]
    assert not torch.allclose(policy, reference, atol=1e-3)


def test_left_padding_does_not_change_response_logprobs(backbone):
    """Position ids skip the padding: a left-padded prompt scores its response exactly like an unpadded one."""
    ids, _ = batch(rows=1)
    plain = backbone(ids, torch.ones_like(ids), roles=("policy", "value"), response_start=5)
    padded_ids = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    padded_mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], 1)
    padded = backbone(padded_ids, padded_mask, roles=("policy", "value"), response_start=8)
    assert torch.allclose(plain["policy"], padded["policy"], atol=1e-5)
    assert torch.allclose(plain["value"], padded["value"], atol=1e-5)


def test_reward_read_at_last_real_token(backbone):
    ids, _ = batch(rows=1)
    left = backbone(ids, torch.ones_like(ids), roles=("reward",))["reward"]
    right_ids = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    right_mask = torch.cat([torch.ones_like(ids), torch.zeros(1, 4, dtype=torch.long)], 1)
    right = backbone(right_ids, right_mask, roles=("reward",))["reward"]
    assert torch.allclose(left, right, atol=1e-5)


def shared_prefix_rows():
    """Rows as an RM step holds them: two prompts of different lengths, each with several responses of different
    lengths (one empty), and a prompt used once."""
    g = torch.Generator().manual_seed(3)
    ids = lambda n: torch.randint(5, 200, (n,), generator=g).tolist()
    first, second, alone = ids(7), ids(4), ids(5)
    prompts = [first, first, first, second, second, alone, first]
    responses = [ids(3), ids(6), [], ids(2), ids(5), ids(4), ids(1)]
    return prompts, responses


def reward_scores_and_grads(bb, shared_prefix: bool):
    bb.zero_grad(set_to_none=True)
    prompts, responses = shared_prefix_rows()
    scores = reward_role_scores(bb, torch.device("cpu"), 0, prompts, responses, shared_prefix=shared_prefix)
    (scores * torch.arange(1.0, len(scores) + 1)).sum().backward()  # a different weight per row
    return scores.detach(), {n: p.grad.clone() for n, p in bb.named_parameters() if p.grad is not None}


def test_shared_prefix_reward_scores_and_gradients_equal_the_joined_rows(backbone):
    """Each distinct prompt run once, its keys/values gathered per response (issue 14): the same scores and the same
    gradients on the reward adapter and head as the rows written out in full, within float tolerance."""
    joined_scores, joined_grads = reward_scores_and_grads(backbone, shared_prefix=False)
    calls = []
    hook = backbone.peft_model.get_base_model().get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
    shared_scores, shared_grads = reward_scores_and_grads(backbone, shared_prefix=True)
    hook.remove()
    assert calls == [torch.Size([3, 7]), torch.Size([7, 6])]  # 3 distinct prompts once, then the 7 responses
    assert torch.allclose(shared_scores, joined_scores, atol=1e-5), (shared_scores, joined_scores)
    assert shared_grads.keys() == joined_grads.keys() == {n for n, p in backbone.named_parameters()
                                                          if id(p) in role_groups(backbone)["reward"]}
    for name, grad in joined_grads.items():  # float32 rounding, relative to each gradient's scale (about 1e-6 seen)
        assert torch.allclose(shared_grads[name], grad, atol=1e-5 * grad.abs().max().item(), rtol=0), name
    assert any(g.abs().sum() > 0 for g in joined_grads.values())


def test_reward_with_and_without_last_token_equals_two_scorings(backbone):
    """One forward reads each row twice (eval/bon_probe.py: a response with and without its stop token): the same
    scores as scoring the rows and the rows cut by one token (an empty one read at its prompt) separately."""
    from apo_online.backbone import SharedPrefix
    from apo_online.data.canonical import left_pad, right_pad

    prompts, responses = shared_prefix_rows()
    distinct = list(dict.fromkeys(map(tuple, prompts)))
    prompt_ids, prompt_mask = left_pad([list(p) for p in distinct], 0)
    ids, mask = right_pad(responses, 0)
    prefix = SharedPrefix(prompt_ids, prompt_mask, torch.tensor([distinct.index(tuple(p)) for p in prompts]))
    both = backbone.reward_with_and_without_last_token(ids, mask, prefix)
    with torch.no_grad():
        whole = reward_role_scores(backbone, torch.device("cpu"), 0, prompts, responses, shared_prefix=False)
        cut = reward_role_scores(backbone, torch.device("cpu"), 0, prompts, [r[:-1] for r in responses],
                                 shared_prefix=False)
    assert both.shape == (len(responses), 2)
    assert torch.allclose(both[:, 0], whole, atol=1e-5) and torch.allclose(both[:, 1], cut, atol=1e-5)
    assert not torch.allclose(both[:, 0], both[:, 1])


def test_shared_prefix_under_gradient_checkpointing_runs_the_joined_rows(backbone):
    joined_scores, _ = reward_scores_and_grads(backbone, shared_prefix=False)
    backbone.gradient_checkpointing_enable()
    checkpointed_scores, _ = reward_scores_and_grads(backbone, shared_prefix=True)
    backbone.gradient_checkpointing_disable()
    assert torch.allclose(checkpointed_scores, joined_scores, atol=1e-5)


def test_every_role_with_shared_prompts_equals_the_joined_rows(backbone):
    """score_shared_prompts (the evaluation's n samples per prompt, each prompt run once): the same policy and
    reference log-probs, values and rewards as score_sequences on the rows written out, up to float rounding, with
    prompts of different lengths (left-padded) and responses of different lengths (right-padded)."""
    from apo_online.data.canonical import left_pad, right_pad
    from apo_online.rollout import score_sequences, score_shared_prompts

    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # adapters and heads away from their zero start, so that every role differs
        for name, param in backbone.named_parameters():
            if "lora_B" in name or "value_head" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=g))
    ids = lambda n: torch.randint(5, 200, (n,), generator=g).tolist()  # noqa: E731
    n, prompts = 3, [ids(7), ids(4), ids(6)]
    responses = [ids(k) for k in (3, 6, 1, 5, 2, 6, 4, 4, 3)]  # the n responses of each prompt together
    prompt_ids, prompt_mask = left_pad(prompts, 0)
    response_ids, response_mask = right_pad(responses, 0)
    roles = ("policy", "reference", "value", "reward")
    calls = []
    hook = backbone.peft_model.get_base_model().get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    shared = score_shared_prompts(backbone, prompt_ids, prompt_mask, response_ids, response_mask.float(), n, roles,
                                  0.7, batch_size=6)
    hook.remove()
    assert calls == [2, 6, 2, 6, 2, 6, 2, 6, 1, 3, 1, 3, 1, 3, 1, 3]  # per chunk of 2 prompts: prompts once, then rows
    joined = score_sequences(backbone, torch.cat([prompt_ids.repeat_interleave(n, 0), response_ids], 1),
                             torch.cat([prompt_mask.repeat_interleave(n, 0), response_mask], 1), prompt_ids.shape[1],
                             roles, 0.7, batch_size=9)
    valid = response_mask.bool()
    for role in ("policy", "reference", "value"):
        assert shared[role].shape == joined[role].shape == response_ids.shape
        assert torch.allclose(shared[role][valid], joined[role][valid], atol=1e-5), role
    assert torch.allclose(shared["reward"], joined["reward"], atol=1e-5)
    assert not torch.allclose(shared["policy"][valid], shared["reference"][valid], atol=1e-3)


def test_value_head_starts_at_zero(tiny_model_path):
    lm, _ = load_causal_lm(ModelConfig(model_name_or_path="tiny-llama"))
    bb = SharedBackbone.build(lm, LoraSettings(r=4, alpha=8))
    ids, mask = batch()
    assert torch.count_nonzero(bb(ids, mask, roles=("value",), response_start=5)["value"]) == 0


def test_gradient_checkpointing_recomputes_layers_and_keeps_results(backbone):
    """model.gradient_checkpointing must take effect although the backbone stays in eval mode (transformers only
    checkpoints layers that are in training mode): each decoder layer runs again in the backward pass, and the
    log-probs and gradients are unchanged."""
    ids, mask = batch()
    layers = backbone.peft_model.get_base_model().get_decoder().layers
    calls = []
    # transformers checkpoints a layer's forward, not its __call__, and torch stops the recomputation early (after
    # the last saved tensor): count calls that *enter* a child to see the recomputation
    hooks = [layer.mlp.register_forward_pre_hook(lambda *_: calls.append(1)) for layer in layers]

    def run():
        calls.clear()
        backbone.zero_grad(set_to_none=True)
        out = backbone(ids, mask, roles=("policy",), response_start=5)
        out["policy"].sum().backward()
        grads = {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}
        return out["policy"].detach(), grads, len(calls)

    plain_logprobs, plain_grads, plain_calls = run()
    backbone.gradient_checkpointing_enable()
    backbone.train()  # as accelerate/trl may call it: must not switch checkpointing off again
    ckpt_logprobs, ckpt_grads, ckpt_calls = run()
    for hook in hooks:
        hook.remove()
    assert plain_calls == len(layers)
    assert ckpt_calls == 2 * len(layers)  # forward + recomputation in backward
    assert not any(m.training for m in backbone.modules() if m not in set(layers) and m is not backbone)
    assert torch.allclose(plain_logprobs, ckpt_logprobs, atol=1e-6)
    assert plain_grads.keys() == ckpt_grads.keys()
    for name in plain_grads:
        assert torch.allclose(plain_grads[name], ckpt_grads[name], atol=1e-5), name
    backbone.gradient_checkpointing_disable()
    assert not any(layer.training for layer in layers)


def test_building_a_cached_model_leaves_the_callers_random_state_alone(tmp_path):
    """A first run (cold cache: the tiny model is built, which seeds and draws) samples like a later one (warm)."""
    from apo_online.model_loading import resolve_model_path

    torch.manual_seed(123)
    resolve_model_path("tiny-llama", str(tmp_path))  # cold: builds
    cold = torch.rand(3)
    torch.manual_seed(123)
    resolve_model_path("tiny-llama", str(tmp_path))  # warm: loads nothing, draws nothing
    assert torch.equal(cold, torch.rand(3))
