"""`botfactory kb build` / `test-kb` on the fixture bot with the real all-MiniLM-L6-v2 sentence
encoder (exported once per test session and cached), and the test-kb metrics."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from botfactory.cli import main
from botfactory.kb import encoder as kb_encoder
from botfactory.kb.build import BuildOptions, BuildResult, build_index
from botfactory.kb.evaluate import (
    CaseResult,
    KbCase,
    brier,
    calibrate,
    evaluate,
    fit_score_calibration,
    load_cases,
    pick_threshold,
    split_cases,
)
from botfactory.kb.settings import read_bot_knowledge
from services.botdef import load_bot
from services.knowledge.errors import IndexLoadError, KnowledgeFormatError
from services.knowledge.index import ENTRIES_FILE, REQUIRED_FILES, index_version, load_index
from services.knowledge.search import Hit, Searcher
from services.knowledge.splitting import sentences

FIXTURE = Path(__file__).parent / "data" / "knowledge" / "bot"


def encoder_cache(factory: pytest.TempPathFactory) -> Path:
    """One encoder export per session, shared by every module that builds an index."""
    return factory.getbasetemp() / "kb-encoder-cache"


@pytest.fixture(scope="session")
def fixture_index(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    out = tmp_path_factory.mktemp("kb") / "kbtest.kb"
    options = BuildOptions(cache_dir=encoder_cache(tmp_path_factory), progress=False)
    return build_index(FIXTURE, out, options)


@pytest.fixture(scope="session")
def searcher(fixture_index: BuildResult) -> Searcher:
    return Searcher.load(fixture_index.directory)


def test_build_writes_a_versioned_index(fixture_index: BuildResult) -> None:
    directory = fixture_index.directory
    assert all((directory / name).is_file() for name in REQUIRED_FILES)
    meta = json.loads((directory / "metadata.json").read_text())
    assert meta["kind"] == "knowledge" and meta["format"] == 1 and meta["bot"] == "kbtest"
    assert meta["version"] == index_version(directory)
    assert meta["counts"] == {"documents": 5, "passages": 9, "faq_entries": 3,
                              "faq_questions": 5, "vectors": 14, "sentences": 21}
    assert meta["settings"] == {"max_passage_chars": 400, "bm25_weight": 0.3,
                                "snippet_sentences": 2}
    assert meta["encoder"]["dim"] == 384 and meta["encoder"]["pooling"] == "mean"
    checks = meta["encoder"]["checks"]
    assert checks["onnx_max_abs_diff"] < 1e-4 and checks["int8_min_cosine"] >= 0.95
    data = load_index(directory)
    assert data.vectors.dtype.name == "float32" and data.vectors.flags["C_CONTIGUOUS"]
    norms = (data.vectors ** 2).sum(axis=1)
    assert abs(norms - 1).max() < 1e-3


def test_rebuild_reuses_the_cached_encoder_and_keeps_the_version(
        fixture_index: BuildResult, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_export(*args: object) -> None:
        raise AssertionError("the encoder was exported again")

    monkeypatch.setattr(kb_encoder, "_export", no_export)
    options = BuildOptions(cache_dir=encoder_cache(tmp_path_factory), progress=False)
    again = build_index(FIXTURE, tmp_path / "again", options)
    assert again.metadata["version"] == fixture_index.metadata["version"]


def test_search_answers_paraphrases_with_citations(searcher: Searcher) -> None:
    hits = searcher.search("someone stole my bank card", k=3)
    assert hits[0].id == "faq:lost-card" and hits[0].kind == "faq"
    assert hits[0].heading_path[0] in ("I lost my card", "my card was stolen, what do I do?")
    assert hits[0].buttons[0].title == "Block my card"
    fees = searcher.search("what does it cost to withdraw cash abroad with my card?", k=3)[0]
    assert fees.document == "docs/cards/fees.md" and fees.heading_path == ("Card fees", "Abroad")
    assert fees.url == "https://bank.example/help/card-fees"
    assert "Cash withdrawals abroad cost 3 EUR each." in fees.snippet
    picked = sentences(fees.snippet)
    assert len(picked) == 2 and all(p in fees.text for p in picked)
    assert fees.text.index(picked[0]) < fees.text.index(picked[1])  # passage order
    weather = searcher.search("what's the weather in Paris tomorrow?", k=1)[0]
    assert weather.score < 0.3


def test_a_changed_index_file_is_refused(fixture_index: BuildResult, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(fixture_index.directory, tmp_path / "copy"))
    entries = copy / ENTRIES_FILE
    entries.write_text(entries.read_text().replace("5 EUR", "6 EUR"))
    with pytest.raises(IndexLoadError, match="does not match version"):
        Searcher.load(copy)
    (copy / "metadata.json").write_text('{"kind": "nlu"}')
    with pytest.raises(IndexLoadError, match="not a knowledge index"):
        Searcher.load(copy)


def test_test_kb_cli_prints_metrics_and_writes_the_report(
        fixture_index: BuildResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "out" / "kb.json"
    code = main(["test-kb", str(FIXTURE), "--index", str(fixture_index.directory),
                 "--report", str(report)])
    assert code == 0
    out = capsys.readouterr().out
    assert "8 answerable, 3 unanswerable questions (answer threshold 0.4)" in out
    data = json.loads(report.read_text())
    assert data["index_version"] == fixture_index.metadata["version"]
    assert data["recall_at_1"] >= 0.75 and data["recall_at_5"] == 1.0
    assert data["declined_share"] == 1.0
    assert len(data["cases"]) == 11


def test_kb_build_cli_reports_bad_documents_by_file(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    bot = Path(shutil.copytree(FIXTURE, tmp_path / "bot"))
    (bot / "knowledge" / "docs" / "photo.md").write_bytes(b"\x89PNG\x00\x00")
    (bot / "knowledge" / "faq.yml").write_text("faq: {}\n")
    code = main(["kb", "build", str(bot), "--out", str(tmp_path / "idx"), "--quiet",
                 "--cache-dir", str(tmp_path / "unused-cache")])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: faq.yml: must be a mapping with a list `faq:` of entries" in err
    assert "error: docs/photo.md: binary file" in err
    assert "Traceback" not in err
    assert not (tmp_path / "idx").exists() and not (tmp_path / "unused-cache").exists()


def _hit(hit_id: str, score: float) -> Hit:
    document = "faq.yml" if hit_id.startswith("faq:") else hit_id.split("#")[0]
    return Hit("faq" if hit_id.startswith("faq:") else "passage", hit_id, score, document, (), 0,
               "", "", "", None, ())


class _FakeSearcher:
    def __init__(self, answers: dict[str, list[Hit]]) -> None:
        self.answers = answers

    def search(self, query: str, k: int = 5) -> list[Hit]:
        return self.answers[query][:k]


def test_metrics_recall_mrr_and_declines() -> None:
    searcher = _FakeSearcher({
        "q1": [_hit("a.md#0", 0.9), _hit("b.md#0", 0.5)],
        "q2": [_hit("a.md#1", 0.7), _hit("faq:x", 0.6)],
        "q3": [_hit("a.md#0", 0.3)] + [_hit(f"z{i}.md#0", 0.2) for i in range(5)],
        "n1": [_hit("a.md#0", 0.2)],
        "n2": [_hit("a.md#0", 0.8)],
        "n3": [],
    })
    cases = [KbCase("q1", "a.md", 1), KbCase("q2", "faq:x", 2), KbCase("q3", "c.md", 3),
             KbCase("n1", None, 4), KbCase("n2", None, 5), KbCase("n3", None, 6)]
    report = evaluate(searcher, cases, answer_threshold=0.5)
    assert report["recall_at_1"] == pytest.approx(1 / 3, abs=1e-4)
    assert report["recall_at_5"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["mrr"] == pytest.approx((1 + 0.5 + 0) / 3, abs=1e-4)
    assert report["declined_share"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["answered_share"] == pytest.approx(2 / 3, abs=1e-4)
    assert [c["passed"] for c in report["cases"]] == [True, False, False, True, False, True]


def test_kb_cases_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "kb.yml"
    path.write_text('version: "1"\ncases:\n  - question: hi\n    expect: a.md\n'
                    '  - question: ""\n    expect: null\n')
    with pytest.raises(KnowledgeFormatError,
                       match=r"kb.yml:5: cases\[1\].question: question must be"):
        load_cases(path)
    path.write_text("cases: []\n")
    with pytest.raises(KnowledgeFormatError, match="non-empty list"):
        load_cases(path)


def _cases(answerable: int, unanswerable: int) -> list[KbCase]:
    return ([KbCase(f"q{i}", "a.md", i) for i in range(answerable)]
            + [KbCase(f"n{i}", None, answerable + i) for i in range(unanswerable)])


def test_calibration_split_is_seeded_stratified_and_disjoint() -> None:
    cases = _cases(9, 5)
    first, second = split_cases(cases, seed=7)
    assert split_cases(cases, seed=7) == (first, second)
    assert split_cases(cases, seed=8) != (first, second)
    assert sorted(c.line for c in first + second) == list(range(14))
    assert [c.line for c in first] == sorted(c.line for c in first)  # file order
    assert sum(c.expect is None for c in first) == 3 and sum(c.expect is None for c in second) == 2
    assert len(first) == 8 and len(second) == 6


def _result(expect: str | None, rank: int | None, top: float) -> CaseResult:
    return CaseResult(KbCase("q", expect, 1), (), rank, top)


def test_pick_threshold_maximises_cases_handled_correctly() -> None:
    results = [_result("a.md", 1, 0.8), _result("a.md", 1, 0.7), _result("a.md", 1, 0.6),
               _result("a.md", 2, 0.65),  # wrong item first: never correct
               _result(None, None, 0.5), _result(None, None, 0.55), _result(None, None, 0.3)]
    threshold = pick_threshold(results)
    assert 0.55 < threshold <= 0.6  # all 3 right answers, all 3 declines
    assert sum(r.correct(threshold) for r in results) == 6
    # a tie between two intervals takes the median candidate, deterministically
    tied = [_result("a.md", 1, 0.9), _result(None, None, 0.2), _result("a.md", 1, 0.4),
            _result(None, None, 0.6)]
    assert pick_threshold(tied) == pick_threshold(list(reversed(tied)))
    assert sum(r.correct(pick_threshold(tied)) for r in tied) == 3
    assert pick_threshold([]) == 0.5


def test_calibrate_reports_the_held_out_half_at_the_picked_threshold() -> None:
    answers = {f"q{i}": [_hit("a.md#0", 0.7 + i / 1000)] for i in range(10)}
    answers.update({f"n{i}": [_hit("b.md#0", 0.3 + i / 1000)] for i in range(6)})
    report = calibrate(_FakeSearcher(answers), _cases(10, 6), seed=1)
    assert 0.305 < report["answer_threshold"] < 0.7
    held = report["held_out"]
    assert held["n_answerable"] == 5 and held["n_unanswerable"] == 3
    assert held["answer_threshold"] == report["answer_threshold"]
    assert held["correct_share"] == held["answered_share"] == held["declined_share"] == 1.0
    questions = {c["question"] for c in report["calibration"]["cases"]}
    assert questions.isdisjoint(c["question"] for c in held["cases"])


def test_score_calibration_turns_top_scores_into_the_probability_of_a_right_answer() -> None:
    """Issue 17 item 9: the dialogue compares a hit with an intent's confidence as
    probabilities; the fit is Platt scaling of "the top hit answers" on the top score."""
    cases = _cases(20, 0) + [KbCase(f"w{i}", "a.md", 100 + i) for i in range(10)]
    right = [CaseResult(case, ("a.md#0",), 1, 0.5 + i / 50) for i, case in enumerate(cases[:20])]
    wrong = [CaseResult(case, ("b.md#0",), None, 0.3 + i / 25) for i, case in
             enumerate(cases[20:])]
    fitted = fit_score_calibration(right + wrong)
    assert fitted is not None
    slope, intercept = fitted
    assert slope > 0
    probability = [1 / (1 + math.exp(-(slope * x + intercept))) for x in (0.3, 0.55, 0.8)]
    assert probability[0] < 0.1 < probability[1] < 0.9 < probability[2]
    brier_fitted, brier_raw = brier(right + wrong, fitted), brier(right + wrong, None)
    assert brier_fitted is not None and brier_raw is not None and brier_fitted < brier_raw
    assert fit_score_calibration(right) is None  # nothing wrong to learn from
    answers = {f"q{i}": [_hit("a.md#0", 0.6 + i / 100)] for i in range(10)}
    answers.update({f"n{i}": [_hit("b.md#0", 0.3 + i / 50)] for i in range(6)})
    report = calibrate(_FakeSearcher(answers), _cases(10, 6), seed=1)
    assert set(report["score_calibration"]) == {"slope", "intercept", "held_out_brier",
                                                "held_out_brier_raw"}


def test_test_kb_cli_calibrate(fixture_index: BuildResult, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "cal.json"
    code = main(["test-kb", str(FIXTURE), "--index", str(fixture_index.directory),
                 "--calibrate", "--seed", "3", "--report", str(report)])
    assert code == 0
    out = capsys.readouterr().out
    data = json.loads(report.read_text())
    assert f"calibrated answer threshold {data['answer_threshold']:g} (seed 3; bot.yml: 0.4)" in out
    assert "held-out half: 4 answerable, 1 unanswerable questions" in out
    assert data["calibration"]["n_cases"] + data["held_out"]["n_cases"] == 11
    with pytest.raises(SystemExit):
        main(["test-kb", str(FIXTURE), "--calibrate", "--threshold", "0.5"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_answer_threshold_comes_from_the_loaded_definition() -> None:
    banking = Path(__file__).parents[2] / "bots" / "banking"
    settings = read_bot_knowledge(banking)
    knowledge = load_bot(banking).knowledge
    assert settings.source == "definition" and knowledge is not None
    assert (settings.bot, settings.answer_threshold) == ("banking", knowledge.answer_threshold)
    partial = read_bot_knowledge(FIXTURE)  # only bot.yml: falls back to its raw keys
    assert partial.source == "bot.yml" and partial.answer_threshold == 0.4
