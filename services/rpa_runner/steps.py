"""Executors of the step kinds that need no outside system: set, transform, branch, wait,
notify, fail, and approval (which pauses the run until a person decides)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.botdef.expressions import (
    evaluate_source,
    render_value,
    to_text,
    truthy,
)
from services.botdef.workflows import (
    ApprovalSpec,
    AssignSpec,
    BranchSpec,
    FailSpec,
    NotifySpec,
    WaitSpec,
)
from services.common.logging import get_logger
from services.rpa_runner.jobs import Publisher
from services.rpa_runner.metrics import RunnerMetrics
from services.rpa_runner.outcomes import Done, Failed, Outcome, Park, StepCall
from services.rpa_runner.state import WAITING, WAITING_APPROVAL

log = get_logger(__name__)


def evaluate_value(value: Any, scope: dict[str, Any]) -> Any:
    """A string is an expression; any other value is itself."""
    return evaluate_source(value, scope) if isinstance(value, str) else value


def assign(call: StepCall, spec: AssignSpec) -> Outcome:
    values = {name: evaluate_value(source, call.scope) for name, source in spec.values.items()}
    if call.step.kind == "set":
        return Done(values, variables=values)
    return Done(values)


def branch(call: StepCall, spec: BranchSpec) -> Outcome:
    for case in spec.cases:
        if case.condition is None or truthy(evaluate_value(case.condition, call.scope)):
            return Done({"goto": case.goto}, goto=case.goto)
    return Done({"goto": None})


async def wait(call: StepCall, spec: WaitSpec, inline_max: float) -> Outcome:
    now = time.time()
    state = call.state
    if state.wake_at is None:
        state.wake_at = now + spec.seconds
    remaining = state.wake_at - now
    if remaining <= 0:
        return Done({"waited_s": spec.seconds})
    if spec.seconds <= inline_max:
        await asyncio.sleep(remaining)
        return Done({"waited_s": spec.seconds})
    return Park(state.wake_at, WAITING)


def fail(call: StepCall, spec: FailSpec) -> Outcome:
    text = to_text(render_value(spec.message, call.scope))
    return Failed(text, message=text)


class Messaging:
    """notify and approval: they talk to the conversation and to the EVENTS stream."""

    def __init__(self, publisher: Publisher, metrics: RunnerMetrics) -> None:
        self.publisher = publisher
        self.metrics = metrics

    async def notify(self, call: StepCall, spec: NotifySpec) -> Outcome:
        text = to_text(render_value(spec.text, call.scope))
        return Done({"sent": await self.send(call, call.step_key, text), "text": text})

    async def send(self, call: StepCall, key: str, text: str) -> bool:
        if not call.state.conversation:
            log.info("notify_without_conversation", run_id=call.state.run_id, step=key)
            return False
        await self.publisher.notify(call.state, key, text)
        return True

    async def approval(self, call: StepCall, spec: ApprovalSpec) -> Outcome:
        state, key = call.state, call.step_key
        decision = state.control.decisions.get(key)
        pending = state.approval if state.approval and state.approval["step"] == key else None
        if decision is not None:
            return await self._decided(call, pending, decision)
        now = time.time()
        if pending is None:
            return await self._request(call, spec, now)
        if now < pending["deadline"]:
            return Park(pending["deadline"], WAITING_APPROVAL)
        level = int(pending["level"])
        if level < len(spec.escalation):
            return await self._escalate(call, spec, pending, level, now)
        await self._event(call, "approval_timed_out", pending)
        self.metrics.waiting_approval.dec()
        state.approval = None
        if spec.on_timeout == "approve":
            return Done({"approved": True, "approver": "timeout", "comment": ""})
        return Failed(f"approval timed out (level {level}, no decision)")

    async def _request(self, call: StepCall, spec: ApprovalSpec, now: float) -> Outcome:
        pending: dict[str, Any] = {
            "step": call.step_key, "level": 0, "deadline": now + spec.timeout,
            "approvers": list(spec.approvers), "requested": now,
            "message": to_text(render_value(spec.message, call.scope))}
        call.state.approval = pending
        self.metrics.waiting_approval.inc()
        await self._event(call, "approval_requested", pending)
        if spec.notify:
            await self.send(call, call.step_key, to_text(render_value(spec.notify, call.scope)))
        return Park(pending["deadline"], WAITING_APPROVAL)

    async def _escalate(self, call: StepCall, spec: ApprovalSpec, pending: dict[str, Any],
                        level: int, now: float) -> Outcome:
        escalation = spec.escalation[level]
        message = to_text(render_value(escalation.message, call.scope)) if escalation.message \
            else pending["message"]
        pending.update(level=level + 1, deadline=now + escalation.timeout,
                       approvers=list(escalation.approvers or pending["approvers"]),
                       message=message)
        await self._event(call, "approval_escalated", pending)
        return Park(pending["deadline"], WAITING_APPROVAL)

    async def _decided(self, call: StepCall, pending: dict[str, Any] | None,
                       decision: dict[str, Any]) -> Outcome:
        if pending is not None:
            self.metrics.waiting_approval.dec()
            call.state.approval = None
        await self._event(call, "approval_decided", pending or {"step": call.step_key},
                          approved=bool(decision.get("approved")))
        who, comment = str(decision.get("by", "")), str(decision.get("comment", ""))
        if decision.get("approved"):
            return Done({"approved": True, "approver": who, "comment": comment})
        return Failed(f"rejected by {who or 'an approver'}" + (f": {comment}" if comment else ""))

    async def _event(self, call: StepCall, kind: str, pending: dict[str, Any],
                     **extra: Any) -> None:
        msg_id = f"{kind}-{call.state.run_id}-{call.step_key}-{pending.get('level', 0)}"
        await self.publisher.event(kind.replace("_", "."), call.state, msg_id,
                                   step=pending.get("step"), level=pending.get("level", 0),
                                   approvers=pending.get("approvers", []),
                                   message=pending.get("message", ""),
                                   deadline=pending.get("deadline"), **extra)

