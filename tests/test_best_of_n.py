"""The exact best-of-n estimator (apo_online/evaluation/best_of_n.py) against brute-force enumeration of every n-subset."""

import itertools
import math

import numpy as np
import pytest

from apo_online.evaluation.best_of_n import (best_of_n_weights, expected_pick, gain_ratio, kl_best_of_n, paired_difference,
                                  selector_curve)


def brute_force(scores, values, n):
    """Mean over every n-subset of the value of its top-scored member; ties split evenly among the tied members."""
    totals = []
    for subset in itertools.combinations(range(len(scores)), n):
        top = max(scores[i] for i in subset)
        tied = [values[i] for i in subset if scores[i] == top]
        totals.append(sum(tied) / len(tied))
    return sum(totals) / len(totals)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_matches_brute_force_with_ties(n):
    rng = np.random.default_rng(n)
    scores = rng.integers(0, 4, size=7).tolist()  # few distinct values: many ties
    values = rng.normal(size=7).tolist()
    assert expected_pick(scores, values, n) == pytest.approx(brute_force(scores, values, n), abs=1e-12)


def test_hand_computed_case():
    # scores 1, 2, 3 with values 10, 20, 30; best of 2 among 3: subsets {1,2}->20, {1,3}->30, {2,3}->30 -> 80/3
    assert expected_pick([1, 2, 3], [10, 20, 30], 2) == pytest.approx(80 / 3)
    assert expected_pick([3, 2, 1], [10, 20, 30], 2) == pytest.approx(40 / 3)  # a selector that ranks backwards
    assert best_of_n_weights(3, 2).tolist() == pytest.approx([0, 1 / 3, 2 / 3])


def test_random_selector_is_the_mean_and_judge_is_the_max():
    values = [0.3, -1.0, 2.0, 0.5]
    for n in (1, 2, 4):
        assert expected_pick([0, 0, 0, 0], values, n) == pytest.approx(np.mean(values))
    assert expected_pick(values, values, 4) == pytest.approx(2.0)
    assert kl_best_of_n(1) == 0.0 and kl_best_of_n(16) == pytest.approx(math.log(16) - 15 / 16)


def test_curve_paired_difference_and_gain_ratio():
    judge = [[0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 0.0, 1.0]]
    eos = [[True, True, False, True], [True, False, True, True]]
    curve = selector_curve(judge, judge, eos, [1, 2, 4])
    assert [p["n"] for p in curve] == [1, 2, 4]
    assert curve[0]["gold_mean"] == pytest.approx(np.mean(judge))  # n = 1: any selector is a random pick
    assert curve[2]["gold_mean"] == pytest.approx((3.0 + 1.0) / 2)
    assert curve[2]["cut_pick_rate"] == pytest.approx(0.0)  # the judge's picks (3.0; a tie of two finished 1.0s)
    assert curve[2]["finished_only"]["n_prompts"] == 0  # no prompt has 4 finished samples
    assert curve[1]["finished_only"]["n_prompts"] == 2
    backwards = [[-v for v in row] for row in judge]
    diff = paired_difference(backwards, judge, judge, 4)
    assert diff["mean"] == pytest.approx(((0.0 - 3.0) + (0.0 - 1.0)) / 2) and diff["n_prompts"] == 2
    assert gain_ratio(judge, judge, 4)["ratio"] == pytest.approx(1.0)
    assert gain_ratio([[0.0] * 4] * 2, judge, 4)["ratio"] == pytest.approx(0.0)
