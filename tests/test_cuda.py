"""On a CUDA machine: the game's tensors on the device, bfloat16 weights, and a checkpoint that resumes exactly there.

CI has no GPU, so these are skipped there; bench/gpu_check.sh runs them (with the game tests, which then run on the
GPU too, since the accelerator picks it) on a machine that has one.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import make_game

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ROLES = ("policy", "value", "reward")
DEVICE = "cuda"


def role_snapshot(backbone) -> dict[str, list[torch.Tensor]]:
    return {role: [p.detach().clone() for p in backbone.role_parameters(role)] for role in ROLES}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_game_plays_on_cuda_with_every_tensor_there(tiny_config, single_accelerator, dtype):
    game = make_game(tiny_config, single_accelerator(), **{"model.dtype": dtype})
    backbone = game.accelerator.unwrap_model(game.model)
    assert game.ctx.device.type == DEVICE
    off_device = [n for n, t in [*backbone.named_parameters(), *backbone.named_buffers()] if t.device.type != DEVICE]
    assert off_device == []
    base = [p for n, p in backbone.named_parameters() if not p.requires_grad and p.dim() == 2]
    assert base and all(p.dtype == getattr(torch, dtype) for p in base)
    game.rm_step.warmup(game.config.rm.warmup_steps)
    game.warmed_up = True
    before = role_snapshot(backbone)
    records = [game.play_step() for _ in range(2)]
    bad = {k: v for r in records for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
    assert bad == {}
    for role, old in before.items():  # PPO moves policy and value, the refit (rm.update_every 1) the reward role
        assert any(not torch.equal(a, b) for a, b in zip(old, backbone.role_parameters(role))), role


def test_checkpoint_on_cuda_resumes_to_the_same_next_step(tiny_config, single_accelerator, tmp_path):
    """The CUDA RNG state travels in the checkpoint: step 2 after a reload samples what the uninterrupted game did."""
    from apo_online.run.checkpoint import load_checkpoint, save_checkpoint

    game = make_game(tiny_config, single_accelerator())
    game.rm_step.warmup(game.config.rm.warmup_steps)
    game.warmed_up = True
    game.play_step()
    path = save_checkpoint(game, 1)
    uninterrupted = game.play_step()
    resumed_game = make_game(tiny_config, single_accelerator(), **{"game.output_dir": str(tmp_path / "resumed")})
    load_checkpoint(resumed_game, path)
    resumed = resumed_game.play_step()
    # sampling is driven by the restored RNG: the same responses, so the same lengths and scores (float tolerance:
    # CUDA kernels may reduce in another order)
    assert resumed["response/length"] == uninterrupted["response/length"]
    for key in ("objective/rm_scores", "objective/kl"):
        assert resumed[key] == pytest.approx(uninterrupted[key], rel=1e-3, abs=1e-4), key
