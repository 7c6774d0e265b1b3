"""What the run loop shares with its helpers (child runs, compensation): a run this runner
executes now (`Held`), the entry a step adds to the run's history (`record_step`), and the part
of the engine they call back into (`Driver`)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.botdef.workflows import StepDef, WorkflowDef
from services.rpa_runner.bots import BotWorkflows
from services.rpa_runner.metrics import RunnerMetrics
from services.rpa_runner.outcomes import Outcome, Park, StepCall
from services.rpa_runner.secrets import Secrets
from services.rpa_runner.state import RunState, RunStore


@dataclass
class Held:
    """A run this runner executes now (with its checkpoint lock and its secrets)."""

    state: RunState
    workflow: WorkflowDef | None
    bot: BotWorkflows | None
    secrets: Secrets = field(default_factory=Secrets)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def record_step(state: RunState, step: StepDef, status: str, started: float, *,
                error: str | None = None, outputs: dict[str, Any] | None = None,
                compensation: bool = False) -> None:
    """Add the entry of one step (or one compensation) that ended as `status` to the run's
    history."""
    now = time.time()
    entry: dict[str, Any] = {"step": step.id, "visit": state.visits.get(step.id, 1),
                             "kind": step.kind, "status": status,
                             "attempts": state.attempts + 1, "started": started,
                             "finished": now, "ms": round((now - started) * 1000, 3)}
    if error is not None:
        entry["error"] = error
    if outputs:
        entry["outputs"] = outputs
    if compensation:
        entry["compensation"] = True
    state.record(entry)


class Driver(Protocol):
    """The engine as child runs and compensation see it."""

    store: RunStore
    owner: str
    metrics: RunnerMetrics

    async def drive(self, held: Held) -> Park | None: ...

    async def checkpoint(self, held: Held) -> None: ...

    async def attempt(self, held: Held, step: StepDef, *, compensation: bool,
                      entry: dict[str, Any] | None = None) -> Outcome: ...

    def step_call(self, held: Held, step: StepDef, compensation: bool,
                  entry: dict[str, Any] | None = None) -> StepCall: ...

    def observe(self, step: StepDef, outcome: Outcome, started: float) -> None: ...

    async def attention(self, held: Held, error: str, publish: bool = False) -> None: ...

    async def finish(self, held: Held, status: str, error: str | None = None) -> None: ...
