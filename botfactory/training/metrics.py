"""Held-out metrics from logits: class accuracy, its expected calibration error (15 bins) and
entity micro-F1 over exact char spans."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from botfactory.evaluation.calibration import expected_calibration_error
from botfactory.training.data import Encoded, Labels
from services.common.textenc import decode_spans


@dataclass(frozen=True)
class Metrics:
    """`entity_micro_f1` is None when there are no entities to find and none were predicted
    (and for a classification-only model)."""

    n: int
    intent_accuracy: float
    entity_micro_f1: float | None = None
    entity_precision: float | None = None
    entity_recall: float | None = None
    intent_ece: float | None = None

    def score(self) -> float:
        """Early-stopping score: accuracy + F1 (a missing F1 counts as perfect)."""
        return self.intent_accuracy + (1.0 if self.entity_micro_f1 is None else
                                       self.entity_micro_f1)

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {"n": self.n, "intent_accuracy": round(self.intent_accuracy, 6),
                                  "intent_ece": _round(self.intent_ece)}
        if self.entity_micro_f1 is not None:
            result["entity_micro_f1"] = round(self.entity_micro_f1, 6)
            result["entity_precision"] = _round(self.entity_precision)
            result["entity_recall"] = _round(self.entity_recall)
        else:
            result["entity_micro_f1"] = None
        return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis (float64)."""
    exp = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    result: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return result


def evaluate(items: Sequence[Encoded], labels: Labels, intent_logits: np.ndarray,
             tag_logits: Sequence[np.ndarray] | None) -> Metrics:
    """Metrics for `items` given class logits `[n, n_classes]` and, per item, tag logits
    `[tokens, n_tags]` (at least the item's own tokens)."""
    if not items:
        raise ValueError("no items to evaluate")
    predicted = intent_logits.argmax(axis=-1)
    hits = predicted == np.array([item.label_id for item in items])
    accuracy = float(hits.mean())
    ece = expected_calibration_error(softmax(intent_logits).max(axis=-1), hits)
    if not labels.has_tags or tag_logits is None:
        return Metrics(n=len(items), intent_accuracy=accuracy, intent_ece=ece)
    tp = fp = fn = 0
    for item, logits in zip(items, tag_logits, strict=True):
        tags = [labels.tags[int(i)] for i in logits[: len(item.encoding.ids)].argmax(axis=-1)]
        found = set(decode_spans(item.encoding, tags))
        gold = set(item.text.spans)
        tp += len(found & gold)
        fp += len(found - gold)
        fn += len(gold - found)
    if tp + fp + fn == 0:
        return Metrics(n=len(items), intent_accuracy=accuracy, intent_ece=ece)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn)
    return Metrics(len(items), accuracy, f1, precision, recall, ece)

