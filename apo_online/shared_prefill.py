"""n samples of each prompt with the prompt's prefill run once.

transformers' `generate(..., num_return_sequences=n)` copies every prompt n times before its first forward, so the
prompt tokens (on the testbed about two thirds of a sequence) are computed n times. Here the prompt runs once and its
key/value cache is copied n times (`DynamicCache.batch_repeat_interleave`), and `generate` continues from that cache.
What is computed per sequence is the same up to float rounding, and the random stream is the same: generate samples
the same [B * n, vocab] rows at the same steps, so a fixed seed gives the same tokens (tests/test_shared_prefill.py).

Used by the samplers that draw several samples a prompt: the rollout (DPO, RJS, GRPO), the evaluations and the
best-of-n probe's pools (whose cached samples may come from either path: on CPU in float32 they are the same tokens;
in bfloat16 the split prefill may round differently). The testbed's candidate builds keep transformers' own path, so
that a rebuild matches the shipped files.
"""

from __future__ import annotations

import torch

from apo_online.data.canonical import position_ids_from_mask

try:  # transformers 5.2x renamed generate's past_key_values to cache (the old name warns, then goes in 6.0)
    from transformers.generation.utils import ALL_CACHE_NAMES
except ImportError:  # older releases have neither the list nor the new name
    ALL_CACHE_NAMES = []
CACHE_KWARG = "cache" if "cache" in ALL_CACHE_NAMES else "past_key_values"


def shares_prompts(model, n: int, generation_kwargs: dict) -> bool:
    """Whether the shared prefill applies: several samples, drawn by plain sampling with a dynamic cache. Beam search,
    greedy decoding (n identical copies, which generate refuses), a static or hybrid cache (some models' generation
    config sets one), a cache passed in, and per-step hidden states or attentions (they would start after the prefill)
    keep transformers' own path. Decided from the settings alone, never from the data: under DeepSpeed ZeRO-3 every
    process must run the same forwards."""
    config = getattr(model, "generation_config", None)
    setting = lambda name, default=None: generation_kwargs.get(name, getattr(config, name, default))  # noqa: E731
    return (n > 1 and bool(setting("do_sample", False)) and (setting("num_beams", 1) or 1) == 1
            and setting("cache_implementation") is None
            and not generation_kwargs.keys() & {"cache", "past_key_values"}
            and not setting("output_hidden_states", False) and not setting("output_attentions", False))


@torch.no_grad()
def generate_sharing_prompts(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **generation_kwargs):
    """model.generate(input_ids, attention_mask, **generation_kwargs), with each prompt's prefill run once for its
    num_return_sequences samples. input_ids, attention_mask [B, P], left-padded. Returns what generate returns:
    [B * n, P + new tokens] (each prompt's n sequences together), or generate's output dict when asked for one."""
    n = generation_kwargs.pop("num_return_sequences", None) or 1
    if not shares_prompts(model, n, generation_kwargs):
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, num_return_sequences=n,
                              **generation_kwargs)
    # every prompt token but the last goes into the cache; generate's first forward runs the last one and samples.
    # One-token prompts would leave nothing to prefill: a masked padding column in front (cut off again below) keeps
    # the same forwards on every process.
    padded = input_ids.shape[1] < 2
    if padded:
        input_ids = torch.cat([torch.zeros_like(input_ids[:, :1]), input_ids], 1)
        attention_mask = torch.cat([torch.zeros_like(attention_mask[:, :1]), attention_mask], 1)
    head_ids, head_mask = input_ids[:, :-1], attention_mask[:, :-1]
    prefill = model(input_ids=head_ids, attention_mask=head_mask, position_ids=position_ids_from_mask(head_mask),
                    use_cache=True, logits_to_keep=1)
    cache = prefill.cache if getattr(prefill, "cache", None) is not None else prefill.past_key_values
    cache.batch_repeat_interleave(n)
    generation_kwargs[CACHE_KWARG] = cache
    out = model.generate(input_ids=input_ids.repeat_interleave(n, 0),
                         attention_mask=attention_mask.repeat_interleave(n, 0), **generation_kwargs)
    if not padded:
        return out
    if isinstance(out, torch.Tensor):
        return out[:, 1:]
    out.sequences = out.sequences[:, 1:]
    return out


def generate_repeating_prompts(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **generation_kwargs):
    """transformers' own path, each prompt run once per sample: the baseline of the tests and the bench."""
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, **generation_kwargs)
