"""`botfactory kb build` / `test-kb` on the fixture bot with the real all-MiniLM-L6-v2 sentence
encoder (exported once per test session and cached), and the test-kb metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from botfactory.cli import main
from botfactory.kb import encoder as kb_encoder
from botfactory.kb.build import BuildOptions, BuildResult, build_index
from botfactory.kb.evaluate import KbCase, evaluate, load_cases
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
    with pytest.raises(KnowledgeFormatError, match=r"kb.yml:5: question must be"):
        load_cases(path)
    path.write_text("cases: []\n")
    with pytest.raises(KnowledgeFormatError, match="non-empty list"):
        load_cases(path)
