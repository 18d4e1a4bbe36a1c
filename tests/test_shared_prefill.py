"""n samples a prompt with the prompt's prefill run once (apo_online/shared_prefill.py): the same tokens at a fixed
seed and the same logits as transformers' own num_return_sequences, on left-padded prompts of different lengths,
with the policy adapter per token, folded into the weights, and for the reference; and the prompt really runs once."""

import pytest
import torch

from apo_online.data.canonical import position_ids_from_mask
from apo_online.shared_prefill import generate_sharing_prompts, shares_prompts


# left-padded: rows of 5, 3 and 1 real tokens
IDS = torch.tensor([[5, 17, 42, 99, 7], [0, 0, 120, 33, 64], [0, 0, 0, 0, 11]])
MASK = (torch.arange(5) >= torch.tensor([[0], [2], [4]])).long()
KWARGS = dict(do_sample=True, temperature=1.0, max_new_tokens=10, pad_token_id=0, return_dict_in_generate=True,
              output_logits=True, num_return_sequences=4)


def draw(generate, seed=3):
    torch.manual_seed(seed)
    out = generate(dict(KWARGS))
    return out.sequences, torch.stack(out.logits, 1)


def test_left_padded_positions_match_generate():
    assert position_ids_from_mask(MASK).tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2], [0, 0, 0, 0, 0]]


@pytest.mark.parametrize("merged", [False, True])
def test_the_same_tokens_and_logits_as_num_return_sequences(adapted_backbone, merged):
    bb = adapted_backbone
    bb.merged_sampling = merged
    plain_tokens, plain_logits = draw(lambda kw: bb.generate(IDS, MASK, share_prompts=False, **kw))
    shared_tokens, shared_logits = draw(lambda kw: bb.generate(IDS, MASK, **kw))
    assert plain_tokens.shape == (12, 15)
    assert torch.equal(shared_tokens, plain_tokens)
    torch.testing.assert_close(shared_logits, plain_logits, rtol=1e-4, atol=1e-4)


def test_the_reference_samples_the_same_way(adapted_backbone):
    model = adapted_backbone.peft_model
    with adapted_backbone.role("reference"):
        plain = draw(lambda kw: model.generate(input_ids=IDS, attention_mask=MASK, **kw))
        shared = draw(lambda kw: generate_sharing_prompts(model, IDS, MASK, **kw))
    assert torch.equal(shared[0], plain[0])
    torch.testing.assert_close(shared[1], plain[1], rtol=1e-4, atol=1e-4)


def test_each_prompt_token_runs_once(adapted_backbone):
    """Rows x positions through the first layer for one new token: generate's copies run B * n * P prompt tokens;
    the shared prefill runs B * (P - 1), then generate the last prompt token of each of the B * n copies."""
    tokens = []
    layer = adapted_backbone.peft_model.get_base_model().model.layers[0]
    hook = layer.register_forward_pre_hook(lambda _, args, kwargs: tokens.append(
        (args[0] if args else kwargs["hidden_states"]).shape[:2].numel()), with_kwargs=True)
    try:
        kwargs = dict(KWARGS, max_new_tokens=1, min_new_tokens=1)
        adapted_backbone.generate(IDS, MASK, share_prompts=False, **kwargs)
        plain, tokens[:] = sum(tokens), []
        adapted_backbone.generate(IDS, MASK, **kwargs)
        shared = sum(tokens)
    finally:
        hook.remove()
    assert plain == 3 * 4 * 5 and shared == 3 * (5 - 1) + 3 * 4


def test_one_token_prompts_give_the_same_samples(adapted_backbone):
    ids, mask = IDS[:, -1:], MASK[:, -1:]
    model = adapted_backbone.peft_model
    plain = draw(lambda kw: model.generate(input_ids=ids, attention_mask=mask, **kw))
    shared = draw(lambda kw: generate_sharing_prompts(model, ids, mask, **kw))
    assert shared[0].shape == plain[0].shape == (12, 11)
    assert torch.equal(shared[0], plain[0])
    torch.testing.assert_close(shared[1], plain[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("change", [dict(num_return_sequences=1), dict(do_sample=False), dict(num_beams=2),
                                    dict(cache_implementation="static"), dict(output_hidden_states=True),
                                    dict(output_attentions=True)])
def test_settings_the_shared_prefill_cannot_serve_keep_transformers_path(adapted_backbone, change):
    kwargs = dict(KWARGS, **change)
    n = kwargs.pop("num_return_sequences")
    model = adapted_backbone.peft_model
    assert shares_prompts(model, 4, dict(KWARGS)) and not shares_prompts(model, n, kwargs)


def test_a_static_cache_in_the_models_generation_config_keeps_transformers_path(adapted_backbone):
    model = adapted_backbone.peft_model
    model.generation_config.cache_implementation = "static"
    try:
        assert not shares_prompts(model, 4, dict(KWARGS))
        kwargs = dict(KWARGS, max_new_tokens=3)
        out = generate_sharing_prompts(model, IDS, MASK, **kwargs)  # transformers' path: no clash of caches
        assert out.sequences.shape == (12, 8)
    finally:
        model.generation_config.cache_implementation = None
