"""Save and resume everything the game needs to continue exactly where it stopped.

A checkpoint folder `<output_dir>/checkpoints/step-000042/` holds
  trainable.pt          every trainable weight (adapters policy/reward/value, reward and value heads)   [rank 0]
                        (value only in games whose policy optimizer trains one: PPO)
  reward_model.pt       the separate reward model's weights, when model.reward_model_path is used       [rank 0]
  optimizer.pt          RoleAdamW state (Adam moments and step counts of every role)                     [rank 0]
  deepspeed/            instead of the two above under DeepSpeed: the engine's own checkpoint (trainable
                        weights, fp32 master partitions and optimizer shards of every rank)
  rank{r}.pt            per process: RNG states, game state (step, prompt sampler, RM sample buffer, RM
                        step state incl. the base RM of refit mode, policy-optimizer state e.g. KL coefficient,
                        skipped-update counters)
  adapters/             peft adapter folders + heads.pt, for users (load with PeftModel.from_pretrained)
  meta.json             step, why it was written, process count, ZeRO stage, per-rank weight checksums, config
It is written to a temporary folder and renamed when complete, so a crash never leaves a half checkpoint that
`--game.resume_from_checkpoint latest` would pick up. A checkpoint written because updates kept failing
(`step-000042-nonfinite`) holds the state in the middle of the failed step: `latest` ignores it; resume from it by
path. There is no learning-rate scheduler to save (learning rates are constant).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from apo_online.errors import CheckpointError  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)
CHECKPOINT_PREFIX = "step-"
_CLEAN_NAME = re.compile(rf"{CHECKPOINT_PREFIX}\d{{6}}")
DEEPSPEED_TAG = "state"
# Config fields that change the shape or meaning of the saved state: resuming with other values cannot work.
STRUCTURAL_FIELDS = (("model", "model_name_or_path"), ("model", "lora_r"), ("model", "lora_target_modules"),
                     ("game", "policy_optimizer"))


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def clean_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints written at step boundaries, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _CLEAN_NAME.fullmatch(p.name) and (p / "meta.json").is_file())


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    done = clean_checkpoints(output_dir)
    return done[-1] if done else None


def resolve_resume_path(value: str | None, output_dir: str | Path) -> Path | None:
    """'latest' -> newest complete checkpoint of output_dir (None if there is none); a path must exist."""
    if not value:
        return None
    if value == "latest":
        path = latest_checkpoint(output_dir)
        if path is None:
            logger.warning("--game.resume_from_checkpoint latest: no checkpoint in %s yet; starting from scratch",
                           checkpoint_root(output_dir))
        return path
    path = Path(value)
    if not (path / "meta.json").is_file():
        raise CheckpointError(f"--game.resume_from_checkpoint {value}: no complete checkpoint there (no meta.json)")
    return path


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def weights_checksum(weights: dict[str, torch.Tensor]) -> str:
    """Bit-exact digest of trainable weights; equal on every process unless the replicas diverged."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].float().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------------------------------------
FAILED_STEP_REASONS = ("nonfinite", "bad_reward")


def save_checkpoint(game, step: int, reason: str = "periodic", keep_last: int = 0) -> Path:
    """Collective: every process must call it. Returns the final folder.

    reason: periodic | final | signal (all at a step boundary), or nonfinite | bad_reward (in the middle of a failed
    step: the folder's name says so, and keep_last never deletes such a checkpoint).
    keep_last > 0 deletes all but the newest `keep_last` step-boundary checkpoints afterwards."""
    accelerator, ctx = game.accelerator, game.ctx
    root = checkpoint_root(game.config.game.output_dir)
    failed_step = reason in FAILED_STEP_REASONS
    name = f"{CHECKPOINT_PREFIX}{step:06d}" + (f"-{reason.replace('_', '-')}" if failed_step else "")
    final, tmp = root / name, root / f".tmp-{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    if ctx.uses_deepspeed:  # the engine writes weights, fp32 masters and optimizer shards of every rank
        game.model.save_checkpoint(str(tmp / "deepspeed"), tag=DEEPSPEED_TAG, save_latest=False,
                                   exclude_frozen_parameters=True)
    elif accelerator.is_main_process:
        torch.save(game.optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"rng": rng_state(), "game": game.state_dict()}, tmp / f"rank{rank}.pt")
    weights = ctx.read_weights()
    checksums = gather_object([weights_checksum(weights)])
    if accelerator.is_main_process:
        torch.save(weights, tmp / "trainable.pt")
        if game.reward_model is not None:
            torch.save(game.scorer.weights(), tmp / "reward_model.pt")
    export_adapters(ctx, tmp / "adapters")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if len(set(checksums)) > 1:
            logger.error("trainable weights differ between processes at step %d: %s", step, checksums)
        meta = {"step": step, "reason": reason, "num_processes": accelerator.num_processes,
                "zero_stage": ctx.zero_stage, "rank_weight_checksums": checksums, "config": game.config.to_dict()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        if keep_last > 0 and not failed_step:
            for old in clean_checkpoints(game.config.game.output_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def export_adapters(ctx, folder: Path) -> None:
    """peft adapter folders (policy, reward, and value where the backbone has one) and their scalar heads in heads.pt
    (reward_head, value_head), in user-loadable form. Collective (ZeRO-3 gathers the weights); the main process
    writes."""
    backbone = ctx.backbone
    with ctx.gathered(list(ctx.trainable_parameters().values())):
        if ctx.accelerator.is_main_process:
            backbone.peft_model.save_pretrained(str(folder), selected_adapters=list(backbone.adapter_roles))
            heads = {"reward_head": backbone.reward_head.state_dict()}
            if backbone.value_head is not None:
                heads["value_head"] = backbone.value_head.state_dict()
            torch.save(heads, folder / "heads.pt")


def drop_absent_role_weights(weights: dict[str, torch.Tensor],
                             adapter_roles: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Saved weights without those of adapter roles this backbone does not build: a DPO/RJS checkpoint written while
    every game still built a value adapter holds that adapter, never trained (its LoRA B still 0), and its head."""
    absent = [role for role in ("policy", "value", "reward") if role not in adapter_roles]
    return {name: value for name, value in weights.items()
            if not any(f".{role}." in name or name.startswith(f"{role}_head.") for role in absent)}


# ---------------------------------------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------------------------------------
def check_compatible(meta: dict, path: Path, num_processes: int, zero_stage: int | None, config: dict) -> None:
    """Refuse, with a message saying what to change, a checkpoint this run cannot continue exactly."""
    saved = meta.get("num_processes")
    if saved != num_processes:
        raise CheckpointError(
            f"{path} was written by {saved} processes but this run has {num_processes}: resume with "
            f"--num_processes {saved} (each process's RNG state and RM sample buffer cannot be redistributed)")
    saved_stage = meta.get("zero_stage")
    if saved_stage != zero_stage:
        def describe(stage):
            return "no DeepSpeed" if stage is None else f"DeepSpeed ZeRO-{stage}"

        raise CheckpointError(f"{path} was written with {describe(saved_stage)} but this run uses "
                              f"{describe(zero_stage)}: resume with the same accelerate config")
    changed = [f"{section}.{key}: {meta['config'][section][key]!r} in the checkpoint, {config[section][key]!r} now"
               for section, key in STRUCTURAL_FIELDS if meta["config"][section][key] != config[section][key]]
    if changed:
        raise CheckpointError(f"{path} does not fit this run's config: {'; '.join(changed)}")


def load_checkpoint(game, path: Path) -> int:
    """Restore weights, optimizer, RNG and game state from `path`; returns the step to continue from."""
    accelerator, ctx = game.accelerator, game.ctx
    meta = json.loads((path / "meta.json").read_text())
    check_compatible(meta, path, accelerator.num_processes, ctx.zero_stage, game.config.to_dict())
    rank = accelerator.process_index
    if ctx.uses_deepspeed:
        loaded, _ = game.model.load_checkpoint(str(path / "deepspeed"), tag=DEEPSPEED_TAG, load_module_strict=False,
                                               load_optimizer_states=True, load_lr_scheduler_states=False)
        if loaded is None:
            raise CheckpointError(f"{path / 'deepspeed'}: DeepSpeed could not load its checkpoint")
    else:
        saved = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
        ctx.write_weights(drop_absent_role_weights(saved, ctx.backbone.adapter_roles))
        game.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    if game.reward_model is not None:  # never under DeepSpeed (refused in APOGame)
        game.scorer.load_weights(torch.load(path / "reward_model.pt", map_location="cpu", weights_only=True))
    state = torch.load(path / f"rank{rank}.pt", map_location="cpu", weights_only=False)
    game.load_state_dict(state["game"])
    set_rng_state(state["rng"])
    return meta["step"]
