"""Pure tensor math of the APO game. No modules, no state: every function maps tensors to tensors.

Shape letters: B = sequences in a batch, T = response tokens, Q = queries (prompts), N = samples per query.
A `mask` is 1.0 (or True) on valid response tokens (up to and including the stop token) and 0 elsewhere.

Normalisers: the PPO losses accept `num_tokens`, the number of valid tokens of the whole minibatch. A micro-batch
loss is then `sum(per-token loss) / num_tokens`, so accumulating micro-batch gradients gives exactly the gradient of
the minibatch masked mean whatever the micro-batch layout (docs/design.md, PPO checklist: "results independent of
the micro-batch layout").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------------------------
# masked reductions
# ----------------------------------------------------------------------------------------------------------------
def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_i values_i * mask_i over all elements. values, mask: same shape."""
    return (values * mask).sum()


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is 1; over `dim` if given, else over everything.

    Returns 0 where the mask is empty instead of NaN (an all-truncated batch must not poison the step)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` over masked positions (Bessel-corrected when `unbiased` and more than one value)."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    count = mask.sum()
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased and count > 1:
        var = var * count / (count - 1)
    return var


def whiten(values: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
           shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / sqrt(var + 1e-8) with given statistics; 0 outside the mask.
    With shift_mean=False the mean is added back (used for rewards, whose sign carries meaning)."""
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


# ----------------------------------------------------------------------------------------------------------------
# reward-model losses
# ----------------------------------------------------------------------------------------------------------------
def bradley_terry_loss(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Bradley-Terry preference loss  L_BT = -mean_i w_i * log sigmoid(r(x_i, y_i^+) - r(x_i, y_i^-)).

    chosen_scores, rejected_scores: [B]; weights: [B] or None (all ones). Mean over B (weights are not renormalised).
    """
    log_p = F.logsigmoid(chosen_scores - rejected_scores)
    if weights is not None:
        log_p = log_p * weights
    return -log_p.mean()


def apo_rm_loss(
    gold_scores: torch.Tensor, sample_scores: torch.Tensor, sample_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """APO reward-model loss (Cheng et al. 2024, eq. for the RM's max step, log-sigmoid form):

        L_APO = -1/Q sum_q 1/N_q sum_j log sigmoid( r(x_q, y_q^gold) - r(x_q, y_qj) ),   y_qj ~ pi(.|x_q)

    i.e. each (gold, sample) pair is weighted 1/N_q, the number of policy samples of its query (the reference code's
    apo_loss_coeff / apo_sample_num), so every query counts once whatever its number of samples.

    gold_scores: [Q]; sample_scores: [Q, N]; sample_mask: [Q, N] (1 = a real sample; queries may have fewer than N).
    Queries without any sample are ignored.
    """
    if sample_mask is None:
        sample_mask = torch.ones_like(sample_scores)
    sample_mask = sample_mask.to(sample_scores.dtype)
    log_p = F.logsigmoid(gold_scores.unsqueeze(1) - sample_scores)  # [Q, N]
    per_query = (log_p * sample_mask).sum(1) / sample_mask.sum(1).clamp(min=1.0)  # [Q]
    has_samples = (sample_mask.sum(1) > 0).to(sample_scores.dtype)
    return -(per_query * has_samples).sum() / has_samples.sum().clamp(min=1.0)


def apo_compared_rm_loss(
    gold_scores: torch.Tensor, sample_scores: torch.Tensor, sample_mask: torch.Tensor | None = None,
    compare: str = "each",
) -> torch.Tensor:
    """The APO term with a choice of what gold is compared against (rm.apo_compare):

        each:      L_APO above (gold against every sample, 1/N_q each; the paper's form)
        mean:      -1/Q sum_q log sigmoid( r(x_q, y_q^gold) - 1/N_q sum_j r(x_q, y_qj) )
        preferred: L_APO over only the samples the RM scores at or above gold right now (r(y_qj) >= r(y_q^gold),
                   detached), 1/|P_q| each; a query with none of them adds 0 but still counts in the mean over Q,
                   so the term shrinks as the RM gets ahead instead of pushing samples it already ranks below gold.

    gold_scores: [Q]; sample_scores: [Q, N]; sample_mask: [Q, N]. Queries without any sample are ignored.
    """
    if sample_mask is None:
        sample_mask = torch.ones_like(sample_scores)
    sample_mask = sample_mask.to(sample_scores.dtype)
    if compare == "each":
        return apo_rm_loss(gold_scores, sample_scores, sample_mask)
    has_samples = (sample_mask.sum(1) > 0).to(sample_scores.dtype)  # [Q]
    queries = has_samples.sum().clamp(min=1.0)
    if compare == "mean":
        mean_sample = (sample_scores * sample_mask).sum(1) / sample_mask.sum(1).clamp(min=1.0)  # [Q]
        return -(F.logsigmoid(gold_scores - mean_sample) * has_samples).sum() / queries
    if compare == "preferred":
        preferred = sample_mask * (sample_scores.detach() >= gold_scores.detach().unsqueeze(1)).to(sample_mask.dtype)
        log_p = F.logsigmoid(gold_scores.unsqueeze(1) - sample_scores)  # [Q, N]
        per_query = (log_p * preferred).sum(1) / preferred.sum(1).clamp(min=1.0)  # [Q]; 0 without preferred samples
        return -(per_query * has_samples).sum() / queries
    raise ValueError(f"compare must be 'each', 'mean' or 'preferred', got {compare!r}")


def apo_total_rm_loss(
    loss_apo: torch.Tensor, loss_pref: torch.Tensor, apo_coeff: float, beta2: float
) -> torch.Tensor:
    """L_RM = apo_coeff * L_APO(gold vs sample) + beta2 * L_BT(human pairs) (docs/design.md, step 3).

    The beta2 term anchors the RM to human preferences; without it (GAIL-like) the game collapses."""
    return apo_coeff * loss_apo + beta2 * loss_pref


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
def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    num_tokens: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise:

        L = 1/num_tokens * sum_t mask_t * max( -A_t * rho_t, -A_t * clip(rho_t, 1-eps, 1+eps) ),  rho_t = exp(logp - logp_old)

    All inputs [B, T]; num_tokens defaults to mask.sum(). Returns (loss, stats); stats are sums over this batch
    (divide by num_tokens yourself to average): clipfrac_sum (tokens where clipping bit) and approx_kl_sum,
    with approx_kl = 0.5 * (logp - logp_old)^2."""
    mask = mask.to(logprobs.dtype)
    if num_tokens is None:
        num_tokens = mask.sum().clamp(min=1.0)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_sum(torch.maximum(unclipped, clipped), mask) / num_tokens
    stats = {
        "clipfrac_sum": masked_sum((clipped > unclipped).to(mask.dtype), mask).detach(),
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


# ----------------------------------------------------------------------------------------------------------------
# sequence-level losses for the other policy optimizers
# ----------------------------------------------------------------------------------------------------------------
def sequence_logprob(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(y|x) = sum_t mask_t * log pi(y_t | x, y_<t).  logprobs, mask: [B, T] -> [B]."""
    return (logprobs * mask.to(logprobs.dtype)).sum(1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct Preference Optimization (Rafailov et al. 2023, eq. 7), from sequence log-probs [B]:

        h = (log pi(y+) - log pi_ref(y+)) - (log pi(y-) - log pi_ref(y-))
        sigmoid: L = -(1-ls) log sigmoid(beta h) - ls log sigmoid(-beta h)     (cDPO label smoothing ls)
        ipo:     L = (h - 1/(2 beta))^2                                        (Azar et al. 2023)
        hinge:   L = relu(1 - beta h)

    With chosen_lengths / rejected_lengths [B] (response token counts) each log-ratio is divided by its response
    length first, i.e. h uses per-token log-ratios: trl's DPOTrainer does this for "ipo" (as the IPO authors do)
    and calls the sigmoid variant "sigmoid_norm".

    Returns (loss mean over B, chosen_rewards [B], rejected_rewards [B]) with implicit rewards beta*(log pi - log pi_ref)
    (per token when lengths are given).
    """
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("dpo_loss: give both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        chosen_logratio = chosen_logratio / chosen_lengths.to(chosen_logratio.dtype).clamp(min=1.0)
        rejected_logratio = rejected_logratio / rejected_lengths.to(rejected_logratio.dtype).clamp(min=1.0)
    h = chosen_logratio - rejected_logratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}: expected 'sigmoid', 'ipo' or 'hinge'")
    return losses.mean(), beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor, num_tokens: torch.Tensor | float | None = None) -> torch.Tensor:
    """Token-level negative log-likelihood: L = -1/num_tokens * sum_t mask_t * log pi(y_t | x, y_<t).
    logprobs, mask: [B, T]; num_tokens defaults to mask.sum()."""
    mask = mask.to(logprobs.dtype)
    if num_tokens is None:
        num_tokens = mask.sum().clamp(min=1.0)
    return -masked_sum(logprobs, mask) / num_tokens


# ----------------------------------------------------------------------------------------------------------------
# choosing samples by RM score (rows are prompt-major: rows q*N .. q*N+N-1 answer prompt q)
# ----------------------------------------------------------------------------------------------------------------
def best_of_n(scores: torch.Tensor, samples_per_prompt: int) -> torch.Tensor:
    """Row of the highest-scored sample of each prompt (rejection sampling): scores [Q*N] -> rows [Q].
    Ties go to the first sample."""
    grouped = scores.reshape(-1, samples_per_prompt)  # [Q, N]
    offsets = torch.arange(grouped.shape[0], device=scores.device) * samples_per_prompt
    return offsets + grouped.argmax(1)


def pairs_by_score(
    scores: torch.Tensor, samples_per_prompt: int, pairing: str = "best_vs_worst", min_gap: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(chosen rows [K], rejected rows [K], ties) from the RM scores [Q*N] of N samples per prompt.

    best_vs_worst: per prompt, its highest- vs its lowest-scored sample (at most Q pairs);
    all_pairs:     per prompt, every (j, k) with s_j > s_k (at most Q*N*(N-1)/2 pairs).
    A candidate pair whose scores differ by <= min_gap is a tie: it carries no preference, is not returned and is
    counted in `ties` (best_vs_worst: prompts whose samples all tie; all_pairs: unordered tied pairs)."""
    grouped = scores.reshape(-1, samples_per_prompt)  # [Q, N]
    offsets = torch.arange(grouped.shape[0], device=scores.device) * samples_per_prompt
    if pairing == "best_vs_worst":
        best, worst = grouped.max(1), grouped.min(1)
        keep = (best.values - worst.values) > min_gap
        ties = int((~keep).sum())
        return (offsets + best.indices)[keep], (offsets + worst.indices)[keep], ties
    if pairing == "all_pairs":
        gaps = grouped.unsqueeze(2) - grouped.unsqueeze(1)  # [Q, N, N]: s_j - s_k
        query, better, worse = torch.nonzero(gaps > min_gap, as_tuple=True)
        upper = torch.triu(torch.ones_like(gaps[0], dtype=torch.bool), diagonal=1)
        ties = int(((gaps.abs() <= min_gap) & upper).sum())
        return offsets[query] + better, offsets[query] + worse, ties
    raise ValueError(f"unknown pairing {pairing!r}: expected 'best_vs_worst' or 'all_pairs'")
