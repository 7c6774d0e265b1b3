"""Confusion-matrix heatmap as a PNG (matplotlib, Agg canvas, no pyplot global state).

Cells are coloured by the share of the gold row (so rare intents stay visible; a square-root
scale keeps a single confusion among dozens of examples visible) and, while the
matrix is small enough to read, annotated with their counts. Figure and font size scale with
the number of labels so that up to ~80 labels stay legible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from botfactory.evaluation.metrics import ConfusionMatrix

ANNOTATE_MAX_LABELS = 30
DPI = 100


def figure_inches(n_labels: int) -> float:
    """Figure height: 0.25 in per label plus room for tick labels (width: 1 in more)."""
    return max(6.0, 0.25 * n_labels + 4.0)


def font_size(n_labels: int) -> float:
    """Tick-label font size: 10 pt for small matrices down to 7 pt at ~80 labels (6 pt floor).

    A label row is 0.25 in = 18 pt high, so 7 pt text leaves room between rows.
    """
    return max(6.0, min(10.0, 560.0 / max(n_labels, 1)))


def row_shares(matrix: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Each row divided by its sum; rows that sum to zero stay zero."""
    sums = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    shares: npt.NDArray[np.float64] = np.divide(matrix, sums, out=np.zeros(matrix.shape),
                                                where=sums > 0)
    return shares


def plot_confusion(confusion: ConfusionMatrix, accuracy: float, path: Path) -> Path:
    """Write the heatmap of `confusion` to `path` (PNG) and return the path."""
    n = len(confusion.labels)
    size = figure_inches(n)
    figure = Figure(figsize=(size + 1.0, size), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(row_shares(confusion.matrix), cmap="Blues", interpolation="nearest",
                        norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0))
    figure.colorbar(image, ax=axes, shrink=0.6, pad=0.02, label="share of gold row")
    _label_axes(axes, confusion.labels, font_size(n))
    if n <= ANNOTATE_MAX_LABELS:
        _annotate(axes, confusion.matrix, font_size(n))
    axes.set_title(f"Intent confusion: accuracy {accuracy:.2%} "
                   f"({int(confusion.matrix.sum())} examples, {n} labels)")
    figure.savefig(path, format="png")
    return path


def _label_axes(axes: Axes, labels: list[str], size: float) -> None:
    ticks = list(range(len(labels)))
    axes.set_xticks(ticks, labels, rotation=90, fontsize=size)
    axes.set_yticks(ticks, labels, fontsize=size)
    axes.set_xlabel("predicted intent")
    axes.set_ylabel("gold intent")


def _annotate(axes: Axes, matrix: npt.NDArray[np.int64], size: float) -> None:
    shares = row_shares(matrix)
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            colour = "white" if shares[row, column] > 0.5 else "black"
            axes.text(column, row, str(count), ha="center", va="center",
                      fontsize=size, color=colour)
