"""`botfactory train --remote` without a gateway: what it refuses before sending anything, and
how it prints a job it follows (docs/training.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from botfactory.cli import main
from botfactory.commands.train_remote import Follower, Gateway, epoch_line

BANKING = Path(__file__).resolve().parents[2] / "bots" / "banking"


@pytest.mark.parametrize(("args", "message"), [
    ([], "--out MODEL_DIR is required (or --remote"),
    (["--remote"], "--remote needs --api-key"),
    (["--remote", "--api-key", "k", "--out", "x"], "--out is for a local training"),
    (["--remote", "--api-key", "k", "--base-model", "m"], "--base-model is for a local"),
])
def test_it_refuses_what_cannot_work_before_sending_anything(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOTFACTORY_API_KEY", raising=False)
    assert main(["train", str(BANKING), *args]) == 2
    assert message in capsys.readouterr().err


def test_an_unreachable_gateway_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", str(BANKING), "--remote", "--api-key", "k",
                 "--gateway", "http://127.0.0.1:9"])
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot reach the gateway at http://127.0.0.1:9" in err and "Traceback" not in err


class Jobs(Gateway):
    """A gateway that answers GET with the next of `states`."""

    def __init__(self, states: list[dict[str, Any]]) -> None:
        super().__init__("http://gw", "k")
        self.states = states

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return self.states.pop(0)


EPOCH = {"epoch": 1, "epochs": 2, "train_loss": 0.5, "heldout_loss": 0.4,
         "heldout": {"intent_accuracy": 0.75, "entity_micro_f1": 0.5}}


def test_following_prints_status_changes_epochs_once_and_the_result(
        capsys: pytest.CaptureFixture[str]) -> None:
    states = [
        {"status": "queued"},
        {"status": "running", "worker": "w1", "progress": {"stage": "training",
                                                          "history": [EPOCH]}},
        {"status": "running", "worker": "w1", "progress": {"stage": "exporting",
                                                          "history": [EPOCH]}},
        {"status": "succeeded", "model_version": "v9", "activated": False,
         "progress": {"stage": "published", "history": [EPOCH]},
         "report": {"metrics": {"heldout": {"intent_accuracy": 0.9}}}},
    ]
    assert Follower(Jobs(states), "b", "tr-1-a", 0.0).follow() == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["  queued", "  running on w1", f"  {epoch_line(EPOCH)}", "  exporting",
                   "  succeeded", "  published",
                   "model version v9 published (not activated: botfactory models activate, or "
                   "PUT .../model)", "  held out: intent accuracy 0.900"]
    assert epoch_line(EPOCH) == ("epoch 1/2  loss 0.5  held-out loss 0.4  intent accuracy "
                                 "0.750, entity F1 0.500")


def test_a_failed_job_exits_1_with_its_error(capsys: pytest.CaptureFixture[str]) -> None:
    states = [{"status": "failed", "error": "bot 'b' has no examples"}]
    assert Follower(Jobs(states), "b", "tr-1-a", 0.0).follow() == 1
    assert "training failed: bot 'b' has no examples" in capsys.readouterr().err
