"""`botfactory test-kb`: retrieval quality of a knowledge index on a YAML of questions.

A case expects a document path (any passage of it counts), an FAQ id (`faq:<id>`), or null
(unanswerable: it must be declined, i.e. the top score stays under the answer threshold).
Metrics: recall@1, recall@5 and MRR over the answerable cases, the share of unanswerable
cases declined, the share of answerable cases that would be answered (top score at or above
the threshold), and the share of all cases handled correctly (answerable: answered with the
expected item at rank 1; unanswerable: declined). `calibrate` picks the threshold that
maximises that share on a seeded half of the cases and reports the other half with it; it
also fits the score calibration (`knowledge.score_calibration`): the probability that the
top hit answers the question, P = 1 / (1 + exp(-(slope * score + intercept))) (Platt
scaling), which the dialogue compares with an intent's confidence (docs/bot-definition.md).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

from services.botdef.yamlio import YamlSyntaxError, line_of, read_yaml
from services.knowledge.errors import KnowledgeFormatError
from services.knowledge.search import Hit

CASES_FILE = Path("tests") / "kb.yml"
SEARCH_K = 5
DEFAULT_THRESHOLD = 0.5
THRESHOLD_STEP = 0.01
RIDGE = 1e-3
"""L2 penalty of the Platt fit (keeps it finite when the scores separate the cases)."""


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
            raise KnowledgeFormatError(f"{path}:{line}: cases[{index}]: a case needs "
                                       "`question` and `expect`")
        question, expect = raw.get("question"), raw["expect"]
        if not isinstance(question, str) or not question.strip():
            raise KnowledgeFormatError(f"{path}:{line}: cases[{index}].question: question "
                                       "must be a non-empty text")
        if expect is not None and (not isinstance(expect, str) or not expect.strip()):
            raise KnowledgeFormatError(f"{path}:{line}: cases[{index}].expect: expect must be "
                                       "a document path, faq:<id> or null")
        cases.append(KbCase(question.strip(), expect, line))
    return cases


def matches(hit: Hit, expect: str) -> bool:
    return hit.id == expect if expect.startswith("faq:") else hit.document == expect


def evaluate(searcher: SearchesText, cases: Sequence[KbCase],
             answer_threshold: float) -> dict[str, Any]:
    """Run every case; the report (metrics, then one row per case)."""
    return report(run_cases(searcher, cases), answer_threshold)


def run_cases(searcher: SearchesText, cases: Sequence[KbCase]) -> list[CaseResult]:
    """Search every case once (the hits do not depend on the threshold)."""
    return [_run_case(searcher, case) for case in cases]


@dataclass(frozen=True)
class CaseResult:
    case: KbCase
    hits: tuple[str, ...]
    rank: int | None
    """1-based rank of the first matching hit (answerable cases), None if not in the top k."""
    top: float | None
    """The best hit's score (rounded to 4 digits), None without hits."""

    def answered(self, threshold: float) -> bool:
        return self.top is not None and self.top >= threshold

    def correct(self, threshold: float) -> bool:
        """Answerable: answered with the expected item at rank 1; unanswerable: declined."""
        if self.case.expect is None:
            return not self.answered(threshold)
        return self.rank == 1 and self.answered(threshold)


def report(results: Sequence[CaseResult], answer_threshold: float) -> dict[str, Any]:
    """Metrics of `results` at `answer_threshold`, then one row per case."""
    answerable = [r for r in results if r.case.expect is not None]
    unanswerable = [r for r in results if r.case.expect is None]
    return {
        "n_cases": len(results),
        "n_answerable": len(answerable),
        "n_unanswerable": len(unanswerable),
        "answer_threshold": answer_threshold,
        "recall_at_1": _mean([r.rank == 1 for r in answerable]),
        "recall_at_5": _mean([r.rank is not None and r.rank <= 5 for r in answerable]),
        "mrr": _mean([1 / r.rank if r.rank else 0.0 for r in answerable]),
        "declined_share": _mean([not r.answered(answer_threshold) for r in unanswerable]),
        "answered_share": _mean([r.answered(answer_threshold) for r in answerable]),
        "correct_share": _mean([r.correct(answer_threshold) for r in results]),
        "cases": [_row(r, answer_threshold) for r in results],
    }


def _run_case(searcher: SearchesText, case: KbCase) -> CaseResult:
    hits = searcher.search(case.question, SEARCH_K)
    rank = None
    if case.expect is not None:
        rank = next((i + 1 for i, h in enumerate(hits) if matches(h, case.expect)), None)
    top = round(float(hits[0].score), 4) if hits else None
    return CaseResult(case, tuple(h.id for h in hits), rank, top)


def _row(result: CaseResult, threshold: float) -> dict[str, Any]:
    case = result.case
    return {"question": case.question, "expect": case.expect, "line": case.line,
            "rank": result.rank, "top_score": result.top,
            "answered": result.answered(threshold), "passed": result.correct(threshold),
            "hits": list(result.hits)}


def split_cases(cases: Sequence[KbCase], seed: int) -> tuple[list[KbCase], list[KbCase]]:
    """A seeded random half of the cases (calibration) and the other half (held out), each
    with half of the answerable and half of the unanswerable cases, in file order."""
    rng = random.Random(seed)
    calibration: set[int] = set()
    for answerable in (True, False):
        group = [i for i, c in enumerate(cases) if (c.expect is not None) == answerable]
        rng.shuffle(group)
        calibration.update(group[:(len(group) + 1) // 2])
    return ([c for i, c in enumerate(cases) if i in calibration],
            [c for i, c in enumerate(cases) if i not in calibration])


def pick_threshold(results: Sequence[CaseResult]) -> float:
    """The answer threshold (3 decimals) that handles the most `results` correctly (see
    `CaseResult.correct`). Candidates lie midway between consecutive top scores (and just
    outside them); among equally good ones the median is taken."""
    scores = sorted({r.top for r in results if r.top is not None})
    if not scores:
        return DEFAULT_THRESHOLD
    edges = [scores[0] - THRESHOLD_STEP, *scores, scores[-1] + THRESHOLD_STEP]
    candidates = sorted({round((a + b) / 2, 3) for a, b in pairwise(edges)})
    correct = [sum(r.correct(t) for r in results) for t in candidates]
    best = [t for t, n in zip(candidates, correct, strict=True) if n == max(correct)]
    return best[(len(best) - 1) // 2]


def calibrate(searcher: SearchesText, cases: Sequence[KbCase], seed: int) -> dict[str, Any]:
    """Pick the threshold and fit the score calibration on a seeded half of the cases; the
    metrics of both halves with them (the held-out half's are the honest estimate)."""
    calibration, held_out = split_cases(cases, seed)
    calibration_results = run_cases(searcher, calibration)
    held_out_results = run_cases(searcher, held_out)
    threshold = pick_threshold(calibration_results)
    fitted = fit_score_calibration(calibration_results)
    scores: dict[str, Any] | None = None
    if fitted is not None:
        slope, intercept = fitted
        scores = {"slope": slope, "intercept": intercept,
                  "held_out_brier": brier(held_out_results, fitted),
                  "held_out_brier_raw": brier(held_out_results, None)}
    return {"seed": seed, "answer_threshold": threshold, "score_calibration": scores,
            "calibration": report(calibration_results, threshold),
            "held_out": report(held_out_results, threshold)}


def _answered_right(result: CaseResult) -> float:
    """1.0 when the top hit answers the question (the expected item at rank 1), else 0.0."""
    return 1.0 if result.case.expect is not None and result.rank == 1 else 0.0


def fit_score_calibration(results: Sequence[CaseResult]) -> tuple[float, float] | None:
    """(slope, intercept), 3 decimals, of the logistic fit of "the top hit answers the
    question" on the top score (Newton's method, with a small ridge); None without both
    right and wrong top hits."""
    points = [(r.top or 0.0, _answered_right(r)) for r in results]
    if len({y for _, y in points}) < 2:
        return None
    slope, intercept = 0.0, 0.0
    for _ in range(100):
        grad, hessian = [0.0, 0.0], [[RIDGE, 0.0], [0.0, RIDGE]]
        for x, y in points:
            p = _sigmoid(slope * x + intercept)
            weight = p * (1 - p)
            grad = [grad[0] + (p - y) * x, grad[1] + (p - y)]
            hessian = [[hessian[0][0] + weight * x * x, hessian[0][1] + weight * x],
                       [hessian[1][0] + weight * x, hessian[1][1] + weight]]
        grad = [grad[0] + RIDGE * slope, grad[1] + RIDGE * intercept]
        det = hessian[0][0] * hessian[1][1] - hessian[0][1] * hessian[1][0]
        step = ((hessian[1][1] * grad[0] - hessian[0][1] * grad[1]) / det,
                (hessian[0][0] * grad[1] - hessian[1][0] * grad[0]) / det)
        slope, intercept = slope - step[0], intercept - step[1]
        if max(abs(step[0]), abs(step[1])) < 1e-9:
            break
    return round(slope, 3), round(intercept, 3)


def brier(results: Sequence[CaseResult], fitted: tuple[float, float] | None) -> float | None:
    """Mean squared error of the probability that the top hit answers (the calibrated score,
    or the raw score when `fitted` is None): lower is better calibrated."""
    errors = []
    for result in results:
        score = result.top or 0.0
        p = score if fitted is None else _sigmoid(fitted[0] * score + fitted[1])
        errors.append((p - _answered_right(result)) ** 2)
    return _mean(errors)


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-max(-60.0, min(60.0, z))))


def _mean(values: Sequence[float | bool]) -> float | None:
    return round(sum(float(v) for v in values) / len(values), 4) if values else None
