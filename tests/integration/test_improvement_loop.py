"""benchmarks/improvement_loop.py end to end on a tiny Banking77-format fixture
(tests/unit/data/banking77_tiny) with the tiny random encoder: the real CLI, nats-server, NLU,
dialogue and gateway processes, the review API, warm start, gate and a rollout under load. The
tiny model's accuracy means nothing, so only the loop's mechanics are asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.improvement_loop import main
from tests.support.models import make_tiny_encoder

DATA = Path(__file__).resolve().parents[1] / "unit" / "data" / "banking77_tiny"


def test_one_round_grows_the_data_gates_and_rolls_out_without_failed_requests(
        tmp_path: Path) -> None:
    encoder = make_tiny_encoder(tmp_path / "encoder")
    out = tmp_path / "improvement_loop.json"
    code = main(["--data", str(DATA), "--base-model", str(encoder), "--rounds", "1",
                 "--initial-share", "0.34", "--frozen-per-intent", "2", "--epochs", "2",
                 "--gate-tolerance", "1.0", "--concurrency", "4", "--workdir",
                 str(tmp_path / "work"), "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[0]["train_examples"] == 24  # 4 of 12 per category, 6 categories
    first = rounds[1]
    assert first["traffic"] == 36 and first["traffic_failed"] == 0
    assert first["labelled"] == 36  # every replayed utterance was queued and decided
    assert first["train_examples"] == rounds[0]["train_examples"] + 36
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rounds)
    assert first["gate_passed"] and first["rolled_out"]
    assert first["model_version"] != rounds[0]["model_version"]
    assert first["rollout"]["version"] == first["model_version"]
    assert first["rollout"]["requests"] > 0
    assert result["failed_requests"] == 0 and first["failed_requests"] == 0
    reviewed = tmp_path / "work" / "bot" / "data" / "nlu" / "reviewed.yml"
    assert "card_arrival" in reviewed.read_text(encoding="utf-8")


def test_missing_data_exits_2_or_skips_with_if_data(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOTFACTORY_BENCH_IF_DATA", raising=False)
    out = tmp_path / "r.json"
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "Banking77 not found at" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(out), "--if-data"]) == 0
    assert capsys.readouterr().out.startswith("skipped: Banking77 not found at")
    monkeypatch.setenv("BOTFACTORY_BENCH_IF_DATA", "1")
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(out)]) == 0
    assert not out.exists()
