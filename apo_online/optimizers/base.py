"""The policy-optimizer interface of the game (the registry it picks from by name is optimizers/registry.py).

A policy optimizer is any object with:
  name: str
  roles: tuple[str, ...]                     adapters it trains, e.g. ("policy", "value") for PPO
  learning_rates() -> dict[str, float]       learning rate of each role it trains
  rollout_spec() -> RolloutSpec              samples per prompt, whether it needs values / reference log-probs
  setup(ctx: TrainingContext, config) -> None  called once after accelerate has prepared the model (config: Config)
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
the same prompt (DPO, RJS, GRPO) checks n in its validate function with `require_samples_per_prompt`.
Built-in optimizers (BUILTIN_MODULES) are imported on first use: ppo (default), dpo, rjs, grpo.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from apo_online.optimizers.registry import (  # noqa: F401 (the registry's names, re-exported)
    BUILTIN_MODULES,
    OptimizerEntry,
    get_optimizer_entry,
    known_optimizer_names,
    register_optimizer,
    require_samples_per_prompt,
)
from apo_online.rollout import Rollout, RolloutSpec

@runtime_checkable
class PolicyOptimizer(Protocol):
    name: str
    roles: tuple[str, ...]

    def learning_rates(self) -> dict[str, float]: ...

    def rollout_spec(self) -> RolloutSpec: ...

    def setup(self, ctx, config) -> None: ...

    def step(self, rollout: Rollout) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class SeededPolicyOptimizer:
    """Optional base class holding what most policy optimizers share, so that a subclass holds only its algorithm
    (rollout_spec and step): trains the "policy" role at config.learning_rate; keeps the TrainingContext given to
    setup as self.ctx; a torch.Generator (minibatch shuffling) seeded per process from game.seed + seed_offset (a
    stream of its own per optimizer) and saved in every checkpoint. The game logs objective/scores,
    objective/rm_scores and, when the rollout has reference log-probs, objective/kl and objective/entropy for every
    optimizer; step returns only its own metrics (or its own objective/* values, which win)."""

    roles: tuple[str, ...] = ("policy",)
    seed_offset = 0

    def __init__(self, config):
        self.config = config
        self.generator = torch.Generator()
        self.ctx = None

    def learning_rates(self) -> dict[str, float]:
        return {"policy": self.config.learning_rate}

    def setup(self, ctx, config) -> None:
        self.ctx = ctx
        self.generator.manual_seed(config.game.seed + self.seed_offset + 1000 * ctx.accelerator.process_index)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def build_policy_optimizer(config) -> PolicyOptimizer:
    """Instantiate the optimizer named by config.game.policy_optimizer with its config section."""
    entry = get_optimizer_entry(config.game.policy_optimizer)
    optimizer = entry.factory(config.optimizer_config(entry.name))
    missing = [attr for attr in ("name", "roles", "learning_rates", "rollout_spec", "setup", "step", "state_dict", "load_state_dict")
               if not hasattr(optimizer, attr)]
    if missing:
        raise TypeError(f"policy optimizer {entry.name!r} lacks {', '.join(missing)} (see optimizers/base.py)")
    return optimizer
