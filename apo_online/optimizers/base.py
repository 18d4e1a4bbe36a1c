"""The policy-optimizer interface of the game, and the registry the game picks from by name.

A policy optimizer is any object with:
  name: str
  roles: tuple[str, ...]                     adapters it trains, e.g. ("policy", "value") for PPO
  learning_rates() -> dict[str, float]       learning rate of each role it trains
  rollout_spec() -> RolloutSpec              samples per prompt, whether it needs values / reference log-probs
  setup(ctx: TrainingContext, game) -> None  called once after accelerate has prepared the model
  step(rollout: Rollout) -> dict[str, float] one policy update on a fresh rollout; returns metrics to log
  state_dict() / load_state_dict(state)      its own resumable state (e.g. an adaptive KL coefficient)

Register a class (constructed as cls(config_section)) together with its config dataclass and, optionally, a
validate(config, world_size) function that raises ConfigError before anything heavy starts:

    @register_optimizer("reinforce", ReinforceConfig, validate_reinforce)
    class Reinforce: ...

then choose it with `game.policy_optimizer: reinforce`; its YAML/CLI section is `reinforce:`. Registration happens
at import time, so a user module only has to be imported before the config is loaded (recipes/custom_optimizer.py).

Rollouts are prompt-major: with n samples per prompt, rows i*n .. i*n+n-1 answer prompt i. RolloutSpec's
samples_per_prompt=None means "rollout.samples_per_prompt from the config"; an optimizer that compares samples of
the same prompt (DPO, RJS) checks n in its validate function with `require_samples_per_prompt`.
Built-in optimizers (BUILTIN_MODULES) are imported on first use: ppo (default), dpo, rjs.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from apo_online.rollout import Rollout, RolloutSpec

BUILTIN_MODULES = {
    "ppo": "apo_online.optimizers.ppo",
    "dpo": "apo_online.optimizers.dpo",
    "rjs": "apo_online.optimizers.rjs",
}


@runtime_checkable
class PolicyOptimizer(Protocol):
    name: str
    roles: tuple[str, ...]

    def learning_rates(self) -> dict[str, float]: ...

    def rollout_spec(self) -> RolloutSpec: ...

    def setup(self, ctx, game) -> None: ...

    def step(self, rollout: Rollout) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _no_checks(config, world_size: int) -> None:
    return None


@dataclass(frozen=True)
class OptimizerEntry:
    name: str
    factory: Callable[[Any], PolicyOptimizer]
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
        from apo_online.config import ConfigError

        raise ConfigError(f"game.policy_optimizer {optimizer_name!r} needs rollout.samples_per_prompt >= {minimum} "
                          f"({reason}), got {n}")


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
        from apo_online.config import ConfigError

        raise ConfigError(f"unknown policy optimizer {name!r} (game.policy_optimizer); registered: "
                          f"{', '.join(sorted(_REGISTRY))}. Register your own with "
                          f"apo_online.optimizers.register_optimizer")
    return _REGISTRY[name]


def build_policy_optimizer(config) -> PolicyOptimizer:
    """Instantiate the optimizer named by config.game.policy_optimizer with its config section."""
    entry = get_optimizer_entry(config.game.policy_optimizer)
    optimizer = entry.factory(config.optimizer_config(entry.name))
    missing = [attr for attr in ("name", "roles", "learning_rates", "rollout_spec", "setup", "step", "state_dict", "load_state_dict")
               if not hasattr(optimizer, attr)]
    if missing:
        raise TypeError(f"policy optimizer {entry.name!r} lacks {', '.join(missing)} (see optimizers/base.py)")
    return optimizer
