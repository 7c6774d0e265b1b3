"""The durable run loop: steps in order (or where a branch goes), each attempt under its
timeout and retry policy, a checkpoint in KV after every step, compensation in reverse order
on failure (saga: `compensation.py`), approvals and long waits parked, subworkflows run inline
as child runs (`children.py`).

`Engine.process(job, delivery)` takes a job message and says what to do with it: ack it (the
run stopped), nak it with a delay (the run is parked, or another runner holds it), or leave
it (this runner was fenced off the run; the new owner holds the message).

A top-level run that a conversation waits for and that is still going `progress_notice_s`
after it was created tells the conversation once (`Publisher.progress`): from a timer while
this runner drives it, or when it parks past that time (a parked run's job comes back by then).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

from services.botdef.expressions import ExpressionError, truthy
from services.botdef.workflows import (
    ApprovalSpec,
    AssignSpec,
    BranchSpec,
    BrowserSpec,
    FailSpec,
    HttpSpec,
    NotifySpec,
    StepDef,
    SubworkflowSpec,
    WaitSpec,
    WorkflowDef,
    coerce_inputs,
)
from services.common.logging import get_logger
from services.rpa_runner import steps
from services.rpa_runner.bots import BotWorkflows, VersionUnavailable, WorkflowRegistry
from services.rpa_runner.browser import BrowserPool
from services.rpa_runner.children import ChildRuns
from services.rpa_runner.compensation import Compensation
from services.rpa_runner.config import RunnerConfig
from services.rpa_runner.held import Held, record_step
from services.rpa_runner.http_step import HttpStep
from services.rpa_runner.jobs import WAKE, Job, Publisher
from services.rpa_runner.metrics import RunnerMetrics
from services.rpa_runner.outcomes import Done, Failed, Outcome, Park, StepCall
from services.rpa_runner.state import (
    CANCELLED,
    COMPENSATING,
    FAILED,
    NEEDS_ATTENTION,
    PARKED,
    RUNNING,
    STOPPED,
    SUCCEEDED,
    TERMINAL,
    Conflict,
    Fenced,
    RunState,
    RunStore,
    save_as_owner,
)

log = get_logger(__name__)
REPUBLISH_WINDOW_S = 100.0  # JetStream dedupes a result published again within 120 s
LEASE_MARGIN_S = 0.5


@dataclass(frozen=True)
class Verdict:
    """What to do with the job message: "ack", "nak" (after `delay`), or "leave"."""

    action: str
    delay: float = 0.0


ACK = Verdict("ack")
LEAVE = Verdict("leave")


@dataclass
class Delivery:
    """The job message as the engine sees it."""

    first: bool  # first delivery of a start job: the run cannot exist yet


class Engine:
    def __init__(self, config: RunnerConfig, store: RunStore, registry: WorkflowRegistry,
                 publisher: Publisher, metrics: RunnerMetrics, http: HttpStep,
                 browser: BrowserPool, owner: str) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self.publisher = publisher
        self.metrics = metrics
        self.http = http
        self.browser = browser
        self.owner = owner
        self.messaging = steps.Messaging(publisher, metrics)
        self.held: dict[str, Held] = {}
        self.children = ChildRuns(self)
        self.compensation = Compensation(self, self.children)
        self._notices: set[asyncio.Task[None]] = set()

    # -- taking a job ------------------------------------------------------------------------

    async def process(self, job: Job, delivery: Delivery) -> Verdict:
        for _ in range(10):
            state = None if delivery.first else await self.store.get(job.run_id)
            if state is None:
                if job.kind == WAKE:
                    return ACK
                return await self._start(job)
            verdict = await self._resume(state)
            if verdict is not None:
                return verdict
            delivery = Delivery(first=False)
        return Verdict("nak", 1.0)

    async def _bot(self, bot_id: str, version: str) -> tuple[BotWorkflows | None, str | None]:
        """The workflows a run executes: its bot version's, else the deployed ones; with the
        reason when a version cannot be loaded."""
        try:
            return await self.registry.resolve(bot_id, version), None
        except VersionUnavailable as exc:
            return None, str(exc)

    async def _start(self, job: Job) -> Verdict:
        bot, unavailable = await self._bot(job.bot_id, job.bot_version)
        workflow = None if bot is None else bot.workflows.get(job.workflow)
        state = RunState.new(job.run_id, job.bot_id, job.workflow, dict(job.inputs or {}),
                             conversation=job.conversation_id, correlation=job.correlation_id,
                             bot_version=job.bot_version, status=RUNNING, owner=self.owner,
                             epoch=1)
        held = Held(state, workflow, bot)
        self.metrics.runs_started.labels(bot=state.bot, workflow=state.workflow).inc()
        problem = unavailable or self._start_problem(held, job)
        try:
            if problem is not None:
                await self.finish(held, FAILED, problem)
                return ACK
            return await self._drive_root(held)
        except Conflict:
            return Verdict("nak", 0.0)  # someone else created it meanwhile: look again

    def _start_problem(self, held: Held, job: Job) -> str | None:
        if held.bot is None:
            return f"unknown bot {job.bot_id!r}"
        if held.workflow is None:
            where = f" in bot version {job.bot_version}" if job.bot_version else ""
            return f"bot {job.bot_id!r} has no workflow {job.workflow!r}{where}"
        try:
            held.state.inputs = coerce_inputs(held.workflow, held.state.inputs)
        except ValueError as exc:
            return f"invalid inputs: {exc}"
        return None

    async def _resume(self, state: RunState) -> Verdict | None:
        """Claim a stored run and drive it; None when the claim lost a race (look again)."""
        now = time.time()
        if state.terminal and not _retry_asked(state):
            if state.depth == 0 and now - (state.finished or 0) < REPUBLISH_WINDOW_S:
                await self.publisher.result(state)
            return ACK
        if state.run_id in self.held:
            return Verdict("nak", self.config.ack_wait_s)
        if state.owner and state.owner != self.owner and state.lease_until > now:
            return Verdict("nak", state.lease_until - now + LEASE_MARGIN_S)
        if state.status == NEEDS_ATTENTION and not _asked(state):
            return ACK
        crashed = state.owner is not None and state.status not in PARKED
        if crashed:
            state.resumes += 1
            self.metrics.resumes.inc()
        state.owner, state.epoch = self.owner, state.epoch + 1
        state.lease_until = now + self.config.ack_wait_s
        try:
            await self.store.save(state)
        except Conflict:
            return None
        # the run's own bot version (stored with it): a resumed run goes on with its workflow
        bot, unavailable = await self._bot(state.bot, state.bot_version)
        held = Held(state, None if bot is None else bot.workflows.get(state.workflow), bot)
        if unavailable is not None:
            await self.finish(held, FAILED, unavailable)
            return ACK
        if crashed:
            log.warning("run_resumed", run_id=state.run_id, resumes=state.resumes, pc=state.pc)
        if state.resumes > self.config.max_resumes:
            await self.finish(held, FAILED, f"stopped: its runner crashed {state.resumes} "
                                             "times on it")
            return Verdict("dead_letter")
        return await self._drive_root(held)

    async def _drive_root(self, held: Held) -> Verdict:
        self.held[held.state.run_id] = held
        notice = self._notice_timer(held)
        try:
            parked = await self.drive(held)
        except Fenced:
            if held.state.revision == 0:  # it existed after all (a job sent again): look
                return Verdict("nak", 0.0)
            log.warning("run_fenced", run_id=held.state.run_id)
            return LEAVE
        finally:
            self.held.pop(held.state.run_id, None)
            if notice is not None:
                notice.cancel()
        if parked is None:
            return ACK
        delay = max(0.0, parked.until - time.time())
        # a parked run whose progress notice is not sent yet comes back when it is due
        notice_due = max(self._notice_in(held.state), 0.1)
        return Verdict("nak", min(delay, self.config.park_max_s, notice_due))

    # -- progress notices --------------------------------------------------------------------

    def _notice_in(self, state: RunState) -> float:
        """Seconds until the run's progress notice is due (0: now; inf: none to send)."""
        if self.config.progress_notice_s <= 0 or state.progress_noticed \
                or not state.conversation or state.depth > 0 or state.status in STOPPED:
            return math.inf
        return max(0.0, state.created + self.config.progress_notice_s - time.time())

    def _notice_timer(self, held: Held) -> asyncio.Task[None] | None:
        delay = self._notice_in(held.state)
        if delay == math.inf:
            return None
        task = asyncio.get_running_loop().create_task(self._notice_later(held, delay))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)
        return task

    async def _notice_later(self, held: Held, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._notice(held)

    async def _notice(self, held: Held) -> None:
        """Tell the conversation the run is still going, once, when that is due (the flag is
        stored with the next checkpoint; the message id dedupes a resumed run's repeat)."""
        state = held.state
        if self._notice_in(state) > 0:
            return
        elapsed = time.time() - state.created
        state.progress_noticed = True  # before the await: the timer and a park race here
        try:
            await self.publisher.progress(state, elapsed)
        except Exception as exc:  # the result still comes; the notice is tried again later
            state.progress_noticed = False
            log.warning("progress_notice_failed", run_id=state.run_id, error=repr(exc))
            return
        log.info("progress_noticed", run_id=state.run_id, workflow=state.workflow,
                 elapsed_s=round(elapsed, 3))

    # -- checkpoints -------------------------------------------------------------------------

    async def checkpoint(self, held: Held) -> None:
        async with held.lock:
            held.state.lease_until = time.time() + self.config.ack_wait_s
            await save_as_owner(self.store, held.state, self.owner)

    async def renew(self, held: Held) -> None:
        """Keep the lease of a long step alive (called by the worker's heartbeat)."""
        if held.state.lease_until - time.time() < self.config.ack_wait_s / 2:
            await self.checkpoint(held)

    # -- the loop ----------------------------------------------------------------------------

    async def drive(self, held: Held) -> Park | None:
        """Run until the run stops (None) or parks (Park)."""
        state = held.state
        if held.workflow is None:
            where = f" in bot version {state.bot_version}" if state.bot_version else ""
            await self.finish(held, FAILED, f"workflow {state.workflow!r} is not deployed{where}")
            return None
        self._apply_retry(state)
        if state.status == NEEDS_ATTENTION and state.control.cancel:
            if state.inflight is None and state.compensations:
                await self.finish(held, FAILED, f"{state.error}; cancelled with compensations "
                                                 "left undone")
                return None
            state.status = RUNNING
        while state.status not in TERMINAL and state.status != NEEDS_ATTENTION:
            if state.control.cancel and state.status != COMPENSATING:
                await self._cancel(held)
                continue
            if state.status == COMPENSATING:
                await self.compensation.run(held)
                continue
            if state.pc >= len(held.workflow.steps):
                await self.finish(held, SUCCEEDED)
                continue
            parked = await self._step(held, held.workflow.steps[state.pc])
            if parked is not None:
                await self._park(held, parked)
                return parked
        return None

    def _apply_retry(self, state: RunState) -> None:
        if state.control.retry <= state.retried or state.status not in (FAILED, NEEDS_ATTENTION):
            return
        state.retried = state.control.retry
        resume_compensation = state.status == NEEDS_ATTENTION and bool(state.compensations) \
            and state.inflight is None
        state.status = COMPENSATING if resume_compensation else RUNNING
        state.error, state.finished, state.attempts, state.retry_at = None, None, 0, None
        state.message = None
        if state.inflight is not None:  # the same visit again (e.g. a step that needed a
            state.inflight.update(executing=False, retry=True)  # person's check)
        log.info("run_retried", run_id=state.run_id, pc=state.pc)

    async def _park(self, held: Held, parked: Park) -> None:
        state = held.state
        state.status = parked.status
        state.owner = None
        if state.inflight is not None:
            state.inflight["executing"] = False
        await self._notice(held)  # parked past its notice time: tell the conversation now
        await self.checkpoint(held)

    async def _step(self, held: Held, step: StepDef) -> Park | None:
        state = held.state
        assert held.workflow is not None
        if state.inflight is None or state.inflight["step"] != step.id:
            if state.executed >= held.workflow.max_steps:
                await self._fail(held, f"step budget of {held.workflow.max_steps} steps used up "
                                       f"(at step {step.id!r})")
                return None
            state.executed += 1
            state.visits[step.id] = state.visits.get(step.id, 0) + 1
            state.inflight = {"step": step.id, "started": time.time(), "executing": False}
        elif state.inflight.get("executing") and step.non_idempotent:
            await self.attention(held, f"step {step.id!r} was in flight when its runner "
                                        "stopped and is not idempotent: check the target "
                                        "system, then retry or cancel the run")
            return None
        state.status = RUNNING
        try:
            if step.when is not None and not truthy(steps.evaluate_value(step.when,
                                                                         self.scope(held))):
                self._skip(state, step)
                return None
        except ExpressionError as exc:
            await self._fail(held, f"step {step.id!r}: when: {exc}")
            return None
        return await self._attempts(held, step)

    def _skip(self, state: RunState, step: StepDef) -> None:
        now = time.time()
        state.record({"step": step.id, "visit": state.visits[step.id], "kind": step.kind,
                      "status": "skipped", "attempts": 0, "started": now, "finished": now,
                      "ms": 0.0})
        state.inflight = None
        state.pc += 1

    async def _attempts(self, held: Held, step: StepDef) -> Park | None:
        state = held.state
        while True:
            if state.retry_at is not None and time.time() < state.retry_at:
                return Park(state.retry_at)
            state.retry_at = None
            if step.non_idempotent:
                assert state.inflight is not None
                state.inflight["executing"] = True
                await self.checkpoint(held)
            started = time.time()
            outcome = await self.attempt(held, step, compensation=False)
            self.observe(step, outcome, started)
            if isinstance(outcome, Park):
                return outcome
            if isinstance(outcome, Done):
                await self._completed(held, step, outcome, started)
                return None
            delay = self._retry_delay(held, step, outcome)
            if delay is None:
                await self._step_failed(held, step, outcome, started)
                return None
            state.inflight = {**(state.inflight or {}), "executing": False,
                              "error": held.secrets.scrub(outcome.error)}
            if delay > self.config.inline_wait_max_s:
                state.retry_at = time.time() + delay
                return Park(state.retry_at)
            await self.checkpoint(held)
            await asyncio.sleep(delay)

    def _retry_delay(self, held: Held, step: StepDef, outcome: Failed) -> float | None:
        state = held.state
        state.attempts += 1
        if not outcome.retryable or not step.retry.allows_another(state.attempts):
            return None
        self.metrics.retries.labels(bot=state.bot, workflow=state.workflow, kind=step.kind).inc()
        log.info("step_retry", run_id=state.run_id, step=step.id, attempt=state.attempts,
                 error=held.secrets.scrub(outcome.error))
        return step.retry.delay(state.attempts)

    def observe(self, step: StepDef, outcome: Outcome, started: float) -> None:
        label = type(outcome).__name__.lower()
        self.metrics.step_duration.labels(kind=step.kind, outcome=label).observe(
            time.time() - started)

    async def _completed(self, held: Held, step: StepDef, outcome: Done, started: float) -> None:
        state = held.state
        assert held.workflow is not None
        outputs = held.secrets.scrub(outcome.outputs)
        state.steps[step.id] = {"outputs": outputs}
        if outcome.variables is not None:
            state.vars.update(held.secrets.scrub(outcome.variables))
        record_step(state, step, "succeeded", started, outputs=outputs)
        if step.compensate is not None or (step.kind == "subworkflow" and outputs.get("_run")):
            state.compensations.append({"step": step.id, "visit": state.visits[step.id],
                                        "outputs": outputs})
        state.pc = self._next(held.workflow, state.pc, outcome.goto)
        state.inflight, state.attempts, state.wake_at, state.approval = None, 0, None, None
        if state.pc >= len(held.workflow.steps) and not state.control.cancel:
            await self.finish(held, SUCCEEDED)  # the last step's checkpoint is the final one
            return
        await self.checkpoint(held)

    @staticmethod
    def _next(workflow: WorkflowDef, pc: int, goto: str | None) -> int:
        if goto is None:
            return pc + 1
        if goto == "end":
            return len(workflow.steps)
        return workflow.position(goto)

    async def _step_failed(self, held: Held, step: StepDef, outcome: Failed,
                           started: float) -> None:
        error = held.secrets.scrub(outcome.error)
        state = held.state
        state.attempts -= 1  # record_step counts the attempt that failed
        record_step(state, step, "failed", started, error=error)
        state.attempts = 0
        state.message = held.secrets.scrub(outcome.message) if outcome.message else None
        if outcome.attention:
            await self.attention(held, f"step {step.id!r}: {error}")
            return
        await self._fail(held, f"step {step.id!r}: {error}")

    # -- one attempt -------------------------------------------------------------------------

    def scope(self, held: Held, outputs: dict[str, Any] | None = None,
              step_id: str = "") -> dict[str, Any]:
        state = held.state
        step_outputs = state.steps
        if outputs is not None:  # a compensation sees the outputs of the visit it undoes
            step_outputs = {**state.steps, step_id: {"outputs": outputs}}
        return {"inputs": state.inputs, "steps": step_outputs, "vars": state.vars,
                "run": {"id": state.run_id, "root": state.root, "bot": state.bot,
                        "workflow": state.workflow, "conversation": state.conversation},
                "settings": held.bot.rpa.settings if held.bot else {},
                "secrets": held.secrets}

    def step_call(self, held: Held, step: StepDef, compensation: bool,
              entry: dict[str, Any] | None = None) -> StepCall:
        state = held.state
        visit = entry["visit"] if entry else state.visits.get(step.id, 1)
        step_key = step.id if visit <= 1 else f"{step.id}#{visit}"
        key = f"{state.run_id}:{step_key}" + (":compensate" if compensation else "")
        scope = self.scope(held, entry["outputs"] if entry else None, step.id)
        assert held.bot is not None
        return StepCall(state, step, scope, held.secrets, held.bot.rpa, step_key, key,
                        compensation)

    async def attempt(self, held: Held, step: StepDef, *, compensation: bool,
                      entry: dict[str, Any] | None = None) -> Outcome:
        call = self.step_call(held, step, compensation, entry)
        timeout = step.timeout or self._default_timeout(step)
        try:
            return await asyncio.wait_for(self._execute(held, call), timeout)
        except TimeoutError:
            return Failed(f"timed out after {timeout:g}s", retryable=True)
        except ExpressionError as exc:
            return Failed(str(exc))

    def _default_timeout(self, step: StepDef) -> float | None:
        if step.kind == "http":
            return self.config.http_timeout_s
        if step.kind == "browser":
            return self.config.browser_timeout_s
        return None

    async def _execute(self, held: Held, call: StepCall) -> Outcome:
        spec = call.step.spec
        if isinstance(spec, HttpSpec):
            return await self.http.run(call, spec)
        if isinstance(spec, BrowserSpec):
            return await self.browser.run(call, spec, call.step.timeout
                                          or self.config.browser_timeout_s)
        if isinstance(spec, AssignSpec):
            return steps.assign(call, spec)
        if isinstance(spec, BranchSpec):
            return steps.branch(call, spec)
        if isinstance(spec, WaitSpec):
            return await steps.wait(call, spec, self.config.inline_wait_max_s)
        if isinstance(spec, NotifySpec):
            return await self.messaging.notify(call, spec)
        if isinstance(spec, ApprovalSpec):
            return await self.messaging.approval(call, spec)
        if isinstance(spec, FailSpec):
            return steps.fail(call, spec)
        if isinstance(spec, SubworkflowSpec):
            return await self.children.run(held, call, spec)
        return Failed(f"unsupported step kind {call.step.kind!r}")

    # -- the end of a run --------------------------------------------------------------------

    async def _fail(self, held: Held, error: str) -> None:
        state = held.state
        state.error = held.secrets.scrub(error)
        await self._stop(held, FAILED)

    async def _stop(self, held: Held, status: str) -> None:
        """End the run as `status` (its error already set): nothing in flight, no approval
        pending; the steps done so far are compensated first when any can be."""
        state = held.state
        state.inflight, state.retry_at, state.wake_at = None, None, None
        self._leave_approval(state)
        if state.compensations:
            state.status = COMPENSATING
            await self.checkpoint(held)
            return
        await self.finish(held, status, state.error)

    async def _cancel(self, held: Held) -> None:
        state = held.state
        cancel = state.control.cancel or {}
        reason = str(cancel.get("reason") or "no reason given")
        await self.children.cancel(held)
        state.error = f"cancelled by {cancel.get('by') or 'an operator'}: {reason}"
        await self._stop(held, CANCELLED)

    def _leave_approval(self, state: RunState) -> None:
        if state.approval is not None:
            self.metrics.waiting_approval.dec()
            state.approval = None

    async def attention(self, held: Held, error: str, publish: bool = False) -> None:
        state = held.state
        state.status, state.error = NEEDS_ATTENTION, held.secrets.scrub(error)
        state.owner = None
        self._leave_approval(state)
        await self.checkpoint(held)
        self.metrics.runs_finished.labels(bot=state.bot, workflow=state.workflow,
                                          status=NEEDS_ATTENTION).inc()
        log.error("run_needs_attention", run_id=state.run_id, error=state.error)
        await self.publisher.event("attention", state, f"attention-{state.run_id}-"
                                   f"{state.revision}", error=state.error)
        if publish and state.depth == 0:
            await self.publisher.result(state)

    async def finish(self, held: Held, status: str, error: str | None = None) -> None:
        state = held.state
        if status == SUCCEEDED:
            try:
                state.outputs = held.secrets.scrub(self._outputs(held))
            except ExpressionError as exc:
                status, error = FAILED, f"outputs: {exc}"
        state.status, state.error = status, None if status == SUCCEEDED else error
        state.finished, state.inflight, state.owner = time.time(), None, None
        self._leave_approval(state)
        await self.checkpoint(held)
        self.metrics.runs_finished.labels(bot=state.bot, workflow=state.workflow,
                                          status=status).inc()
        log.info("run_finished", run_id=state.run_id, workflow=state.workflow, status=status,
                 error=state.error)
        if state.depth == 0:
            await self.publisher.result(state)

    def _outputs(self, held: Held) -> dict[str, Any]:
        assert held.workflow is not None
        if not held.workflow.outputs:
            return dict(held.state.vars)
        scope = self.scope(held)
        return {name: steps.evaluate_value(source, scope)
                for name, source in held.workflow.outputs.items()}


def _asked(state: RunState) -> bool:
    return _retry_asked(state) or state.control.cancel is not None


def _retry_asked(state: RunState) -> bool:
    return state.control.retry > state.retried and state.status in (FAILED, NEEDS_ATTENTION)

