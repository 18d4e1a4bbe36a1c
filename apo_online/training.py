"""One optimizer for every role, and the backward/step mechanics shared by all phases of the game.

Why one optimizer: under DeepSpeed, `accelerator.prepare` keeps only the last of several optimizers. So the game
builds ONE `RoleAdamW` whose param groups are tagged with a role (policy, value, reward) and whose `step` updates
only the groups of the roles active in the current phase. Inactive groups are left untouched, Adam moments and step
counts included, so each role evolves exactly as if it had its own AdamW; this also holds under DeepSpeed ZeRO, which
keeps the group tags on its flattened partitions and calls our `step`.

`TrainingContext` wraps accelerate: gradient accumulation with explicit sync control (DDP no_sync / DeepSpeed
boundaries), gradient clipping, and skipping of non-finite updates with a consecutive-skip limit.
"""

from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger(__name__)


class RoleAdamW(torch.optim.AdamW):
    """AdamW over role-tagged param groups; `step` touches only the groups of `active_roles` (None: all)."""

    def __init__(self, role_groups: dict[str, dict], **defaults):
        groups = [dict(group, role=role) for role, group in role_groups.items() if list(group["params"])]
        super().__init__(groups, **defaults)
        self.active_roles: frozenset[str] | None = None

    @torch.no_grad()
    def step(self, closure=None):
        all_groups = self.param_groups
        if self.active_roles is not None:
            self.param_groups = [g for g in all_groups if g["role"] in self.active_roles]
        try:
            return super().step(closure)
        finally:
            self.param_groups = all_groups

    def reset_role_state(self, role: str) -> None:
        """Forget Adam moments of one role (RM refit-from-base restarts its optimizer too)."""
        for group in self.param_groups:
            if group["role"] == role:
                for param in group["params"]:
                    self.state.pop(param, None)


def find_role_optimizer(optimizer) -> RoleAdamW:
    """The RoleAdamW inside accelerate's / DeepSpeed's optimizer wrappers."""
    seen = optimizer
    for _ in range(4):
        if isinstance(seen, RoleAdamW):
            return seen
        seen = getattr(seen, "optimizer", None)
    raise TypeError(f"no RoleAdamW inside {type(optimizer).__name__}")


class NonFiniteUpdates(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient."""


class TrainingContext:
    """Backward and step for the prepared model/optimizer, shared by the policy optimizers and the RM step."""

    def __init__(self, accelerator, model, optimizer, max_grad_norm: float = 1.0, max_consecutive_skips: int = 5):
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.role_optimizer = find_role_optimizer(optimizer)
        self.max_grad_norm = max_grad_norm
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped_updates = 0  # total, logged as train/skipped_updates
        self.consecutive_skips = 0
        self._pending_nonfinite = False
        self.uses_deepspeed = accelerator.distributed_type.name == "DEEPSPEED"

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @contextlib.contextmanager
    def phase(self, roles: tuple[str, ...]):
        """Only `roles` are updated by optimizer steps inside the body."""
        previous = self.role_optimizer.active_roles
        self.role_optimizer.active_roles = frozenset(roles)
        try:
            yield
        finally:
            self.role_optimizer.active_roles = previous

    def global_sum(self, value: torch.Tensor | float) -> torch.Tensor:
        """Sum of a scalar over all processes (e.g. valid tokens of a minibatch, for layout-free normalisation)."""
        tensor = torch.as_tensor(value, dtype=torch.float32, device=self.device).reshape(1)
        if self.accelerator.num_processes > 1:
            tensor = self.accelerator.reduce(tensor, reduction="sum")
        return tensor[0]

    @contextlib.contextmanager
    def micro_batch(self, is_last: bool):
        """Wrap forward+backward of one micro-batch: gradients are synchronised across processes on the last one."""
        self.accelerator.gradient_state._set_sync_gradients(is_last)
        context = contextlib.nullcontext() if is_last or self.uses_deepspeed else self.accelerator.no_sync(self.model)
        with context:
            yield

    def backward(self, loss: torch.Tensor) -> None:
        """Backward unless the loss is non-finite on any process (then the whole update will be skipped)."""
        finite = self.global_sum(0.0 if torch.isfinite(loss.detach()) else 1.0) == 0
        if not finite:
            self._pending_nonfinite = True
            return
        if self._pending_nonfinite and self.uses_deepspeed:
            return  # DeepSpeed steps inside backward: once an update is poisoned, feed it nothing more
        self.accelerator.backward(loss)

    def optimizer_step(self) -> dict[str, float]:
        """Clip, step and zero grads; or skip the update if anything was non-finite. Returns grad_norm, skipped."""
        grad_norm = torch.tensor(0.0)
        nonfinite = self._pending_nonfinite
        if not self.uses_deepspeed and not nonfinite:
            active = self.role_optimizer.active_roles
            params = [p for g in self.role_optimizer.param_groups if active is None or g["role"] in active
                      for p in g["params"]]
            grad_norm = self.accelerator.clip_grad_norm_(params, self.max_grad_norm)
            nonfinite = not torch.isfinite(torch.as_tensor(grad_norm)).item()
        if nonfinite:
            self.optimizer.zero_grad(set_to_none=True)
            self._pending_nonfinite = False
            self.skipped_updates += 1
            self.consecutive_skips += 1
            logger.warning("skipped an update: non-finite loss or gradient (%d in a row)", self.consecutive_skips)
            if self.consecutive_skips >= self.max_consecutive_skips:
                raise NonFiniteUpdates(f"{self.consecutive_skips} consecutive updates had a non-finite loss or "
                                       f"gradient; stopping (limit game.max_consecutive_skips)")
            return {"grad_norm": float("nan"), "skipped": 1.0}
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.consecutive_skips = 0
        return {"grad_norm": float(torch.as_tensor(grad_norm)), "skipped": 0.0}
