"""Training jobs without a server: the record's state machine, lost heartbeats, cancel
requests, the progress the trainer folds from the training's events, failure reasons, the
report kept of a model's metadata, the trainer's config (docs/training.md)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from services.common.config import ConfigError, load_config
from services.common.trainings import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    STATUSES,
    SUCCEEDED,
    TRANSITIONS,
    Options,
    Training,
    TrainingConflict,
    TransitionRefused,
    cancelled,
    lost_error,
    new_job_id,
)
from services.gateway.http.bodies import TRAINING_ID
from services.trainer.child import Paths, TrainingProcess, failure_reason
from services.trainer.config import TrainerConfig
from services.trainer.jobs import Progress, report_of


def queued(**changes: object) -> Training:
    return Training(job_id="tr-1-a", bot="b", status=QUEUED, created_at_ms=1_000,
                    **changes)  # type: ignore[arg-type]


def test_the_state_machine_allows_only_its_transitions() -> None:
    running = queued().moved_to(RUNNING, at_ms=2_000, worker="w1")
    assert (running.started_at_ms, running.heartbeat_at_ms, running.attempts) == (2_000, 2_000, 1)
    done = running.moved_to(SUCCEEDED, at_ms=3_000, model_version="v1")
    assert done.final and done.finished_at_ms == 3_000 and done.model_version == "v1"
    for final in (SUCCEEDED, FAILED, CANCELLED):
        assert TRANSITIONS[final] == frozenset()
        for target in STATUSES:
            with pytest.raises(TransitionRefused):
                Training("j", "b", final).moved_to(target)
    with pytest.raises(TransitionRefused, match="a queued training cannot become succeeded"):
        queued().moved_to(SUCCEEDED)


def test_a_job_given_back_on_shutdown_is_queued_again_and_counts_its_attempts() -> None:
    running = queued().moved_to(RUNNING, at_ms=2_000, worker="w1",
                                progress={"stage": "training"})
    back = running.moved_to(QUEUED)
    assert (back.status, back.worker, back.progress, back.started_at_ms) == (QUEUED, "", {}, None)
    assert back.moved_to(RUNNING, worker="w2").attempts == 2


def test_a_running_job_is_lost_once_its_heartbeat_is_older_than_its_limit() -> None:
    running = queued().moved_to(RUNNING, at_ms=10_000, worker="w1", lost_after_s=30.0)
    assert not running.lost(at_ms=40_000)
    assert running.lost(at_ms=40_001)
    assert not queued().lost(at_ms=10**12)  # only a running job can be lost
    assert "w1" in lost_error(running) and "30 s" in lost_error(running)


def test_cancel_ends_a_queued_job_asks_a_running_one_and_refuses_an_ended_one() -> None:
    cancelled_now = cancelled(queued())
    assert cancelled_now is not None and cancelled_now.status == CANCELLED
    asked = cancelled(queued().moved_to(RUNNING))
    assert asked is not None and asked.status == RUNNING and asked.cancel_requested
    assert cancelled(asked) is None  # asked already
    with pytest.raises(TrainingConflict, match="already succeeded") as refused:
        cancelled(asked.moved_to(SUCCEEDED))
    assert refused.value.http_status == 409


def test_records_round_trip_through_json_and_ids_sort_by_time() -> None:
    record = queued(options=Options(epochs=3, seed=1, activate=True)).moved_to(RUNNING)
    assert Training.from_json(json.loads(record.encode())) == record
    assert Options(epochs=3, seed=1).train_args() == ["--epochs", "3", "--seed", "1"]
    assert Options().train_args() == []
    ids = [new_job_id(ms) for ms in (5, 1_700_000_000_000, 1_800_000_000_000)]
    assert sorted(ids) == ids and all(TRAINING_ID.match(i) for i in ids)


def test_progress_folds_stages_and_epochs() -> None:
    progress = Progress()
    assert progress.apply({"event": "stage", "stage": "training", "n_train": 9}) is None
    entry = progress.apply({"event": "epoch", "epoch": 1, "epochs": 4, "train_loss": 0.9,
                            "heldout_loss": 0.8,
                            "heldout": {"intent_accuracy": 0.5, "entity_micro_f1": 0.25}})
    assert entry is not None and "event" not in entry
    shown = progress.to_json()
    assert shown["stage"] == "training" and shown["epoch"] == 1 and shown["epochs"] == 4
    assert (shown["intent_accuracy"], shown["entity_f1"]) == (0.5, 0.25)
    assert shown["history"] == [entry]
    assert progress.apply({"event": "other"}) is None


def test_a_failure_says_the_trainings_error_or_how_it_ended() -> None:
    tail = "loading\nerror: invalid bot definition in /x:\nbot.yml: name is required\n"
    assert failure_reason(2, tail) == "invalid bot definition in /x:"
    assert failure_reason(-signal.SIGKILL, "") == "the training process was killed (SIGKILL)"
    assert failure_reason(1, "a\nb\n") == "the training process exited with code 1: a | b"


def test_the_events_file_is_read_in_whole_lines(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    child = TrainingProcess(process=None, paths=paths, stop_grace_s=1.0)  # type: ignore[arg-type]
    assert child.new_events() == []
    paths.events.write_text('{"event": "stage", "stage": "a"}\n{"event": "ep')
    assert child.new_events() == [{"event": "stage", "stage": "a"}]
    with paths.events.open("a") as out:
        out.write('och", "epoch": 1}\nnot json\n')
    assert child.new_events() == [{"event": "epoch", "epoch": 1}]
    paths.log.write_text("first line\n" + "x" * 50 + "\nlast line\n")
    assert child.log_tail(20) == "last line\n"


def test_the_report_keeps_the_metrics_and_names_the_archive() -> None:
    metadata = {"bot": "b", "version": "v1", "kind": "nlu", "metrics": {"heldout": {"n": 3}},
                "serving": {"precision": "int8"}, "training": {"epochs_run": 2, "history": [1]},
                "labels": ["not kept"]}
    report = report_of(metadata)
    assert report["object"] == "models/b/v1.tar"
    assert report["training"] == {"epochs_run": 2}
    assert "labels" not in report and report["metrics"] == {"heldout": {"n": 3}}


@pytest.mark.parametrize(("name", "value", "message"), [
    ("CONCURRENCY", "0", "1..64"),
    ("LOST_AFTER_S", "1", "3 x"),
    ("ACK_WAIT_S", "1", "2 x"),
    ("NICE", "20", "0..19"),
    ("HEARTBEAT_S", "soon", "expected a number"),
])
def test_a_bad_trainer_setting_names_its_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        load_config(TrainerConfig, "trainer", {f"BOTFACTORY_TRAINER_{name}": value})
    assert f"BOTFACTORY_TRAINER_{name}" in str(error.value)
    config = load_config(TrainerConfig, "trainer", {"BOTFACTORY_TRAINER_TRAIN_COMMAND": "a,b"})
    assert config.command() == ["a", "b"]


def test_the_trainer_service_itself_loads_no_training_stack() -> None:
    """It runs `botfactory train` as a child process: torch stays out of the worker."""
    import subprocess
    import sys

    code = ("import sys, services.trainer.app, services.trainer.__main__; "
            "print(sorted(m for m in ('torch', 'transformers', 'botfactory') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
