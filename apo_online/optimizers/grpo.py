"""GRPO (Shao et al. 2024): PPO's clipped ratio without a value model; each sample's advantage is its score against
the other samples of the same prompt. Loss-type options from Dr. GRPO (Liu et al. 2025) and DAPO (Yu et al. 2025).

Per rollout (rows prompt-major: rows i*n .. i*n+n-1 answer prompt i; r = rollout.scores, the RM score minus the
missing-EOS penalty):
  1. advantages (losses.group_relative_advantages), one per sample, the same on each of its tokens:
       grpo.scale_rewards group: A = (r - mean of its group) / (std of its group + grpo.eps)
       grpo.scale_rewards none:  A =  r - mean of its group
     std is the unbiased one (torch.std, N - 1), as TRL's GRPOTrainer computes it;
  2. per token (losses.grpo_token_loss): max(-A rho, -A clip(rho, 1 - cliprange, 1 + cliprange_high)) + beta k3,
     rho = pi / pi_old with pi_old the rollout's sampling-time log-probs (temperature-scaled, like the policy's here),
     k3 = exp(ref - logp) - (ref - logp) - 1 against the reference (adapters off) at the sampling temperature;
  3. averaged by grpo.loss_type (losses.aggregate_token_loss): grpo = mean over each sequence's tokens, then over
     sequences; dr_grpo = sum over tokens / (sequences x rollout.max_new_tokens); dapo = sum / valid tokens;
  4. grpo.epochs x grpo.num_minibatches x grpo.gradient_accumulation_steps (optimizers/schedule.py). Each row weighs
     1 (grpo, dr_grpo) or its valid tokens (dapo) in the minibatch normaliser, summed over every process, so the
     update is the gradient of the minibatch's loss whatever the micro-batch layout or process count.
Only the "policy" role is trained: no value adapter is built for a GRPO game. The rollout's reference log-probs are
always computed (also with beta 0) so that the KL to the reference is logged (grpo/kl, objective/kl).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apo_online import losses
from apo_online.errors import ConfigError
from apo_online.optimizers.base import SeededPolicyOptimizer
from apo_online.optimizers.registry import register_optimizer, require_even_micro_batches, require_samples_per_prompt
from apo_online.optimizers.schedule import UpdateSchedule, policy_logprobs, train_on_items
from apo_online.rollout import Rollout, RolloutSpec


@dataclass
class GRPOConfig:
    learning_rate: float = 1e-4  # policy adapter
    epochs: int = 1  # passes over each rollout (1 epoch of 1 minibatch: on-policy, the ratio is 1, no clipping)
    num_minibatches: int = 1  # minibatches per epoch
    gradient_accumulation_steps: int = 1  # micro-batches per minibatch
    cliprange: float = 0.2  # epsilon low: the ratio pi / pi_old is clipped below at 1 - cliprange
    cliprange_high: float | None = None  # epsilon high: clipped above at 1 + this; null: cliprange (DAPO: 0.28)
    beta: float = 0.04  # weight of the per-token k3 KL to the reference, a loss term (0: no KL term)
    scale_rewards: str = "group"  # group: advantages divided by their group's std; none: only centred (Dr. GRPO)
    loss_type: str = "grpo"  # grpo | dr_grpo | dapo: how token losses are averaged (optimizers/grpo.py)
    eps: float = 1e-4  # added to the group std before dividing by it


def validate_grpo(config, world_size: int) -> None:
    grpo = config.optimizer_config("grpo")
    require_samples_per_prompt(config, "grpo", 2, "advantages compare each sample with the other samples of its "
                                                  "prompt")
    if min(grpo.epochs, grpo.num_minibatches, grpo.gradient_accumulation_steps) < 1:
        raise ConfigError("grpo.epochs, grpo.num_minibatches and grpo.gradient_accumulation_steps must be >= 1")
    require_even_micro_batches(config, "grpo", grpo.num_minibatches, grpo.gradient_accumulation_steps)
    if grpo.loss_type not in losses.GRPO_LOSS_TYPES:
        raise ConfigError(f"grpo.loss_type must be one of {', '.join(losses.GRPO_LOSS_TYPES)}, "
                          f"got {grpo.loss_type!r}")
    if grpo.scale_rewards not in losses.GRPO_SCALE_REWARDS:
        raise ConfigError(f"grpo.scale_rewards must be one of {', '.join(losses.GRPO_SCALE_REWARDS)}, "
                          f"got {grpo.scale_rewards!r}")
    if not 0 < grpo.cliprange < 1:
        raise ConfigError(f"grpo.cliprange must be in (0, 1), got {grpo.cliprange}")
    if grpo.cliprange_high is not None and grpo.cliprange_high <= 0:
        raise ConfigError(f"grpo.cliprange_high must be > 0 or null, got {grpo.cliprange_high}")
    if grpo.beta < 0:
        raise ConfigError(f"grpo.beta must be >= 0, got {grpo.beta}")
    if grpo.eps <= 0:
        raise ConfigError(f"grpo.eps must be > 0 (a group whose samples all score the same has std 0), got {grpo.eps}")


@register_optimizer("grpo", GRPOConfig, validate_grpo)
class GRPO(SeededPolicyOptimizer):
    name = "grpo"
    seed_offset = 4000

    def __init__(self, config: GRPOConfig):
        super().__init__(config)
        self.schedule = UpdateSchedule(config.epochs, config.num_minibatches, config.gradient_accumulation_steps)
        self.max_new_tokens: int | None = None  # dr_grpo's constant, from the config in setup

    def rollout_spec(self) -> RolloutSpec:
        # samples_per_prompt None: rollout.samples_per_prompt (validate_grpo requires >= 2)
        return RolloutSpec(needs_values=False, needs_ref_logprobs=True)

    def setup(self, ctx, config) -> None:
        super().setup(ctx, config)
        # the generation budget, not the rollout's width: a batch whose samples all stop early is narrower, and
        # dr_grpo's normaliser must not depend on that
        self.max_new_tokens = config.rollout.max_new_tokens

    def step(self, rollout: Rollout) -> dict[str, float]:
        cfg = self.config
        advantages = losses.group_relative_advantages(rollout.scores, rollout.samples_per_prompt, cfg.scale_rewards,
                                                      cfg.eps)

        def micro_loss(rows: torch.Tensor, normaliser: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            logprobs, mask = policy_logprobs(self.ctx, rollout, rows, rollout.temperature)
            width = mask.shape[1]
            token_loss, stats = losses.grpo_token_loss(
                logprobs, rollout.logprobs[rows, :width], advantages[rows], mask, cfg.cliprange, cfg.cliprange_high,
                cfg.beta, rollout.ref_logprobs[rows, :width])
            loss = losses.aggregate_token_loss(token_loss, mask, cfg.loss_type, normaliser, self.max_new_tokens)
            return loss, {"loss": loss.item(), "clipped": stats["clipped"].sum().item(),
                          "kl": stats["kl"].sum().item(), "tokens": mask.sum().item()}

        weights = losses.group_loss_weights(rollout.response_mask, cfg.loss_type)
        totals = train_on_items(self.ctx, rollout, self.roles, weights, self.schedule, self.generator, micro_loss)
        return self._metrics(rollout, advantages, totals)

    def _metrics(self, rollout: Rollout, advantages: torch.Tensor, totals: dict[str, float]) -> dict[str, float]:
        """Means over every process (sums and counts all-reduced)."""
        g = self.ctx.global_sum
        tokens = g(totals.get("tokens", 0.0)).clamp(min=1.0)
        stds = losses.group_std(rollout.scores, rollout.samples_per_prompt)
        # each process's micro-batch losses add up to num_processes x its share of the minibatch loss
        minibatch_loss = g(totals.get("loss", 0.0)) / self.ctx.accelerator.num_processes
        return {
            "grpo/loss": float(minibatch_loss / max(totals["updates"], 1.0)),  # mean over the optimizer steps
            "grpo/clipfrac": float(g(totals.get("clipped", 0.0)) / tokens),
            "grpo/kl": float(g(totals.get("kl", 0.0)) / tokens),  # mean k3 per token, during the update
            "grpo/advantage_abs": float(g(advantages.abs().sum()) / g(len(advantages))),
            "grpo/reward_std": float(g(stds.sum()) / g(len(stds))),
            "grpo/grad_norm": totals["grad_norm"],
            "grpo/updates": totals["updates"],
        }
