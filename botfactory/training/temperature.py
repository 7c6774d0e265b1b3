"""Temperature scaling (Guo et al. 2017): one number T that divides the intent logits so that
the served confidences mean what they say, fitted after fine-tuning on the held-out split.

A fine-tuned classifier is over-confident, more so on small data: trained to near-zero loss,
its wrong answers come with 0.97-0.998. Dividing the logits by T > 1 softens every
probability without changing any argmax (accuracy, rankings and the int8 check stay the same).
T minimises the held-out negative log-likelihood. On a small held-out split (fewer than
`SHARPEN_MIN_TEXTS` texts) T is never below 1: a few texts can show over-confidence, but are
too few to justify making the model more certain. The served graph divides by T itself
(`ExportWrapper`), so every consumer of its logits sees calibrated confidences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from botfactory.evaluation.calibration import expected_calibration_error
from botfactory.training.metrics import softmax

MIN_T, MAX_T = 0.5, 10.0
SHARPEN_MIN_TEXTS = 200
GRID = 121


@dataclass(frozen=True)
class Calibration:
    """The fitted temperature and what it did on the texts it was fitted on."""

    temperature: float
    fitted_on: str
    n: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float

    def to_json(self) -> dict[str, Any]:
        return {"method": "temperature scaling", "temperature": self.temperature,
                "fitted_on": self.fitted_on, "n": self.n,
                "nll_before": round(self.nll_before, 6), "nll_after": round(self.nll_after, 6),
                "ece_before": round(self.ece_before, 6), "ece_after": round(self.ece_after, 6)}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    log_probs = _log_softmax(logits.astype(np.float64) / temperature)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def ece(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Expected calibration error (15 bins) of the top class's probability."""
    probs = softmax(logits.astype(np.float64) / temperature)
    return expected_calibration_error(probs.max(axis=-1), probs.argmax(axis=-1) == labels)


def fit_temperature(logits: np.ndarray, labels: np.ndarray,
                    fitted_on: str = "heldout") -> Calibration:
    """The T in [MIN_T, MAX_T] (at least 1 on fewer than SHARPEN_MIN_TEXTS texts) minimising
    the NLL: a log-spaced grid, then a golden-section search around its best point."""
    labels = np.asarray(labels, dtype=np.int64)
    low = MIN_T if len(labels) >= SHARPEN_MIN_TEXTS else 1.0
    grid = np.geomspace(low, MAX_T, GRID)
    losses = [nll(logits, labels, t) for t in grid]
    best = int(np.argmin(losses))
    a, b = grid[max(0, best - 1)], grid[min(len(grid) - 1, best + 1)]
    temperature = _golden(lambda t: nll(logits, labels, t), float(a), float(b))
    if nll(logits, labels, temperature) > losses[best]:
        temperature = float(grid[best])
    temperature = round(temperature, 4)  # metadata.json holds exactly what the graph divides by
    return Calibration(temperature, fitted_on, len(labels), nll(logits, labels),
                       nll(logits, labels, temperature), ece(logits, labels),
                       ece(logits, labels, temperature))


def _golden(loss: Any, a: float, b: float, steps: int = 40) -> float:
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    for _ in range(steps):
        if loss(c) < loss(d):
            b = d
        else:
            a = c
        c, d = b - ratio * (b - a), a + ratio * (b - a)
    return (a + b) / 2
