"""NLU evaluation: metrics against hand-computed values, report files, `botfactory test` CLI.

No trained model: the CLI's end-to-end test replaces `NluModel.load` with a fake model.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from botfactory.commands import evaluate as cli
from botfactory.evaluation import metrics as m
from botfactory.evaluation.confusion import figure_inches, font_size, row_shares
from botfactory.evaluation.report import build_report, error_records, write_report
from botfactory.training.data import LabeledText
from botfactory.training.nlu import split_texts
from botfactory.training.trainer import TrainConfig
from services.botdef import load_bot, write_bot
from services.botdef.model import EntitySpan, Example
from services.common.modelformat import HELDOUT_FILE, heldout_record
from services.nlu import engine
from tests.support.images import png_size

REPORT_KEYS = {"intent", "entities", "out_of_scope", "n_examples", "model", "data", "created_at"}


def assert_prf(actual: m.PRF, precision: float, recall: float, f1: float,
               support: int) -> None:
    assert (actual.precision, actual.recall, actual.f1) == pytest.approx((precision, recall, f1))
    assert actual.support == support


def S(entity: str, start: int, end: int) -> m.Span:
    return m.Span(entity, start, end)


# ---- metrics: intents --------------------------------------------------------------------

GOLD = ["a", "a", "b", "b", "c"]
PRED = ["a", "b", "b", "b", "d"]


def test_ratio_and_f1_divide_by_zero_to_zero() -> None:
    assert m.ratio(1, 0) == 0.0
    assert m.ratio(0, 0) == 0.0
    assert m.ratio(1, 4) == 0.25
    assert m.f1_score(0.0, 0.0) == 0.0
    assert m.f1_score(1.0, 0.5) == pytest.approx(2 / 3)


def test_accuracy() -> None:
    assert m.accuracy(GOLD, PRED) == pytest.approx(0.6)
    assert m.accuracy([], []) == 0.0


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="2 gold items but 1 predictions"):
        m.accuracy(["a", "b"], ["a"])


def test_per_intent_prf_hand_computed() -> None:
    per = m.per_label_prf(GOLD, PRED)
    assert list(per) == ["a", "b", "c", "d"]
    assert_prf(per["a"], 1.0, 0.5, 2 / 3, 2)
    assert_prf(per["b"], 2 / 3, 1.0, 0.8, 2)
    assert per["c"] == m.PRF(0.0, 0.0, 0.0, 1)  # never predicted: precision 0/0 -> 0
    assert per["d"] == m.PRF(0.0, 0.0, 0.0, 0)  # only predicted: recall 0/0 -> 0


def test_macro_f1_over_gold_and_predicted_labels() -> None:
    per = m.per_label_prf(GOLD, PRED)
    assert m.macro_f1(per) == pytest.approx((2 / 3 + 0.8 + 0 + 0) / 4)  # 11/30
    assert m.macro_f1({}) == 0.0


def test_confusion_matrix_gold_rows_predicted_columns() -> None:
    confusion = m.confusion_matrix(GOLD, PRED)
    assert confusion.labels == ["a", "b", "c", "d"]
    expected = [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert confusion.matrix.tolist() == expected


# ---- metrics: entities ---------------------------------------------------------------------

GOLD_SPANS = [
    [S("city", 0, 5), S("date", 10, 15)],
    [S("city", 3, 8)],
    [],
    [S("date", 2, 6)],
]
PRED_SPANS = [
    [S("city", 0, 5), S("date", 10, 14)],  # date boundary wrong: one fp and one fn
    [],
    [S("name", 0, 4)],
    [S("date", 2, 6)],
]


def test_entity_micro_and_per_entity_hand_computed() -> None:
    result = m.entity_metrics(GOLD_SPANS, PRED_SPANS)
    assert result.micro == m.PRF(0.5, 0.5, 0.5, 4)  # tp 2, fp 2, fn 2
    assert list(result.per_entity) == ["city", "date", "name"]
    assert_prf(result.per_entity["city"], 1.0, 0.5, 2 / 3, 2)
    assert result.per_entity["date"] == m.PRF(0.5, 0.5, 0.5, 2)
    assert result.per_entity["name"] == m.PRF(0.0, 0.0, 0.0, 0)


def test_entity_exact_match_needs_same_label() -> None:
    result = m.entity_metrics([[S("city", 0, 5)]], [[S("town", 0, 5)]])
    assert result.micro == m.PRF(0.0, 0.0, 0.0, 1)


def test_entity_duplicates_are_a_multiset() -> None:
    counts = m.span_counts([[S("x", 0, 1), S("x", 0, 1)]], [[S("x", 0, 1)]])
    assert counts == {"x": m.Counts(tp=1, fp=0, fn=1)}


def test_entity_metrics_without_any_span() -> None:
    result = m.entity_metrics([[], []], [[], []])
    assert result.micro == m.PRF(0.0, 0.0, 0.0, 0)
    assert result.per_entity == {}


# ---- metrics: out of scope -----------------------------------------------------------------


def test_out_of_scope_flag() -> None:
    assert m.is_out_of_scope("out_of_scope", 0.99, "out_of_scope", 0.5)
    assert m.is_out_of_scope("greet", 0.49, "out_of_scope", 0.5)
    assert not m.is_out_of_scope("greet", 0.5, "out_of_scope", 0.5)
    assert not m.is_out_of_scope("greet", 0.9, None, 0.5)


def test_out_of_scope_precision_recall() -> None:
    gold = ["oos", "oos", "a", "a", "b"]
    flagged = [True, False, True, False, False]
    assert m.out_of_scope_metrics(gold, flagged, "oos") == m.PRF(0.5, 0.5, 0.5, 2)


def test_out_of_scope_none_when_not_labelled() -> None:
    assert m.out_of_scope_metrics(["a", "b"], [True, False]) is None


def test_out_of_scope_never_flagged() -> None:
    result = m.out_of_scope_metrics(["out_of_scope", "a"], [False, False])
    assert result == m.PRF(0.0, 0.0, 0.0, 1)


# ---- metrics: aggregate and errors ---------------------------------------------------------


def sample(text: str, gold: str, pred: str, confidence: float, gold_spans: Sequence[m.Span] = (),
           pred_spans: Sequence[m.Span] = (), oos: bool = False) -> m.Sample:
    return m.Sample(text, m.Gold(gold, tuple(gold_spans)),
                    m.Predicted(pred, tuple(pred_spans), confidence, oos))


SAMPLES = [
    sample("fly to paris", "book", "book", 0.9, [S("city", 7, 12)], [S("city", 7, 12)]),
    sample("fly to rome", "book", "book", 0.6, [S("city", 7, 11)], []),
    sample("hello", "greet", "book", 0.8),
    sample("what is love", "out_of_scope", "greet", 0.3, oos=True),
    sample("hi", "greet", "greet", 0.95),
]


def test_evaluate_aggregates_everything() -> None:
    result = m.evaluate(SAMPLES)
    assert result.n_examples == 5
    assert result.intent_accuracy == pytest.approx(3 / 5)
    # book: P 2/3 R 1 F 0.8; greet: P 1/2 R 1/2 F 1/2; out_of_scope: 0
    assert result.intent_macro_f1 == pytest.approx((0.8 + 0.5 + 0.0) / 3)
    assert_prf(result.entities.micro, 1.0, 0.5, 2 / 3, 2)
    assert result.out_of_scope == m.PRF(1.0, 1.0, 1.0, 1)
    assert result.confusion.labels == ["book", "greet", "out_of_scope"]


def test_misclassified_intent_and_entity_errors_by_confidence() -> None:
    wrong = m.misclassified(SAMPLES)
    assert [s.text for s in wrong] == ["hello", "fly to rome", "what is love"]


# ---- report files --------------------------------------------------------------------------

MODEL_INFO = {"bot": "demo", "version": "3f9c2a1b7e4d"}
DATA_INFO = {"path": "data/test", "format": "bio"}


def test_build_report_keys_and_values() -> None:
    report = build_report(m.evaluate(SAMPLES), MODEL_INFO, DATA_INFO)
    assert set(report) == REPORT_KEYS
    assert set(report["intent"]) == {"accuracy", "macro_f1", "per_intent", "ece", "calibration"}
    assert set(report["entities"]) == {"micro_f1", "precision", "recall", "per_entity"}
    assert report["out_of_scope"] == {"precision": 1.0, "recall": 1.0}
    assert report["intent"]["per_intent"]["greet"] == {
        "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert report["entities"]["per_entity"]["city"]["support"] == 2
    assert report["entities"]["micro_f1"] == pytest.approx(2 / 3)
    assert report["n_examples"] == 5
    assert report["model"] == MODEL_INFO
    assert report["data"] == DATA_INFO
    assert report["created_at"].endswith("+00:00")


def test_report_out_of_scope_null_when_not_labelled() -> None:
    samples = [s for s in SAMPLES if s.gold.intent != "out_of_scope"]
    report = build_report(m.evaluate(samples), MODEL_INFO, DATA_INFO)
    assert report["out_of_scope"] is None


def test_error_records() -> None:
    records = error_records(SAMPLES)
    assert [r["confidence"] for r in records] == [0.8, 0.6, 0.3]
    assert records[0]["errors"] == ["intent"]
    assert records[1] == {
        "text": "fly to rome", "gold_intent": "book", "predicted_intent": "book",
        "confidence": 0.6, "out_of_scope": False,
        "gold_entities": [{"entity": "city", "start": 7, "end": 11, "text": "rome"}],
        "predicted_entities": [], "errors": ["entities"],
    }


def test_write_report_writes_four_files(tmp_path: Path) -> None:
    files = write_report(tmp_path / "out", m.evaluate(SAMPLES), SAMPLES, MODEL_INFO, DATA_INFO)
    assert set(json.loads(files.report.read_text())) == REPORT_KEYS
    assert len(json.loads(files.errors.read_text())) == 3
    assert png_size(files.confusion)[0] >= 600
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "confusion.png", "errors.json", "reliability.png", "report.json"]


def test_confusion_scales_with_label_count(tmp_path: Path) -> None:
    labels = [f"intent_{i:02d}" for i in range(80)]
    predicted = [labels[(i + int(i % 7 == 0)) % 80] for i in range(80)]
    samples = [sample("x", g, p, 0.9) for g, p in zip(labels, predicted, strict=True)]
    files = write_report(tmp_path, m.evaluate(samples), samples, MODEL_INFO, DATA_INFO)
    width, height = png_size(files.confusion)
    assert width >= 2000 and height >= 2000
    assert figure_inches(80) > figure_inches(10) and font_size(80) < font_size(10)
    assert font_size(80) >= 6.0


def test_row_shares_leaves_empty_rows_zero() -> None:
    shares = row_shares(np.array([[1, 3], [0, 0]], dtype=np.int64))
    assert shares.tolist() == [[0.25, 0.75], [0.0, 0.0]]


# ---- CLI -------------------------------------------------------------------------------------


def run_cli(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="botfactory")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["test", *argv])
    code: int = args.func(args)
    return code


EXAMPLES = [
    Example("fly to paris", "book", (EntitySpan(7, 12, "city"),)),
    Example("fly to rome", "book", (EntitySpan(7, 11, "city"),)),
    Example("hello", "greet"),
    Example("what is love", "out_of_scope"),
    Example("hi", "greet"),
]


@dataclass
class FakeModel:
    """Answers from a table: text -> (intent, confidence, entities)."""

    answers: dict[str, tuple[str, float, list[engine.Entity]]]
    bot: str = "demo"
    version: str = "3f9c2a1b7e4d"
    confidence_threshold: float = 0.5
    out_of_scope_intent: str | None = "out_of_scope"
    metadata: dict[str, Any] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[engine.Prediction]:
        self.batches.append(batch_size)
        return [self._one(t) for t in texts]

    def _one(self, text: str) -> engine.Prediction:
        intent, confidence, entities = self.answers[text]
        oos = intent == self.out_of_scope_intent or confidence < self.confidence_threshold
        return engine.Prediction(intent, confidence, [(intent, confidence)], entities, oos)


def city(start: int, end: int, text: str) -> engine.Entity:
    return engine.Entity("city", start, end, text, text, "model", 0.9)


FAKE = FakeModel({
    "fly to paris": ("book", 0.9, [city(7, 12, "paris")]),
    "fly to rome": ("book", 0.6, []),
    "hello": ("book", 0.8, []),
    "what is love": ("greet", 0.3, []),
    "hi": ("greet", 0.95, []),
})


def use_examples(monkeypatch: pytest.MonkeyPatch, examples: Sequence[Example] | Exception) -> None:
    def load(path: Path) -> list[Example]:
        if isinstance(examples, Exception):
            raise examples
        return list(examples)

    def loader_for(format_: str) -> Callable[[Path], list[Example]]:
        return load

    monkeypatch.setattr(cli, "loader_for", loader_for)


def use_model(monkeypatch: pytest.MonkeyPatch, model: FakeModel) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def load(directory: str | Path, *, quantized: bool = True, **_: Any) -> FakeModel:
        calls.append({"directory": directory, "quantized": quantized})
        return model

    monkeypatch.setattr(engine.NluModel, "load", load)
    return calls


@pytest.fixture
def bio_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "bio"
    directory.mkdir()
    for name in ("seq.in", "seq.out", "label"):
        (directory / name).write_text("", encoding="utf-8")
    return directory


def assert_usage_error(code: int, capsys: pytest.CaptureFixture[str], message: str) -> str:
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err
    return err


def test_detect_format(tmp_path: Path, bio_dir: Path) -> None:
    bot = tmp_path / "bot"
    bot.mkdir()
    (bot / "bot.yml").write_text("name: demo\n", encoding="utf-8")
    csv = tmp_path / "data.csv"
    csv.write_text("text,intent\n", encoding="utf-8")
    assert [cli.detect_format(p) for p in (bot, bio_dir, csv)] == ["bot", "bio", "csv"]


def test_cli_missing_data_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli([str(tmp_path / "nope"), "--model", str(tmp_path), "--report", str(tmp_path)])
    assert_usage_error(code, capsys, "no such file or directory")


def test_cli_unknown_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli([str(tmp_path), "--model", str(tmp_path), "--report", str(tmp_path / "r")])
    assert_usage_error(code, capsys, "neither a bot folder")


def test_cli_unknown_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.txt"
    data.write_text("hello\n", encoding="utf-8")
    code = run_cli([str(data), "--model", str(tmp_path), "--report", str(tmp_path / "r")])
    assert_usage_error(code, capsys, "not a bot folder, a BIO folder or a .csv file")


def test_cli_loader_error(monkeypatch: pytest.MonkeyPatch, bio_dir: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    use_examples(monkeypatch, ValueError("seq.in has 3 lines, seq.out 2"))
    code = run_cli([str(bio_dir), "--model", str(tmp_path), "--report", str(tmp_path / "r")])
    assert_usage_error(code, capsys, "cannot read bio data: seq.in has 3 lines, seq.out 2")


def test_cli_real_bio_importer_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = write_bio(tmp_path / "bio", ["fly to paris", "hello"], ["O O B-city"], ["book", "greet"])
    use_model(monkeypatch, FakeModel(FAKE.answers))
    code = run_cli([str(data), "--model", str(tmp_path), "--report", str(tmp_path / "r")])
    err = assert_usage_error(code, capsys, "cannot read bio data: ")
    assert "seq.out has 1 lines but seq.in has 2" in err


def test_cli_real_csv_importer_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.csv"
    data.write_text("sentence,intent\nhello,greet\n", encoding="utf-8")
    code = run_cli([str(data), "--model", str(tmp_path), "--report", str(tmp_path / "r")])
    assert_usage_error(code, capsys, "needs a 'text' column")


def test_cli_invalid_bot_lists_issues(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bot = tmp_path / "bot"
    bot.mkdir()
    (bot / "bot.yml").write_text("foo: bar\n", encoding="utf-8")
    code = run_cli([str(bot), "--model", str(tmp_path), "--report", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {bot}: invalid bot definition:\n  ")
    assert "'name' is a required property" in err and "Traceback" not in err


def test_cli_no_examples(monkeypatch: pytest.MonkeyPatch, bio_dir: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    use_examples(monkeypatch, [])
    code = run_cli([str(bio_dir), "--model", str(tmp_path), "--report", str(tmp_path / "r")])
    assert_usage_error(code, capsys, "no labelled examples")


def test_cli_missing_model_dir(monkeypatch: pytest.MonkeyPatch, bio_dir: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    use_examples(monkeypatch, EXAMPLES)
    code = run_cli([str(bio_dir), "--model", str(tmp_path / "model"),
                    "--report", str(tmp_path / "r")])
    assert_usage_error(code, capsys, "no such model directory")


def test_cli_broken_model_dir_uses_engine_message(
        monkeypatch: pytest.MonkeyPatch, bio_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    use_examples(monkeypatch, EXAMPLES)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    code = run_cli([str(bio_dir), "--model", str(model_dir), "--report", str(tmp_path / "r")])
    assert_usage_error(code, capsys, "cannot load model: ")
    assert not (tmp_path / "r").exists()


def test_cli_report_path_is_a_file(monkeypatch: pytest.MonkeyPatch, bio_dir: Path,
                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    use_examples(monkeypatch, EXAMPLES)
    report = tmp_path / "report.txt"
    report.write_text("", encoding="utf-8")
    code = run_cli([str(bio_dir), "--model", str(tmp_path), "--report", str(report)])
    assert_usage_error(code, capsys, "is not a folder")


def test_cli_rejects_bad_batch_size(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli([str(tmp_path), "--model", str(tmp_path), "--report", str(tmp_path),
                 "--batch-size", "0"])
    assert exc.value.code == 2


def test_cli_end_to_end_with_fake_model(monkeypatch: pytest.MonkeyPatch, bio_dir: Path,
                                        tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    use_examples(monkeypatch, EXAMPLES)
    model = FakeModel(FAKE.answers)
    calls = use_model(monkeypatch, model)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    out = tmp_path / "reports" / "run1"
    code = run_cli([str(bio_dir), "--model", str(model_dir), "--report", str(out),
                    "--batch-size", "2", "--fp32"])
    assert code == 0
    assert calls == [{"directory": model_dir, "quantized": False}]
    assert model.batches == [2]
    report = json.loads((out / "report.json").read_text())
    assert set(report) == REPORT_KEYS
    assert report["intent"]["accuracy"] == pytest.approx(0.6)
    assert report["entities"]["micro_f1"] == pytest.approx(2 / 3)
    assert report["out_of_scope"] == {"precision": 1.0, "recall": 1.0}
    assert report["model"]["bot"] == "demo" and report["model"]["version"] == "3f9c2a1b7e4d"
    assert report["data"] == {"path": str(bio_dir), "format": "bio"}
    errors = json.loads((out / "errors.json").read_text())
    assert [e["text"] for e in errors] == ["hello", "fly to rome", "what is love"]
    assert png_size(out / "confusion.png")[0] > 0
    assert png_size(out / "reliability.png")[0] > 0
    # confidences 0.9 0.6 0.8 0.3 0.95, right: yes yes no no yes -> one example per bin
    assert report["intent"]["ece"] == pytest.approx((0.1 + 0.4 + 0.8 + 0.3 + 0.05) / 5)
    assert sum(b["count"] for b in report["intent"]["calibration"]) == 5
    stdout = capsys.readouterr().out
    assert "intent ECE" in stdout and "0.3300" in stdout
    assert "intent accuracy" in stdout and "60.00%" in stdout
    assert "OOS recall" in stdout and f"report: {out / 'report.json'}" in stdout


def test_cli_default_is_int8_and_oos_override(monkeypatch: pytest.MonkeyPatch, bio_dir: Path,
                                              tmp_path: Path) -> None:
    use_examples(monkeypatch, EXAMPLES)
    calls = use_model(monkeypatch, FakeModel(FAKE.answers))
    code = run_cli([str(bio_dir), "--model", str(tmp_path), "--report", str(tmp_path / "r"),
                    "--oos-intent", "no_such_intent"])
    assert code == 0 and calls[0]["quantized"] is True
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["out_of_scope"] is None


def write_bio(directory: Path, texts: list[str], tags: list[str], labels: list[str]) -> Path:
    directory.mkdir()
    for name, lines in (("seq.in", texts), ("seq.out", tags), ("label", labels)):
        (directory / name).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return directory


def test_cli_real_bio_importer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = write_bio(tmp_path / "bio", ["fly to paris", "hello"], ["O O B-city", "O"],
                     ["book", "greet"])
    use_model(monkeypatch, FakeModel(FAKE.answers))
    assert run_cli([str(data), "--model", str(tmp_path), "--report", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["n_examples"] == 2
    assert report["intent"]["accuracy"] == 0.5  # the fake model says "hello" is "book"
    assert report["entities"]["micro_f1"] == 1.0
    assert report["data"]["format"] == "bio"


def test_cli_real_csv_importer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = tmp_path / "test.csv"
    data.write_text("text,intent\nhi,greet\nwhat is love,out_of_scope\n", encoding="utf-8")
    use_model(monkeypatch, FakeModel(FAKE.answers))
    assert run_cli([str(data), "--model", str(tmp_path), "--report", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["intent"]["accuracy"] == 0.5
    assert report["out_of_scope"] == {"precision": 1.0, "recall": 1.0}  # flagged: confidence 0.3


def write_demo_bot(tmp_path: Path) -> Path:
    bot = tmp_path / "bot"
    (bot / "data").mkdir(parents=True)
    (bot / "bot.yml").write_text('version: "1"\nname: demo\nentities:\n  - name: city\n',
                                 encoding="utf-8")
    (bot / "data" / "nlu.yml").write_text(
        "intents:\n  - name: book\n    examples:\n      - fly to [paris](city)\n"
        "      - fly to [rome](city)\n  - name: greet\n    examples:\n      - hello\n"
        "      - hi\n", encoding="utf-8")
    return bot


def test_cli_real_bot_folder_all_examples_says_it_is_optimistic(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    bot = write_demo_bot(tmp_path)
    use_model(monkeypatch, FakeModel(FAKE.answers))
    assert run_cli([str(bot), "--model", str(tmp_path), "--report", str(tmp_path / "r"),
                    "--split", "all"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["n_examples"] == 4 and report["data"]["format"] == "bot"
    assert report["data"]["split"] == "all" and report["data"]["n_total"] == 4
    assert report["intent"]["accuracy"] == 0.75
    assert report["entities"]["micro_f1"] == pytest.approx(2 / 3)
    out, err = capsys.readouterr()
    assert err.startswith("warning: data: all 4 examples of ") and "optimistic" in err
    assert "the figures are optimistic" in out


def test_cli_bot_folder_evaluates_on_the_recorded_heldout_split(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    bot = write_demo_bot(tmp_path)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    record = heldout_record([("book", "fly to rome"), ("greet", "hi"), ("greet", "gone")])
    (model_dir / HELDOUT_FILE).write_text(json.dumps(record), encoding="utf-8")
    use_model(monkeypatch, FakeModel(FAKE.answers))
    assert run_cli([str(bot), "--model", str(model_dir), "--report", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["n_examples"] == 2  # "fly to rome" (right, no entity found) and "hi" (right)
    assert report["intent"]["accuracy"] == 1.0
    assert report["data"] == {"path": str(bot), "format": "bot", "split": "heldout",
                              "source": HELDOUT_FILE, "n_total": 4}
    out, err = capsys.readouterr()
    assert "held-out split (heldout.json): 2 of the 4 examples" in out and err == ""


@dataclass
class RecordingModel(FakeModel):
    texts: list[str] = field(default_factory=list)

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[engine.Prediction]:
        self.texts.extend(texts)
        return super().predict(texts, batch_size)


def test_cli_bot_folder_rebuilds_the_split_of_an_older_model_from_its_seed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bot = write_bot(tmp_path / "bot", "demo", [
        Example(f"{word} {i}", intent) for intent, word in (("book", "fly"), ("greet", "hello"))
        for i in range(4)])
    examples = load_bot(bot).examples()
    _, heldout = split_texts([LabeledText(e.text, e.intent) for e in examples],
                             TrainConfig(seed=3))
    assert len(heldout) == 2  # one of 4 per intent (0.15, rounded)
    model_dir = tmp_path / "model"
    model_dir.mkdir()  # a model written before heldout.json: its seed and counts only
    metadata = {"training": {"seed": 3, "n_train": 6, "n_heldout": 2}}
    (model_dir / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    model = RecordingModel({e.text: (e.intent, 0.9, []) for e in examples})
    use_model(monkeypatch, model)
    assert run_cli([str(bot), "--model", str(model_dir), "--report", str(tmp_path / "r")]) == 0
    assert sorted(model.texts) == sorted(t.text for t in heldout)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["n_examples"] == 2 and report["data"]["source"] == "training seed 3"


@pytest.mark.parametrize(("metadata", "message"), [
    (None, "no heldout.json, and no training seed and counts in metadata.json"),
    ({"training": {"seed": 3, "n_train": 5, "n_heldout": 1}},
     "examples changed since training (4 now, 6 then)"),
])
def test_cli_bot_folder_without_a_known_split_is_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        metadata: dict[str, Any] | None, message: str) -> None:
    bot = write_demo_bot(tmp_path)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    if metadata is not None:
        (model_dir / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    use_model(monkeypatch, FakeModel(FAKE.answers))
    code = run_cli([str(bot), "--model", str(model_dir), "--report", str(tmp_path / "r")])
    err = assert_usage_error(code, capsys, message)
    assert "`--split all` evaluates on every example" in err
    assert not (tmp_path / "r").exists()
