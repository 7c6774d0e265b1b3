"""What one attempt of a step comes to, and what a step executor is given."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.botdef.workflows import RpaSettings, StepDef
from services.rpa_runner.secrets import Secrets
from services.rpa_runner.state import WAITING, RunState


@dataclass
class Done:
    outputs: dict[str, Any] = field(default_factory=dict)
    goto: str | None = None
    variables: dict[str, Any] | None = None


@dataclass
class Failed:
    """`error`: the details (logs, the run record, agents); `message`: what the customer
    may be told, written by the bot's author (a `fail` step's text), None when there is none."""

    error: str
    retryable: bool = False
    attention: bool = False  # the run needs a person (e.g. a subworkflow that does)
    message: str | None = None


@dataclass
class Park:
    until: float
    status: str = WAITING


Outcome = Done | Failed | Park


@dataclass
class StepCall:
    """One attempt of a step (or of a step's compensation) of a run."""

    state: RunState
    step: StepDef
    scope: dict[str, Any]
    secrets: Secrets
    rpa: RpaSettings
    step_key: str  # the step id, `#<visit>` appended from the second visit on
    key: str  # the idempotency key: <run_id>:<step_key>[:compensate]
    compensation: bool = False
