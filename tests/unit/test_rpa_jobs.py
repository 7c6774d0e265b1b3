"""Job messages, result statuses, run state round trips and the API's view of a run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from services.rpa_runner.api import run_message
from services.rpa_runner.jobs import WAKE, Job, JobError, decode_job, encode_job, result_status
from services.rpa_runner.state import RunState


def msg(data: bytes, subject: str = "rpa.jobs.banking") -> SimpleNamespace:
    return SimpleNamespace(data=data, subject=subject, headers={})


def test_the_dialogue_job_format_decodes() -> None:
    body = {"run_id": "abc123", "workflow": "transfer_funds", "inputs": {"amount": 50},
            "bot_id": "banking", "conversation_id": "c1", "correlation_id": "x"}
    job = decode_job(msg(json.dumps(body).encode()))  # type: ignore[arg-type]
    assert job == Job("abc123", "banking", "start", "transfer_funds", {"amount": 50}, "c1", "x")
    again = decode_job(msg(encode_job(job)))  # type: ignore[arg-type]
    assert again == job
    wake = decode_job(msg(b'{"run_id": "abc123", "kind": "wake"}'))  # type: ignore[arg-type]
    assert (wake.kind, wake.bot_id) == (WAKE, "banking")  # the bot from the subject
    assert job.bot_version == ""  # no version: the deployed definition's workflows


def test_a_job_names_its_bot_version() -> None:
    body = {"run_id": "abc123", "workflow": "get_balance", "bot_version": "v0123456789abcdef"}
    job = decode_job(msg(json.dumps(body).encode()))  # type: ignore[arg-type]
    assert job.bot_version == "v0123456789abcdef"
    assert decode_job(msg(encode_job(job))) == job  # type: ignore[arg-type]
    state = RunState.new("r1", "banking", "get_balance", {}, bot_version=job.bot_version)
    assert RunState.from_json(state.to_json()).bot_version == job.bot_version
    assert run_message(state).bot_version == job.bot_version


@pytest.mark.parametrize("data", [
    b"not json", b"[]", b'{"workflow": "w"}', b'{"run_id": "a b", "workflow": "w"}',
    b'{"run_id": "a"}', b'{"run_id": "a", "workflow": "w", "kind": "explode"}',
    b'{"run_id": "a", "workflow": "w", "inputs": [1]}',
    b'{"run_id": "a", "workflow": "w", "bot_version": "../v1"}',
])
def test_bad_jobs_are_refused(data: bytes) -> None:
    with pytest.raises(JobError):
        decode_job(msg(data))  # type: ignore[arg-type]


@pytest.mark.parametrize(("status", "seen"), [
    ("succeeded", "succeeded"), ("compensated", "compensated"), ("failed", "failed"),
    ("cancelled", "failed"), ("needs_attention", "failed")])
def test_the_conversation_sees_three_statuses(status: str, seen: str) -> None:
    assert result_status(RunState.new("r", "b", "w", {}, status=status)) == seen


def test_state_round_trip_and_api_view() -> None:
    state = RunState.new("r1", "banking", "transfer_funds", {"amount": 5}, status="running",
                         pc=1, conversation="c1")
    state.history.append({"step": "balance", "kind": "http", "status": "succeeded",
                          "attempts": 2, "started": 10.0, "finished": 10.5, "ms": 500.0,
                          "outputs": {"balance": 12}})
    state.approval = {"step": "approve", "message": "ok?", "approvers": ["ops"],
                      "deadline": 20.0, "level": 1}
    state.control.decisions["approve"] = {"approved": True}
    copy = RunState.from_json(state.to_json(), revision=7)
    assert copy.revision == 7 and copy.control.decisions == state.control.decisions
    copy.revision = state.revision
    assert copy == state
    run = run_message(state, ["balance", "funds_check"])
    assert (run.status, run.current_step, run.root_run_id) == ("running", "funds_check", "r1")
    assert run.steps[0].attempts == 2 and run.steps[0].duration_ms == 500.0
    assert json.loads(run.steps[0].outputs_json) == {"balance": 12}
    assert run.approval.escalation_level == 1 and run.approval.deadline_unix_ms == 20000
