"""Expected calibration error, the per-bin table, the reliability diagram and their place in
`botfactory test` reports (botfactory/evaluation/calibration.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from botfactory.evaluation import metrics as m
from botfactory.evaluation.calibration import (
    calibration_bins,
    expected_calibration_error,
    plot_reliability,
)
from botfactory.evaluation.report import build_report, write_report
from tests.support.images import png_size


def test_perfectly_calibrated_data_has_ece_about_zero() -> None:
    rng = np.random.default_rng(7)
    confidences = rng.uniform(size=200_000)
    correct = rng.uniform(size=confidences.size) < confidences  # right with p = confidence
    assert expected_calibration_error(confidences, correct) < 0.01


def test_calibrated_by_construction_is_exactly_zero() -> None:
    confidences = [0.8] * 10 + [0.3] * 10
    correct = [True] * 8 + [False] * 2 + [True] * 3 + [False] * 7
    assert expected_calibration_error(confidences, correct) == pytest.approx(0.0)


def test_over_confident_data_hand_computed() -> None:
    # bin (0.9333, 1]: 4 at 0.95, 2 right: |0.5 - 0.95| = 0.45, weight 4/10
    # bin (0.7333, 0.8]: 6 at 0.75, 3 right: |0.5 - 0.75| = 0.25, weight 6/10
    confidences = np.array([0.95] * 4 + [0.75] * 6)
    correct = np.array([1, 1, 0, 0, 1, 1, 1, 0, 0, 0])
    assert expected_calibration_error(confidences, correct) == pytest.approx(0.33)  # .18 + .15
    assert expected_calibration_error([0.9] * 10, [True] * 6 + [False] * 4) == pytest.approx(0.3)


def test_one_bin_is_the_gap_of_the_means() -> None:
    assert expected_calibration_error([0.2, 0.6], [True, True], bins=1) == pytest.approx(0.6)


def test_bins_are_equal_width_upper_edge_inclusive() -> None:
    table = calibration_bins([0.0, 1 / 15, 0.07, 0.5, 1.0, 1.0000001], [1, 1, 0, 1, 0, 1])
    assert len(table) == 15
    assert table[0].lower == 0.0 and table[-1].upper == 1.0
    assert [b.upper - b.lower for b in table] == pytest.approx([1 / 15] * 15)
    assert [b.count for b in table] == [2, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2]
    assert (table[0].confidence, table[0].accuracy) == pytest.approx((1 / 30, 1.0))
    assert (table[14].confidence, table[14].accuracy) == pytest.approx((1.0, 0.5))
    assert table[2].as_dict() == {"lower": pytest.approx(2 / 15), "upper": pytest.approx(0.2),
                                  "count": 0, "confidence": None, "accuracy": None}


def test_empty_input_and_bad_input() -> None:
    assert expected_calibration_error([], []) == 0.0
    with pytest.raises(ValueError, match="2 confidences but 1 correct flags"):
        expected_calibration_error([0.5, 0.5], [True])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        expected_calibration_error([1.5], [True])
    with pytest.raises(ValueError, match="bins must be at least 1"):
        expected_calibration_error([0.5], [True], bins=0)


@pytest.mark.parametrize("n", [0, 50])
def test_plot_reliability_writes_a_png(tmp_path: Path, n: int) -> None:
    rng = np.random.default_rng(1)
    confidences = rng.uniform(0.5, 1.0, size=n)
    path = plot_reliability(calibration_bins(confidences, confidences > 0.7), tmp_path / "r.png")
    assert path == tmp_path / "r.png"
    assert png_size(path) == (600, 700)


def sample(gold: str, predicted: str, confidence: float) -> m.Sample:
    return m.Sample("text", m.Gold(gold), m.Predicted(predicted, (), confidence))


SAMPLES = [sample("a", "a", 0.9), sample("a", "b", 0.9), sample("b", "b", 0.55),
           sample("b", "b", 0.55)]


def test_evaluation_and_report_carry_ece_and_bins(tmp_path: Path) -> None:
    evaluation = m.evaluate(SAMPLES)
    # (0.8667, 0.9333]: 2 at 0.9, 1 right -> 0.4; (0.5333, 0.6]: 2 at 0.55, both right -> 0.45
    assert evaluation.intent_ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.45)
    report = build_report(evaluation, {"bot": "demo"}, {"format": "csv"})
    assert report["intent"]["ece"] == pytest.approx(0.425)
    bins = report["intent"]["calibration"]
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 4
    assert bins[13] == {"lower": pytest.approx(13 / 15), "upper": pytest.approx(14 / 15),
                        "count": 2, "confidence": pytest.approx(0.9), "accuracy": 0.5}
    files = write_report(tmp_path, evaluation, SAMPLES, {"bot": "demo"}, {"format": "csv"})
    assert files.reliability == tmp_path / "reliability.png"
    assert png_size(files.reliability)[0] > 0
    written = json.loads(files.report.read_text())
    assert written["intent"]["ece"] == pytest.approx(0.425)
    assert written["intent"]["calibration"][0]["confidence"] is None
