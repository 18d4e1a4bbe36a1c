"""Interval estimates for the evaluation scripts (numpy, pure functions).

  bootstrap_mean_ci   percentile bootstrap of a mean over independent units (prompts): [lo, hi] at `level`
  t_interval          Student-t interval of a mean of paired differences (seeds): mean +- t_{n-1} * sd / sqrt(n)
  sign_test_p         two-sided exact sign test of "the median difference is 0" (zeros dropped)
  min_detectable_effect  the smallest true mean difference a two-sided paired t-test at alpha detects with the given
                      power, for n pairs of standard deviation sd (normal approximation of the power, t critical)
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def bootstrap_mean_ci(values, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of mean(values); values: [N] independent units. (nan, nan) when N == 0."""
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    if data.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def t_interval(differences, level: float = 0.95) -> tuple[float, float]:
    """mean +- t_{n-1, (1+level)/2} * sd / sqrt(n) of [n] paired differences (n >= 2, else (nan, nan))."""
    d = np.asarray(differences, dtype=np.float64).reshape(-1)
    if d.size < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf((1 + level) / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return float(d.mean() - half), float(d.mean() + half)


def sign_test_p(differences) -> float:
    """Two-sided exact binomial sign test: P(a split at least this lopsided | each sign 1/2). Zeros are dropped."""
    d = np.asarray(differences, dtype=np.float64).reshape(-1)
    positive, negative = int((d > 0).sum()), int((d < 0).sum())
    n = positive + negative
    if n == 0:
        return 1.0
    k = min(positive, negative)
    return float(min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n))


def min_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """(t_{n-1, 1-alpha/2} + z_power) * sd / sqrt(n): the true mean difference a paired test finds `power` of the
    time. nan for n < 2."""
    if n < 2:
        return float("nan")
    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.norm.ppf(power)) * sd / math.sqrt(n))
