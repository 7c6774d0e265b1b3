"""The runner's gRPC API (botfactory.v1.RpaRunner). It starts runs by publishing jobs, reads
runs from KV, and asks things of runs (cancel, approve/reject, retry) by writing their
`control` and publishing a wake-up job; the runner holding the run does the rest."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import grpc

from services.botdef.workflows import WorkflowDef, coerce_inputs
from services.common.errors import DomainError, InvalidArgument, NotFound, grpc_errors
from services.common.logging import get_logger
from services.common.pb.botfactory.v1 import rpa_pb2, rpa_pb2_grpc
from services.common.subjects import check_id
from services.rpa_runner.bots import VersionUnavailable, WorkflowRegistry
from services.rpa_runner.jobs import WAKE, Job, Publisher
from services.rpa_runner.state import (
    FAILED,
    NEEDS_ATTENTION,
    PENDING,
    STOPPED,
    WAITING_APPROVAL,
    RunState,
    RunStore,
)

log = get_logger(__name__)
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


class FailedPrecondition(DomainError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


def _ms(seconds: float | None) -> int:
    return int((seconds or 0) * 1000)


def _json(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def run_message(state: RunState, step_ids: list[str] | None = None) -> rpa_pb2.Run:
    """The API view of a stored run."""
    current = ""
    if state.status not in STOPPED and step_ids and state.pc < len(step_ids):
        current = step_ids[state.pc]
    run = rpa_pb2.Run(
        run_id=state.run_id, bot_id=state.bot, workflow=state.workflow, status=state.status,
        bot_version=state.bot_version,
        inputs_json=_json(state.inputs), outputs_json=_json(state.outputs),
        error=state.error or "", conversation_id=state.conversation, current_step=current,
        parent_run_id=state.parent, root_run_id=state.root, steps_executed=state.executed,
        resumes=state.resumes, created_at_unix_ms=_ms(state.created),
        updated_at_unix_ms=_ms(state.updated), finished_at_unix_ms=_ms(state.finished))
    run.steps.extend(_step(entry) for entry in state.history)
    if state.approval is not None:
        approval = state.approval
        run.approval.CopyFrom(rpa_pb2.PendingApproval(
            step=str(approval["step"]), message=str(approval.get("message", "")),
            approvers=[str(a) for a in approval.get("approvers", [])],
            deadline_unix_ms=_ms(approval.get("deadline")),
            escalation_level=int(approval.get("level", 0))))
    return run


def _step(entry: dict[str, Any]) -> rpa_pb2.StepRecord:
    return rpa_pb2.StepRecord(
        step=str(entry["step"]), kind=str(entry.get("kind", "")),
        status=str(entry.get("status", "")), attempts=int(entry.get("attempts", 0)),
        visit=int(entry.get("visit", 1)), started_at_unix_ms=_ms(entry.get("started")),
        finished_at_unix_ms=_ms(entry.get("finished")), duration_ms=float(entry.get("ms", 0)),
        outputs_json=_json(entry.get("outputs", {})), error=str(entry.get("error", "")),
        compensation=bool(entry.get("compensation", False)))


class RpaRunnerServicer(rpa_pb2_grpc.RpaRunnerServicer):
    def __init__(self, store: RunStore, registry: WorkflowRegistry, publisher: Publisher) -> None:
        self.store = store
        self.registry = registry
        self.publisher = publisher

    async def _workflow(self, state: RunState) -> WorkflowDef | None:
        """The workflow the run executes (its bot version's, else the deployed one)."""
        try:
            bot = await self.registry.resolve(state.bot, state.bot_version)
        except VersionUnavailable:
            return None
        return None if bot is None else bot.workflows.get(state.workflow)

    async def _view(self, state: RunState) -> rpa_pb2.Run:
        workflow = await self._workflow(state)
        return run_message(state, [] if workflow is None else [s.id for s in workflow.steps])

    async def _get(self, run_id: str) -> RunState:
        check_id(run_id, "run_id")
        state = await self.store.get(run_id)
        if state is None:
            raise NotFound(f"no run {run_id!r}")
        return state

    @grpc_errors
    async def StartRun(self, request: rpa_pb2.StartRunRequest,
                       context: grpc.aio.ServicerContext) -> rpa_pb2.Run:
        bot = check_id(request.bot_id, "bot_id")
        workflow = self.registry.workflow(bot, request.workflow)
        if workflow is None:
            raise NotFound(f"bot {bot!r} has no workflow {request.workflow!r}")
        inputs = _inputs(request.inputs_json)
        try:
            coerce_inputs(workflow, inputs)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        run_id = check_id(request.run_id, "run_id") if request.run_id else uuid.uuid4().hex
        if request.conversation_id:
            check_id(request.conversation_id, "conversation_id")
        existing = await self.store.get(run_id)
        if existing is not None:
            return await self._view(existing)
        job = Job(run_id, bot, workflow=workflow.name, inputs=inputs,
                  conversation_id=request.conversation_id,
                  correlation_id=request.correlation_id)
        await self.publisher.job(job, run_id)
        log.info("run_requested", run_id=run_id, bot=bot, workflow=workflow.name)
        state = RunState.new(run_id, bot, workflow.name, inputs,
                             conversation=request.conversation_id, status=PENDING)
        return await self._view(state)

    @grpc_errors
    async def GetRun(self, request: rpa_pb2.GetRunRequest,
                     context: grpc.aio.ServicerContext) -> rpa_pb2.Run:
        return await self._view(await self._get(request.run_id))

    @grpc_errors
    async def ListRuns(self, request: rpa_pb2.ListRunsRequest,
                       context: grpc.aio.ServicerContext) -> rpa_pb2.ListRunsResponse:
        limit = request.limit or DEFAULT_LIMIT
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidArgument(f"limit must be 1..{MAX_LIMIT}")
        runs = [r for r in await self.store.all()
                if (not request.bot_id or r.bot == request.bot_id)
                and (not request.workflow or r.workflow == request.workflow)
                and (not request.status or r.status == request.status)]
        runs.sort(key=lambda r: r.created, reverse=True)
        return rpa_pb2.ListRunsResponse(runs=[await self._view(r) for r in runs[:limit]])

    @grpc_errors
    async def CancelRun(self, request: rpa_pb2.CancelRunRequest,
                        context: grpc.aio.ServicerContext) -> rpa_pb2.Run:
        def cancel(state: RunState) -> None:
            if state.terminal:
                raise FailedPrecondition(f"run {state.run_id} already {state.status}")
            if state.parent:
                raise FailedPrecondition(f"run {state.run_id} is a subworkflow: cancel its "
                                         f"top-level run {state.root}")
            state.control.cancel = {"reason": request.reason, "by": request.by,
                                    "at": time.time()}

        state = await self._control(request.run_id, cancel)
        await self._wake(state, "cancel")
        return await self._view(state)

    @grpc_errors
    async def Approve(self, request: rpa_pb2.ApprovalDecision,
                      context: grpc.aio.ServicerContext) -> rpa_pb2.Run:
        return await self._decide(request, approved=True)

    @grpc_errors
    async def Reject(self, request: rpa_pb2.ApprovalDecision,
                     context: grpc.aio.ServicerContext) -> rpa_pb2.Run:
        return await self._decide(request, approved=False)

    async def _waiting_run(self, run_id: str) -> str:
        """The run that holds the approval `run_id` waits for: itself, or the subworkflow
        run (and so on down) its current step waits on."""
        for _ in range(10):
            state = await self._get(run_id)
            workflow = await self._workflow(state)
            if state.approval is not None or state.status != WAITING_APPROVAL \
                    or workflow is None or state.pc >= len(workflow.steps):
                return run_id
            step = workflow.steps[state.pc]
            if step.kind != "subworkflow":
                return run_id
            visit = state.visits.get(step.id, 1)
            run_id = f"{run_id}-{step.id}" + (f"-{visit}" if visit > 1 else "")
        return run_id

    async def _decide(self, request: rpa_pb2.ApprovalDecision, *,
                      approved: bool) -> rpa_pb2.Run:
        def decide(state: RunState) -> None:
            pending = state.approval
            if state.status != WAITING_APPROVAL or pending is None:
                raise FailedPrecondition(f"run {state.run_id} waits for no approval "
                                         f"(status {state.status})")
            step = str(pending["step"])
            if request.step and request.step not in (step, step.split("#")[0]):
                raise FailedPrecondition(f"run {state.run_id} waits for approval of {step!r}")
            state.control.decisions[step] = {"approved": approved, "by": request.approver,
                                             "comment": request.comment, "at": time.time()}

        run_id = await self._waiting_run(request.run_id)
        state = await self._control(run_id, decide)
        await self._wake(state, "decision")
        log.info("approval_decided", run_id=state.run_id, approved=approved,
                 approver=request.approver)
        return await self._view(state)

    @grpc_errors
    async def RetryRun(self, request: rpa_pb2.RetryRunRequest,
                       context: grpc.aio.ServicerContext) -> rpa_pb2.Run:
        def retry(state: RunState) -> None:
            if state.status not in (FAILED, NEEDS_ATTENTION):
                raise FailedPrecondition(f"only failed or needs_attention runs can be retried "
                                         f"(run {state.run_id} is {state.status})")
            if state.parent:
                raise FailedPrecondition(f"run {state.run_id} is a subworkflow: retry its "
                                         f"top-level run {state.root}")
            state.control.retry = max(state.control.retry, state.retried) + 1

        state = await self._control(request.run_id, retry)
        await self._wake(state, f"retry{state.control.retry}")
        return await self._view(state)

    async def _control(self, run_id: str, change: Any) -> RunState:
        await self._get(run_id)
        try:
            return await self.store.modify(run_id, change)
        except KeyError:
            raise NotFound(f"no run {run_id!r}") from None

    async def _wake(self, state: RunState, why: str) -> None:
        """A job for the run's top-level run: a runner picks it up and looks at the run."""
        job = Job(state.root or state.run_id, state.bot, kind=WAKE)
        await self.publisher.job(job, f"wake-{job.run_id}-{why}-{state.revision}")


def _inputs(raw: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"inputs_json is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument("inputs_json must be a JSON object")
    return value
