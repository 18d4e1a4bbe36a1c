"""Online DPO: the current APO reward model ranks n fresh samples per prompt, DPO trains on the ranked pairs.

Per rollout (rows prompt-major: rows i*n .. i*n+n-1 answer prompt i):
  1. pairs: per prompt, its best- vs its worst-scored sample, or every ordered pair (dpo.pairing), by the rollout's
     scores (RM score minus the missing-EOS penalty); pairs whose scores differ by <= dpo.min_score_gap are ties and
     are skipped (counted in dpo/ties);
  2. DPO loss (losses.dpo_loss: sigmoid with optional cDPO label smoothing, ipo or hinge) of the policy adapter
     against the reference, i.e. the same backbone with every adapter disabled;
  3. dpo.epochs x dpo.num_minibatches x dpo.gradient_accumulation_steps over the pairs, each micro-batch loss
     normalised by the number of pairs of its whole minibatch over all processes (optimizers/schedule.py).
Only the "policy" role is trained.

Temperature of the log-probs. Policy and reference log-probs are always taken at the SAME temperature T, so that
log pi_T(y) - log pi_ref,T(y) is 0 while the policy equals the reference; mixing temperatures would anchor the
policy to a sharpened or flattened reference instead of the reference itself.
  dpo.logprob_temperature: null (default) -> T = rollout.temperature. The preference is then fitted on the
    tempered policy that produced the samples, as PPO here does (logits / sampling temperature), and the rollout's
    reference log-probs are reused (no extra forward).
  dpo.logprob_temperature: 1.0 -> the untempered model, as offline DPO (trl's DPOTrainer) and trl's online DPO
    trainer do; the reference is then recomputed at T with role "reference" (one no-grad forward per step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from trl.models.utils import unwrap_model_for_generation

from apo_online import losses
from apo_online.errors import ConfigError
from apo_online.optimizers.base import SeededPolicyOptimizer
from apo_online.optimizers.registry import register_optimizer, require_samples_per_prompt
from apo_online.optimizers.schedule import UpdateSchedule, policy_logprobs, train_on_items
from apo_online.rollout import Rollout, RolloutSpec, score_sequences

LOSS_TYPES = ("sigmoid", "ipo", "hinge")
PAIRINGS = ("best_vs_worst", "all_pairs")


@dataclass
class DPOConfig:
    learning_rate: float = 1e-4  # policy adapter
    beta: float = 0.1  # DPO's beta: strength of the implicit KL to the reference
    loss_type: str = "sigmoid"  # sigmoid | ipo | hinge
    label_smoothing: float = 0.0  # cDPO: probability that an RM ranking is wrong (sigmoid only), in [0, 0.5)
    # Divide each log-ratio by its response length (per-token DPO). None: true for ipo, false otherwise (trl).
    length_normalised: bool | None = None
    pairing: str = "best_vs_worst"  # best_vs_worst | all_pairs
    min_score_gap: float = 0.0  # pairs whose scores differ by <= this are ties: skipped
    logprob_temperature: float | None = None  # None: rollout.temperature (see the module docstring)
    epochs: int = 1  # passes over each step's pairs
    num_minibatches: int = 1  # minibatches per epoch
    gradient_accumulation_steps: int = 1  # micro-batches per minibatch


def validate_dpo(config, world_size: int) -> None:
    dpo = config.optimizer_config("dpo")
    require_samples_per_prompt(config, "dpo", 2, "it trains on pairs of samples of the same prompt")
    if min(dpo.epochs, dpo.num_minibatches, dpo.gradient_accumulation_steps) < 1:
        raise ConfigError("dpo.epochs, dpo.num_minibatches and dpo.gradient_accumulation_steps must be >= 1")
    if dpo.loss_type not in LOSS_TYPES:
        raise ConfigError(f"dpo.loss_type must be one of {', '.join(LOSS_TYPES)}, got {dpo.loss_type!r}")
    if dpo.pairing not in PAIRINGS:
        raise ConfigError(f"dpo.pairing must be one of {', '.join(PAIRINGS)}, got {dpo.pairing!r}")
    if dpo.beta <= 0:
        raise ConfigError(f"dpo.beta must be > 0, got {dpo.beta}")
    if not 0.0 <= dpo.label_smoothing < 0.5:
        raise ConfigError(f"dpo.label_smoothing must be in [0, 0.5), got {dpo.label_smoothing}")
    if dpo.label_smoothing and dpo.loss_type != "sigmoid":
        raise ConfigError(f"dpo.label_smoothing applies to loss_type 'sigmoid' only, got {dpo.loss_type!r}")
    if dpo.min_score_gap < 0:
        raise ConfigError(f"dpo.min_score_gap must be >= 0, got {dpo.min_score_gap}")
    if dpo.logprob_temperature is not None and dpo.logprob_temperature <= 0:
        raise ConfigError(f"dpo.logprob_temperature must be > 0 or null, got {dpo.logprob_temperature}")
    n, prompts = config.rollout.samples_per_prompt, config.rollout.prompts_per_step
    most_pairs = prompts if dpo.pairing == "best_vs_worst" else prompts * n * (n - 1) // 2
    micro_batches = dpo.num_minibatches * dpo.gradient_accumulation_steps
    if most_pairs < micro_batches:
        raise ConfigError(f"dpo: at most {most_pairs} pairs per process and step (rollout.prompts_per_step, "
                          f"dpo.pairing) cannot fill dpo.num_minibatches x dpo.gradient_accumulation_steps = "
                          f"{micro_batches} micro-batches")


@register_optimizer("dpo", DPOConfig, validate_dpo)
class OnlineDPO(SeededPolicyOptimizer):
    name = "dpo"
    seed_offset = 2000

    def __init__(self, config: DPOConfig):
        super().__init__(config)
        self.schedule = UpdateSchedule(config.epochs, config.num_minibatches, config.gradient_accumulation_steps)
        self.length_normalised = (config.loss_type == "ipo" if config.length_normalised is None
                                  else config.length_normalised)
        self.forward_batch_size = 16

    def rollout_spec(self) -> RolloutSpec:
        # samples_per_prompt None: rollout.samples_per_prompt (validate_dpo requires >= 2)
        return RolloutSpec(needs_values=False, needs_ref_logprobs=self.config.logprob_temperature is None)

    def setup(self, ctx, config) -> None:
        super().setup(ctx, config)
        self.forward_batch_size = config.rollout.forward_batch_size

    # ---------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def logprobs_at_temperature(self, rollout: Rollout) -> tuple[float, torch.Tensor, torch.Tensor]:
        """(T, policy [B, R], reference [B, R]) token log-probs before the update, both at temperature T."""
        if self.config.logprob_temperature is None:
            return rollout.temperature, rollout.logprobs, rollout.ref_logprobs
        temperature = self.config.logprob_temperature
        with unwrap_model_for_generation(self.ctx.model, self.ctx.accelerator) as backbone:
            out = score_sequences(backbone, rollout.input_ids, rollout.attention_mask, rollout.prompt_length,
                                  ("policy", "reference"), temperature, self.forward_batch_size)
        mask = rollout.response_mask
        return temperature, out["policy"] * mask, out["reference"] * mask

    def step(self, rollout: Rollout) -> dict[str, float]:
        cfg = self.config
        chosen, rejected, ties = losses.pairs_by_score(rollout.scores, rollout.samples_per_prompt, cfg.pairing,
                                                       cfg.min_score_gap)
        temperature, policy_before, reference = self.logprobs_at_temperature(rollout)
        ref_sequence = losses.sequence_logprob(reference, rollout.response_mask)  # [B]
        lengths = rollout.response_mask.sum(1)  # [B]

        def pair_loss(part: torch.Tensor, num_pairs: torch.Tensor):
            c, r = chosen[part], rejected[part]
            logprobs, mask = policy_logprobs(self.ctx, rollout, torch.cat([c, r]), temperature)
            policy_chosen, policy_rejected = losses.sequence_logprob(logprobs, mask).split(len(part))
            loss, chosen_rewards, rejected_rewards = losses.dpo_loss(
                policy_chosen, policy_rejected, ref_sequence[c], ref_sequence[r], cfg.beta, cfg.loss_type,
                cfg.label_smoothing, *((lengths[c], lengths[r]) if self.length_normalised else (None, None)))
            margins = chosen_rewards - rejected_rewards
            stats = {"loss": loss.item() * len(part), "pairs": float(len(part)),
                     "rewards_chosen": chosen_rewards.sum().item(), "rewards_rejected": rejected_rewards.sum().item(),
                     "margin": margins.sum().item(), "accuracy": (margins > 0).float().sum().item()}
            return loss * len(part) / num_pairs, stats  # sum over the pairs / pairs of the whole minibatch

        weights = torch.ones(len(chosen), device=rollout.input_ids.device)
        totals = train_on_items(self.ctx, rollout, self.roles, weights, self.schedule, self.generator, pair_loss)
        return self._metrics(rollout, totals, chosen, rejected, ties, policy_before, reference)

    def _metrics(self, rollout, totals, chosen, rejected, ties, policy_before, reference) -> dict[str, float]:
        """Per-pair means over every process (exact: sums and counts are all-reduced)."""
        g = self.ctx.global_sum
        trained = g(totals.get("pairs", 0.0)).clamp(min=1.0)
        scores = rollout.scores
        metrics = {f"dpo/{key}": float(g(totals.get(key, 0.0)) / trained)
                   for key in ("loss", "rewards_chosen", "rewards_rejected", "margin", "accuracy")}
        metrics.update({
            "dpo/pairs": float(g(len(chosen))),
            "dpo/ties": float(g(ties)),
            "dpo/score_gap": float(g((scores[chosen] - scores[rejected]).sum()) / g(len(chosen)).clamp(min=1.0)),
            "dpo/grad_norm": totals["grad_norm"],
            "dpo/updates": totals["updates"],
            # at dpo.logprob_temperature (the game's objective/kl is at the sampling temperature)
            "objective/kl": (policy_before - reference).sum(1).mean().item(),
            "objective/entropy": (-policy_before.sum(1)).mean().item(),
        })
        return metrics
