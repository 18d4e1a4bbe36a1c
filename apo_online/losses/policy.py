"""PPO's tensor math: per-token KL estimates, per-token rewards, GAE, the clipped policy and value losses and the
adaptive KL controller.

Shape letters: B = sequences in a batch, T = response tokens. A `mask` is 1.0 on valid response tokens (up to and
including the stop token) and 0 elsewhere.

Normalisers: the PPO losses accept `num_tokens`, the number of valid tokens of the whole minibatch. A micro-batch
loss is then `sum(per-token loss) / num_tokens`, so accumulating micro-batch gradients gives exactly the gradient of
the minibatch masked mean whatever the micro-batch layout (docs/design.md, PPO checklist: "results independent of
the micro-batch layout").
"""

from __future__ import annotations

import torch

from apo_online.losses.masked import masked_sum


# ----------------------------------------------------------------------------------------------------------------
# KL, rewards, advantages
# ----------------------------------------------------------------------------------------------------------------
def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL[pi || pi_ref] from samples y_t ~ pi (Schulman's estimators).

    k1 = log pi(y_t) - log pi_ref(y_t)                       (unbiased, can be negative)
    k3 = (r - 1) - log r,  r = pi_ref(y_t) / pi(y_t)          (unbiased, always >= 0)
    logprobs, ref_logprobs: [B, T] -> [B, T]."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}: expected 'k1' or 'k3'")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token PPO reward: r_t = -kl_coef * KL_t on every valid token, plus the RM score on the last valid token.

    scores: [B]; kl, mask: [B, T] -> rewards [B, T] (0 outside the mask). A row with an empty mask gets no score."""
    mask = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask
    lengths = mask.sum(1).long()  # [B]
    last = (lengths - 1).clamp(min=0)
    has_tokens = (lengths > 0).to(kl.dtype)
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores * has_tokens
    return rewards


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens.

        delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},   returns_t = A_t + V_t
    with V and A taken as 0 past the last valid token (the episode ends at the stop token).

    rewards, values, mask: [B, T] -> (advantages [B, T], returns [B, T]), both 0 outside the mask."""
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = advantage
        next_value, next_advantage = values[:, t], advantage
    returns = (advantages + values) * mask
    return advantages, returns


# ----------------------------------------------------------------------------------------------------------------
# PPO
# ----------------------------------------------------------------------------------------------------------------
def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float,
                      clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped surrogate per token, as a loss (Schulman et al. 2017, eq. 7):

        l_t = max( -A_t * rho_t, -A_t * clip(rho_t, 1 - clip_low, 1 + clip_high) ),   rho_t = exp(log_ratio_t)

    log_ratio [B, T]; advantages broadcast against it ([B, T], or [B, 1] for one per sequence). Returns (l [B, T],
    clipped [B, T] bool: where the clipped term is the larger)."""
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    num_tokens: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise:

        L = 1/num_tokens * sum_t mask_t * max( -A_t * rho_t, -A_t * clip(rho_t, 1-eps, 1+eps) ),
        rho_t = exp(logp - logp_old)

    All inputs [B, T]; num_tokens defaults to mask.sum(). Returns (loss, stats); stats are sums over this batch
    (divide by num_tokens yourself to average): clipfrac_sum (tokens where clipping bit) and approx_kl_sum,
    with approx_kl = 0.5 * (logp - logp_old)^2."""
    mask = mask.to(logprobs.dtype)
    if num_tokens is None:
        num_tokens = mask.sum().clamp(min=1.0)
    log_ratio = logprobs - old_logprobs
    surrogate, clipped = clipped_surrogate(log_ratio, advantages, cliprange, cliprange)
    loss = masked_sum(surrogate, mask) / num_tokens
    stats = {
        "clipfrac_sum": masked_sum(clipped.to(mask.dtype), mask).detach(),
        "approx_kl_sum": masked_sum(0.5 * log_ratio.detach() ** 2, mask),
    }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
    num_tokens: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss:  L_V = 1/num_tokens * sum_t mask_t * 0.5 * max( (V_t - R_t)^2, (V_t^clip - R_t)^2 ),
    V_t^clip = V_old_t + clip(V_t - V_old_t, -eps_v, eps_v).

    All inputs [B, T]. Returns (loss, stats) with vf_clipfrac_sum (tokens where the clipped term was larger)."""
    mask = mask.to(values.dtype)
    if num_tokens is None:
        num_tokens = mask.sum().clamp(min=1.0)
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_sum(torch.maximum(loss_unclipped, loss_clipped), mask) / num_tokens
    stats = {"vf_clipfrac_sum": masked_sum((loss_clipped > loss_unclipped).to(mask.dtype), mask).detach()}
    return loss, stats


def adaptive_kl_coef(kl_coef: float, current_kl: float, target_kl: float, horizon: int, n_steps: int) -> float:
    """Adaptive KL controller (Ziegler et al. 2019):
        e = clip(KL / KL_target - 1, -0.2, 0.2);   beta <- beta * (1 + e * n_steps / horizon)."""
    proportional_error = min(max(current_kl / target_kl - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + proportional_error * n_steps / horizon)
