"""Accuracy and calibration metrics (apo_online/rm/calibration.py) against hand-computed values; the reliability
plot."""

import math

import numpy as np
import pytest

from apo_online.rm.calibration import (both_orientations, calibration_report, pair_calibration,
                                    preference_accuracy)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# chosen - rejected margins giving p = 0.65, 0.5 (a tie), 0.15: away from bin edges except the exact tie at 0.5
CHOSEN = [logit(0.65), 0.0, logit(0.15)]
REJECTED = [0.0, 0.0, 0.0]


def test_accuracy_counts_ties_as_wrong():
    assert preference_accuracy(CHOSEN, REJECTED) == pytest.approx(1 / 3)
    assert preference_accuracy([2.0, 1.0], [1.0, 3.0]) == 0.5
    assert math.isnan(preference_accuracy([], []))


def test_both_orientations_of_each_pair_are_counted():
    probs, labels = both_orientations(CHOSEN, REJECTED)
    assert probs == pytest.approx([0.65, 0.5, 0.15, 0.35, 0.5, 0.85])
    assert labels.tolist() == [1, 1, 1, 0, 0, 0]


def test_ece_ace_mce_by_hand():
    # predictions (p, y): (.65,1) bin 6, (.5,1) bin 4, (.15,1) bin 1, (.35,0) bin 3, (.5,0) bin 4, (.85,0) bin 8
    # |sum p - sum y| per bin: bin1 .85, bin3 .35, bin4 |1 - 1| = 0, bin6 .35, bin8 .85  -> ECE = 2.4 / 6 = 0.4
    # |frac positive - mean p| per non-empty bin: .85, .35, 0, .35, .85 -> ACE = 2.4 / 5 = 0.48, MCE = 0.85
    report = pair_calibration(CHOSEN, REJECTED)
    assert report.num_predictions == 6
    assert report.bin_counts == [0, 1, 0, 1, 2, 0, 1, 0, 1, 0]
    assert report.ece == pytest.approx(0.4)
    assert report.ace == pytest.approx(0.48)
    assert report.mce == pytest.approx(0.85)
    assert report.bin_frac_positive[4] == 0.5 and report.bin_mean_prob[4] == 0.5
    assert math.isnan(report.bin_mean_prob[0])


def test_bins_are_closed_on_the_right_like_the_reference():
    report = calibration_report([0.1, 0.2, 0.0, 1.0], [1, 0, 0, 1])
    assert report.bin_counts == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1]  # 0.0 and 0.1 in bin 0; 0.2 in bin 1; 1.0 in bin 9
    # bin 0: |0.1 - 1| ; bin 1: |0.2 - 0| ; bin 9: |1 - 1|  -> (0.9 + 0.2 + 0) / 4
    assert report.ece == pytest.approx(1.1 / 4)


def test_calibrated_predictions_have_zero_error_and_overconfident_ones_do_not():
    calibrated = calibration_report([0.7] * 10, [1] * 7 + [0] * 3)
    assert calibrated.ece == pytest.approx(0.0, abs=1e-12) and calibrated.mce == pytest.approx(0.0, abs=1e-12)
    overconfident = calibration_report([0.95] * 10, [1] * 7 + [0] * 3)
    assert overconfident.ece == pytest.approx(0.25) and overconfident.ace == pytest.approx(0.25)


def test_a_perfectly_separating_but_timid_rm_is_accurate_yet_miscalibrated():
    margin = logit(0.55)  # every pair right, but only 55% confident
    report = pair_calibration([margin] * 4, [0.0] * 4)
    assert preference_accuracy([margin] * 4, [0.0] * 4) == 1.0
    assert report.ece == pytest.approx(0.45)  # bins 5 (p .55, y 1) and 4 (p .45, y 0): (4 * .45 + 4 * .45) / 8


def test_reliability_diagram_is_written(tmp_path):
    from apo_online.evaluation.plots import reliability_diagram

    rng = np.random.default_rng(0)
    chosen = rng.normal(1.0, 1.0, 200)
    path = reliability_diagram(pair_calibration(chosen, np.zeros(200)), tmp_path / "plots" / "reliability.png",
                               title="test")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000  # a real figure, not an empty canvas
