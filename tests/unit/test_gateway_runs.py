"""The gateway's mapping of the RPA runner's gRPC status codes to problem responses, and the
JSON form of a run (the routes themselves: tests/integration/test_gateway_runs.py)."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from services.common.pb.botfactory.v1 import rpa_pb2
from services.gateway.http.problems import from_domain_error
from services.gateway.http.runs import run_json
from services.gateway.runs import runner_error


def _rpc_error(code: grpc.StatusCode, details: str = "why") -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details=details)


@pytest.mark.parametrize(("code", "status", "problem_type", "detail"), [
    (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid-argument", "why"),
    (grpc.StatusCode.NOT_FOUND, 404, "not-found", "why"),
    (grpc.StatusCode.FAILED_PRECONDITION, 409, "conflict", "why"),
    (grpc.StatusCode.ALREADY_EXISTS, 409, "conflict", "why"),
    (grpc.StatusCode.UNAVAILABLE, 503, "runner-unavailable", "retry later"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 503, "runner-unavailable", "retry later"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 503, "runner-unavailable", "retry later"),
    (grpc.StatusCode.INTERNAL, 502, "runner-failed", "failed to answer"),
    (grpc.StatusCode.UNKNOWN, 502, "runner-failed", "failed to answer"),
    (grpc.StatusCode.PERMISSION_DENIED, 502, "runner-failed", "failed to answer"),
])
def test_runner_status_codes_become_problems(code: grpc.StatusCode, status: int,
                                             problem_type: str, detail: str) -> None:
    response = from_domain_error(runner_error(_rpc_error(code)))
    assert response.status == status
    assert response.text is not None
    body = json.loads(response.text)
    assert body["type"] == f"urn:botfactory:problem:{problem_type}" and detail in body["detail"]
    if status == 503:
        assert response.headers["Retry-After"] == "5" and body["retry_after"] == 5
    else:
        assert "Retry-After" not in response.headers
    if status == 502:
        assert "why" not in body["detail"]  # the runner's own message stays in the log


def test_run_json() -> None:
    run = rpa_pb2.Run(run_id="r1", bot_id="b", workflow="w", status="waiting_approval",
                      inputs_json='{"amount": 5}', outputs_json="{}", current_step="ok",
                      created_at_unix_ms=1, updated_at_unix_ms=2)
    run.steps.add(step="hold", kind="http", status="succeeded", attempts=1, visit=1,
                  outputs_json='{"id": "H1"}')
    run.approval.CopyFrom(rpa_pb2.PendingApproval(step="ok", message="pay?", approvers=["ops"]))
    body = run_json(run)
    assert body["inputs"] == {"amount": 5} and body["error"] is None
    assert body["finished_at_unix_ms"] is None and body["conversation_id"] is None
    assert body["approval"]["approvers"] == ["ops"]
    assert body["steps"] == [{"step": "hold", "kind": "http", "status": "succeeded",
                              "attempts": 1, "visit": 1, "started_at_unix_ms": 0,
                              "finished_at_unix_ms": 0, "duration_ms": 0.0,
                              "outputs": {"id": "H1"}, "error": None, "compensation": False}]
    assert "steps" not in run_json(run, steps=False)
    assert run_json(rpa_pb2.Run(run_id="r2"))["approval"] is None
