"""The update schedule of every built-in policy optimizer: items of a rollout (PPO rows weighted by their response
tokens, DPO pairs, RJS winners) trained in epochs x minibatches x accumulation.

DPO and RJS select a number of items that differs from step to step and from process to process (ties are
skipped, winners below a threshold dropped). `train_on_items` still gives every process the same sequence of
micro-batches, backward calls and optimizer steps, because each of those is a collective under DDP/DeepSpeed:

  epochs x num_minibatches x gradient_accumulation_steps
  - each epoch shuffles this process's items and cuts them into num_minibatches minibatches, each into
    gradient_accumulation_steps micro-batches (torch.tensor_split: sizes differ by at most one, some may be empty);
  - a micro-batch loss is divided by the minibatch's total weight over all processes (response tokens for PPO
    and SFT, pairs for DPO), times the number of processes since DDP averages gradients, so the update is the
    gradient of the minibatch mean whatever the micro-batch layout or process count;
  - a micro-batch that is empty on this process runs a zero-weighted forward so that the backward still happens;
  - a minibatch that is empty on every process is skipped by all of them (they all see the same global weight).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from apo_online.rollout import Rollout

# micro_loss(item indices [k] (k >= 1), normaliser) -> (loss to backward, stats to sum over micro-batches)
MicroLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class UpdateSchedule:
    epochs: int = 1
    num_minibatches: int = 1
    gradient_accumulation_steps: int = 1

    @property
    def micro_batches(self) -> int:
        return self.num_minibatches * self.gradient_accumulation_steps


def policy_logprobs(ctx, rollout: Rollout, rows: torch.Tensor, temperature: float):
    """Policy token log-probs (with grad) of some rollout rows: (logprobs [k, W], response mask [k, W]).

    W is the longest response among `rows`: columns that are padding for every row are not computed."""
    mask = rollout.response_mask[rows]
    width = max(int(mask.sum(1).max().item()) if mask.numel() else 1, 1)
    end = rollout.prompt_length + width
    out = ctx.model(rollout.input_ids[rows, :end], rollout.attention_mask[rows, :end], roles=("policy",),
                    response_start=rollout.prompt_length, temperature=temperature)
    return out["policy"], mask[:, :width]


def zero_policy_loss(ctx, rollout: Rollout) -> torch.Tensor:
    """A loss equal to 0 that still runs through the policy adapter: the backward of an empty micro-batch."""
    logprobs, _ = policy_logprobs(ctx, rollout, torch.zeros(1, dtype=torch.long, device=rollout.input_ids.device),
                                  rollout.temperature)
    return logprobs.sum() * 0.0


def train_on_items(ctx, rollout: Rollout, roles: tuple[str, ...], item_weights: torch.Tensor,
                   schedule: UpdateSchedule, generator: torch.Generator, micro_loss: MicroLoss) -> dict[str, float]:
    """Run the schedule over this process's items; item_weights [K] (>= 0) define each minibatch's normaliser.

    Returns the stats of micro_loss summed over every micro-batch, plus "grad_norm" (mean over optimizer steps)
    and "updates" (optimizer steps taken)."""
    totals: dict[str, float] = {}
    grad_norms: list[float] = []
    device = item_weights.device
    with ctx.phase(roles):
        for _ in range(schedule.epochs):
            order = torch.randperm(item_weights.shape[0], generator=generator).to(device)
            for minibatch in torch.tensor_split(order, schedule.num_minibatches):
                global_weight = ctx.global_sum(item_weights[minibatch].sum())
                if global_weight <= 0:
                    continue  # empty on every process: all of them skip it
                normaliser = global_weight / ctx.accelerator.num_processes  # DDP averages gradients
                parts = torch.tensor_split(minibatch, schedule.gradient_accumulation_steps)
                for k, part in enumerate(parts):
                    with ctx.micro_batch(is_last=k == len(parts) - 1):
                        if len(part):
                            loss, stats = micro_loss(part, normaliser)
                            for key, value in stats.items():
                                totals[key] = totals.get(key, 0.0) + value
                        else:
                            loss = zero_policy_loss(ctx, rollout)
                        ctx.backward(loss)
                grad_norms.append(ctx.optimizer_step()["grad_norm"])
    totals["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else 0.0
    totals["updates"] = float(len(grad_norms))
    return totals
