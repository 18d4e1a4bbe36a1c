"""Sampling with the policy folded into the weights (apo_online/merged_sampling.py): the same logits and the same
sampled tokens as the adapter running per token, the base weights untouched (the reference stays the base bit for
bit), and a game step with merged sampling leaving the reference log-probs unchanged."""

import pytest
import torch

from apo_online.merged_sampling import adapted_layers, folded_into_weights
from conftest import make_game


def sample(bb, merged: bool, seed: int = 3):
    ids = torch.tensor([[5, 17, 42, 99, 7], [8, 8, 120, 33, 64]])
    bb.merged_sampling = merged
    torch.manual_seed(seed)
    out = bb.generate(ids, torch.ones_like(ids), do_sample=True, temperature=1.0, max_new_tokens=12,
                      return_dict_in_generate=True, output_logits=True, pad_token_id=0)
    return out.sequences, torch.stack(out.logits, 1)


def base_weights(bb):
    return {name: param.detach().clone() for name, param in bb.peft_model.named_parameters() if "lora_" not in name}


def lora_calls(bb, merged: bool) -> tuple[int, tuple]:
    """(how many times a LoRA A matrix ran, the sample) while sampling merged or not."""
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for n, m in bb.peft_model.named_modules()
             if n.endswith("lora_A.policy")]
    try:
        result = sample(bb, merged)
    finally:
        for hook in hooks:
            hook.remove()
    return len(calls), result


def test_merged_sampling_gives_the_same_logits_and_tokens_without_running_the_adapter(adapted_backbone):
    bb = adapted_backbone
    plain_calls, (plain_tokens, plain_logits) = lora_calls(bb, merged=False)
    merged_calls, (merged_tokens, merged_logits) = lora_calls(bb, merged=True)
    assert plain_calls > 0 and merged_calls == 0
    assert torch.equal(plain_tokens, merged_tokens)
    torch.testing.assert_close(merged_logits, plain_logits, rtol=1e-4, atol=1e-4)
    reference_tokens, _ = sample_reference(bb)
    assert not torch.equal(reference_tokens, plain_tokens)  # the adapter matters: the test can tell them apart


def sample_reference(bb, seed: int = 3):
    ids = torch.tensor([[5, 17, 42, 99, 7], [8, 8, 120, 33, 64]])
    torch.manual_seed(seed)
    with bb.role("reference"):
        out = bb.peft_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                     temperature=1.0, max_new_tokens=12, return_dict_in_generate=True,
                                     output_logits=True, pad_token_id=0)
    return out.sequences, torch.stack(out.logits, 1)


def test_folding_restores_the_base_exactly_and_the_roles(adapted_backbone):
    bb = adapted_backbone
    before = base_weights(bb)
    pointers = {name: p.data_ptr() for name, p in bb.peft_model.named_parameters() if "lora_" not in name}
    for _ in range(3):
        sample(bb, merged=True)
    after = base_weights(bb)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert pointers == {name: p.data_ptr() for name, p in bb.peft_model.named_parameters() if "lora_" not in name}
    assert bb.active_role == "policy"
    assert all(p.requires_grad for p in bb.role_parameters("reward"))  # disable_adapter's exit froze nothing


def test_folding_is_undone_when_generation_fails(adapted_backbone):
    bb = adapted_backbone
    before = base_weights(bb)
    with pytest.raises(RuntimeError, match="boom"):
        with folded_into_weights(bb.peft_model, "policy") as folded:
            assert folded
            changed = base_weights(bb)
            assert any(not torch.equal(before[n], changed[n]) for n in before)  # it did fold
            raise RuntimeError("boom")
    after = base_weights(bb)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_every_adapted_layer_computes_with_its_merged_weight(adapted_backbone):
    bb = adapted_backbone
    layers = adapted_layers(bb.peft_model, "policy")
    assert len(layers) == 7 * bb.peft_model.get_base_model().config.num_hidden_layers  # q k v o gate up down
    originals = [layer.get_base_layer().weight.detach().clone() for layer in layers]
    with folded_into_weights(bb.peft_model, "policy") as folded:
        assert folded
        for layer, original in zip(layers, originals):
            expected = original + layer.get_delta_weight("policy")
            assert torch.equal(layer.get_base_layer().weight, expected)


def test_a_step_with_merged_sampling_leaves_the_reference_log_probs_unchanged(tiny_config, single_accelerator):
    game = make_game(tiny_config, single_accelerator(cpu=True), **{"rollout.merged_sampling": "true",
                                                                   "game.eval_every": "0"})
    backbone = game.accelerator.unwrap_model(game.model)
    assert backbone.merged_sampling
    ids = torch.tensor([[5, 17, 42, 99, 7, 11, 12, 13]])
    mask = torch.ones_like(ids)

    def reference_logprobs():
        with torch.no_grad():
            return backbone(ids, mask, roles=("reference",), response_start=4)["reference"]

    game.rm_step.warmup(game.config.rm.warmup_steps)  # the base RM that the step's refit returns to
    game.warmed_up = True
    before = reference_logprobs()
    game.play_step()
    assert torch.equal(before, reference_logprobs())
