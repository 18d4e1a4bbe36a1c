"""Sampling with the policy adapter folded into the weights: during generation every LoRA-adapted layer computes with
W + scale * B @ A in one matmul, the adapters off, instead of W x + scale * B (A x) per decoded token.

The policy's weights are fixed while it samples, so the adapter's extra small matmuls in every linear layer (and
peft's per-layer Python) buy nothing there; OpenRLHF and verl feed a merged copy to a separate inference engine for
the same reason. Here the merged weight of each adapted layer is a transient tensor swapped into the base layer for
the generation and swapped out after it: the base tensors are never written, so the reference role (adapters off)
stays the base weights bit for bit, and a resumed run equals an uninterrupted one. The price is one copy of the
adapted weights while sampling (freed after). Scoring, the reference and training always see the exact roles.

Folding is skipped (the adapter runs per token as before) where it would not be exact: DoRA-like variants and
parameters partitioned by DeepSpeed ZeRO-3 (their .data is a placeholder).
"""

from __future__ import annotations

import contextlib

import torch
from peft.tuners.lora import LoraLayer


def adapted_layers(peft_model, adapter: str) -> list[LoraLayer]:
    """The LoRA layers of `peft_model` that hold `adapter` (linear or embedding)."""
    return [module for module in peft_model.modules() if isinstance(module, LoraLayer)
            and (adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}))]


def can_fold(layers: list[LoraLayer], adapter: str) -> bool:
    """Whether W + delta is exactly what the layer computes: plain LoRA on materialised weights."""
    for layer in layers:
        if adapter in getattr(layer, "lora_variant", {}):
            return False
        if hasattr(layer.get_base_layer().weight, "ds_id"):  # a ZeRO-3 partition, not the weight
            return False
    return bool(layers)


@contextlib.contextmanager
def folded_into_weights(peft_model, adapter: str):
    """Run the body with `adapter` folded into each adapted layer's weight and every adapter disabled; the base
    tensors are swapped back untouched on exit (also on an exception). Yields whether it folded (False: the body
    should run with the adapter active instead; nothing was changed)."""
    layers = adapted_layers(peft_model, adapter)
    if not can_fold(layers, adapter):
        yield False
        return
    swapped: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for layer in layers:
                weight = layer.get_base_layer().weight
                original = weight.data
                weight.data = original + layer.get_delta_weight(adapter).to(original.dtype)
                swapped.append((weight, original))
        yield True
    finally:
        for weight, original in swapped:
            weight.data = original
