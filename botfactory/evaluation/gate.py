"""The regression gate: a candidate model against the active one, on the bot's frozen test set
and on the new annotations, through the serving engine.

A metric fails when the candidate is worse than the active model by more than its tolerance
(`candidate < active - tolerance`); a metric with no value on a set (no entity in the gold
data, no out-of-scope example) is not compared. The gate passes when no metric fails on any
set. The comparison is written as JSON (`gate.json`, also kept in the candidate's model
directory as reports/gate.json, where `botfactory publish --gate` reads it) and as an HTML
section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botfactory.evaluation.metrics import Evaluation
from botfactory.pages import render_page

GATE_FILE = "gate.json"
MODEL_REPORTS = "reports"
"""In a model directory the result goes to reports/gate.json: a sub-folder, so the model's
content version (a hash of its top-level files) stays the same (the store keeps only the
top-level files: the result stays beside the local model directory)."""
METRICS = ("intent_accuracy", "entity_f1", "oos_recall")
DEFAULT_TOLERANCE = 0.01


@dataclass(frozen=True)
class Tolerance:
    intent_accuracy: float = DEFAULT_TOLERANCE
    entity_f1: float = DEFAULT_TOLERANCE
    oos_recall: float = DEFAULT_TOLERANCE

    def of(self, metric: str) -> float:
        value: float = getattr(self, metric)
        return value


def scores(evaluation: Evaluation) -> dict[str, float | None]:
    """The gated metrics of one evaluation (None: not measurable on that data)."""
    has_entities = evaluation.entities.micro.support > 0
    oos = evaluation.out_of_scope
    return {"intent_accuracy": evaluation.intent_accuracy,
            "entity_f1": evaluation.entities.micro.f1 if has_entities else None,
            "oos_recall": None if oos is None else oos.recall}


def compare_set(active: dict[str, float | None], candidate: dict[str, float | None],
                tolerance: Tolerance) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for metric in METRICS:
        a, c = active.get(metric), candidate.get(metric)
        if a is None or c is None:
            continue
        limit = tolerance.of(metric)
        rows[metric] = {"active": round(a, 4), "candidate": round(c, 4),
                        "delta": round(c - a, 4), "tolerance": limit,
                        "passed": c >= a - limit - 1e-9}
    return rows


def decide(active: dict[str, Any], candidate: dict[str, Any],
           sets: dict[str, tuple[dict[str, float | None], dict[str, float | None], int]],
           tolerance: Tolerance) -> dict[str, Any]:
    """The gate's result: `sets` maps a set name to (active scores, candidate scores, n)."""
    compared: dict[str, dict[str, Any]] = {
        name: {"n": n, "metrics": compare_set(a, c, tolerance)}
                for name, (a, c, n) in sets.items()}
    failed = [f"{name}.{metric}" for name, found in compared.items()
              for metric, row in found["metrics"].items() if not row["passed"]]
    return {"passed": not failed, "failed": failed, "active": active,
            "candidate": candidate, "tolerance": {m: tolerance.of(m) for m in METRICS},
            "sets": compared}


def write(result: dict[str, Any], model_dir: Path, *folders: Path) -> None:
    for folder in (model_dir / MODEL_REPORTS, *folders):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / GATE_FILE).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def render_html(result: dict[str, Any]) -> str:
    """The comparison as an HTML page (templates/gate.html: autoescaped, no scripts)."""
    verdict = "passed" if result["passed"] else "FAILED: " + ", ".join(result["failed"])
    rows = [{"set": name, "n": found["n"], "metric": metric, **row,
             "mark": "ok" if row["passed"] else "worse"}
            for name, found in result["sets"].items()
            for metric, row in found["metrics"].items()]
    return render_page("gate.html", verdict=verdict, rows=rows,
                       candidate=str(result["candidate"].get("version")),
                       active=str(result["active"].get("version")))


def gate_refusal(model_dir: Path, version: str) -> str | None:
    """Why `botfactory publish --gate` must not publish `model_dir` (None: the gate passed
    for exactly this version)."""
    path = Path(model_dir) / MODEL_REPORTS / GATE_FILE
    if not path.is_file():
        return f"{path} not found: run `botfactory gate {model_dir} --active ... --bot-dir ...`"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return f"{path} is not valid JSON"
    if result.get("candidate", {}).get("version") != version:
        return f"{path} is the gate result of another version"
    if not result.get("passed"):
        return f"the regression gate failed: {', '.join(result.get('failed', []))}"
    return None
