"""The runner's gRPC API on a real nats-server: start/get/list, approvals (approve, reject,
timeout with escalation), cancel, retry, errors, and the Prometheus metrics."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import grpc
import pytest

from botfactory.local.nats_server import NatsServer
from services.common.pb.botfactory.v1 import rpa_pb2, rpa_pb2_grpc
from tests.support.polling import eventually
from tests.support.rpa import BOOK, HOLD, Harness, harness, write_test_bot


def approval(timeout: str, escalation: str) -> str:
    return f"""
  - id: review
    approval:
      message: "Pay {{{{ inputs.amount }}}}?"
      approvers: [ops]
      timeout: {timeout}
      escalation: [{{timeout: {escalation}, approvers: [leads]}}]
"""


WORKFLOWS = {
    "review": "name: review\ninputs: {amount: number}\nsteps:" + HOLD
              + approval("1h", "1h") + BOOK,
    "hurry": "name: hurry\ninputs: {amount: number}\nsteps:" + HOLD + approval("300ms", "300ms")
             + BOOK,
    "flaky": "name: flaky\ninputs: {amount: number}\nsteps:" + BOOK,
}


pytestmark = pytest.mark.usefixtures("rpa_secrets")


@pytest.fixture
def bot_dir(tmp_path: Path) -> Path:
    return write_test_bot(tmp_path / "bot", WORKFLOWS)


async def _start(stub: rpa_pb2_grpc.RpaRunnerStub, workflow: str, amount: float = 10,
                 run_id: str = "") -> rpa_pb2.Run:
    request = rpa_pb2.StartRunRequest(bot_id="rpatest", workflow=workflow, run_id=run_id,
                                      inputs_json=json.dumps({"amount": amount}))
    run: rpa_pb2.Run = await stub.StartRun(request)
    return run


async def _until(stub: rpa_pb2_grpc.RpaRunnerStub, run_id: str, status: str) -> rpa_pb2.Run:
    async def run_in_status() -> rpa_pb2.Run | None:
        try:
            run: rpa_pb2.Run = await stub.GetRun(rpa_pb2.GetRunRequest(run_id=run_id))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return None
        return run if run.status == status else None

    return await eventually(run_in_status, f"run {run_id} {status}")


async def _stats(h: Harness) -> dict[str, int]:
    effects: dict[str, int] = (await h.bank("GET", "/_stats"))["effects"]
    return effects


async def test_start_get_list_and_approve(nats_server: NatsServer, bot_dir: Path) -> None:
    async with harness(nats_server.url, bot_dir) as h:
        channel, stub = h.stub(h.runners[0])
        async with channel:
            started = await _start(stub, "review", 40, run_id="api-run-1")
            assert (started.run_id, started.status) == ("api-run-1", "pending")
            again = await _start(stub, "review", 40, run_id="api-run-1")
            assert again.run_id == "api-run-1"
            run = await _until(stub, "api-run-1", "waiting_approval")
            assert run.current_step == "review" and run.approval.step == "review"
            assert run.approval.message == "Pay 40?" and list(run.approval.approvers) == ["ops"]
            assert [s.step for s in run.steps] == ["hold"]
            listed = await stub.ListRuns(rpa_pb2.ListRunsRequest(status="waiting_approval"))
            assert [r.run_id for r in listed.runs] == ["api-run-1"]
            await stub.Approve(rpa_pb2.ApprovalDecision(run_id="api-run-1", approver="olga",
                                                        comment="ok"))
            run = await _until(stub, "api-run-1", "succeeded")
            assert [s.step for s in run.steps] == ["hold", "review", "book"]
            assert json.loads(run.steps[1].outputs_json) == {"approved": True, "approver": "olga",
                                                             "comment": "ok"}
            assert h.results["api-run-1"]["status"] == "succeeded"
            assert await _stats(h) == {"hold": 1, "transfer": 1}
        metrics = _scrape(h.runners[0].metrics_server.port)  # type: ignore[union-attr]
        assert 'botfactory_rpa_runs_started_total{bot="rpatest",workflow="review"} 1.0' in metrics
        assert 'botfactory_rpa_runs_finished_total{bot="rpatest",status="succeeded",' \
               'workflow="review"} 1.0' in metrics
        assert "botfactory_rpa_runs_waiting_approval 0.0" in metrics
        assert 'botfactory_rpa_step_duration_seconds_count{kind="http",outcome="done"} 2.0' \
            in metrics


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


async def test_reject_and_cancel_compensate(nats_server: NatsServer, bot_dir: Path) -> None:
    async with harness(nats_server.url, bot_dir) as h:
        channel, stub = h.stub(h.runners[0])
        async with channel:
            first = await _start(stub, "review")
            await _until(stub, first.run_id, "waiting_approval")
            await stub.Reject(rpa_pb2.ApprovalDecision(run_id=first.run_id, step="review",
                                                       approver="olga", comment="too much"))
            run = await _until(stub, first.run_id, "compensated")
            assert run.error == "step 'review': rejected by olga: too much"
            second = await _start(stub, "review")
            await _until(stub, second.run_id, "waiting_approval")
            await stub.CancelRun(rpa_pb2.CancelRunRequest(run_id=second.run_id,
                                                          reason="customer called", by="agent"))
            run = await _until(stub, second.run_id, "compensated")
            assert run.error == "cancelled by agent: customer called"
            assert [(s.step, s.status) for s in run.steps][-1] == ("hold", "compensated")
            assert await _stats(h) == {"hold": 2, "hold_release": 2}
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CancelRun(rpa_pb2.CancelRunRequest(run_id=second.run_id))
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_approval_timeout_escalates_then_rejects(nats_server: NatsServer,
                                                       bot_dir: Path) -> None:
    async with harness(nats_server.url, bot_dir) as h:
        events, sub = await h.listen("events.rpa.approval.>")
        channel, stub = h.stub(h.runners[0])
        async with channel:
            run = await _start(stub, "hurry")
            run = await _until(stub, run.run_id, "compensated")
        await sub.unsubscribe()
        assert run.error == "step 'review': approval timed out (level 1, no decision)"
        kinds = [m.subject.split(".")[3] for m in events]
        assert kinds == ["requested", "escalated", "timed"], kinds
        escalated = json.loads(events[1].data)
        assert escalated["approvers"] == ["leads"] and escalated["level"] == 1
        assert await _stats(h) == {"hold": 1, "hold_release": 1}


async def test_retry_a_failed_run_and_api_errors(nats_server: NatsServer, bot_dir: Path) -> None:
    async with harness(nats_server.url, bot_dir) as h:
        channel, stub = h.stub(h.runners[0])
        async with channel:
            await h.bank("POST", "/_faults", {"path": "/transfers", "fail_times": 1})
            run = await _start(stub, "flaky")
            run = await _until(stub, run.run_id, "failed")
            assert "HTTP 503" in run.error
            await stub.RetryRun(rpa_pb2.RetryRunRequest(run_id=run.run_id))
            run = await _until(stub, run.run_id, "succeeded")
            assert [s.status for s in run.steps] == ["failed", "succeeded"]
            assert await _stats(h) == {"transfer": 1}
            for call, request, code in [
                (stub.RetryRun, rpa_pb2.RetryRunRequest(run_id=run.run_id),
                 grpc.StatusCode.FAILED_PRECONDITION),
                (stub.Approve, rpa_pb2.ApprovalDecision(run_id=run.run_id),
                 grpc.StatusCode.FAILED_PRECONDITION),
                (stub.GetRun, rpa_pb2.GetRunRequest(run_id="nope"), grpc.StatusCode.NOT_FOUND),
                (stub.GetRun, rpa_pb2.GetRunRequest(run_id="bad id"),
                 grpc.StatusCode.INVALID_ARGUMENT),
                (stub.StartRun, rpa_pb2.StartRunRequest(bot_id="rpatest", workflow="ghost"),
                 grpc.StatusCode.NOT_FOUND),
                (stub.StartRun, rpa_pb2.StartRunRequest(bot_id="rpatest", workflow="flaky",
                                                        inputs_json='{"amount": "x"}'),
                 grpc.StatusCode.INVALID_ARGUMENT),
                (stub.StartRun, rpa_pb2.StartRunRequest(bot_id="rpatest", workflow="flaky",
                                                        inputs_json="[1]"),
                 grpc.StatusCode.INVALID_ARGUMENT),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call(request)
                assert caught.value.code() == code, (request, caught.value)
