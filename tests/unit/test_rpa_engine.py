"""The run loop over an in-memory KV and publisher: each step kind, retries and back-off,
compensation order, the step budget, parking, resume, non-idempotent steps, subworkflows.
HTTP steps call the demo bank, served in-process on a free port."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from botfactory.local.demo_bank import create_app, serve
from services.botdef.workflows import HostAllowList, RpaSettings, parse_workflows
from services.rpa_runner.bots import BotWorkflows, WorkflowRegistry
from services.rpa_runner.browser import BrowserPool
from services.rpa_runner.config import RunnerConfig
from services.rpa_runner.engine import Delivery, Engine, Verdict
from services.rpa_runner.http_step import HttpStep
from services.rpa_runner.jobs import WAKE, Job, Publisher
from services.rpa_runner.metrics import RunnerMetrics
from services.rpa_runner.secrets import Secrets
from services.rpa_runner.state import RunState, RunStore
from tests.support.memkv import MemoryKeyValue

BOT = "unit"


@dataclass
class FakePublisher:
    results: list[RunState] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    notices: list[tuple[str, float]] = field(default_factory=list)

    async def result(self, state: RunState) -> None:
        self.results.append(state)

    async def notify(self, state: RunState, key: str, text: str) -> None:
        self.notes.append((key, text))

    async def event(self, kind: str, state: RunState, msg_id: str, **data: Any) -> None:
        self.events.append((kind, data))

    async def progress(self, state: RunState, elapsed_s: float) -> None:
        self.notices.append((state.run_id, elapsed_s))


@dataclass
class Rig:
    engine: Engine
    store: RunStore
    kv: MemoryKeyValue
    publisher: FakePublisher
    bank_url: str
    session: aiohttp.ClientSession

    async def run(self, workflow: str, inputs: dict[str, Any] | None = None,
                  conversation: str = "c1") -> tuple[Verdict, RunState]:
        run_id = uuid.uuid4().hex
        job = Job(run_id, BOT, workflow=workflow, inputs=inputs or {},
                  conversation_id=conversation)
        verdict = await self.engine.process(job, Delivery(first=True))
        state = await self.store.get(run_id)
        assert state is not None
        return verdict, state

    async def wake(self, run_id: str) -> tuple[Verdict, RunState]:
        verdict = await self.engine.process(Job(run_id, BOT, kind=WAKE), Delivery(first=False))
        state = await self.store.get(run_id)
        assert state is not None
        return verdict, state

    async def bank(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(method, f"{self.bank_url}{path}", json=body) as resp:
            return await resp.json()


def http(path: str, method: str = "POST", **extra: Any) -> dict[str, Any]:
    return {"http": {"method": method, "url": "{{ settings.bank }}" + path, **extra}}


WORKFLOWS: dict[str, Any] = {
    "kinds": {"name": "kinds", "inputs": {"n": "integer", "who": "string"},
              "outputs": {"total": "vars.total", "shout": "steps.shout.outputs.text"},
              "steps": [
                  {"id": "init", "set": {"total": 0, "i": 0}},
                  {"id": "add", "set": {"total": "vars.total + vars.i", "i": "vars.i + 1"}},
                  {"id": "loop", "branch": [{"if": "vars.i < inputs.n", "goto": "add"},
                                            {"else": "shout"}]},
                  {"id": "never", "fail": "skipped by the branch"},
                  {"id": "shout", "transform": {"text": "upper(inputs.who)"}},
                  {"id": "skipped", "when": "inputs.n > 100", "fail": "not reached"},
                  {"id": "pause", "wait": "10ms"},
                  {"id": "tell", "notify": "Total {{ vars.total }} for {{ inputs.who }}"}]},
    "transfer": {"name": "transfer", "steps": [
        {"id": "hold", **http("/holds", json={"account": "checking", "amount": 5,
                                              "reference": "{{ run.id }}"},
                              outputs={"id": "body.hold_id", "status": "status"}),
         "compensate": http("/holds/{{ steps.hold.outputs.id }}/release")},
        {"id": "book", **http("/transfers", json={"amount": 5, "recipient": "{{ inputs.to }}",
                                                  "reference": "{{ run.id }}"},
                              outputs={"id": "body.transfer_id"}),
         "retry": {"max_attempts": 3, "initial_interval": "10ms",
                   "non_retryable_statuses": [422]},
         "compensate": http("/transfers/{{ steps.book.outputs.id }}/reverse")},
        {"id": "note", "notify": "booked", "compensate": {"notify": "undone"}},
        {"id": "check", "branch": [{"if": "inputs.fail_late", "goto": "boom"},
                                   {"else": "end"}]},
        {"id": "boom", "fail": "late failure for {{ inputs.to }}"}]},
    "forever": {"name": "forever", "max_steps": 7,
                "steps": [{"id": "spin", "branch": [{"else": "spin"}]}]},
    "slow": {"name": "slow", "steps": [{"id": "s", **http("/holds", json={"amount": 1}),
                                        "timeout": "100ms",
                                        "retry": {"max_attempts": 2,
                                                  "initial_interval": "1ms"}}]},
    "parked": {"name": "parked", "steps": [
        {"id": "w", "wait": "30s"},
        {"id": "done", "set": {"ok": True}}]},
    "refused": {"name": "refused", "steps": [
        {"id": "r", "http": {"url": "{{ inputs.url }}"}}]},
    "unsafe": {"name": "unsafe", "steps": [
        {"id": "u", **http("/transfers", json={"amount": 1, "recipient": "x"}),
         "non_idempotent": True}]},
    "approve": {"name": "approve", "steps": [
        {"id": "ok", "approval": {"timeout": "1h", "message": "pay {{ inputs.to }}?",
                                  "notify": "waiting for a person"}},
        {"id": "after", "set": {"approved": "steps.ok.outputs.approved"}}]},
    "child": {"name": "child", "inputs": {"to": "string"},
              "outputs": {"transfer": "steps.book.outputs.id"},
              "steps": [{"id": "book", **http("/transfers", json={
                  "amount": 1, "recipient": "{{ inputs.to }}", "reference": "{{ run.id }}"},
                  outputs={"id": "body.transfer_id"}), "retry": {"max_attempts": 1},
                  "compensate": http("/transfers/{{ steps.book.outputs.id }}/reverse")}]},
    "gated": {"name": "gated", "steps": [
        {"id": "sub", "subworkflow": {"name": "approve", "inputs": {"to": "{{ inputs.to }}"}}},
        {"id": "done", "set": {"ok": True}}]},
    "parent": {"name": "parent", "steps": [
        {"id": "sub", "subworkflow": {"name": "child", "inputs": {"to": "{{ inputs.to }}"}}},
        {"id": "after", "branch": [{"if": "inputs.fail_late", "goto": "boom"},
                                   {"else": "end"}]},
        {"id": "boom", "fail": "parent failed"}]},
    "wrapper": {"name": "wrapper", "steps": [
        {"id": "sub", "subworkflow": {"name": "transfer",
                                      "inputs": {"to": "{{ inputs.to }}", "fail_late": True}}}]},
}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    web_runner, port = await serve(create_app())
    bank_url = f"http://127.0.0.1:{port}"
    rpa = RpaSettings(HostAllowList(("127.0.0.1",)), {"bank": bank_url})
    registry = WorkflowRegistry()
    registry.add(BotWorkflows(BOT, parse_workflows(WORKFLOWS, rpa), rpa))
    kv = MemoryKeyValue()
    store = RunStore(kv)  # type: ignore[arg-type]
    publisher = FakePublisher()
    # no progress notices (a parked run would come back for its notice): their own tests
    config = RunnerConfig(inline_wait_max_s=0.5, ack_wait_s=5.0, progress_notice_s=0)
    async with aiohttp.ClientSession() as session:
        engine = Engine(config, store, registry, publisher, RunnerMetrics.create(),  # type: ignore[arg-type]
                        HttpStep(session), BrowserPool("/none", 1, tmp_path), "owner-1")
        yield Rig(engine, store, kv, publisher, bank_url, session)
    await web_runner.cleanup()


async def test_set_transform_branch_loop_skip_wait_notify(rig: Rig) -> None:
    verdict, state = await rig.run("kinds", {"n": 3, "who": "anna"})
    assert verdict == Verdict("ack")
    assert state.status == "succeeded", state.error
    assert state.outputs == {"total": 3, "shout": "ANNA"}  # 0 + 1 + 2
    assert [(h["step"], h["status"]) for h in state.history] == [
        ("init", "succeeded"), ("add", "succeeded"), ("loop", "succeeded"),
        ("add", "succeeded"), ("loop", "succeeded"), ("add", "succeeded"),
        ("loop", "succeeded"), ("shout", "succeeded"), ("skipped", "skipped"),
        ("pause", "succeeded"), ("tell", "succeeded")]
    assert state.visits["add"] == 3 and state.executed == 11
    assert rig.publisher.notes == [("tell", "Total 3 for anna")]
    assert rig.publisher.results == [state] or rig.publisher.results[0].run_id == state.run_id


async def test_http_outputs_idempotency_key_and_checkpoints(rig: Rig) -> None:
    writes = rig.kv.writes
    _verdict, state = await rig.run("transfer", {"to": "anna"})
    assert state.status == "succeeded", state.error
    assert state.steps["hold"]["outputs"]["status"] == 201
    assert state.steps["book"]["outputs"]["id"].startswith("TX-")
    # one checkpoint per step, the last one being the final state
    assert rig.kv.writes - writes == 4
    stats = await rig.bank("GET", "/_stats")
    assert stats["effects"] == {"hold": 1, "transfer": 1} and stats["replays"] == 0
    # as if the runner had died before its first checkpoint: the run starts over with the
    # same idempotency keys, so the bank replays and nothing happens twice
    state.status, state.pc, state.steps, state.visits = "running", 0, {}, {}
    job = Job(state.run_id, BOT, workflow="transfer", inputs={"to": "anna"})
    state.owner, state.lease_until = None, 0
    await rig.store.kv.update(f"run.{state.run_id}", state.to_json(), last=state.revision)
    await rig.engine.process(job, Delivery(first=False))
    stats = await rig.bank("GET", "/_stats")
    assert stats["effects"] == {"hold": 1, "transfer": 1} and stats["replays"] == 2


async def test_retries_then_success(rig: Rig) -> None:
    await rig.bank("POST", "/_faults", {"path": "/transfers", "fail_times": 2, "status": 503})
    _, state = await rig.run("transfer", {"to": "anna"})
    assert state.status == "succeeded", state.error
    book = next(h for h in state.history if h["step"] == "book")
    assert book["attempts"] == 3


async def test_failure_compensates_in_reverse_order(rig: Rig) -> None:
    _, state = await rig.run("transfer", {"to": "anna", "fail_late": True})
    assert state.status == "compensated"
    assert state.error == "step 'boom': late failure for anna"
    done = [(h["step"], h["status"]) for h in state.history]
    assert done[-4:] == [("boom", "failed"), ("note", "compensated"), ("book", "compensated"),
                         ("hold", "compensated")]
    assert rig.publisher.notes == [("note", "booked"), ("note", "undone")]
    stats = await rig.bank("GET", "/_stats")
    assert stats["effects"] == {"hold": 1, "transfer": 1, "reverse": 1, "hold_release": 1}
    assert rig.publisher.results[-1].status == "compensated"


async def test_non_retryable_status_fails_at_once_and_compensates(rig: Rig) -> None:
    _, state = await rig.run("transfer", {"to": "blocked-bob"})
    assert state.status == "compensated"
    assert "HTTP 422: recipient blocked-bob is refused" in (state.error or "")
    book = next(h for h in state.history if h["step"] == "book")
    assert book["attempts"] == 1 and book["status"] == "failed"


async def test_step_budget_stops_endless_loops(rig: Rig) -> None:
    _, state = await rig.run("forever")
    assert state.status == "failed"
    assert "step budget of 7 steps used up" in (state.error or "")
    assert state.executed == 7


async def test_attempt_timeout(rig: Rig) -> None:
    await rig.bank("POST", "/_faults", {"path": "/holds", "delay_ms": 400})
    started = time.monotonic()
    _, state = await rig.run("slow")
    assert state.status == "failed" and "timed out after 0.1s" in (state.error or "")
    assert state.history[-1]["attempts"] == 2
    assert time.monotonic() - started < 2


async def test_long_wait_parks_and_resumes_when_due(rig: Rig) -> None:
    verdict, state = await rig.run("parked")
    assert verdict.action == "nak" and 29 < verdict.delay <= 30
    assert state.status == "waiting" and state.owner is None and state.wake_at is not None
    state.wake_at = time.time() - 1  # as if 30 s had passed
    await rig.store.save(state)
    verdict, state = await rig.wake(state.run_id)
    assert verdict.action == "ack" and state.status == "succeeded"
    assert [h["step"] for h in state.history] == ["w", "done"]


async def test_runtime_allow_list_refusal(rig: Rig) -> None:
    _, state = await rig.run("refused", {"url": "http://169.254.169.254/latest/meta-data"})
    assert state.status == "failed"
    assert "is not on the bot's allow-list" in (state.error or "")
    _, state = await rig.run("refused", {"url": "http://127.0.0.1.nip.io/"})
    assert "allow-list" in (state.error or "")


async def test_non_idempotent_step_in_flight_needs_attention(rig: Rig) -> None:
    run_id = uuid.uuid4().hex
    # a runner died during step u: its checkpoint says the step was executing
    state = RunState.new(run_id, BOT, "unsafe", {}, status="running", owner="dead",
                         epoch=3, visits={"u": 1}, executed=1,
                         inflight={"step": "u", "started": time.time(), "executing": True})
    await rig.store.save(state)
    verdict, state = await rig.wake(run_id)
    assert verdict.action == "ack"
    assert state.status == "needs_attention" and "not idempotent" in (state.error or "")
    assert state.resumes == 1
    assert (await rig.bank("GET", "/_stats"))["requests"] == 0
    assert rig.publisher.events[-1][0] == "attention"


async def test_live_lease_of_another_runner_is_respected(rig: Rig) -> None:
    run_id = uuid.uuid4().hex
    state = RunState.new(run_id, BOT, "kinds", {"n": 1, "who": "x"}, status="running",
                         owner="other", lease_until=time.time() + 3)
    await rig.store.save(state)
    verdict, _ = await rig.wake(run_id)
    assert verdict.action == "nak" and 2 < verdict.delay < 4


async def test_approval_parks_until_decided(rig: Rig) -> None:
    verdict, state = await rig.run("approve", {"to": "anna"})
    assert verdict.action == "nak" and state.status == "waiting_approval"
    assert state.approval is not None and state.approval["message"] == "pay anna?"
    assert rig.publisher.notes == [("ok", "waiting for a person")]
    assert rig.publisher.events[0][0] == "approval.requested"
    verdict, state = await rig.wake(state.run_id)  # woken early: still waiting
    assert verdict.action == "nak" and state.status == "waiting_approval"
    state.control.decisions["ok"] = {"approved": True, "by": "ops", "comment": "fine"}
    await rig.store.save(state)
    verdict, state = await rig.wake(state.run_id)
    assert verdict.action == "ack" and state.status == "succeeded"
    assert state.vars == {"approved": True}
    assert state.steps["ok"]["outputs"]["approver"] == "ops"


async def test_rejection_and_cancel(rig: Rig) -> None:
    _, state = await rig.run("approve", {"to": "anna"})
    state.control.decisions["ok"] = {"approved": False, "by": "ops", "comment": "no way"}
    await rig.store.save(state)
    _, state = await rig.wake(state.run_id)
    assert state.status == "failed" and state.error == "step 'ok': rejected by ops: no way"
    _, state = await rig.run("approve", {"to": "bob"})
    state.control.cancel = {"reason": "customer called", "by": "agent"}
    await rig.store.save(state)
    _, state = await rig.wake(state.run_id)
    assert state.status == "cancelled"
    assert state.error == "cancelled by agent: customer called"


async def test_subworkflow_runs_as_a_child_and_is_compensated(rig: Rig) -> None:
    _, state = await rig.run("parent", {"to": "anna"})
    assert state.status == "succeeded", state.error
    child = await rig.store.get(f"{state.run_id}-sub")
    assert child is not None and child.status == "succeeded" and child.parent == state.run_id
    assert state.steps["sub"]["outputs"]["transfer"] == child.outputs["transfer"]
    _, state = await rig.run("parent", {"to": "bob", "fail_late": True})
    assert state.status == "compensated"
    child = await rig.store.get(f"{state.run_id}-sub")
    assert child is not None and child.status == "compensated"
    stats = await rig.bank("GET", "/_stats")
    assert stats["effects"] == {"transfer": 2, "reverse": 1}


async def test_a_fail_steps_text_is_what_the_customer_may_hear_a_technical_error_not(
        rig: Rig) -> None:
    """Issue 18: the run keeps the details in `error` (the run record, logs, agents) and the
    author's `fail` text apart in `message`, which the result carries to the conversation."""
    _, state = await rig.run("transfer", {"to": "anna", "fail_late": True})
    assert state.message == "late failure for anna"
    assert state.error == "step 'boom': late failure for anna"
    _, state = await rig.run("transfer", {"to": "blocked-bob"})
    assert state.message is None and "HTTP 422" in (state.error or "")
    _, state = await rig.run("wrapper", {"to": "carl"})
    assert state.status == "failed" and state.message == "late failure for carl"
    sent: list[dict[str, Any]] = []

    async def publish(subject: str, data: bytes, headers: dict[str, str]) -> None:
        sent.append(json.loads(data))

    bus = SimpleNamespace(js=SimpleNamespace(publish=publish))
    await Publisher(bus, 1).result(state)  # type: ignore[arg-type]
    assert sent[0]["message"] == "late failure for carl"
    assert sent[0]["error"].startswith("step 'sub': subworkflow transfer compensated")


async def test_unknown_workflow_and_bad_inputs_fail_the_run(rig: Rig) -> None:
    _, state = await rig.run("ghost")
    assert state.status == "failed" and "no workflow 'ghost'" in (state.error or "")
    _, state = await rig.run("kinds", {"n": "many"})
    assert state.status == "failed" and "invalid inputs" in (state.error or "")


def test_secrets_are_scrubbed_from_anything_stored() -> None:
    secrets = Secrets({"BOTFACTORY_SECRET_TOKEN": "tok-123456", "BOTFACTORY_SECRET_PIN": "12"})
    assert secrets.resolve("TOKEN") == "tok-123456"
    assert secrets.resolve("pin") == "12"
    with pytest.raises(KeyError, match="not set"):
        secrets.resolve("OTHER")
    assert secrets.scrub({"e": ["Bearer tok-123456 failed", 12]}) == {"e": ["Bearer *** failed",
                                                                           12]}
    assert "tok" not in repr(secrets)


async def test_a_subworkflow_approval_parks_its_parent(rig: Rig) -> None:
    verdict, parent = await rig.run("gated", {"to": "anna"})
    assert verdict.action == "nak" and parent.status == "waiting_approval"
    child = await rig.store.get(f"{parent.run_id}-sub")
    assert child is not None and child.status == "waiting_approval" and child.approval
    child.control.decisions["ok"] = {"approved": True, "by": "ops"}
    await rig.store.save(child)
    verdict, parent = await rig.wake(parent.run_id)
    assert verdict.action == "ack" and parent.status == "succeeded", parent.error
    assert [r.run_id for r in rig.publisher.results] == [parent.run_id]  # the child's: none


async def test_retry_after_needs_attention_sends_the_same_key_again(rig: Rig) -> None:
    run_id = uuid.uuid4().hex
    state = RunState.new(run_id, BOT, "unsafe", {}, status="running", owner="dead", epoch=1,
                         visits={"u": 1}, executed=1,
                         inflight={"step": "u", "started": time.time(), "executing": True})
    await rig.store.save(state)
    _, state = await rig.wake(run_id)
    assert state.status == "needs_attention"
    state.control.retry = 1  # what RetryRun writes, once a person checked the bank
    await rig.store.save(state)
    verdict, state = await rig.wake(run_id)
    assert verdict.action == "ack" and state.status == "succeeded", state.error
    assert state.visits == {"u": 1} and state.retried == 1
    assert (await rig.bank("GET", "/_stats"))["effects"] == {"transfer": 1}


# -- progress notices ----------------------------------------------------------------------------


async def test_a_slow_run_sends_one_progress_notice(rig: Rig) -> None:
    rig.engine.config = replace(rig.engine.config, progress_notice_s=0.1)
    await rig.bank("POST", "/_faults", {"path": "/holds", "delay_ms": 300})
    _, state = await rig.run("transfer", {"to": "anna"})
    assert state.status == "succeeded" and state.progress_noticed
    [(run_id, elapsed)] = rig.publisher.notices
    assert run_id == state.run_id and 0.1 <= elapsed < 0.3
    await rig.bank("POST", "/_faults", {"path": "/holds", "delay_ms": 0})
    _, fast = await rig.run("transfer", {"to": "bob"})
    _, detached = await rig.run("transfer", {"to": "eve"}, conversation="")
    assert not fast.progress_noticed and not detached.progress_noticed
    assert len(rig.publisher.notices) == 1


async def test_a_parked_run_comes_back_for_its_progress_notice(rig: Rig) -> None:
    rig.engine.config = replace(rig.engine.config, progress_notice_s=0.3)
    verdict, state = await rig.run("parked")
    assert verdict.action == "nak" and 0.1 <= verdict.delay <= 0.3  # not the 30 s wait
    assert rig.publisher.notices == [] and not state.progress_noticed
    await asyncio.sleep(0.3)
    verdict, state = await rig.wake(state.run_id)
    assert verdict.action == "nak" and 29 < verdict.delay <= 30  # now: the wait itself
    assert state.status == "waiting" and state.progress_noticed
    assert [run_id for run_id, _ in rig.publisher.notices] == [state.run_id]
    verdict, state = await rig.wake(state.run_id)
    assert len(rig.publisher.notices) == 1 and 29 < verdict.delay <= 30
