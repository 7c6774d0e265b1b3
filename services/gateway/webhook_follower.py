"""Which bots' messages the webhook relay's shared consumer takes: this replica's view of the
bots' webhooks (a KV watch on `webhook.*`) and the consumer's filter subjects
(`conv.out.<bot>.>`), changed by read-modify-write (docs/gateway.md, "How the relay works")."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, ConsumerInfo
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from services.common.logging import get_logger
from services.common.nats import KV_BOTS, Bus
from services.common.subjects import ID_RE
from services.gateway.webhook_store import (
    KEY_PREFIX,
    STREAM,
    Subscription,
    SubscriptionStore,
)

log = get_logger(__name__)

DURABLE = "gateway-webhooks"
SUBJECT_PREFIX = "conv.out."
NO_BOT_FILTER = "conv.out.~none.>"  # '~' is not allowed in a bot id: matches no message
SYNC_S = 10.0


def bot_filter(bot: str) -> str:
    return f"{SUBJECT_PREFIX}{bot}.>"


def filters_for(bots: Iterable[str]) -> list[str]:
    """The consumer's filter subjects for `bots` (one that matches nothing when there is none:
    a consumer without a filter would take the whole stream)."""
    return [bot_filter(bot) for bot in sorted(bots)] or [NO_BOT_FILTER]


def filters_of(config: ConsumerConfig) -> list[str]:
    if config.filter_subjects:
        return list(config.filter_subjects)
    return [config.filter_subject] if config.filter_subject else []


def bots_of(filters: Iterable[str]) -> frozenset[str]:
    """The bots named by `conv.out.<bot>.>` filters; any other filter (the placeholder, the
    `conv.out.>` of the relay's first version) names none."""
    bots = set()
    for subject in filters:
        token = subject[len(SUBJECT_PREFIX):-2]
        if subject.startswith(SUBJECT_PREFIX) and subject.endswith(".>") and ID_RE.match(token):
            bots.add(token)
    return frozenset(bots)


def filter_target(current: frozenset[str], live: frozenset[str],
                  removed: frozenset[str] = frozenset(),
                  stale: frozenset[str] = frozenset()) -> frozenset[str]:
    """The bots the filter should hold after a replica's read-modify-write: those it holds
    (`current`, maybe added by replicas this one has not heard from yet), plus the bots with a
    webhook in this replica's view (`live`), minus those it saw removed and those found stale
    twice (`removed`, `stale`) unless its view holds them."""
    return (current | live) - ((removed | stale) - live)


class WebhookFollower:
    """This replica's view of the bots' webhooks (a KV watch on `webhook.*`) and the shared
    consumer's filter subjects, kept in line with it (docs/gateway.md, "How the relay works")."""

    def __init__(self, bus: Bus, store: SubscriptionStore,
                 consumer: Callable[[list[str]], ConsumerConfig], sync_s: float = SYNC_S) -> None:
        self._bus = bus
        self._store = store
        self._consumer = consumer
        self._sync_s = sync_s
        self.live: dict[str, Subscription] = {}
        self._admitting: dict[str, int] = {}
        self._suspects: frozenset[str] = frozenset()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def get(self, bot: str) -> Subscription | None:
        return self.live.get(bot)

    async def start(self) -> None:
        """Read the current webhooks, create or update the consumer, then follow changes."""
        kv = await self._bus.kv(KV_BOTS)
        watcher = await kv.watch(f"{KEY_PREFIX}*")
        ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow(watcher, ready), name="webhook-follow")]
        await ready.wait()
        await self.sync()
        self._tasks.append(loop.create_task(self._check_regularly(), name="webhook-sync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def wake(self) -> None:
        """Check the consumer now (e.g. after a failed fetch: it may have been deleted)."""
        self._wake.set()

    async def admit(self, bot: str) -> None:
        """Put `bot` in the filter before its webhook is stored (a PUT on this replica)."""
        self._admitting[bot] = self._admitting.get(bot, 0) + 1
        try:
            await self.sync()
        except BaseException:
            self._release(bot)
            raise

    async def refresh(self, bot: str, *, admitted: bool = False) -> None:
        """After a PUT or DELETE on this replica: read the bot's webhook and apply it at once."""
        if admitted:
            self._release(bot)
        found = await self._store.subscription(bot)
        if found is None:
            self.live.pop(bot, None)
            await self.sync(removed=frozenset({bot}))
        else:
            self.live[bot] = found
            await self.sync()

    def _release(self, bot: str) -> None:
        self._admitting[bot] -= 1
        if not self._admitting[bot]:
            del self._admitting[bot]

    async def sync(self, *, removed: frozenset[str] = frozenset(), sweep: bool = False) -> None:
        """Read-modify-write of the consumer's filter (created when missing)."""
        async with self._lock:
            info = await self._info()
            filters = filters_of(info.config) if info is not None else []
            current = bots_of(filters)
            live = frozenset(self.live) | frozenset(self._admitting)
            stale = self._stale(current - live) if sweep else frozenset()
            target = filters_for(filter_target(current, live, removed, stale))
            if info is None or sorted(filters) != target:
                await self._bus.js.add_consumer(STREAM, self._consumer(target))
                log.info("webhook_filter_updated", bots=len(target), created=info is None)

    def _stale(self, unknown: frozenset[str]) -> frozenset[str]:
        """Bots in the filter without a webhook here at this check and the previous one."""
        stale = unknown & self._suspects
        self._suspects = unknown - stale
        return stale

    async def _info(self) -> ConsumerInfo | None:
        try:
            info: ConsumerInfo = await self._bus.js.consumer_info(STREAM, DURABLE)
        except nats.js.errors.NotFoundError:
            return None
        return info

    async def _follow(self, watcher: KeyValue.KeyWatcher, ready: asyncio.Event) -> None:
        removed: set[str] = set()
        async for entry in watcher:
            if entry is None:  # the initial values are read (start syncs; no removals then)
                ready.set()
                removed.clear()
                continue
            self._apply(entry, removed)
            if ready.is_set() and not entry.delta:  # caught up: one update for the batch
                await self._sync_quietly(removed=frozenset(removed))
                removed.clear()

    def _apply(self, entry: KeyValue.Entry, removed: set[str]) -> None:
        bot = entry.key[len(KEY_PREFIX):]
        found = None
        if entry.operation not in (KV_DEL, KV_PURGE):
            found = self._store.stored(bot, entry.value)
        if found is None:
            self.live.pop(bot, None)
            removed.add(bot)
        else:
            self.live[bot] = found
            removed.discard(bot)

    async def _check_regularly(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._sync_s)
            self._wake.clear()
            await self._sync_quietly(sweep=True)

    async def _sync_quietly(self, **options: Any) -> None:
        try:
            await self.sync(**options)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.warning("webhook_filter_sync_failed", error=repr(exc))  # the next check retries
