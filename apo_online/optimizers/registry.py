"""The registry of policy optimizers: name -> (class, config dataclass, validate). Imports nothing of the package
but the errors, so that the config can look sections up without importing the optimizers' machinery; the built-in
optimizers (BUILTIN_MODULES) are imported on first lookup, a user's when the user imports its module."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apo_online.errors import ConfigError

BUILTIN_MODULES = {
    "ppo": "apo_online.optimizers.ppo",
    "dpo": "apo_online.optimizers.dpo",
    "rjs": "apo_online.optimizers.rjs",
    "grpo": "apo_online.optimizers.grpo",
}


def _no_checks(config, world_size: int) -> None:
    return None


@dataclass(frozen=True)
class OptimizerEntry:
    name: str
    factory: Callable[[Any], Any]  # config section -> a PolicyOptimizer (optimizers/base.py)
    config_cls: type
    # validate(full Config, world_size) raises ConfigError on inconsistent sizes; called by Config.validate
    validate: Callable[[Any, int], None] = _no_checks


_REGISTRY: dict[str, OptimizerEntry] = {}


def register_optimizer(name: str, config_cls: type, validate: Callable[[Any, int], None] | None = None):
    """Class decorator: make a policy optimizer available to the game under `name`."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config_cls of optimizer {name!r} must be a dataclass, got {config_cls!r}")

    def decorator(cls):
        _REGISTRY[name] = OptimizerEntry(name, cls, config_cls, validate or _no_checks)
        return cls

    return decorator


def require_samples_per_prompt(config, optimizer_name: str, minimum: int, reason: str) -> None:
    """For validate functions: ConfigError unless rollout.samples_per_prompt >= minimum."""
    n = config.rollout.samples_per_prompt
    if n < minimum:
        raise ConfigError(f"game.policy_optimizer {optimizer_name!r} needs rollout.samples_per_prompt >= {minimum} "
                          f"({reason}), got {n}")


def require_even_micro_batches(config, section: str, num_minibatches: int, gradient_accumulation_steps: int) -> None:
    """For validate functions: ConfigError unless a process's rollouts split evenly into the optimizer's
    num_minibatches x gradient_accumulation_steps micro-batches (section: its config section, for the message)."""
    rows = config.rollout.prompts_per_step * config.rollout.samples_per_prompt
    split = num_minibatches * gradient_accumulation_steps
    if rows % split:
        raise ConfigError(
            f"rollout.prompts_per_step x rollout.samples_per_prompt = {rows} rollouts per process must divide "
            f"evenly into {section}.num_minibatches x {section}.gradient_accumulation_steps = {split} micro-batches")


def _load_builtins() -> None:
    for name, module in BUILTIN_MODULES.items():
        if name not in _REGISTRY:
            importlib.import_module(module)


def known_optimizer_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_optimizer_entry(name: str) -> OptimizerEntry:
    _load_builtins()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown policy optimizer {name!r} (game.policy_optimizer); registered: "
                          f"{', '.join(sorted(_REGISTRY))}. Register your own with "
                          f"apo_online.optimizers.register_optimizer")
    return _REGISTRY[name]
