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
import math

import torch
from apo_online.errors import NonFiniteUpdates  # noqa: F401 (re-exported)

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


def find_role_optimizer(optimizer) -> RoleAdamW:
    """The RoleAdamW inside accelerate's / DeepSpeed's optimizer wrappers."""
    seen = optimizer
    for _ in range(4):
        if isinstance(seen, RoleAdamW):
            return seen
        seen = getattr(seen, "optimizer", None)
    raise TypeError(f"no RoleAdamW inside {type(optimizer).__name__}")


def deepspeed_zero_stage(accelerator) -> int | None:
    """The ZeRO stage of a DeepSpeed run, None without DeepSpeed."""
    plugin = accelerator.state.deepspeed_plugin if accelerator.distributed_type.name == "DEEPSPEED" else None
    return None if plugin is None else int(plugin.zero_stage or 0)


class TrainingContext:
    """Backward and step for the prepared model/optimizer, shared by the policy optimizers and the RM step.

    Also the one place that reads and writes trainable weights and optimizer state behind DeepSpeed's back:
    ZeRO-3 partitions parameters (read them gathered), and ZeRO keeps fp32 master copies that the next step would
    copy back over the module weights (write both)."""

    def __init__(self, accelerator, model, optimizer, max_grad_norm: float = 1.0, max_consecutive_skips: int = 5):
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.role_optimizer = find_role_optimizer(optimizer)
        self.max_grad_norm = max_grad_norm
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped_updates = 0  # total, logged as train/skipped_updates
        # counted per phase (set of active roles): a healthy RM update between two blown-up policy updates must not
        # hide that every policy update fails
        self._consecutive_by_phase: dict[str, int] = {}
        self._pending_nonfinite = False
        self.zero_stage = deepspeed_zero_stage(accelerator)
        self.uses_deepspeed = self.zero_stage is not None

    @property
    def consecutive_skips(self) -> int:
        """The longest current run of skipped updates over the phases."""
        return max(self._consecutive_by_phase.values(), default=0)

    def _phase_key(self) -> str:
        active = self.role_optimizer.active_roles
        return "all" if active is None else "+".join(sorted(active))

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def backbone(self):
        return self.accelerator.unwrap_model(self.model)

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

    # ---------------------------------------------------------------------------------------------------------------
    # backward / step
    # ---------------------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def micro_batch(self, is_last: bool):
        """Wrap forward+backward of one micro-batch: gradients are synchronised across processes on the last one."""
        self.accelerator.gradient_state._set_sync_gradients(is_last)
        context = contextlib.nullcontext() if is_last or self.uses_deepspeed else self.accelerator.no_sync(self.model)
        with context:
            yield

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch. A non-finite loss is not left out: it is multiplied by NaN, so that its
        gradient poisons the whole update. The gradient check of `optimizer_step` (ours, or DeepSpeed's overflow
        check, which steps inside the last backward) then drops the update on every process at once, after the
        all-reduce, and every process has run the same collectives."""
        if not torch.isfinite(loss.detach()).all():
            self._pending_nonfinite = True
            loss = loss * float("nan")
        self.accelerator.backward(loss)

    def optimizer_step(self) -> dict[str, float]:
        """Clip, step and zero grads; or skip the update if its gradient is not finite. Returns grad_norm, skipped.

        Raises NonFiniteUpdates after game.max_consecutive_skips skipped updates in a row within one phase (the same decision on
        every process: it depends only on the all-reduced gradient)."""
        if self.uses_deepspeed:  # DeepSpeed already stepped (or dropped the update) in the last backward
            skipped = bool(self.optimizer.step_was_skipped)
            grad_norm = self.model.get_global_grad_norm()
            grad_norm = float("nan") if grad_norm is None else float(grad_norm)
            self._clear_zero3_gradient_partitions()
        else:
            active = self.role_optimizer.active_roles
            params = [p for g in self.role_optimizer.param_groups if active is None or g["role"] in active
                      for p in g["params"]]
            grad_norm = float(self.accelerator.clip_grad_norm_(params, self.max_grad_norm))
            skipped = not math.isfinite(grad_norm)
            if not skipped:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self._pending_nonfinite = False
        phase = self._phase_key()
        if not skipped:
            self._consecutive_by_phase[phase] = 0
            return {"grad_norm": grad_norm, "skipped": 0.0}
        self.skipped_updates += 1
        in_a_row = self._consecutive_by_phase[phase] = self._consecutive_by_phase.get(phase, 0) + 1
        logger.warning("skipped an update of the %s phase: non-finite loss or gradient (%d in a row)", phase, in_a_row)
        if in_a_row >= self.max_consecutive_skips:
            raise NonFiniteUpdates(f"{in_a_row} consecutive updates had a non-finite loss or gradient "
                                   f"(limit game.max_consecutive_skips={self.max_consecutive_skips})")
        return {"grad_norm": float("nan"), "skipped": 1.0}

    def _clear_zero3_gradient_partitions(self) -> None:
        """ZeRO-3 keeps each weight's reduced gradient in a persistent buffer and only overwrites the entries of
        weights that get a gradient. Each phase trains other adapters, so without this the next step's gradient
        norm (hence its clipping) would include the previous phase's stale gradients of the inactive roles."""
        buffer = getattr(getattr(self.optimizer, "optimizer", None), "grad_partitions_flat_buffer", None)
        if self.zero_stage == 3 and buffer is not None:
            buffer.zero_()

    def state_dict(self) -> dict:
        return {"skipped_updates": self.skipped_updates, "consecutive_skips_by_phase": dict(self._consecutive_by_phase)}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_updates = state["skipped_updates"]
        self._consecutive_by_phase = dict(state.get("consecutive_skips_by_phase", {}))

    # ---------------------------------------------------------------------------------------------------------------
    # weights and optimizer state
    # ---------------------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def gathered(self, params: list[torch.nn.Parameter], modifier_rank: int | None = None):
        """ZeRO-3: the full `params` inside the body (edits on `modifier_rank` are re-partitioned on exit)."""
        if self.zero_stage != 3:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
            yield

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in self.backbone.named_parameters() if p.requires_grad}

    def read_weights(self, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """CPU copies of trainable weights (all, or `names`), whole even under ZeRO-3. Collective under ZeRO-3."""
        params = self.trainable_parameters()
        selected = {n: params[n] for n in (names if names is not None else params)}
        with self.gathered(list(selected.values())):
            return {name: p.detach().to("cpu", copy=True) for name, p in selected.items()}

    def read_role_weights(self, role: str) -> dict[str, torch.Tensor]:
        owned = {id(p) for p in self.backbone.role_parameters(role)}
        return self.read_weights([n for n, p in self.trainable_parameters().items() if id(p) in owned])

    @torch.no_grad()
    def write_weights(self, values: dict[str, torch.Tensor]) -> None:
        """Set trainable weights on every process (all must pass the same values). Under DeepSpeed the fp32
        master copies are set too, or the next optimizer step would copy the old weights back."""
        params = self.trainable_parameters()
        unknown = sorted(set(values) - set(params))
        if unknown:
            raise KeyError(f"not trainable weights of this model: {unknown[:3]}")
        targets = [params[n] for n in values]
        with self.gathered(targets, modifier_rank=0):
            for name, value in values.items():
                params[name].copy_(value.to(device=params[name].device, dtype=params[name].dtype))
        if self.zero_stage == 3:
            # this process's partition of each weight was just re-partitioned from rank 0's copy; the "full" setter
            # fails on weights too small to fill every partition (the 1-element head biases), the local one does not
            from deepspeed.utils import safe_set_local_fp32_param

            for name in values:
                safe_set_local_fp32_param(params[name], params[name].ds_tensor.detach().float())
        elif self.uses_deepspeed:
            from deepspeed.utils import safe_set_full_fp32_param

            for name, value in values.items():
                safe_set_full_fp32_param(params[name], value.to(device=self.device, dtype=torch.float32))

    def _role_optimizer_tensors(self, role: str) -> list[torch.Tensor]:
        """The tensors the optimizer keeps state for, for one role: its parameters, or under DeepSpeed the flat fp32
        partitions of the role's param groups (ZeRO-3 only lists them in the groups during its step)."""
        groups = self.role_optimizer.param_groups
        zero3 = getattr(self.optimizer, "optimizer", None)
        if self.zero_stage == 3 and hasattr(zero3, "sub_group_to_group_id"):
            return [zero3.fp32_partitioned_groups_flat[sub] for sub, group in zero3.sub_group_to_group_id.items()
                    if groups[group]["role"] == role]
        return [p for g in groups if g["role"] == role for p in g["params"]]

    @torch.no_grad()
    def reset_role_optimizer_state(self, role: str) -> None:
        """Adam moments and step count of one role back to a fresh optimizer's (RM refit-from-base restarts its
        optimizer too). Zeroed in place rather than dropped: DeepSpeed keeps views of these tensors."""
        for tensor in self._role_optimizer_tensors(role):
            for value in self.role_optimizer.state.get(tensor, {}).values():
                if torch.is_tensor(value):
                    value.zero_()
