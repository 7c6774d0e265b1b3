"""Which bots are served right now: each dialogue replica announces the bots it has loaded
(KV `served`, key `<bot>.<replica>`, rewritten every `HEARTBEAT_S`); the gateway follows the
bucket and answers 404 for a bot no live replica serves (docs/gateway.md, "Unknown bots").

The bucket's entries expire `SERVED_TTL_S` after their last write, so a replica that stopped
or died drops out by itself; until then messages to its bots are accepted and kept in
JetStream for the next replica (a restart loses nothing and answers no 404).
JetStream does not tell watchers when an entry expires, so the follower reads the bucket's
keys again now and then (the server has dropped the expired ones by then).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import uuid
from collections.abc import Callable
from typing import Any

from services.common.logging import get_logger
from services.common.nats import KV_SERVED, Bus
from services.common.pull import kv_keys

log = get_logger(__name__)
HEARTBEAT_S = 10.0
"""How often a replica rewrites its announcements: well inside the TTL."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def replica_name() -> str:
    """This process's name in the keys: host (pod) name, pid and a random suffix."""
    raw = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    return _UNSAFE.sub("_", raw)


def served_key(bot: str, replica: str) -> str:
    return f"{bot}.{replica}"


class ServedAnnouncer:
    """Announces `names()` as served by `replica` until stopped; withdraws a bot it no longer
    serves."""

    def __init__(self, bus: Bus, names: Callable[[], list[str]], *,
                 replica: str | None = None, interval_s: float = HEARTBEAT_S) -> None:
        self._bus = bus
        self._names = names
        self.replica = replica or replica_name()
        self._interval_s = interval_s
        self._announced: set[str] = set()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def changed(self) -> None:
        """The served bots changed (a definition was deployed): announce now, not at the next
        beat."""
        self._changed.set()

    async def start(self) -> None:
        await self.announce()
        self._task = asyncio.get_running_loop().create_task(self._beat())

    async def announce(self) -> None:
        """Write one announcement per served bot; withdraw the bots no longer served."""
        kv = await self._bus.kv(KV_SERVED)
        bots = set(self._names())
        value = json.dumps({"replica": self.replica}).encode()
        for bot in sorted(bots):
            await kv.put(served_key(bot, self.replica), value)
        for bot in sorted(self._announced - bots):
            await kv.delete(served_key(bot, self.replica))
        self._announced = bots

    async def _beat(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._interval_s)
            self._changed.clear()
            try:
                await self.announce()
            except Exception as exc:  # the bus is down: try again at the next beat
                log.warning("served_announce_failed", error=str(exc))

    async def stop(self) -> None:
        """Stop announcing. The announcements are left to expire: a message sent while the
        service restarts is still accepted (JetStream keeps it for the next replica)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class ServedBots:
    """Follows the announcements: `serves(bot)` is True while some replica's announcement of
    `bot` is in the bucket.

    A watch applies announcements and withdrawals as they happen; every `resync_s` the
    bucket's keys are read again, which drops the ones that expired (JetStream tells watchers
    nothing about expiry) and repairs a watch that a NATS restart interrupted. When NATS is
    unreachable the last view is kept."""

    def __init__(self, bus: Bus, *, resync_s: float = HEARTBEAT_S) -> None:
        self._bus = bus
        self._resync_s = resync_s
        self._replicas: dict[str, set[str]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        kv = await self._bus.kv(KV_SERVED)
        watcher = await kv.watch(">")
        ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow(watcher, ready)),
                       loop.create_task(self._resync_every())]
        await ready.wait()

    async def _follow(self, watcher: Any, ready: asyncio.Event) -> None:
        async for entry in watcher:
            if entry is None:
                ready.set()
                continue
            bot, _, replica = str(entry.key).partition(".")
            if entry.operation is None:
                self._replicas.setdefault(bot, set()).add(replica)
            else:  # DEL / PURGE: the replica stopped serving it
                self._replicas.get(bot, set()).discard(replica)

    async def resync(self) -> None:
        """Replace the view with the bucket's current keys."""
        replicas: dict[str, set[str]] = {}
        for key in await kv_keys(await self._bus.kv(KV_SERVED), ""):
            bot, _, replica = key.partition(".")
            replicas.setdefault(bot, set()).add(replica)
        self._replicas = replicas

    async def _resync_every(self) -> None:
        while True:
            await asyncio.sleep(self._resync_s)
            try:
                await self.resync()
            except Exception as exc:  # NATS is down: keep the last view
                log.warning("served_resync_failed", error=str(exc))

    def serves(self, bot: str) -> bool:
        return bool(self._replicas.get(bot))

    def names(self) -> list[str]:
        return sorted(bot for bot, replicas in self._replicas.items() if replicas)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
