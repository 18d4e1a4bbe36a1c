"""Reward-model losses of the APO game: Bradley-Terry on human pairs and the APO gold-vs-sample term
(docs/design.md, "The game").

Shape letters: B = pairs in a batch, Q = queries (prompts), N = samples per query.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
