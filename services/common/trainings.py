"""Training jobs (docs/training.md): the job record, its state machine, where it is kept and
how a job is queued.

A job is queued on stream `TRAIN` (subject `train.jobs.<bot>`, a work queue) and recorded in KV
`trainings`: key `<bot>.<job id>` holds the record (status, progress, timestamps, heartbeat,
result), `<bot>.<job id>.input` the bot folder's files it trains (a snapshot taken when it was
asked for) and `<bot>.<job id>.log` the tail of the training's output. The gateway's admin API
creates and cancels jobs; the trainer service (services/trainer) runs them and publishes
progress on `events.training.<bot>`.

Statuses: queued → running → succeeded | failed | cancelled; queued → cancelled | failed.
A running job carries a heartbeat (the trainer rewrites the record every few seconds) and
`lost_after_s`: whoever reads a running record whose heartbeat is older than that marks it
failed ("trainer lost"), so a job never stays "running" after its trainer died.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import nats.errors
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from services.common.errors import DomainError, InvalidArgument, NotFound, Unavailable
from services.common.modelartifacts import BOT_ID
from services.common.nats import KV_TRAININGS, Bus
from services.common.pull import kv_keys
from services.common.subjects import HEADER_MSG_ID

STREAM = "TRAIN"
JOB_SUBJECTS = "train.jobs.>"
EVENTS_PREFIX = "events.training"
INPUT_SUFFIX = ".input"
LOG_SUFFIX = ".log"

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelled")
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, CANCELLED, FAILED}),
    # running → queued: a trainer stopping gracefully gives the job back (docs/training.md)
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED, QUEUED}),
    SUCCEEDED: frozenset(), FAILED: frozenset(), CANCELLED: frozenset(),
}
DEFAULT_LOST_AFTER_S = 60.0
MAX_EPOCHS = 1000
CAS_ATTEMPTS = 20


class TrainingError(DomainError):
    """A training job cannot be stored or changed."""


class TrainingNotFound(TrainingError, NotFound):
    """No such training job of that bot."""


class TrainingConflict(TrainingError):
    """The job's status does not allow this (e.g. cancelling a finished job)."""

    http_status = 409


class TransitionRefused(TrainingConflict):
    def __init__(self, current: str, wanted: str) -> None:
        super().__init__(f"a {current} training cannot become {wanted}")
        self.current = current
        self.wanted = wanted


def now_ms() -> int:
    return int(time.time() * 1000)


def new_job_id(at_ms: int | None = None) -> str:
    """Sortable by creation time (hex milliseconds, fixed width until the year 10889)."""
    return f"tr-{(at_ms or now_ms()):011x}-{secrets.token_hex(3)}"


def job_subject(bot: str) -> str:
    return f"train.jobs.{bot}"


def events_subject(bot: str) -> str:
    return f"{EVENTS_PREFIX}.{bot}"


def record_key(bot: str, job_id: str) -> str:
    if not BOT_ID.match(bot):
        raise InvalidArgument(f"invalid bot id {bot!r}")
    return f"{bot}.{job_id}"


@dataclass(frozen=True)
class Options:
    """What the caller asked for: train at most `epochs` (None: the bot's settings), with
    `seed`, and activate the model once trained (`activate`; default: only published)."""

    epochs: int | None = None
    seed: int | None = None
    activate: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> Options:
        raw = raw if isinstance(raw, dict) else {}
        epochs, seed = raw.get("epochs"), raw.get("seed")
        return cls(epochs=int(epochs) if epochs is not None else None,
                   seed=int(seed) if seed is not None else None,
                   activate=bool(raw.get("activate", False)))

    def train_args(self) -> list[str]:
        """The `botfactory train` options they stand for."""
        args: list[str] = []
        if self.epochs is not None:
            args += ["--epochs", str(self.epochs)]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        return args


@dataclass(frozen=True)
class Training:
    """A training job's record (KV `trainings`, key `<bot>.<job id>`)."""

    job_id: str
    bot: str
    status: str
    options: Options = field(default_factory=Options)
    created_at_ms: int = 0
    requested_by: str = ""
    source: str = "deployed"  # deployed: the bot's definition when asked; request: files sent
    definition_revision: int | None = None
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    heartbeat_at_ms: int | None = None
    lost_after_s: float = DEFAULT_LOST_AFTER_S
    worker: str = ""
    attempts: int = 0
    cancel_requested: bool = False
    progress: dict[str, Any] = field(default_factory=dict)
    model_version: str | None = None
    activated: bool = False
    report: dict[str, Any] | None = None
    error: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["options"] = self.options.to_json()
        return body

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Training:
        known = {name for name in cls.__dataclass_fields__}
        values = {k: v for k, v in raw.items() if k in known}
        values["options"] = Options.from_json(raw.get("options"))
        return cls(**values)

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    def lost(self, at_ms: int | None = None) -> bool:
        """Running, and its trainer has not heartbeated for `lost_after_s`."""
        if self.status != RUNNING:
            return False
        beat = self.heartbeat_at_ms or self.started_at_ms or self.created_at_ms
        return (at_ms if at_ms is not None else now_ms()) - beat > self.lost_after_s * 1000

    def moved_to(self, status: str, *, at_ms: int | None = None, **changes: Any) -> Training:
        """This record in `status` (TransitionRefused when the state machine forbids it)."""
        if status not in TRANSITIONS[self.status]:
            raise TransitionRefused(self.status, status)
        at = at_ms if at_ms is not None else now_ms()
        stamps: dict[str, Any] = {}
        if status == RUNNING:
            stamps = {"started_at_ms": at, "heartbeat_at_ms": at, "finished_at_ms": None,
                      "error": None, "attempts": self.attempts + 1}
        elif status == QUEUED:
            stamps = {"started_at_ms": None, "heartbeat_at_ms": None, "worker": "",
                      "progress": {}}
        else:
            stamps = {"finished_at_ms": at}
        return replace(self, status=status, **{**stamps, **changes})


def lost_error(record: Training) -> str:
    return (f"trainer lost: no heartbeat from {record.worker or 'its trainer'} for over "
            f"{record.lost_after_s:g} s (the trainer process died or was cut off)")


class TrainingStore:
    """Records, inputs and log tails in KV `trainings`; updates are compare-and-set."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def _kv(self) -> Any:
        return await self._bus.kv(KV_TRAININGS)

    async def create(self, record: Training, files: dict[str, str]) -> None:
        kv = await self._kv()
        key = record_key(record.bot, record.job_id)
        await kv.put(key + INPUT_SUFFIX, json.dumps({"files": files}).encode())
        await kv.create(key, record.encode())

    async def read(self, bot: str, job_id: str) -> tuple[Training, int] | None:
        """The record and its KV revision; None when there is none."""
        kv = await self._kv()
        try:
            entry = await kv.get(record_key(bot, job_id))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return Training.from_json(json.loads(entry.value)), int(entry.revision or 0)

    async def get(self, bot: str, job_id: str) -> Training:
        """The record, a lost running job marked failed first (TrainingNotFound: none)."""
        found = await self.read(bot, job_id)
        if found is None:
            raise TrainingNotFound(f"bot {bot!r} has no training {job_id!r}")
        record, _ = found
        if record.lost():
            return await self.mark_lost(record)
        return record

    async def mark_lost(self, record: Training) -> Training:
        """Mark a lost running job failed (unless it changed meanwhile: then as it is)."""
        def fail(current: Training) -> Training | None:
            if not current.lost():
                return None
            return current.moved_to(FAILED, error=lost_error(current))

        return await self.update(record.bot, record.job_id, fail)

    async def update(self, bot: str, job_id: str,
                     change: Callable[[Training], Training | None]) -> Training:
        """Apply `change` to the current record with compare-and-set, retrying on a race;
        `change` returns None to leave the record as it is. Returns the record after."""
        kv = await self._kv()
        for _ in range(CAS_ATTEMPTS):
            found = await self.read(bot, job_id)
            if found is None:
                raise TrainingNotFound(f"bot {bot!r} has no training {job_id!r}")
            current, revision = found
            changed = change(current)
            if changed is None:
                return current
            try:
                await kv.update(record_key(bot, job_id), changed.encode(), last=revision)
            except KeyWrongLastSequenceError:
                await asyncio.sleep(0.01)
                continue
            return changed
        raise TrainingError(f"training {job_id!r} kept changing; try again")

    async def input_files(self, bot: str, job_id: str) -> dict[str, str]:
        kv = await self._kv()
        try:
            entry = await kv.get(record_key(bot, job_id) + INPUT_SUFFIX)
        except KeyNotFoundError:
            raise TrainingNotFound(f"training {job_id!r} has no input") from None
        raw = json.loads(entry.value or b"{}")
        files = raw.get("files") if isinstance(raw, dict) else None
        if not isinstance(files, dict):
            raise TrainingError(f"training {job_id!r}: its input holds no files")
        return {str(k): str(v) for k, v in files.items()}

    async def put_log(self, bot: str, job_id: str, text: str) -> None:
        kv = await self._kv()
        await kv.put(record_key(bot, job_id) + LOG_SUFFIX, text.encode())

    async def log(self, bot: str, job_id: str) -> str:
        """The tail of the training's output ("" before it started)."""
        await self.get(bot, job_id)  # TrainingNotFound for an unknown job
        kv = await self._kv()
        try:
            entry = await kv.get(record_key(bot, job_id) + LOG_SUFFIX)
        except KeyNotFoundError:
            return ""
        return (entry.value or b"").decode("utf-8", errors="replace")

    async def job_ids(self, bot: str | None = None) -> list[tuple[str, str]]:
        """(bot, job id) of every record (of `bot`), oldest first."""
        prefix = f"{bot}." if bot else ""
        if bot:
            record_key(bot, "x")
        found = []
        for key in await kv_keys(await self._kv(), prefix):
            parts = key.split(".")
            if len(parts) == 2:
                found.append((parts[0], parts[1]))
        return sorted(found, key=lambda pair: pair[1])

    async def recent(self, bot: str, limit: int = 50) -> list[Training]:
        """The bot's jobs, newest first (lost running jobs marked failed)."""
        ids = [job_id for _, job_id in await self.job_ids(bot)][::-1][:limit]
        records = []
        for job_id in ids:
            try:
                records.append(await self.get(bot, job_id))
            except TrainingNotFound:  # deleted meanwhile
                continue
        return records

    async def sweep(self) -> list[Training]:
        """Mark every lost running job failed; the ones marked."""
        marked = []
        for bot, job_id in await self.job_ids():
            found = await self.read(bot, job_id)
            if found is not None and found[0].lost():
                after = await self.mark_lost(found[0])
                if after.status == FAILED:
                    marked.append(after)
        return marked


async def publish_event(bus: Bus, record: Training, kind: str,
                        extra: dict[str, Any] | None = None) -> None:
    """`events.training.<bot>`: {kind, job_id, bot, status, at_unix_ms, ...}."""
    event = {"kind": kind, "job_id": record.job_id, "bot": record.bot,
             "status": record.status, "at_unix_ms": now_ms(), **(extra or {})}
    await bus.js.publish(events_subject(record.bot), json.dumps(event).encode())


async def submit(bus: Bus, bot: str, files: dict[str, str], options: Options, *,
                 requested_by: str = "", source: str = "deployed",
                 revision: int | None = None) -> Training:
    """Record a queued job with its input and put it on the queue."""
    if options.epochs is not None and not 1 <= options.epochs <= MAX_EPOCHS:
        raise InvalidArgument(f"epochs must be 1..{MAX_EPOCHS}")
    at = now_ms()
    record = Training(job_id=new_job_id(at), bot=bot, status=QUEUED, options=options,
                      created_at_ms=at, requested_by=requested_by, source=source,
                      definition_revision=revision)
    store = TrainingStore(bus)
    await store.create(record, files)
    try:
        await bus.js.publish(job_subject(bot), json.dumps({"bot": bot, "job_id": record.job_id})
                             .encode(), headers={HEADER_MSG_ID: f"train-{record.job_id}"})
    except (nats.errors.Error, TimeoutError) as exc:  # never a queued job nobody will run
        reason = f"could not be queued: {exc!r}"
        await store.update(bot, record.job_id, lambda current: current.moved_to(
            FAILED, error=reason) if current.status == QUEUED else None)
        raise Unavailable("the training queue is not reachable; try again") from exc
    await publish_event(bus, record, QUEUED)
    return record


def cancelled(current: Training) -> Training | None:
    """The state machine's answer to a cancel request: a queued job becomes cancelled, a
    running one gets `cancel_requested` (None: already asked); TrainingConflict once it
    ended."""
    if current.status == QUEUED:
        return current.moved_to(CANCELLED, error="cancelled before it started")
    if current.status == RUNNING:
        return None if current.cancel_requested else replace(current, cancel_requested=True)
    raise TrainingConflict(f"training {current.job_id!r} is already {current.status}")


async def cancel(bus: Bus, bot: str, job_id: str) -> Training:
    """A queued job is cancelled at once; a running one is asked to stop (its trainer ends
    the training within a heartbeat and records it cancelled). TrainingConflict for a job
    that has ended."""
    store = TrainingStore(bus)
    record = await store.get(bot, job_id)
    cancelled(record)  # TrainingConflict for an ended (or just now lost) job
    after = await store.update(bot, job_id, cancelled)
    if after.status == CANCELLED:
        await publish_event(bus, after, CANCELLED)
    return after
