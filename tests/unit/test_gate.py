"""The regression gate: comparison rules, `botfactory gate` on real (tiny) models through the
serving engine, and the check `botfactory publish --gate` makes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from botfactory.cli import main
from botfactory.evaluation.gate import Tolerance, compare_set, decide, gate_refusal, render_html
from botfactory.training import CheckThresholds, train_bot
from services.botdef import NluSettings, format_annotated, load_bot, write_bot
from tests.support.models import TINY_ENTITIES, make_tiny_encoder, tiny_examples


def test_a_metric_fails_only_beyond_its_tolerance() -> None:
    active = {"intent_accuracy": 0.90, "entity_f1": 0.80, "oos_recall": None}
    rows = compare_set(active, {"intent_accuracy": 0.885, "entity_f1": 0.70, "oos_recall": 0.5},
                       Tolerance(intent_accuracy=0.02, entity_f1=0.05))
    assert rows["intent_accuracy"]["passed"] and not rows["entity_f1"]["passed"]
    assert rows["entity_f1"]["delta"] == -0.1 and "oos_recall" not in rows
    result = decide({"version": "a"}, {"version": "b"},
                    {"frozen": (active, active, 10),
                     "annotations": (active, {**active, "intent_accuracy": 0.5}, 3)},
                    Tolerance())
    assert not result["passed"] and result["failed"] == ["annotations.intent_accuracy"]


def test_the_gate_page_escapes_names_and_formats_figures() -> None:
    scores = {"intent_accuracy": 0.9, "entity_f1": None, "oos_recall": None}
    result = decide({"version": "<b>a</b>"}, {"version": "b"},
                    {"<script>x</script>": (scores, {**scores, "intent_accuracy": 0.5}, 3)},
                    Tolerance())
    page = render_html(result)
    assert page.startswith("<!doctype html>") and "<script>" not in page
    assert "candidate b vs active &lt;b&gt;a&lt;/b&gt;" in page
    assert ("<td>&lt;script&gt;x&lt;/script&gt; (n=3)</td><td>intent_accuracy</td>"
            '<td class="num">0.9000</td><td class="num">0.5000</td><td class="num">-0.4000</td>'
            in page)
    assert "Regression gate: FAILED: &lt;script&gt;x&lt;/script&gt;.intent_accuracy" in page


def test_publish_gate_needs_a_passed_result_for_the_same_version(tmp_path: Path) -> None:
    assert "not found" in (gate_refusal(tmp_path, "v1") or "")
    result = {"passed": False, "failed": ["frozen.entity_f1"], "candidate": {"version": "v1"}}
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "gate.json").write_text(json.dumps(result))
    assert "frozen.entity_f1" in (gate_refusal(tmp_path, "v1") or "")
    assert "another version" in (gate_refusal(tmp_path, "v2") or "")
    (tmp_path / "reports" / "gate.json").write_text(json.dumps({**result, "passed": True}))
    assert gate_refusal(tmp_path, "v1") is None


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(bot dir with a frozen test set, a trained model, a barely trained one)."""
    root = tmp_path_factory.mktemp("gate")
    encoder = make_tiny_encoder(root / "encoder")
    bot_dir = write_bot(root / "bot", "tiny", tiny_examples(), entities=TINY_ENTITIES,
                        nlu=NluSettings(base_model=str(encoder), confidence_threshold=0.0,
                                        max_length=32, learning_rate=5e-3, batch_size=8,
                                        seed=7))
    (bot_dir / "tests").mkdir()
    intents: dict[str, list[str]] = {}
    for example in tiny_examples():
        intents.setdefault(example.intent, []).append(format_annotated(example))
    lines = ["intents:"]
    for name, texts in intents.items():
        lines += [f"  - name: {name}", "    examples:", *(f"      - {json.dumps(t)}"
                                                         for t in texts)]
    (bot_dir / "tests" / "nlu.yml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    bot = load_bot(bot_dir)
    lax = CheckThresholds(max_int8_disagreement=1.0)
    good, bad = root / "good", root / "bad"
    train_bot(bot, good, epochs=30, progress=False, checks=lax)
    train_bot(bot, bad, epochs=1, seed=3, progress=False, checks=lax)
    return bot_dir, good, bad


def test_gate_passes_an_equal_candidate_and_fails_a_worse_one(
        models: tuple[Path, Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    bot_dir, good, bad = models
    report = tmp_path / "report"
    code = main(["gate", str(good), "--active", str(good), "--bot-dir", str(bot_dir),
                 "--report", str(report)])
    out = capsys.readouterr().out
    assert code == 0 and "gate passed" in out
    result = json.loads((good / "reports" / "gate.json").read_text())
    assert result["passed"] and result["sets"]["frozen"]["n"] == 30
    assert set(result["sets"]["frozen"]["metrics"]) == {"intent_accuracy", "entity_f1"}
    assert "Regression gate: passed" in (report / "gate.html").read_text()

    code = main(["gate", str(bad), "--active", str(good), "--bot-dir", str(bot_dir),
                 "--tolerance", "0.05"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "gate FAILED" in out and "frozen.intent_accuracy" in out
    result = json.loads((bad / "reports" / "gate.json").read_text())
    row = result["sets"]["frozen"]["metrics"]["intent_accuracy"]
    assert row["candidate"] < row["active"] - 0.05 and not row["passed"]
    assert gate_refusal(bad, result["candidate"]["version"]) is not None


def test_gate_input_errors(models: tuple[Path, Path, Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    bot_dir, good, _ = models
    other = write_bot(tmp_path / "plain", "tiny", tiny_examples(), entities=TINY_ENTITIES)
    assert main(["gate", str(good), "--active", str(good), "--bot-dir", str(other)]) == 2
    assert "frozen test set" in capsys.readouterr().err
    assert main(["gate", str(good), "--active", str(tmp_path / "none"),
                 "--bot-dir", str(bot_dir)]) == 2
    assert main(["gate", str(good), "--active", str(good), "--bot-dir", str(bot_dir),
                 "--annotations", str(tmp_path / "missing.yml")]) == 2
    assert "no such file" in capsys.readouterr().err
