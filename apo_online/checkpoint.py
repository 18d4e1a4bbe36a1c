"""Save and resume everything the game needs to continue exactly where it stopped.

A checkpoint folder `<output_dir>/checkpoints/step-000042/` holds
  trainable.pt          every trainable weight (adapters policy/value/reward, value and reward heads)   [rank 0]
  reward_model.pt       the separate reward model's weights, when model.reward_model_path is used       [rank 0]
  optimizer.pt          RoleAdamW state (Adam moments and step counts of every role)                     [rank 0]
  optimizer-rank{r}.pt  the same, one shard per process, under DeepSpeed ZeRO
  rank{r}.pt            per process: RNG states, game state (step, prompt sampler, RM sample buffer, RM
                        step state incl. the base RM of refit mode, policy-optimizer state e.g. KL coefficient)
  adapters/             peft adapter folders + heads.pt, for users (load with PeftModel.from_pretrained)
  meta.json             step and config                                                                   [rank 0]
It is written to a temporary folder and renamed when complete, so a crash never leaves a half checkpoint that
`--game.resume_from_checkpoint latest` would pick up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object

logger = logging.getLogger(__name__)
CHECKPOINT_PREFIX = "step-"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = checkpoint_root(output_dir)
    done = sorted(p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if (p / "meta.json").is_file()) if root.is_dir() else []
    return done[-1] if done else None


def resolve_resume_path(value: str | None, output_dir: str | Path) -> Path | None:
    """'latest' -> newest complete checkpoint of output_dir (None if there is none); a path must exist."""
    if not value:
        return None
    if value == "latest":
        return latest_checkpoint(output_dir)
    path = Path(value)
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(f"--game.resume_from_checkpoint {value}: no complete checkpoint there (no meta.json)")
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


def trainable_state(backbone) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in backbone.named_parameters() if p.requires_grad}


def weights_checksum(backbone) -> str:
    """Bit-exact digest of the trainable weights; equal on every process unless the replicas diverged."""
    digest = hashlib.sha256()
    for name, param in sorted(backbone.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(game, step: int) -> Path:
    """Collective: every process must call it. Returns the final folder."""
    accelerator = game.accelerator
    root = checkpoint_root(game.config.game.output_dir)
    final = root / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    backbone = accelerator.unwrap_model(game.model)
    rank = accelerator.process_index
    if game.ctx.uses_deepspeed:
        torch.save(game.optimizer.state_dict(), tmp / f"optimizer-rank{rank}.pt")
    elif accelerator.is_main_process:
        torch.save(game.optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"rng": rng_state(), "game": game.state_dict()}, tmp / f"rank{rank}.pt")
    checksums = gather_object([weights_checksum(backbone)])
    if accelerator.is_main_process:
        torch.save(trainable_state(backbone), tmp / "trainable.pt")
        if game.reward_model is not None:
            torch.save(game.scorer.weights(), tmp / "reward_model.pt")
        export_adapters(backbone, tmp / "adapters")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if len(set(checksums)) > 1:
            logger.error("trainable weights differ between processes at step %d: %s", step, checksums)
        meta = {"step": step, "num_processes": accelerator.num_processes, "rank_weight_checksums": checksums,
                "config": game.config.to_dict()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    accelerator.wait_for_everyone()
    return final


def export_adapters(backbone, folder: Path) -> None:
    """peft adapter folders (policy, value, reward) and the two scalar heads, in user-loadable form."""
    backbone.peft_model.save_pretrained(str(folder), selected_adapters=["policy", "value", "reward"])
    torch.save({"value_head": backbone.value_head.state_dict(), "reward_head": backbone.reward_head.state_dict()},
               folder / "heads.pt")


def load_checkpoint(game, path: Path) -> int:
    """Restore weights, optimizer, RNG and game state from `path`; returns the step to continue from."""
    accelerator = game.accelerator
    rank = accelerator.process_index
    backbone = accelerator.unwrap_model(game.model)
    weights = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
    params = dict(backbone.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device))
    if game.reward_model is not None:
        game.scorer.load_weights(torch.load(path / "reward_model.pt", map_location="cpu", weights_only=True))
    if game.ctx.uses_deepspeed:
        game.optimizer.load_state_dict(torch.load(path / f"optimizer-rank{rank}.pt", map_location="cpu",
                                                  weights_only=False))
    else:
        game.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    rank_file = path / f"rank{rank}.pt"
    if not rank_file.is_file():
        raise FileNotFoundError(f"{rank_file}: the checkpoint was written by fewer processes than this run uses")
    state = torch.load(rank_file, map_location="cpu", weights_only=False)
    game.load_state_dict(state["game"])
    set_rng_state(state["rng"])
    return json.loads((path / "meta.json").read_text())["step"]
