"""NLU evaluation metrics: pure functions over gold and predicted items (no sklearn).

Conventions:
- every ratio whose denominator is zero is 0.0 (`ratio`): precision of a label never predicted,
  recall of a label never in the gold data, accuracy of an empty set;
- F1 is the harmonic mean of precision and recall, 0.0 when both are 0.0;
- intent metrics compare the *top* predicted intent with the gold intent; the out-of-scope
  flag (`is_out_of_scope`) is measured separately by `out_of_scope_metrics`;
- entity spans match exactly on (entity, start, end), char offsets with `end` exclusive; a span
  repeated within one example counts as many times as it appears (multiset matching);
- calibration (`botfactory.evaluation.calibration`): the top intent's confidence against
  whether it is the gold intent, 15 equal-width bins, expected calibration error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from botfactory.evaluation.calibration import CalibrationBin, calibration_bins, ece_of

DEFAULT_OUT_OF_SCOPE = "out_of_scope"


@dataclass(frozen=True)
class Span:
    """One entity span: label and char offsets [start, end)."""

    entity: str
    start: int
    end: int


@dataclass(frozen=True)
class Gold:
    """The labelled truth for one example."""

    intent: str
    entities: tuple[Span, ...] = ()


@dataclass(frozen=True)
class Predicted:
    """A model's output for one example; `out_of_scope` is the flag of `is_out_of_scope`."""

    intent: str
    entities: tuple[Span, ...] = ()
    confidence: float = 1.0
    out_of_scope: bool = False


@dataclass(frozen=True)
class Sample:
    """One evaluated example: its text, gold labels and prediction."""

    text: str
    gold: Gold
    predicted: Predicted


@dataclass(frozen=True)
class Counts:
    """True positives, false positives and false negatives of one label (or of all)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


@dataclass(frozen=True)
class PRF:
    """Precision, recall, F1 and support (the number of gold occurrences)."""

    precision: float
    recall: float
    f1: float
    support: int

    def as_dict(self) -> dict[str, float | int]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1,
                "support": self.support}


@dataclass(frozen=True)
class EntityMetrics:
    micro: PRF
    per_entity: dict[str, PRF]


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts with gold labels as rows and predicted labels as columns, labels sorted."""

    labels: list[str]
    matrix: npt.NDArray[np.int64]


@dataclass(frozen=True)
class Evaluation:
    """Every metric of one evaluation run."""

    n_examples: int
    intent_accuracy: float
    intent_macro_f1: float
    per_intent: dict[str, PRF]
    entities: EntityMetrics
    out_of_scope: PRF | None
    confusion: ConfusionMatrix
    calibration: list[CalibrationBin]  # top-intent confidence bins

    @property
    def intent_ece(self) -> float:
        """Expected calibration error of the top intent's confidence."""
        return ece_of(self.calibration)


def ratio(numerator: float, denominator: float) -> float:
    """`numerator / denominator`, or 0.0 when the denominator is zero."""
    return numerator / denominator if denominator else 0.0


def f1_score(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall; 0.0 when both are zero."""
    return ratio(2 * precision * recall, precision + recall)


def prf(counts: Counts) -> PRF:
    """Precision, recall and F1 from counts; support is tp + fn."""
    precision = ratio(counts.tp, counts.tp + counts.fp)
    recall = ratio(counts.tp, counts.tp + counts.fn)
    return PRF(precision, recall, f1_score(precision, recall), counts.tp + counts.fn)


def accuracy(gold: Sequence[str], predicted: Sequence[str]) -> float:
    """Share of positions where the predicted label equals the gold label."""
    _check_lengths(gold, predicted)
    return ratio(sum(g == p for g, p in zip(gold, predicted, strict=True)), len(gold))


def label_counts(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, Counts]:
    """One-vs-rest counts for every label of gold ∪ predicted, sorted by label."""
    _check_lengths(gold, predicted)
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for g, p in zip(gold, predicted, strict=True):
        if g == p:
            tp[g] += 1
        else:
            fp[p] += 1
            fn[g] += 1
    return {label: Counts(tp[label], fp[label], fn[label])
            for label in sorted(set(gold) | set(predicted))}


def per_label_prf(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, PRF]:
    """Precision/recall/F1/support for every label of gold ∪ predicted."""
    return {label: prf(counts) for label, counts in label_counts(gold, predicted).items()}


def macro_f1(per_label: Mapping[str, PRF]) -> float:
    """Unweighted mean of the labels' F1 (labels only predicted count, with F1 0.0)."""
    return ratio(sum(m.f1 for m in per_label.values()), len(per_label))


def span_counts(gold: Sequence[Iterable[Span]],
                predicted: Sequence[Iterable[Span]]) -> dict[str, Counts]:
    """Per-entity exact-match counts over examples, sorted by entity label."""
    _check_lengths(gold, predicted)
    totals: dict[str, Counts] = {}
    for gold_spans, predicted_spans in zip(gold, predicted, strict=True):
        for entity, counts in _example_span_counts(Counter(gold_spans),
                                                   Counter(predicted_spans)).items():
            totals[entity] = totals.get(entity, Counts()) + counts
    return dict(sorted(totals.items()))


def _example_span_counts(gold: Counter[Span], predicted: Counter[Span]) -> dict[str, Counts]:
    matched = gold & predicted
    result: dict[str, Counts] = {}
    for span in gold | predicted:
        tp = matched[span]
        counts = Counts(tp, predicted[span] - tp, gold[span] - tp)
        result[span.entity] = result.get(span.entity, Counts()) + counts
    return result


def entity_metrics(gold: Sequence[Iterable[Span]],
                   predicted: Sequence[Iterable[Span]]) -> EntityMetrics:
    """Micro-averaged and per-entity precision/recall/F1 of exact span matches."""
    per_entity = span_counts(gold, predicted)
    total = sum(per_entity.values(), Counts())
    return EntityMetrics(prf(total), {e: prf(c) for e, c in per_entity.items()})


def is_out_of_scope(intent: str, confidence: float, out_of_scope_intent: str | None,
                    threshold: float) -> bool:
    """The out-of-scope flag: the top intent is the OOS intent, or its confidence < threshold."""
    return intent == out_of_scope_intent or confidence < threshold


def out_of_scope_metrics(gold: Sequence[str], flagged: Sequence[bool],
                         out_of_scope_intent: str = DEFAULT_OUT_OF_SCOPE) -> PRF | None:
    """Precision/recall of the OOS flag against gold OOS labels; None if gold has none."""
    _check_lengths(gold, flagged)
    truth = [g == out_of_scope_intent for g in gold]
    if not any(truth):
        return None
    tp = sum(t and f for t, f in zip(truth, flagged, strict=True))
    return prf(Counts(tp, sum(flagged) - tp, sum(truth) - tp))


def confusion_matrix(gold: Sequence[str], predicted: Sequence[str]) -> ConfusionMatrix:
    """Counts of (gold, predicted) pairs over the sorted labels of gold ∪ predicted."""
    _check_lengths(gold, predicted)
    labels = sorted(set(gold) | set(predicted))
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for g, p in zip(gold, predicted, strict=True):
        matrix[index[g], index[p]] += 1
    return ConfusionMatrix(labels, matrix)


def evaluate(samples: Sequence[Sample],
             out_of_scope_intent: str = DEFAULT_OUT_OF_SCOPE) -> Evaluation:
    """All metrics of a set of evaluated samples."""
    gold = [s.gold.intent for s in samples]
    predicted = [s.predicted.intent for s in samples]
    per_intent = per_label_prf(gold, predicted)
    return Evaluation(
        n_examples=len(samples),
        intent_accuracy=accuracy(gold, predicted),
        intent_macro_f1=macro_f1(per_intent),
        per_intent=per_intent,
        entities=entity_metrics([s.gold.entities for s in samples],
                                [s.predicted.entities for s in samples]),
        out_of_scope=out_of_scope_metrics(gold, [s.predicted.out_of_scope for s in samples],
                                          out_of_scope_intent),
        confusion=confusion_matrix(gold, predicted),
        calibration=intent_calibration(samples),
    )


def intent_calibration(samples: Sequence[Sample]) -> list[CalibrationBin]:
    """Calibration bins of the top intent's confidence (correct: it is the gold intent)."""
    return calibration_bins([s.predicted.confidence for s in samples],
                            [not intent_error(s) for s in samples])


def intent_error(sample: Sample) -> bool:
    return sample.gold.intent != sample.predicted.intent


def entity_error(sample: Sample) -> bool:
    return Counter(sample.gold.entities) != Counter(sample.predicted.entities)


def misclassified(samples: Iterable[Sample]) -> list[Sample]:
    """Samples with a wrong intent or wrong entities, by confidence descending (stable)."""
    wrong = [s for s in samples if intent_error(s) or entity_error(s)]
    return sorted(wrong, key=lambda s: s.predicted.confidence, reverse=True)


def _check_lengths(gold: Sequence[object], predicted: Sequence[object]) -> None:
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold items but {len(predicted)} predictions")
