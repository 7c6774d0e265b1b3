"""Compensation (saga): when a run fails or is cancelled after steps that can be undone, their
`compensate` steps run in reverse order, each with its own retry policy (a subworkflow step is
undone by compensating its child run); a compensation that fails leaves the run needing
attention."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.botdef.workflows import StepDef
from services.rpa_runner.children import ChildRuns
from services.rpa_runner.held import Driver, Held, record_step
from services.rpa_runner.outcomes import Done, Failed, Outcome
from services.rpa_runner.state import COMPENSATED


class Compensation:
    """Undoes a run's completed steps (`driver` is the engine that drives the run)."""

    def __init__(self, driver: Driver, children: ChildRuns) -> None:
        self._driver = driver
        self._children = children

    async def run(self, held: Held) -> None:
        """Undo the run's compensable steps, last first, then end it as compensated."""
        state = held.state
        assert held.workflow is not None
        while state.compensations:
            entry = state.compensations[-1]
            step = held.workflow.step(entry["step"])
            started = time.time()
            outcome = await self.undo(held, step, entry)
            if not isinstance(outcome, Done):
                error = outcome.error if isinstance(outcome, Failed) else "parked"
                error = held.secrets.scrub(error)
                record_step(state, step, "compensation_failed", started, error=error,
                            compensation=True)
                await self._driver.attention(held, f"{state.error}; compensation of step "
                                                   f"{step.id!r} failed: {error}", publish=True)
                return
            record_step(state, step, "compensated", started, compensation=True)
            state.compensations.pop()
            state.attempts = 0
            if state.compensations:
                await self._driver.checkpoint(held)
        await self._driver.finish(held, COMPENSATED, state.error)

    async def undo(self, held: Held, step: StepDef, entry: dict[str, Any]) -> Outcome:
        """Run one compensation with its retry policy (back-off waits stay in the process)."""
        compensate = step.compensate
        if compensate is None:
            child = entry["outputs"].get("_run")
            return await self._children.compensate(held, str(child)) if child else Done()
        held.state.attempts = 0
        while True:
            started = time.time()
            outcome = await self._driver.attempt(held, compensate, compensation=True, entry=entry)
            self._driver.observe(compensate, outcome, started)
            if not isinstance(outcome, Failed):
                return outcome
            held.state.attempts += 1
            if not outcome.retryable or not compensate.retry.allows_another(
                    held.state.attempts):
                return outcome
            self._driver.metrics.retries.labels(bot=held.state.bot,
                                                workflow=held.state.workflow,
                                                kind=compensate.kind).inc()
            await asyncio.sleep(compensate.retry.delay(held.state.attempts))
