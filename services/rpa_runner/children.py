"""Subworkflow steps, run inline as child runs of the run that calls them: a child run is
created (or taken over when it exists) under the id `<parent run>-<step key>`, driven by the
same engine, cancelled with its parent and compensated as one step of it."""

from __future__ import annotations

from typing import Any

from services.botdef.expressions import render_value
from services.botdef.workflows import MAX_DEPTH, SubworkflowSpec, coerce_inputs
from services.rpa_runner.held import Driver, Held
from services.rpa_runner.outcomes import Done, Failed, Outcome, Park, StepCall
from services.rpa_runner.state import (
    COMPENSATED,
    COMPENSATING,
    NEEDS_ATTENTION,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    RunState,
)


class ChildRuns:
    """The engine's subworkflow steps (`driver` is the engine that drives the runs)."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver

    async def run(self, held: Held, call: StepCall, spec: SubworkflowSpec) -> Outcome:
        """A subworkflow step: drive its child run here; its outcome is the step's."""
        child = await self.child(held, call, spec)
        if isinstance(child, Failed):
            return child
        parked = await self._driver.drive(child)
        state = child.state
        if parked is not None:
            return Park(parked.until, parked.status)
        if state.status == SUCCEEDED:
            return Done({**state.outputs, "_run": state.run_id})
        if state.status == NEEDS_ATTENTION:
            return Failed(f"subworkflow {spec.name} needs attention: {state.error}",
                          attention=True)
        return Failed(f"subworkflow {spec.name} {state.status}: {state.error}",
                      message=state.message)

    async def child(self, held: Held, call: StepCall, spec: SubworkflowSpec,
                    retry: bool = True) -> Held | Failed:
        """The child run of a subworkflow step: created, or taken over (and retried when it
        needs attention and its parent is being retried)."""
        parent = held.state
        assert held.bot is not None
        run_id = f"{parent.run_id}-{call.step_key.replace('#', '-')}"
        workflow = held.bot.workflows.get(spec.name)
        if workflow is None or parent.depth + 1 > MAX_DEPTH:
            return Failed(f"subworkflow {spec.name!r} unknown or nested deeper than {MAX_DEPTH}")
        state = await self._driver.store.get(run_id)
        if state is None:
            try:
                inputs = coerce_inputs(workflow, render_value(spec.inputs, call.scope))
            except ValueError as exc:
                return Failed(f"subworkflow {spec.name}: invalid inputs: {exc}")
            state = RunState.new(run_id, parent.bot, spec.name, inputs, status=RUNNING,
                                 conversation=parent.conversation, root=parent.root,
                                 bot_version=parent.bot_version,
                                 correlation=parent.correlation, parent=parent.run_id,
                                 depth=parent.depth + 1, owner=self._driver.owner, epoch=1)
            self._driver.metrics.runs_started.labels(bot=state.bot, workflow=state.workflow).inc()
            await self._driver.store.save(state)
        elif state.status not in TERMINAL:
            retried = retry and bool((parent.inflight or {}).get("retry"))
            state = await self.claim(run_id, parent.control.cancel,
                                     retry=retried and state.status == NEEDS_ATTENTION)
        return Held(state, workflow, held.bot, held.secrets)

    async def claim(self, run_id: str, cancel: dict[str, Any] | None = None,
                    retry: bool = False) -> RunState:
        """Take over a child run (this runner holds its root's job)."""

        def take(state: RunState) -> None:
            state.owner, state.epoch = self._driver.owner, state.epoch + 1
            if cancel and not state.control.cancel:
                state.control.cancel = cancel
            if retry:
                state.control.retry = max(state.control.retry, state.retried) + 1

        return await self._driver.store.modify(run_id, take)

    async def cancel(self, held: Held) -> None:
        """A run cancelled while a subworkflow of it is parked cancels that child too."""
        state = held.state
        if state.inflight is None or held.workflow is None or held.bot is None \
                or state.pc >= len(held.workflow.steps):
            return
        step = held.workflow.steps[state.pc]
        if not isinstance(step.spec, SubworkflowSpec):
            return
        call = self._driver.step_call(held, step, False)
        child = await self.child(held, call, step.spec, retry=False)
        if isinstance(child, Held) and child.state.status not in TERMINAL:
            await self._driver.drive(child)

    async def compensate(self, held: Held, run_id: str) -> Outcome:
        """Undo a completed child run of `held` (its own compensable steps, last first)."""
        found = await self._driver.store.get(run_id)
        if found is None or not found.compensations:
            return Done()
        assert held.bot is not None
        state = await self.claim(run_id)
        state.status, state.error = COMPENSATING, f"parent {held.state.run_id} failed"
        child = Held(state, held.bot.workflows.get(state.workflow), held.bot, held.secrets)
        await self._driver.checkpoint(child)
        await self._driver.drive(child)
        if child.state.status == COMPENSATED:
            return Done()
        return Failed(f"compensation of subworkflow run {run_id}: {child.state.error}")
