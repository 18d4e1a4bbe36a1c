"""The game's APO RM update played outside a game, on samples drawn beforehand: what the probes measure an RM
setting with (eval/rm_probe.py, eval/bon_probe.py).

  fill_buffer        samples -> the game's SampleBuffer, as the rollouts of consecutive pseudo policy steps
  refit              restore the base RM, apply one setting's rm fields, run the game's own update on the buffer
  load_run_reward    a finished run's reward adapter and reward head into a game's backbone (score with its RM)
  load_run_policy    a finished run's policy adapter into a game's backbone (sample from its policy)
"""

from __future__ import annotations

import dataclasses
import time

import torch
from peft import set_peft_model_state_dict
from peft.utils import load_peft_weights

from apo_online.rm.apo_step import SampleBuffer
from apo_online.run.loading import find_adapters


def fill_buffer(prompt_positions: list[int], response_ids: list[list[int]], has_eos: list[bool],
                per_step: int) -> tuple[SampleBuffer, int]:
    """Rows of (prompt position in game.prompts, response, stopped) as the rollouts of pseudo policy steps of
    `per_step` prompts each (prompt position // per_step: the probes sample game.prompts[:K] in order);
    returns (buffer, the last pseudo step)."""
    buffer = SampleBuffer(len(response_ids))
    steps = [position // per_step for position in prompt_positions]
    for position, response, step, eos in zip(prompt_positions, response_ids, steps, has_eos):
        buffer.add([position], [response], step, [bool(eos)])
    return buffer, max(steps)


def refit(game, buffer: SampleBuffer, last_step: int, base_rm, setting: dict, seed: int) -> dict:
    """Restore the base RM, apply setting["rm"] over base_rm (the config.RewardConfig the base was warmed up with),
    run setting.get("updates", 1) updates (the last on the newest sample window); every setting draws its groups and
    pairs from the same random stream (seed). Returns {"wall_s", "train": the last update's metrics}."""
    step = game.rm_step
    step.cfg = dataclasses.replace(base_rm, **setting.get("rm", {}))
    for group in game.ctx.role_optimizer.param_groups:
        if group["role"] == "reward":
            group["lr"] = step.cfg.learning_rate
    step.restore_base()
    step.rng.seed(seed)
    updates = setting.get("updates", 1)
    started, metrics = time.perf_counter(), {}
    for k in range(updates):
        metrics = step.update(buffer, last_step - (updates - 1 - k) * step.cfg.sample_window)
    return {"wall_s": time.perf_counter() - started, "train": metrics}


def _load_adapter(game, folder, role: str) -> None:
    weights = load_peft_weights(str(folder / role), device="cpu")
    set_peft_model_state_dict(game.ctx.backbone.peft_model, weights, adapter_name=role)


def load_run_reward(game, run: str) -> str:
    """The reward adapter and reward head of a run (its output_dir, final/ or a checkpoint) into the game's backbone,
    in place of the current RM; returns the adapter folder."""
    folder, _ = find_adapters(run)
    _load_adapter(game, folder, "reward")
    heads = torch.load(folder / "heads.pt", map_location="cpu", weights_only=True)
    game.ctx.backbone.reward_head.load_state_dict(heads["reward_head"])
    return str(folder)


def load_run_policy(game, run: str) -> str:
    """The policy adapter of a run (or checkpoint) into the game's backbone; returns its folder."""
    folder, _ = find_adapters(run)
    _load_adapter(game, folder, "policy")
    return str(folder)
