"""Conversation state in KV `trackers`: the engine's tracker plus the service's outbox.

The record written after a turn holds the turn's outgoing messages (the outbox). If the worker
dies after the write but before publishing, the redelivered message finds its id already
applied and publishes the outbox again; the publishes carry deterministic `Nats-Msg-Id`s, so
JetStream drops what already went out. Writes are compare-and-set on the KV revision.
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.common.pull import kv_keys
from services.dialogue.engine import Tracker

FORMAT = 1
RECENT_IDS = 32
RECENT_RUNS = 16


class ConcurrentUpdate(Exception):
    """The record changed since it was read (another worker won the compare-and-set)."""


@dataclass(frozen=True)
class Outgoing:
    subject: str
    msg_id: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "msg_id": self.msg_id, "headers": self.headers,
                "data": base64.b64encode(self.data).decode()}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Outgoing:
        return cls(raw["subject"], raw["msg_id"], base64.b64decode(raw["data"]),
                   dict(raw.get("headers", {})))


@dataclass(frozen=True)
class Origin:
    """The user message whose turn started a workflow run, and the reply inbox of the gateway
    that waited for it: the run's result answers that message (in_reply_to) and goes to that
    inbox too."""

    message_id: str
    reply_inbox: str = ""


@dataclass(frozen=True)
class Record:
    """`applied`: the last message ids handled in this conversation (ids are unique per
    conversation, so this is its dedupe store); `origins`: run id → Origin of the workflow
    runs started lately (records written before it have none: their results answer
    nothing)."""

    tracker: Tracker
    revision: int | None
    applied: tuple[str, ...] = ()
    outbox_for: str | None = None
    outbox: tuple[Outgoing, ...] = ()
    origins: dict[str, Origin] = field(default_factory=dict)
    # The bot version the conversation runs on and its environment, chosen at its first turn
    # ("": the bot's deployed definition, no versions; docs/versions.md).
    version: str = ""
    environment: str = ""

    def seen(self, message_id: str) -> bool:
        return message_id in self.applied

    def origin(self, run_id: str) -> Origin | None:
        return self.origins.get(run_id)

    def encode(self) -> bytes:
        return json.dumps({
            "format": FORMAT,
            "tracker": self.tracker.to_dict(),
            "applied": list(self.applied),
            "outbox_for": self.outbox_for,
            "outbox": [o.to_json() for o in self.outbox],
            "origins": {run: [o.message_id, o.reply_inbox] for run, o in self.origins.items()},
            **({"bv": self.version, "env": self.environment} if self.version else {}),
        }, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes, revision: int) -> Record:
        raw = json.loads(data)
        tracker = Tracker.from_dict(raw["tracker"])
        origins = {str(run): Origin(str(ids[0]), str(ids[1]))
                   for run, ids in (raw.get("origins") or {}).items()}
        return cls(tracker, revision, tuple(raw.get("applied", ())), raw.get("outbox_for"),
                   tuple(Outgoing.from_json(o) for o in raw.get("outbox", ())), origins,
                   str(raw.get("bv", "")), str(raw.get("env", "")))

    def after_turn(self, tracker: Tracker, message_id: str, outbox: tuple[Outgoing, ...],
                   started: dict[str, Origin] | None = None) -> Record:
        """The record after a turn that handled `message_id` and sent `outbox`; `started`:
        the workflow runs it started, by run id, with their origin."""
        applied = (*self.applied, message_id)[-RECENT_IDS:] if message_id else self.applied
        origins = dict(list({**self.origins, **(started or {})}.items())[-RECENT_RUNS:])
        return Record(tracker, self.revision, applied, message_id or None, outbox, origins,
                      self.version, self.environment)


class TrackerStore:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def load(self, key: str) -> Record | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        assert entry.revision is not None
        return Record.decode(entry.value, entry.revision)

    async def save(self, key: str, record: Record) -> int:
        """Write with compare-and-set; returns the new revision (ConcurrentUpdate: the record
        changed since it was read)."""
        try:
            if record.revision is None:
                return int(await self._kv.create(key, record.encode()))
            return int(await self._kv.update(key, record.encode(), last=record.revision))
        except KeyWrongLastSequenceError as exc:
            raise ConcurrentUpdate(key) from exc

    async def delete(self, key: str) -> None:
        await self._kv.delete(key)

    async def keys(self, prefix: str, limit: int) -> list[str]:
        return (await kv_keys(self._kv, prefix))[:limit]


class RecentRecords:
    """The records this worker wrote last, trusted only while nobody else can have written.

    A partition's messages come from one durable consumer, one at a time, numbered by the
    consumer's delivery sequence (redeliveries get new numbers). When this worker receives
    delivery N+1 of a partition right after handling delivery N, no other worker or replica has
    handled a message of that partition in between, so the records this worker wrote for its
    conversations are current: the turn skips reading them back from KV. Any gap, redelivery or
    failure forgets the partition's records. Other writers (the admin API's reset, an expired
    entry) are caught by the compare-and-set: the write fails and the turn reloads from KV.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._records: dict[int, OrderedDict[str, Record]] = {}
        self._last: dict[int, int] = {}
        self._size = 0
        self.hits = 0
        self.misses = 0

    def receive(self, partition: int, delivery: int, attempt: int) -> None:
        """Note delivery number `delivery` (attempt `attempt`) of `partition`."""
        unbroken = self._last.get(partition) == delivery - 1 and attempt == 1
        if not unbroken:
            self.forget_partition(partition)
        self._last[partition] = delivery

    def get(self, partition: int, key: str) -> Record | None:
        records = self._records.get(partition)
        record = None if records is None else records.get(key)
        if record is None:
            self.misses += 1
        else:
            self.hits += 1
        return record

    def put(self, partition: int, key: str, record: Record) -> None:
        if self._capacity <= 0 or partition not in self._last:  # no delivery chain to trust
            return
        records = self._records.setdefault(partition, OrderedDict())
        if records.pop(key, None) is None:
            self._size += 1
        records[key] = record
        while self._size > self._capacity:
            self._evict_one()

    def forget_partition(self, partition: int) -> None:
        """Drop the partition's records and its chain (a failed turn: trust nothing)."""
        self._size -= len(self._records.pop(partition, ()))
        self._last.pop(partition, None)

    def _evict_one(self) -> None:
        largest = max(self._records.values(), key=len)
        largest.popitem(last=False)
        self._size -= 1
