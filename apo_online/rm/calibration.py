"""Preference accuracy and calibration of a reward model on preference pairs (pure metric math, numpy).

A reward model r turns a pair (a, b) into a preference probability through Bradley-Terry:
    p(a > b) = sigmoid(r_a - r_b).
Calibration follows the APO reference code (Linear95/APO, trainer.py), which scores every ordered pair of a query's
responses: each preference pair is counted in BOTH orientations,
    (p = sigmoid(r_chosen - r_rejected), y = 1)   and   (1 - p, y = 0),
so N = 2 x pairs predictions. The predictions are put in `num_bins` equal-width bins on [0, 1] with sklearn's
`calibration_curve` convention (bins closed on the right: [0, 0.1], (0.1, 0.2], ..., (0.9, 1]), and
    ECE = sum_bins |sum_{i in bin} p_i - sum_{i in bin} y_i| / N         (= sum_bins n_b/N |mean y_b - mean p_b|)
    ACE = mean over non-empty bins of |mean y_b - mean p_b|              (the reference's calibration_ACE)
    MCE = max  over non-empty bins of |mean y_b - mean p_b|              (the reference's calibration_MCE)
Accuracy counts a pair as correct when r_chosen > r_rejected strictly (ties are wrong), as the reference does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _as_array(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def preference_accuracy(chosen_scores, rejected_scores) -> float:
    """Fraction of pairs with r_chosen > r_rejected (strict). Inputs: [P] scores. NaN when there are no pairs."""
    chosen, rejected = _as_array(chosen_scores), _as_array(rejected_scores)
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen and rejected scores differ in shape: {chosen.shape} vs {rejected.shape}")
    if chosen.size == 0:
        return float("nan")
    return float(np.mean(chosen > rejected))


def both_orientations(chosen_scores, rejected_scores) -> tuple[np.ndarray, np.ndarray]:
    """[P] chosen and rejected scores -> (probs [2P], labels [2P]):
    probs = [sigmoid(r_c - r_r) ..., 1 - sigmoid(r_c - r_r) ...], labels = [1 ..., 0 ...]."""
    chosen, rejected = _as_array(chosen_scores), _as_array(rejected_scores)
    p = 1.0 / (1.0 + np.exp(-(chosen - rejected)))
    return np.concatenate([p, 1.0 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)])


@dataclass
class CalibrationReport:
    num_predictions: int  # N (= 2 x pairs when built from pairs)
    bin_edges: list[float]  # [num_bins + 1]
    bin_counts: list[int]  # [num_bins] predictions per bin
    bin_mean_prob: list[float]  # [num_bins] mean p in the bin (NaN when empty)
    bin_frac_positive: list[float]  # [num_bins] fraction of y = 1 in the bin (NaN when empty)
    ece: float
    ace: float
    mce: float

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_report(probs, labels, num_bins: int = 10) -> CalibrationReport:
    """ECE, ACE, MCE and the reliability table of predictions `probs` [N] in [0, 1] with 0/1 `labels` [N]."""
    probs, labels = _as_array(probs), _as_array(labels)
    if probs.shape != labels.shape:
        raise ValueError(f"probs and labels differ in shape: {probs.shape} vs {labels.shape}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    bins = np.searchsorted(edges[1:-1], probs, side="left")  # sklearn's convention: right-closed bins
    counts = np.bincount(bins, minlength=num_bins)
    prob_sums = np.bincount(bins, weights=probs, minlength=num_bins)
    label_sums = np.bincount(bins, weights=labels, minlength=num_bins)
    filled = counts > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.where(filled, prob_sums / counts, np.nan)
        frac_positive = np.where(filled, label_sums / counts, np.nan)
    gaps = np.abs(frac_positive[filled] - mean_prob[filled])
    n = probs.size
    return CalibrationReport(
        num_predictions=int(n),
        bin_edges=edges.tolist(),
        bin_counts=counts.astype(int).tolist(),
        bin_mean_prob=mean_prob.tolist(),
        bin_frac_positive=frac_positive.tolist(),
        ece=float(np.abs(prob_sums - label_sums).sum() / n) if n else float("nan"),
        ace=float(gaps.mean()) if gaps.size else float("nan"),
        mce=float(gaps.max()) if gaps.size else float("nan"),
    )


def pair_calibration(chosen_scores, rejected_scores, num_bins: int = 10) -> CalibrationReport:
    """calibration_report over both orientations of every (chosen, rejected) pair of scores [P]."""
    probs, labels = both_orientations(chosen_scores, rejected_scores)
    return calibration_report(probs, labels, num_bins)
