"""Interval estimates against hand-computed values."""

import math

import pytest

from apo_online.evaluation.statistics import bootstrap_mean_ci, min_detectable_effect, sign_test_p, t_interval


def test_t_interval_by_hand():
    # d = [1, 2, 3, 4]: mean 2.5, sd = sqrt(5/3) = 1.29099, t_{3, 0.975} = 3.182446
    lo, hi = t_interval([1, 2, 3, 4])
    half = 3.182446 * math.sqrt(5 / 3) / 2
    assert lo == pytest.approx(2.5 - half, abs=1e-5) and hi == pytest.approx(2.5 + half, abs=1e-5)
    assert all(math.isnan(v) for v in t_interval([1.0]))


def test_sign_test_by_hand():
    assert sign_test_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)  # 5 of 5 positive: 2 * (1/2)^5
    assert sign_test_p([1, 2, 3, 4, -5]) == pytest.approx(2 * 6 / 32)  # k = 1: 2 * (1 + 5) / 32
    assert sign_test_p([1, -1, 0]) == 1.0 and sign_test_p([0, 0]) == 1.0  # zeros dropped


def test_min_detectable_effect_by_hand():
    # n = 5, sd = 1: (t_{4, 0.975} + z_{0.8}) / sqrt(5) = (2.776445 + 0.841621) / 2.236068
    assert min_detectable_effect(1.0, 5) == pytest.approx((2.776445 + 0.841621) / math.sqrt(5), abs=1e-5)
    assert min_detectable_effect(2.0, 5) == pytest.approx(2 * min_detectable_effect(1.0, 5))


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_n():
    small = bootstrap_mean_ci([0.0, 1.0] * 10)
    large = bootstrap_mean_ci([0.0, 1.0] * 1000)
    assert small[0] < 0.5 < small[1] and large[0] < 0.5 < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 5  # ~1/sqrt(100) as wide
    assert bootstrap_mean_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)
    assert bootstrap_mean_ci([1.0, 2.0], seed=1) == bootstrap_mean_ci([1.0, 2.0], seed=1)  # deterministic
