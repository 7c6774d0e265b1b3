"""Confidence calibration: expected calibration error (ECE) and the reliability diagram.

The standard definition (Guo et al. 2017, "On Calibration of Modern Neural Networks"): the n
predictions are grouped by confidence into M equal-width bins over [0, 1], bin m holding the
confidences in ((m-1)/M, m/M] (the first bin also holds 0), and

    ECE = sum over bins of |B_m| / n * |accuracy(B_m) - mean confidence(B_m)|.

A model whose 0.8-confident answers are right 80% of the time has ECE 0. In `botfactory test`
the confidence is the top intent's probability as served (`Prediction.confidence`) and
"correct" means the top intent is the gold intent. The functions take numpy arrays or plain
sequences; numpy only, matplotlib is imported by `plot_reliability` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from matplotlib.axes import Axes

DEFAULT_BINS = 15
TOLERANCE = 1e-6  # float32 softmax can give 1.0000001
DPI = 100


@dataclass(frozen=True)
class CalibrationBin:
    """One confidence bin (lower, upper]: how many predictions, their mean confidence and the
    share of them that were correct (both None for an empty bin)."""

    lower: float
    upper: float
    count: int
    confidence: float | None
    accuracy: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return {"lower": self.lower, "upper": self.upper, "count": self.count,
                "confidence": self.confidence, "accuracy": self.accuracy}


def _arrays(confidences: npt.ArrayLike, correct: npt.ArrayLike,
            bins: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    hits = np.asarray(correct, dtype=np.float64).reshape(-1)
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if conf.shape != hits.shape:
        raise ValueError(f"{conf.size} confidences but {hits.size} correct flags")
    if conf.size and not (np.isfinite(conf).all()
                          and conf.min() >= -TOLERANCE and conf.max() <= 1 + TOLERANCE):
        raise ValueError("confidences must lie in [0, 1]")
    return np.clip(conf, 0.0, 1.0), hits


def calibration_bins(confidences: npt.ArrayLike, correct: npt.ArrayLike,
                     bins: int = DEFAULT_BINS) -> list[CalibrationBin]:
    """The per-bin table of `bins` equal-width bins over [0, 1], lowest first."""
    conf, hits = _arrays(confidences, correct, bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.searchsorted(edges[1:-1], conf, side="left")  # (lower, upper]; 0 in the first
    table = []
    for number in range(bins):
        members = index == number
        count = int(members.sum())
        table.append(CalibrationBin(
            float(edges[number]), float(edges[number + 1]), count,
            float(conf[members].mean()) if count else None,
            float(hits[members].mean()) if count else None))
    return table


def ece_of(table: list[CalibrationBin]) -> float:
    """The expected calibration error of a per-bin table (0.0 when it counts nothing)."""
    total = sum(b.count for b in table)
    gaps = (b.count * abs(b.accuracy - b.confidence) for b in table
            if b.accuracy is not None and b.confidence is not None)
    return float(sum(gaps) / total) if total else 0.0


def expected_calibration_error(confidences: npt.ArrayLike, correct: npt.ArrayLike,
                               bins: int = DEFAULT_BINS) -> float:
    """ECE of predictions with these confidences (in [0, 1]) and correct flags (bool or 0/1);
    0.0 for no predictions. ValueError on mismatched lengths or confidences outside [0, 1]."""
    return ece_of(calibration_bins(confidences, correct, bins))


def plot_reliability(table: list[CalibrationBin], path: Path, title: str = "Intent") -> Path:
    """Write the reliability diagram of `table` to `path` (PNG) and return the path.

    Top: accuracy per bin (bars) against the diagonal of perfect calibration, the gap to the
    bin's mean confidence hatched in red. Bottom: how many predictions fall in each bin.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 7.0), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    _plot_accuracy(top, table)
    top.set_title(f"{title} reliability: ECE {ece_of(table):.4f} "
                  f"({sum(b.count for b in table)} examples, {len(table)} bins)")
    bottom.bar([b.lower for b in table], [b.count for b in table],
               width=[b.upper - b.lower for b in table], align="edge", color="gray",
               edgecolor="black")
    bottom.set_yscale("symlog", linthresh=1.0)  # most answers sit in the top bin
    bottom.set(xlabel="confidence of the top intent", ylabel="examples (log)")
    figure.savefig(path, format="png")
    return path


def _plot_accuracy(axes: Axes, table: list[CalibrationBin]) -> None:
    filled = [(b.lower, b.upper - b.lower, b.accuracy, b.confidence) for b in table
              if b.accuracy is not None and b.confidence is not None]
    lower, width, accuracy, confidence = np.array(filled, dtype=np.float64).reshape(-1, 4).T
    axes.bar(lower, accuracy, width=width, align="edge", color="tab:blue", edgecolor="black",
             label="accuracy")
    axes.bar(lower, confidence - accuracy, bottom=accuracy, width=width, align="edge",
             color="tab:red", alpha=0.35, edgecolor="tab:red", hatch="//",
             label="gap to mean confidence")
    axes.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="gray", label="perfect calibration")
    axes.set(xlim=(0.0, 1.0), ylim=(0.0, 1.0), ylabel="accuracy")
    axes.legend(loc="upper left")
