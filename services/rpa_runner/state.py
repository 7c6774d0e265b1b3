"""A run's durable state (KV `rpa_runs`, key `run.<run_id>`) and its compare-and-set store.

Only the runner that holds a run writes it (owner + epoch + lease; every write is a CAS on
the last revision, so a runner that lost the run is fenced at its next write). The API writes
only `control` (cancel, approval decisions, retry requests); a runner that meets such a write
merges it and goes on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

PENDING = "pending"
RUNNING = "running"
WAITING = "waiting"
WAITING_APPROVAL = "waiting_approval"
COMPENSATING = "compensating"
SUCCEEDED = "succeeded"
FAILED = "failed"
COMPENSATED = "compensated"
CANCELLED = "cancelled"
NEEDS_ATTENTION = "needs_attention"
TERMINAL = frozenset({SUCCEEDED, FAILED, COMPENSATED, CANCELLED})
STOPPED = TERMINAL | {NEEDS_ATTENTION}
PARKED = frozenset({WAITING, WAITING_APPROVAL})
KEY_PREFIX = "run."
HISTORY_LIMIT = 200


class Conflict(Exception):
    """The stored run changed since it was read."""


class Fenced(Exception):
    """Another runner took the run over: this one must stop working on it."""


def run_key(run_id: str) -> str:
    return f"{KEY_PREFIX}{run_id}"


@dataclass
class Control:
    """What the API asks of a run: cancel, approval decisions (by `step:visit`), retries."""

    cancel: dict[str, Any] | None = None
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    retry: int = 0


@dataclass
class RunState:
    run_id: str
    bot: str
    workflow: str
    inputs: dict[str, Any]
    conversation: str = ""
    bot_version: str = ""  # the bot version whose workflow runs ("": the deployed one)
    correlation: str = ""
    root: str = ""  # the top-level run (itself when not a subworkflow)
    parent: str = ""
    depth: int = 0
    status: str = PENDING
    pc: int = 0
    vars: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {"outputs": ...}
    visits: dict[str, int] = field(default_factory=dict)
    executed: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    inflight: dict[str, Any] | None = None
    attempts: int = 0  # failed attempts of the current step
    retry_at: float | None = None
    wake_at: float | None = None
    compensations: list[dict[str, Any]] = field(default_factory=list)
    approval: dict[str, Any] | None = None
    error: str | None = None
    message: str | None = None  # what the customer may be told of the failure (a `fail` step's)
    outputs: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None
    epoch: int = 0
    lease_until: float = 0.0
    control: Control = field(default_factory=Control)
    retried: int = 0
    resumes: int = 0
    progress_noticed: bool = False  # the conversation was told the run is taking long
    created: float = 0.0
    updated: float = 0.0
    finished: float | None = None
    revision: int = 0  # the KV revision this state was read at / written as (not stored)

    @classmethod
    def new(cls, run_id: str, bot: str, workflow: str, inputs: dict[str, Any],
            **extra: Any) -> RunState:
        now = time.time()
        state = cls(run_id, bot, workflow, inputs, created=now, updated=now, **extra)
        state.root = state.root or run_id
        return state

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_json(self) -> bytes:
        data = {name: getattr(self, name) for name in _STORED}
        data["control"] = vars(self.control)
        return json.dumps(data, separators=(",", ":"), default=str).encode()

    @classmethod
    def from_json(cls, raw: bytes, revision: int = 0) -> RunState:
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}
        control = Control(**data.pop("control", {}) or {})
        state = cls(**{k: v for k, v in data.items() if k in known}, control=control)
        state.revision = revision
        return state

    def record(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        if len(self.history) > HISTORY_LIMIT:
            del self.history[: len(self.history) - HISTORY_LIMIT]

    def visit_key(self, step_id: str) -> str:
        """`<step>` for a step's first visit, `<step>#<n>` for later ones (loops)."""
        visit = self.visits.get(step_id, 1)
        return step_id if visit <= 1 else f"{step_id}#{visit}"


_STORED = tuple(f.name for f in fields(RunState) if f.name not in ("revision", "control"))


class RunStore:
    """Runs in KV `rpa_runs`; every write is a compare-and-set on the revision read."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self, run_id: str) -> RunState | None:
        try:
            entry = await self.kv.get(run_key(run_id))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return RunState.from_json(entry.value, int(entry.revision or 0))

    async def save(self, state: RunState) -> None:
        """Write `state` if nobody wrote since it was read; raises Conflict otherwise."""
        state.updated = time.time()
        data = state.to_json()
        try:
            if state.revision == 0:
                revision = await self.kv.create(run_key(state.run_id), data)
            else:
                revision = await self.kv.update(run_key(state.run_id), data,
                                                last=state.revision)
        except KeyWrongLastSequenceError:
            raise Conflict(state.run_id) from None
        state.revision = int(revision)

    async def modify(self, run_id: str, change: Callable[[RunState], None],
                     attempts: int = 20) -> RunState:
        """Read, apply `change` (which may raise to refuse), write; again on a conflict."""
        for _ in range(attempts):
            state = await self.get(run_id)
            if state is None:
                raise KeyError(run_id)
            change(state)
            try:
                await self.save(state)
            except Conflict:
                continue
            return state
        raise Conflict(run_id)

    async def all(self) -> list[RunState]:
        """Every stored run (latest values)."""
        runs: list[RunState] = []
        watcher = await self.kv.watch(f"{KEY_PREFIX}>", ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:
                    break
                if entry.value:
                    runs.append(RunState.from_json(entry.value, int(entry.revision or 0)))
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return runs


async def save_as_owner(store: RunStore, state: RunState, owner: str,
                        merge: Callable[[RunState, RunState], Awaitable[None]] | None = None
                        ) -> None:
    """Checkpoint a run this runner holds: on a conflict, take the API's `control` from the
    stored run and write again, unless another runner owns it now (Fenced)."""
    for _ in range(20):
        try:
            await store.save(state)
            return
        except Conflict:
            stored = await store.get(state.run_id)
            if stored is None or stored.owner != owner or stored.epoch != state.epoch:
                raise Fenced(state.run_id) from None
            state.control = stored.control
            state.revision = stored.revision
            if merge is not None:
                await merge(state, stored)
    raise Fenced(state.run_id)
