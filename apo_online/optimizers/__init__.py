"""Policy optimizers: PPO (default), DPO, RJS, GRPO, and any registered by the user."""

from apo_online.optimizers.base import (
    PolicyOptimizer,
    SeededPolicyOptimizer,
    build_policy_optimizer,
    get_optimizer_entry,
    known_optimizer_names,
    register_optimizer,
)

__all__ = ["PolicyOptimizer", "SeededPolicyOptimizer", "build_policy_optimizer", "get_optimizer_entry",
           "known_optimizer_names", "register_optimizer"]
