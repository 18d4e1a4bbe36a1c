"""Pure tensor math of the APO game. No modules, no state: every function maps tensors to tensors, with its shapes and
equation in its docstring. One module per topic; every name is re-exported here, so `from apo_online import losses;
losses.ppo_policy_loss(...)` and `from apo_online.losses import ppo_policy_loss` both work.

  masked.py          masked sum / mean / variance, whitening
  reward_model.py    the RM's losses: Bradley-Terry, APO gold-vs-sample (each / mean / preferred), their total
  policy.py          PPO: KL estimates, per-token rewards, GAE, clipped policy and value losses, adaptive KL
  preference.py      sequence log-probs, DPO, SFT, choosing samples by RM score (best-of-n, pairs)
  group_relative.py  GRPO: group-relative advantages, the clipped ratio + k3 loss, grpo / dr_grpo / dapo averaging

Shape letters: B = sequences in a batch, T = response tokens, Q = queries (prompts), N = samples per query.
A `mask` is 1.0 (or True) on valid response tokens (up to and including the stop token) and 0 elsewhere.
"""

from apo_online.losses.group_relative import (
    LOSS_TYPES as GRPO_LOSS_TYPES,
    SCALE_REWARDS as GRPO_SCALE_REWARDS,
    aggregate_token_loss,
    group_loss_weights,
    group_relative_advantages,
    group_std,
    grpo_token_loss,
)
from apo_online.losses.masked import masked_mean, masked_sum, masked_var, whiten
from apo_online.losses.policy import (
    adaptive_kl_coef,
    gae_advantages,
    kl_estimate,
    ppo_policy_loss,
    ppo_value_loss,
    token_rewards,
)
from apo_online.losses.preference import best_of_n, dpo_loss, pairs_by_score, sequence_logprob, sft_loss
from apo_online.losses.reward_model import apo_compared_rm_loss, apo_rm_loss, apo_total_rm_loss, bradley_terry_loss

__all__ = [
    # masked statistics
    "masked_sum", "masked_mean", "masked_var", "whiten",
    # reward-model losses
    "bradley_terry_loss", "apo_rm_loss", "apo_compared_rm_loss", "apo_total_rm_loss",
    # PPO
    "kl_estimate", "token_rewards", "gae_advantages", "ppo_policy_loss", "ppo_value_loss", "adaptive_kl_coef",
    # DPO, SFT, choosing samples
    "sequence_logprob", "dpo_loss", "sft_loss", "best_of_n", "pairs_by_score",
    # GRPO
    "GRPO_LOSS_TYPES", "GRPO_SCALE_REWARDS", "group_std", "group_relative_advantages", "grpo_token_loss",
    "group_loss_weights", "aggregate_token_loss",
]
