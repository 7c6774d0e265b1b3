"""`botfactory test-kb`: retrieval quality of a knowledge index on a YAML of questions.

A case expects a document path (any passage of it counts), an FAQ id (`faq:<id>`), or null
(unanswerable: it must be declined, i.e. the top score stays under the answer threshold).
Metrics: recall@1, recall@5 and MRR over the answerable cases, the share of unanswerable
cases declined, and the share of answerable cases that would be answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from services.botdef.yamlio import YamlSyntaxError, line_of, read_yaml
from services.knowledge.errors import KnowledgeFormatError
from services.knowledge.search import Hit

CASES_FILE = Path("tests") / "kb.yml"
SEARCH_K = 5


class SearchesText(Protocol):
    def search(self, query: str, k: int = ...) -> list[Hit]: ...


@dataclass(frozen=True)
class KbCase:
    question: str
    expect: str | None
    line: int


def load_cases(path: Path) -> list[KbCase]:
    """The cases of a kb.yml; raises KnowledgeFormatError naming the file and line."""
    try:
        doc = read_yaml(path)
    except (YamlSyntaxError, OSError, UnicodeDecodeError) as exc:
        raise KnowledgeFormatError(f"{path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list) or not doc["cases"]:
        raise KnowledgeFormatError(f"{path}: needs a non-empty list `cases:`")
    if str(doc.get("version", "1")) != "1":
        raise KnowledgeFormatError(f"{path}: version {doc.get('version')!r} is not supported")
    cases = []
    for index, raw in enumerate(doc["cases"]):
        line = line_of(doc, ["cases", index])
        if not isinstance(raw, dict) or "expect" not in raw:
            raise KnowledgeFormatError(f"{path}:{line}: a case needs `question` and `expect`")
        question, expect = raw.get("question"), raw["expect"]
        if not isinstance(question, str) or not question.strip():
            raise KnowledgeFormatError(f"{path}:{line}: question must be a non-empty text")
        if expect is not None and (not isinstance(expect, str) or not expect.strip()):
            raise KnowledgeFormatError(f"{path}:{line}: expect must be a document path, "
                                       "faq:<id> or null")
        cases.append(KbCase(question.strip(), expect, line))
    return cases


def matches(hit: Hit, expect: str) -> bool:
    return hit.id == expect if expect.startswith("faq:") else hit.document == expect


def evaluate(searcher: SearchesText, cases: Sequence[KbCase],
             answer_threshold: float) -> dict[str, Any]:
    """Run every case; the report (metrics, then one row per case)."""
    rows = [_run_case(searcher, case, answer_threshold) for case in cases]
    answerable = [r for r in rows if r["expect"] is not None]
    unanswerable = [r for r in rows if r["expect"] is None]
    return {
        "n_cases": len(rows),
        "n_answerable": len(answerable),
        "n_unanswerable": len(unanswerable),
        "answer_threshold": answer_threshold,
        "recall_at_1": _mean([r["rank"] == 1 for r in answerable]),
        "recall_at_5": _mean([r["rank"] is not None and r["rank"] <= 5 for r in answerable]),
        "mrr": _mean([1 / r["rank"] if r["rank"] else 0.0 for r in answerable]),
        "declined_share": _mean([not r["answered"] for r in unanswerable]),
        "answered_share": _mean([r["answered"] for r in answerable]),
        "cases": rows,
    }


def _run_case(searcher: SearchesText, case: KbCase, threshold: float) -> dict[str, Any]:
    hits = searcher.search(case.question, SEARCH_K)
    top = hits[0].score if hits else None
    rank = None
    if case.expect is not None:
        rank = next((i + 1 for i, h in enumerate(hits) if matches(h, case.expect)), None)
    answered = top is not None and top >= threshold
    passed = (rank == 1 and answered) if case.expect is not None else not answered
    return {"question": case.question, "expect": case.expect, "line": case.line,
            "rank": rank, "top_score": None if top is None else round(float(top), 4),
            "answered": answered, "passed": passed, "hits": [h.id for h in hits]}


def _mean(values: Sequence[float | bool]) -> float | None:
    return round(sum(float(v) for v in values) / len(values), 4) if values else None
