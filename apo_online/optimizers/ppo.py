"""PPO for language models, following the PPO checklist of docs/design.md (from "The N Implementation Details of
RLHF with PPO").

Per rollout: per-token KL penalty (k1 or k3) with the RM score added at the last valid token; GAE over response
tokens (gamma=1, lambda=0.95 by default); advantages whitened over all processes. Then ppo_epochs passes over the
rollout in num_minibatches minibatches of gradient_accumulation_steps micro-batches each (the shared schedule of
optimizers/schedule.py, with each row weighted by its valid tokens), with the clipped policy and clipped value
losses. Every micro-batch loss is divided by the valid-token count of its whole minibatch (summed over processes),
so the update does not depend on how the minibatch is split into micro-batches or processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apo_online import losses
from apo_online.errors import ConfigError
from apo_online.optimizers.base import SeededPolicyOptimizer
from apo_online.optimizers.registry import register_optimizer, require_even_micro_batches
from apo_online.optimizers.schedule import UpdateSchedule, train_on_items
from apo_online.rollout import Rollout, RolloutSpec


@dataclass
class PPOConfig:
    learning_rate: float = 1e-4  # policy adapter
    value_learning_rate: float = 1e-4  # value adapter + value head
    ppo_epochs: int = 2  # passes over each rollout
    num_minibatches: int = 1  # minibatches per epoch
    gradient_accumulation_steps: int = 1  # micro-batches per minibatch
    cliprange: float = 0.2  # PPO's policy ratio clip
    cliprange_value: float = 0.2  # clip of the value update around the old values
    vf_coef: float = 0.1  # weight of the value loss
    gamma: float = 1.0  # discount per token
    lam: float = 0.95  # GAE lambda
    kl_coef: float = 0.05  # beta: weight of the KL to the reference in the reward
    kl_estimator: str = "k1"  # k1 | k3
    adaptive_kl: bool = False  # adapt kl_coef toward target_kl (Ziegler et al. 2019)
    target_kl: float = 6.0  # adaptive controller target (sequence KL, nats)
    kl_horizon: int = 10000  # the adaptive controller's horizon (steps x samples)
    whiten_advantages: bool = True  # normalise advantages over the batch (all processes)
    whiten_rewards: bool = False  # normalise the per-token rewards before GAE


def validate_ppo(config, world_size: int) -> None:
    ppo = config.optimizer_config("ppo")
    if ppo.num_minibatches < 1 or ppo.gradient_accumulation_steps < 1 or ppo.ppo_epochs < 1:
        raise ConfigError("ppo.num_minibatches, ppo.gradient_accumulation_steps and ppo.ppo_epochs must be >= 1")
    require_even_micro_batches(config, "ppo", ppo.num_minibatches, ppo.gradient_accumulation_steps)
    if ppo.kl_estimator not in ("k1", "k3"):
        raise ConfigError(f"ppo.kl_estimator must be 'k1' or 'k3', got {ppo.kl_estimator!r}")


@register_optimizer("ppo", PPOConfig, validate_ppo)
class PPO(SeededPolicyOptimizer):
    name = "ppo"
    roles = ("policy", "value")

    def __init__(self, config: PPOConfig):
        super().__init__(config)
        self.kl_coef = config.kl_coef  # moves under the adaptive controller: checkpointed

    def learning_rates(self) -> dict[str, float]:
        return {"policy": self.config.learning_rate, "value": self.config.value_learning_rate}

    def rollout_spec(self) -> RolloutSpec:
        return RolloutSpec(needs_values=True, needs_ref_logprobs=True)

    def state_dict(self) -> dict:
        return super().state_dict() | {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.kl_coef = state["kl_coef"]

    # ---------------------------------------------------------------------------------------------------------------
    def _global_whiten(self, values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
        """Whiten with mean/variance over the valid tokens of every process (same as 1 process, same batch)."""
        count = self.ctx.global_sum(mask.sum())
        mean = self.ctx.global_sum((values * mask).sum()) / count
        var = self.ctx.global_sum((((values - mean) ** 2) * mask).sum()) / (count - 1).clamp(min=1.0)
        return losses.whiten(values, mask, mean, var, shift_mean)

    @torch.no_grad()
    def compute_advantages(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        cfg, mask = self.config, rollout.response_mask
        kl = losses.kl_estimate(rollout.logprobs, rollout.ref_logprobs, cfg.kl_estimator) * mask
        rewards = losses.token_rewards(rollout.scores, kl, mask, self.kl_coef)
        if cfg.whiten_rewards:
            rewards = self._global_whiten(rewards, mask, shift_mean=False)
        advantages, returns = losses.gae_advantages(rewards, rollout.values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = self._global_whiten(advantages, mask)
        return {"kl": kl, "rewards": rewards, "advantages": advantages, "returns": returns}

    def step(self, rollout: Rollout) -> dict[str, float]:
        cfg = self.config
        batch = self.compute_advantages(rollout)
        schedule = UpdateSchedule(cfg.ppo_epochs, cfg.num_minibatches, cfg.gradient_accumulation_steps)
        tokens_per_row = rollout.response_mask.sum(1)  # each minibatch's loss is a mean over its valid tokens

        def micro_loss(part: torch.Tensor, num_tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            return self._micro_loss(rollout, batch, part, num_tokens)

        sums = train_on_items(self.ctx, rollout, self.roles, tokens_per_row, schedule, self.generator, micro_loss)
        # every row once per epoch: the minibatch normalisers add up to this
        processes = self.ctx.accelerator.num_processes
        total_tokens = cfg.ppo_epochs * float(self.ctx.global_sum(tokens_per_row.sum())) / processes
        if cfg.adaptive_kl:
            rows = len(rollout)
            mean_kl = float(self.ctx.global_sum(batch["kl"].sum()) / self.ctx.global_sum(rows))
            self.kl_coef = losses.adaptive_kl_coef(self.kl_coef, mean_kl, cfg.target_kl, cfg.kl_horizon, rows)
        return self._metrics(rollout, batch, sums, total_tokens)

    def _micro_loss(self, rollout: Rollout, batch, part: torch.Tensor, num_tokens) -> tuple[torch.Tensor, dict]:
        """Clipped policy loss + vf_coef x clipped value loss of some rows, each a sum over tokens / num_tokens."""
        cfg, P = self.config, rollout.prompt_length
        mask = rollout.response_mask[part]
        width = max(int(mask.sum(1).max().item()), 1)  # drop columns that are padding everywhere
        mask = mask[:, :width]
        out = self.ctx.model(rollout.input_ids[part, : P + width], rollout.attention_mask[part, : P + width],
                             roles=("policy", "value"), response_start=P, temperature=rollout.temperature)
        pg_loss, pg_stats = losses.ppo_policy_loss(
            out["policy"], rollout.logprobs[part, :width], batch["advantages"][part, :width], mask,
            cfg.cliprange, num_tokens)
        vf_loss, vf_stats = losses.ppo_value_loss(
            out["value"], rollout.values[part, :width], batch["returns"][part, :width], mask,
            cfg.cliprange_value, num_tokens)
        n = float(num_tokens)
        return pg_loss + cfg.vf_coef * vf_loss, {
            "policy_loss": pg_loss.item() * n, "value_loss": vf_loss.item() * n,
            "clipfrac": pg_stats["clipfrac_sum"].item(), "vf_clipfrac": vf_stats["vf_clipfrac_sum"].item(),
            "approx_kl": pg_stats["approx_kl_sum"].item()}

    def _metrics(self, rollout: Rollout, batch, sums: dict[str, float], total_tokens: float) -> dict:
        mask = rollout.response_mask
        sequence_kl = batch["kl"].sum(1)
        metrics = {f"ppo/{key}": sums.get(key, 0.0) / max(total_tokens, 1.0)
                   for key in ("policy_loss", "value_loss", "clipfrac", "vf_clipfrac", "approx_kl")}
        metrics.update({  # the game logs objective/scores, rm_scores and entropy for every optimizer
            "objective/kl": sequence_kl.mean().item(),  # with ppo.kl_estimator (the game's is k1)
            "objective/rlhf_reward": (rollout.scores - self.kl_coef * sequence_kl).mean().item(),
            "ppo/kl_coef": self.kl_coef,
            "ppo/grad_norm": sums["grad_norm"],
            "ppo/returns_mean": losses.masked_mean(batch["returns"], mask).item(),
            "ppo/values_mean": losses.masked_mean(rollout.values, mask).item(),
        })
        return metrics
