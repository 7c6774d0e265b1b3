"""Evaluation report files: `report.json`, `errors.json`, `confusion.png` and
`reliability.png` in one folder.

`report.json` is machine-readable (progress is tracked from it); its keys:
`intent.{accuracy, macro_f1, per_intent, ece, calibration}`,
`entities.{micro_f1, precision, recall, per_entity}`,
`out_of_scope.{precision, recall}` (`out_of_scope` is null when the gold data has no
out-of-scope label), `n_examples`, `model` (bot, version, ...), `data` (what was evaluated),
`created_at` (ISO 8601, UTC). Per-label entries are `{precision, recall, f1, support}`.
`intent.ece` is the expected calibration error of the top intent's confidence (15 equal-width
bins, `botfactory.evaluation.calibration`); `intent.calibration` lists the bins, lowest first,
as `{lower, upper, count, confidence, accuracy}` (mean confidence and share correct, null for
an empty bin). `reliability.png` draws those bins against perfect calibration.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botfactory.evaluation.calibration import plot_reliability
from botfactory.evaluation.confusion import plot_confusion
from botfactory.evaluation.metrics import (
    PRF,
    Evaluation,
    Sample,
    Span,
    entity_error,
    intent_error,
    misclassified,
)

REPORT_FILE = "report.json"
ERRORS_FILE = "errors.json"
CONFUSION_FILE = "confusion.png"
RELIABILITY_FILE = "reliability.png"


@dataclass(frozen=True)
class ReportFiles:
    report: Path
    errors: Path
    confusion: Path
    reliability: Path


def _per_label(metrics: Mapping[str, PRF]) -> dict[str, dict[str, float | int]]:
    return {label: m.as_dict() for label, m in metrics.items()}


def build_report(evaluation: Evaluation, model: Mapping[str, Any], data: Mapping[str, Any],
                 created_at: datetime | None = None) -> dict[str, Any]:
    """The content of `report.json`."""
    entities = evaluation.entities
    oos = evaluation.out_of_scope
    return {
        "intent": {
            "accuracy": evaluation.intent_accuracy,
            "macro_f1": evaluation.intent_macro_f1,
            "per_intent": _per_label(evaluation.per_intent),
            "ece": evaluation.intent_ece,
            "calibration": [b.as_dict() for b in evaluation.calibration],
        },
        "entities": {
            "micro_f1": entities.micro.f1,
            "precision": entities.micro.precision,
            "recall": entities.micro.recall,
            "per_entity": _per_label(entities.per_entity),
        },
        "out_of_scope": None if oos is None else {"precision": oos.precision,
                                                  "recall": oos.recall},
        "n_examples": evaluation.n_examples,
        "model": dict(model),
        "data": dict(data),
        "created_at": (created_at or datetime.now(UTC)).isoformat(timespec="seconds"),
    }


def _spans(text: str, spans: Sequence[Span]) -> list[dict[str, Any]]:
    return [{"entity": s.entity, "start": s.start, "end": s.end, "text": text[s.start:s.end]}
            for s in spans]


def error_record(sample: Sample) -> dict[str, Any]:
    """One entry of `errors.json`; `errors` says what is wrong: "intent", "entities" or both."""
    kinds = [name for name, wrong in (("intent", intent_error(sample)),
                                      ("entities", entity_error(sample))) if wrong]
    return {
        "text": sample.text,
        "gold_intent": sample.gold.intent,
        "predicted_intent": sample.predicted.intent,
        "confidence": sample.predicted.confidence,
        "out_of_scope": sample.predicted.out_of_scope,
        "gold_entities": _spans(sample.text, sample.gold.entities),
        "predicted_entities": _spans(sample.text, sample.predicted.entities),
        "errors": kinds,
    }


def error_records(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """Misclassified samples (intent or entities), by confidence descending."""
    return [error_record(s) for s in misclassified(samples)]


def _write_json(path: Path, content: Any) -> Path:
    """Write JSON through a temporary file so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n",
                         encoding="utf-8")
    os.replace(temporary, path)
    return path


def write_report(out_dir: str | Path, evaluation: Evaluation, samples: Sequence[Sample],
                 model: Mapping[str, Any], data: Mapping[str, Any],
                 created_at: datetime | None = None) -> ReportFiles:
    """Write the four report files into `out_dir` (created if missing)."""
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    return ReportFiles(
        report=_write_json(directory / REPORT_FILE,
                           build_report(evaluation, model, data, created_at)),
        errors=_write_json(directory / ERRORS_FILE, error_records(samples)),
        confusion=plot_confusion(evaluation.confusion, evaluation.intent_accuracy,
                                 directory / CONFUSION_FILE),
        reliability=plot_reliability(evaluation.calibration, directory / RELIABILITY_FILE),
    )
