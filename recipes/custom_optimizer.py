"""A user-defined policy optimizer plugged into the APO game without touching the library: REINFORCE with a
leave-one-out baseline (RLOO, Ahmadian et al. 2024).

    accelerate launch recipes/custom_optimizer.py                          # offline default (SmolLM2-135M, embedded task)
    accelerate launch recipes/custom_optimizer.py --model.model_name_or_path tiny-llama --game.total_steps 3

What it takes (see docs/policy_optimizers.md):
  1. a config dataclass: its fields become the `rloo:` section of the YAML and `--rloo.<field>` flags;
  2. an optional validate(config, world_size) that raises ConfigError before anything heavy starts;
  3. a class with name, roles, learning_rates, rollout_spec, setup, step, state_dict, load_state_dict
     (the PolicyOptimizer protocol of apo_online/optimizers/base.py; SeededPolicyOptimizer, used here, provides all
     but name, rollout_spec and step), registered with `register_optimizer`;
  4. importing this module before the config is loaded, then `game.policy_optimizer: rloo`.
The RM, its adversarial APO updates, logging and checkpoints are the game's business, as for PPO/DPO/RJS.

The algorithm, per rollout of n samples per prompt (rows i*n .. i*n+n-1 answer prompt i):
    R_j = score_j - kl_coef * sum_t (log pi(y_jt) - log pi_ref(y_jt))       sequence reward with a k1 KL penalty
    A_j = R_j - 1/(n-1) sum_{k != j} R_k                                    leave-one-out baseline of its prompt
    L   = -1/B sum_j A_j * log pi(y_j)                                      one on-policy gradient step
Log-probs are taken at the sampling temperature, i.e. of the distribution the samples were drawn from.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

# run as a file: import this checkout's package (an installed copy, if any, comes second)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apo_online import losses  # noqa: E402
from apo_online.cli import main  # noqa: E402
from apo_online.errors import ConfigError  # noqa: E402
from apo_online.optimizers import SeededPolicyOptimizer, register_optimizer  # noqa: E402
from apo_online.optimizers.schedule import UpdateSchedule, policy_logprobs, train_on_items  # noqa: E402
from apo_online.rollout import Rollout, RolloutSpec  # noqa: E402


@dataclass
class RLOOConfig:
    learning_rate: float = 1e-4
    kl_coef: float = 0.05
    gradient_accumulation_steps: int = 1


def validate_rloo(config, world_size: int) -> None:
    rloo = config.optimizer_config("rloo")
    if config.rollout.samples_per_prompt < 2:
        raise ConfigError(f"game.policy_optimizer 'rloo' needs rollout.samples_per_prompt >= 2 (the baseline of a "
                          f"sample is the mean reward of the other samples of its prompt), got "
                          f"{config.rollout.samples_per_prompt}")
    if rloo.gradient_accumulation_steps < 1 or rloo.kl_coef < 0:
        raise ConfigError("rloo.gradient_accumulation_steps must be >= 1 and rloo.kl_coef >= 0")


def leave_one_out_advantages(rewards: torch.Tensor, samples_per_prompt: int) -> torch.Tensor:
    """A_j = R_j - mean of the other samples of its prompt = n/(n-1) * (R_j - group mean). rewards [Q*n] -> [Q*n]."""
    n = samples_per_prompt
    grouped = rewards.reshape(-1, n)
    return ((grouped - grouped.mean(1, keepdim=True)) * n / (n - 1)).reshape(-1)


@register_optimizer("rloo", RLOOConfig, validate_rloo)
class RLOO(SeededPolicyOptimizer):  # policy role, self.ctx, a seeded generator, checkpointed state: from the base
    name = "rloo"

    def rollout_spec(self) -> RolloutSpec:
        return RolloutSpec(needs_values=False, needs_ref_logprobs=True)  # n: rollout.samples_per_prompt

    def step(self, rollout: Rollout) -> dict[str, float]:
        mask = rollout.response_mask
        sequence_kl = losses.kl_estimate(rollout.logprobs, rollout.ref_logprobs, "k1").mul(mask).sum(1)
        rewards = rollout.scores - self.config.kl_coef * sequence_kl
        advantages = leave_one_out_advantages(rewards, rollout.samples_per_prompt)

        def reinforce_loss(rows: torch.Tensor, num_rows: torch.Tensor):
            logprobs, row_mask = policy_logprobs(self.ctx, rollout, rows, rollout.temperature)
            sequence = losses.sequence_logprob(logprobs, row_mask)
            loss = -(advantages[rows] * sequence).sum() / num_rows
            return loss, {"loss": loss.item() * float(num_rows)}

        schedule = UpdateSchedule(gradient_accumulation_steps=self.config.gradient_accumulation_steps)
        weights = torch.ones(len(rollout), device=rollout.input_ids.device)  # normalise by the number of samples
        totals = train_on_items(self.ctx, rollout, self.roles, weights, schedule, self.generator, reinforce_loss)
        return {
            "rloo/loss": totals.get("loss", 0.0) / len(rollout),
            "rloo/advantage_abs": advantages.abs().mean().item(),
            "rloo/grad_norm": totals["grad_norm"],
            "objective/rlhf_reward": rewards.mean().item(),  # the game logs objective/scores, rm_scores, kl
        }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default_yaml=Path(__file__).parent / "custom_optimizer.yaml"))
