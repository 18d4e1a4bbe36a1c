"""Rejection sampling (RJS, best-of-n): supervised fine-tuning of the policy on the sample that the current APO
reward model scores highest among the n samples of each prompt, the policy update of the APO paper's experiments.

Per rollout (rows prompt-major: rows i*n .. i*n+n-1 answer prompt i):
  1. winners: per prompt, the row with the highest score (RM score minus the missing-EOS penalty; ties go to the
     first sample); with rjs.min_score set, winners scoring below it are dropped (counted in rjs/dropped);
  2. SFT loss (losses.sft_loss): the negative log-likelihood of the winners' tokens, averaged over the response
     tokens of the whole minibatch on all processes, so the update does not depend on the micro-batch layout;
  3. rjs.epochs x rjs.num_minibatches x rjs.gradient_accumulation_steps over the winners (optimizers/schedule.py).
Only the "policy" role is trained; no reference model and no value model are needed.

Temperature: the winners are fitted at temperature 1, i.e. by plain maximum likelihood of the model as in ordinary
SFT (the paper's and reference code's RJS fine-tunes on the selected responses like any SFT data). The sampling
temperature only shapes which candidates the RM chooses from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apo_online import losses
from apo_online.errors import ConfigError
from apo_online.optimizers.base import SeededPolicyOptimizer
from apo_online.optimizers.registry import register_optimizer, require_samples_per_prompt
from apo_online.optimizers.schedule import UpdateSchedule, policy_logprobs, train_on_items
from apo_online.rollout import Rollout, RolloutSpec

SFT_TEMPERATURE = 1.0


@dataclass
class RJSConfig:
    learning_rate: float = 1e-4  # policy adapter
    epochs: int = 1  # passes over each step's winners
    num_minibatches: int = 1  # minibatches per epoch
    gradient_accumulation_steps: int = 1  # micro-batches per minibatch
    min_score: float | None = None  # winners scoring below this are not trained on (None: keep every winner)


def validate_rjs(config, world_size: int) -> None:
    rjs = config.optimizer_config("rjs")
    require_samples_per_prompt(config, "rjs", 2, "best-of-n picks one of several samples of each prompt")
    if min(rjs.epochs, rjs.num_minibatches, rjs.gradient_accumulation_steps) < 1:
        raise ConfigError("rjs.epochs, rjs.num_minibatches and rjs.gradient_accumulation_steps must be >= 1")
    micro_batches = rjs.num_minibatches * rjs.gradient_accumulation_steps
    if config.rollout.prompts_per_step < micro_batches:
        raise ConfigError(f"rjs: rollout.prompts_per_step = {config.rollout.prompts_per_step} winners per process "
                          f"cannot fill rjs.num_minibatches x rjs.gradient_accumulation_steps = {micro_batches} "
                          f"micro-batches")


@register_optimizer("rjs", RJSConfig, validate_rjs)
class RejectionSampling(SeededPolicyOptimizer):
    name = "rjs"
    seed_offset = 3000

    def __init__(self, config: RJSConfig):
        super().__init__(config)
        self.schedule = UpdateSchedule(config.epochs, config.num_minibatches, config.gradient_accumulation_steps)

    def rollout_spec(self) -> RolloutSpec:
        # samples_per_prompt None: rollout.samples_per_prompt (validate_rjs requires >= 2)
        return RolloutSpec(needs_values=False, needs_ref_logprobs=False)

    # ---------------------------------------------------------------------------------------------------------------
    def select_winners(self, rollout: Rollout) -> tuple[torch.Tensor, int]:
        """(winner rows [K], winners dropped by rjs.min_score)."""
        winners = losses.best_of_n(rollout.scores, rollout.samples_per_prompt)
        if self.config.min_score is None:
            return winners, 0
        keep = rollout.scores[winners] >= self.config.min_score
        return winners[keep], int((~keep).sum())

    def step(self, rollout: Rollout) -> dict[str, float]:
        winners, dropped = self.select_winners(rollout)

        def winner_loss(part: torch.Tensor, num_tokens: torch.Tensor):
            logprobs, mask = policy_logprobs(self.ctx, rollout, winners[part], SFT_TEMPERATURE)
            tokens = mask.sum().item()
            loss = losses.sft_loss(logprobs, mask, num_tokens)
            return loss, {"nll": -losses.masked_sum(logprobs.detach(), mask).item(), "tokens": tokens}

        token_counts = rollout.response_mask[winners].sum(1)
        totals = train_on_items(self.ctx, rollout, self.roles, token_counts, self.schedule, self.generator,
                                winner_loss)
        return self._metrics(rollout, winners, dropped, totals)

    def _metrics(self, rollout: Rollout, winners: torch.Tensor, dropped: int, totals: dict) -> dict[str, float]:
        g = self.ctx.global_sum
        scores = rollout.scores
        group_means = scores.reshape(-1, rollout.samples_per_prompt).mean(1)
        winner_groups = torch.div(winners, rollout.samples_per_prompt, rounding_mode="floor")
        count = g(len(winners)).clamp(min=1.0)
        return {
            "rjs/sft_loss": float(g(totals.get("nll", 0.0)) / g(totals.get("tokens", 0.0)).clamp(min=1.0)),
            "rjs/winners": float(g(len(winners))),
            "rjs/dropped": float(g(dropped)),
            "rjs/winner_score": float(g(scores[winners].sum()) / count),
            "rjs/winner_advantage": float(g((scores[winners] - group_means[winner_groups]).sum()) / count),
            "rjs/winner_length": float(g(rollout.response_mask[winners].sum()) / count),
            "rjs/grad_norm": totals["grad_norm"],
            "rjs/updates": totals["updates"],
        }
