"""Load the backbone of a finished or checkpointed run (or a fresh one) for the evaluation scripts.

A run exports its adapters as peft folders policy/, reward/ (and value/ for PPO) plus heads.pt
(checkpoint.export_adapters) in
  <output_dir>/final/                                   with the run's config.yaml next to them
  <output_dir>/checkpoints/step-NNNNNN/adapters/        with the config inside ../meta.json
`load_run` accepts any of: the run's output_dir (uses final/), final/ itself, a checkpoint folder, or its adapters/.
The base model is rebuilt from the run's model config (same built-in name or path), then the adapter weights and heads
of every role the run exported are loaded into a SharedBackbone with those adapters, so eval code scores exactly what
the run trained.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from peft import set_peft_model_state_dict
from peft.utils import load_peft_weights

from apo_online.backbone import ADAPTER_ROLES, REQUIRED_ADAPTER_ROLES, LoraSettings, SharedBackbone
from apo_online.config import Config, DataConfig, GameConfig, ModelConfig, RewardConfig, RolloutConfig
from apo_online.model_loading import load_causal_lm


@dataclass
class LoadedRun:
    backbone: SharedBackbone
    tokenizer: object
    config: Config  # model, data, rollout and game sections of the run (optimizer sections are not needed here)
    source: str  # the adapter folder, or "fresh:<model>" for a freshly initialised backbone


def _section(cls, values: dict | None):
    """A config dataclass from a saved mapping; fields this version does not know are ignored."""
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in (values or {}).items() if k in known})


def config_from_dict(raw: dict) -> Config:
    return Config(model=_section(ModelConfig, raw.get("model")), data=_section(DataConfig, raw.get("data")),
                  rollout=_section(RolloutConfig, raw.get("rollout")), game=_section(GameConfig, raw.get("game")),
                  rm=_section(RewardConfig, raw.get("rm")))


def find_adapters(path: str | Path) -> tuple[Path, dict]:
    """(folder holding policy/ reward/ [value/] heads.pt, the run's config as a dict) for any accepted path."""
    path = Path(path)
    for folder in (path / "final", path / "adapters", path):
        if (folder / "heads.pt").is_file():
            break
    else:
        raise FileNotFoundError(f"{path}: no exported adapters (expected heads.pt in {path}, {path}/final or "
                                f"{path}/adapters)")
    for config_file in (folder / "config.yaml", folder.parent / "meta.json"):
        if config_file.is_file():
            text = config_file.read_text(encoding="utf-8")
            raw = yaml.safe_load(text) if config_file.suffix == ".yaml" else json.loads(text)["config"]
            return folder, raw
    raise FileNotFoundError(f"{folder}: no config.yaml here and no meta.json in {folder.parent}")


def _build(config: Config, adapter_roles: tuple[str, ...]) -> tuple[SharedBackbone, object]:
    mc = config.model
    causal_lm, tokenizer = load_causal_lm(mc)
    backbone = SharedBackbone.build(causal_lm, LoraSettings(mc.lora_r, mc.lora_alpha, mc.lora_target_modules),
                                    adapter_roles)
    return backbone, tokenizer


def exported_roles(folder: Path) -> tuple[str, ...]:
    """The adapter roles a run exported into `folder`: policy and reward always, value for PPO runs."""
    missing = [role for role in REQUIRED_ADAPTER_ROLES if not (folder / role).is_dir()]
    if missing:
        raise FileNotFoundError(f"{folder}: no {' or '.join(missing)} adapter folder")
    return tuple(role for role in ADAPTER_ROLES if (folder / role).is_dir())


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """The backbone of a trained run with the adapters and heads it exported (policy, reward; value for PPO)."""
    folder, raw = find_adapters(path)
    config = config_from_dict(raw)
    roles = exported_roles(folder)
    backbone, tokenizer = _build(config, roles)
    for role in roles:
        weights = load_peft_weights(str(folder / role), device="cpu")
        result = set_peft_model_state_dict(backbone.peft_model, weights, adapter_name=role)
        if result.unexpected_keys:
            raise ValueError(f"{folder / role}: weights that the model has no place for: {result.unexpected_keys[:3]}")
    heads = torch.load(folder / "heads.pt", map_location="cpu", weights_only=True)
    backbone.reward_head.load_state_dict(heads["reward_head"])
    if backbone.value_head is not None:
        backbone.value_head.load_state_dict(heads["value_head"])
    return LoadedRun(backbone.to(device), tokenizer, config, str(folder))


def load_fresh(config: Config, device: str | torch.device = "cpu") -> LoadedRun:
    """A freshly initialised backbone with policy and reward adapters (no-ops at init; the reward head is random,
    seeded by config.game.seed): the RM before any training. No value adapter: evaluation never uses one."""
    torch.manual_seed(config.game.seed)
    backbone, tokenizer = _build(config, REQUIRED_ADAPTER_ROLES)
    return LoadedRun(backbone.to(device), tokenizer, config, f"fresh:{config.model.model_name_or_path}")
