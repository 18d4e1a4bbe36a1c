"""Sequence-level losses of the other policy optimizers (DPO, SFT for rejection sampling) and choosing samples by
RM score.

Shape letters: B = sequences (or pairs) in a batch, T = response tokens, Q = prompts, N = samples per prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from apo_online.losses.masked import masked_sum


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

    Returns (loss mean over B, chosen_rewards [B], rejected_rewards [B]) with implicit rewards
    beta * (log pi - log pi_ref) (per token when lengths are given).
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


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor,
             num_tokens: torch.Tensor | float | None = None) -> torch.Tensor:
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
