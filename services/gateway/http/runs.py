"""Workflow run routes: the RPA runner's API (start, list, get with step history, cancel,
approve, reject, retry) for integrators, behind the gateway's API keys.

Roles (docs/gateway.md, "Workflow runs"): agent for everything but retry, which is admin. A
key reaches only its bots' runs: every run a route reads or acts on must belong to the bot in
the path, else it is "not found" (as if it did not exist). Who acted (`by` / `approver` on the
runner) is the key id, after the optional name the caller gives. Runner errors become problem
responses in services/gateway/runs.py (503 with Retry-After when it cannot be reached).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from services.common.errors import NotFound, Unavailable
from services.common.logging import get_logger
from services.common.pb.botfactory.v1 import rpa_pb2
from services.gateway.http.bodies import (
    CANCEL_RUN,
    DECIDE_RUN,
    START_RUN,
    WORKFLOW,
    Body,
)
from services.gateway.http.problems import RequestInvalid
from services.gateway.http.state import CORRELATION, principal_of, state_of
from services.gateway.http.wire import (
    json_response,
    limit_query,
    parse_json,
    read_body,
    read_json,
)
from services.gateway.runs import RunsApi

log = get_logger(__name__)

STATUSES = ("pending", "running", "waiting", "waiting_approval", "compensating", "succeeded",
            "failed", "compensated", "cancelled", "needs_attention")
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


def runs_api(request: web.Request) -> RunsApi:
    runs = state_of(request).runs
    if runs is None:
        raise Unavailable("workflow runs are not available on this gateway")
    return runs


async def optional_body(request: web.Request, body: Body) -> dict[str, Any]:
    """The values of `body`'s fields; an empty body is `{}`."""
    state = state_of(request)
    raw = await read_body(request, state.config.body_limit_bytes)
    return body.read(parse_json(raw) if raw.strip() else {}, state.config)


def actor(request: web.Request, name: str | None) -> str:
    """Who acts, as the runner records it: the caller's name (optional) and the key id."""
    key = f"key {principal_of(request).key_id}"
    return f"{name} ({key})" if name else key


async def own_run(request: web.Request) -> rpa_pb2.Run:
    """The run in the path, if it belongs to the bot in the path (else 404)."""
    bot, run_id = request.match_info["bot"], request.match_info["run_id"]
    run = await runs_api(request).get(run_id)
    if run.bot_id != bot:
        raise NotFound(f"no run {run_id!r}")
    return run


def _loads(raw: str) -> Any:
    return json.loads(raw) if raw else {}


def step_json(step: rpa_pb2.StepRecord) -> dict[str, Any]:
    return {"step": step.step, "kind": step.kind, "status": step.status,
            "attempts": step.attempts, "visit": step.visit,
            "started_at_unix_ms": step.started_at_unix_ms,
            "finished_at_unix_ms": step.finished_at_unix_ms, "duration_ms": step.duration_ms,
            "outputs": _loads(step.outputs_json), "error": step.error or None,
            "compensation": step.compensation}


def run_json(run: rpa_pb2.Run, *, steps: bool = True) -> dict[str, Any]:
    """A run as the HTTP API shows it (`steps`: with its step history)."""
    approval = None
    if run.HasField("approval"):
        approval = {"step": run.approval.step, "message": run.approval.message,
                    "approvers": list(run.approval.approvers),
                    "deadline_unix_ms": run.approval.deadline_unix_ms,
                    "escalation_level": run.approval.escalation_level}
    body: dict[str, Any] = {
        "run_id": run.run_id, "bot_id": run.bot_id, "workflow": run.workflow,
        "status": run.status, "inputs": _loads(run.inputs_json),
        "outputs": _loads(run.outputs_json), "error": run.error or None,
        "conversation_id": run.conversation_id or None, "current_step": run.current_step or None,
        "approval": approval, "parent_run_id": run.parent_run_id or None,
        "root_run_id": run.root_run_id or None, "steps_executed": run.steps_executed,
        "resumes": run.resumes, "created_at_unix_ms": run.created_at_unix_ms,
        "updated_at_unix_ms": run.updated_at_unix_ms,
        "finished_at_unix_ms": run.finished_at_unix_ms or None,
        "bot_version": run.bot_version or None,
    }
    if steps:
        body["steps"] = [step_json(step) for step in run.steps]
    return body


def _logged(request: web.Request, action: str, run: rpa_pb2.Run) -> None:
    log.info("run_" + action, run_id=run.run_id, bot=run.bot_id, workflow=run.workflow,
             key_id=principal_of(request).key_id, status=run.status)


async def start_run(request: web.Request) -> web.Response:
    state = state_of(request)
    bot = request.match_info["bot"]
    fields = START_RUN.read(await read_json(request, state.config.body_limit_bytes),
                            state.config)
    run = await runs_api(request).start(rpa_pb2.StartRunRequest(
        bot_id=bot, workflow=fields["workflow"], inputs_json=json.dumps(fields["inputs"]),
        correlation_id=request.get(CORRELATION, "")))
    _logged(request, "start_requested", run)
    return json_response(run_json(run), status=202)


async def list_runs(request: web.Request) -> web.Response:
    bot = request.match_info["bot"]
    workflow = request.query.get("workflow", "")
    status = request.query.get("status", "")
    if workflow and not WORKFLOW.match(workflow):
        raise RequestInvalid.one("workflow", f"must match {WORKFLOW.pattern}")
    if status and status not in STATUSES:
        raise RequestInvalid.one("status", f"must be one of {', '.join(STATUSES)}")
    runs = await runs_api(request).list(rpa_pb2.ListRunsRequest(
        bot_id=bot, workflow=workflow, status=status,
        limit=limit_query(request, DEFAULT_LIMIT, MAX_LIMIT)))
    return json_response({"bot_id": bot, "runs": [run_json(run, steps=False) for run in runs
                                                  if run.bot_id == bot]})


async def get_run(request: web.Request) -> web.Response:
    return json_response(run_json(await own_run(request)))


async def cancel_run(request: web.Request) -> web.Response:
    fields = await optional_body(request, CANCEL_RUN)
    run = await own_run(request)
    run = await runs_api(request).cancel(rpa_pb2.CancelRunRequest(
        run_id=run.run_id, reason=fields["reason"] or "", by=actor(request, fields["by"])))
    _logged(request, "cancel_requested", run)
    return json_response(run_json(run), status=202)


async def _decide(request: web.Request, *, approved: bool) -> web.Response:
    fields = await optional_body(request, DECIDE_RUN)
    run = await own_run(request)
    run = await runs_api(request).decide(rpa_pb2.ApprovalDecision(
        run_id=run.run_id, step=fields["step"] or "", approver=actor(request, fields["approver"]),
        comment=fields["comment"] or ""), approved=approved)
    _logged(request, "approved" if approved else "rejected", run)
    return json_response(run_json(run), status=202)


async def approve_run(request: web.Request) -> web.Response:
    return await _decide(request, approved=True)


async def reject_run(request: web.Request) -> web.Response:
    return await _decide(request, approved=False)


async def retry_run(request: web.Request) -> web.Response:
    run = await own_run(request)
    run = await runs_api(request).retry(run.run_id)
    _logged(request, "retry_requested", run)
    return json_response(run_json(run), status=202)
