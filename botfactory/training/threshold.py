"""The fallback threshold of a bot that does not set `nlu.confidence_threshold`: chosen at
training time from the served model's calibrated confidences on the held-out split.

Rule: the highest threshold in 0.10, 0.15, ..., 0.70 at which at most 5% of the held-out texts
the model answers correctly would fall back. Out-of-scope messages in production mostly come
with low confidence, so the highest threshold that costs at most one right answer in twenty
catches the most of them. Without a held-out split the default 0.5 stays.

Reported (metadata.json `threshold`), on the held-out split: the share of correct answers that
fall back, and the precision and recall of falling back against the answers that would be
wrong (misclassified texts, and gold out-of-scope texts taken for an in-scope intent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from botfactory.training.metrics import softmax

GRID = tuple(round(0.10 + 0.05 * step, 2) for step in range(13))
MAX_FALSE_FALLBACK = 0.05
DEFAULT = 0.5
RULE = ("the highest threshold in 0.10..0.70 (steps of 0.05) at which at most 5% of the "
        "correctly answered held-out texts fall back")


@dataclass(frozen=True)
class Threshold:
    value: float
    source: str  # "configured" (bot.yml), "heldout" or "default"
    n: int = 0
    wrong: int = 0
    false_fallback_rate: float | None = None
    fallback_precision: float | None = None
    fallback_recall: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source,
                "rule": RULE if self.source == "heldout" else None, "n": self.n,
                "wrong": self.wrong, "false_fallback_rate": _round(self.false_fallback_rate),
                "fallback_precision": _round(self.fallback_precision),
                "fallback_recall": _round(self.fallback_recall)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def at(value: float, source: str, confidences: np.ndarray, wrong: np.ndarray) -> Threshold:
    """What falling back below `value` does on texts with these confidences, `wrong` marking
    the answers that would be wrong."""
    falls = confidences < value
    right = ~wrong
    false_rate = float(falls[right].mean()) if right.any() else None
    caught = int((falls & wrong).sum())
    precision = caught / int(falls.sum()) if falls.any() else None
    recall = caught / int(wrong.sum()) if wrong.any() else None
    return Threshold(value, source, len(confidences), int(wrong.sum()), false_rate, precision,
                     recall)


def choose(intent_logits: np.ndarray, gold: Sequence[int], intents: Sequence[str],
           out_of_scope_intent: str | None, configured: float | None) -> Threshold:
    """The threshold to serve: `configured` (bot.yml) when set, else the rule above applied to
    the served model's held-out logits (the default 0.5 without held-out texts). Texts the
    model assigns to the out-of-scope intent fall back whatever the threshold: left out."""
    if len(gold) == 0:
        return Threshold(DEFAULT if configured is None else configured,
                         "default" if configured is None else "configured")
    probs = softmax(intent_logits)
    predicted, confidences = probs.argmax(axis=-1), probs.max(axis=-1)
    gold_ids = np.asarray(gold)
    oos = intents.index(out_of_scope_intent) if out_of_scope_intent in intents else -1
    in_scope = predicted != oos
    wrong = (predicted != gold_ids) & in_scope
    if configured is not None:
        return at(configured, "configured", confidences[in_scope], wrong[in_scope])
    right_conf = confidences[~wrong & in_scope]
    chosen = GRID[0]
    for value in GRID:
        if right_conf.size == 0 or float((right_conf < value).mean()) <= MAX_FALSE_FALLBACK:
            chosen = value
    return at(chosen, "heldout", confidences[in_scope], wrong[in_scope])
