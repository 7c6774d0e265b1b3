"""Automatic rollback of a bad canary (docs/rollout.md).

While a bot has a canary rollout (KV `rollout.<bot>`, mode canary), each dialogue replica reads
the bot's conversation events since the rollout started (an ordered consumer on
`conv.event.<bot>.>`, from the rollout's start or at most `window_s` back) and counts, per model
variant, over the last `window_s` seconds:

- turns: user messages that NLU parsed (`user_message` events; their `nlu.variant`),
- fallbacks: `fallback` events, counted to the variant of the same conversation's last turn,
- negative feedback: `feedback` events with a rating below 0, counted to the variant that
  served the conversation (canary choice is sticky per conversation).

Once both variants have `min_samples` turns, the rollout is aborted when the canary's fallback
rate or negative-feedback rate (per turn) exceeds the active one's by more than the rollout's
threshold. The abort deletes `rollout.<bot>` with compare-and-set on the revision the guard
read: with many replicas exactly one of them succeeds, and only that one records the audit
event (`model.rollout_aborted`, actor `rollout-guard`), the metric and the log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.common import audit
from services.common.events import decode_events
from services.common.logging import get_logger
from services.common.modelstore import (
    ROLLOUT_PREFIX,
    ModelStoreError,
    Rollout,
    abort_rollout,
)
from services.common.nats import KV_BOTS, Bus
from services.common.subjects import events
from services.dialogue.metrics import RolloutGuardMetrics

log = get_logger(__name__)

ACTOR = "rollout-guard"
VARIANTS = ("active", "canary")
MAX_CONVERSATIONS = 100_000
"""Conversations whose variant is remembered (an LRU; older ones are no longer attributed)."""


@dataclass
class VariantStats:
    """Event times (seconds) of one variant inside the window."""

    turns: deque[float] = field(default_factory=deque)
    fallbacks: deque[float] = field(default_factory=deque)
    negative: deque[float] = field(default_factory=deque)

    def prune(self, since: float) -> None:
        for times in (self.turns, self.fallbacks, self.negative):
            while times and times[0] < since:
                times.popleft()

    @property
    def fallback_rate(self) -> float:
        return len(self.fallbacks) / len(self.turns) if self.turns else 0.0

    @property
    def negative_rate(self) -> float:
        return len(self.negative) / len(self.turns) if self.turns else 0.0


class RolloutWindow:
    """What the guard knows of one rollout of one bot: pure, fed event by event."""

    def __init__(self, rollout: Rollout, window_s: float) -> None:
        self.rollout = rollout
        self.window_s = window_s
        self.stats = {v: VariantStats() for v in VARIANTS}
        self._served: OrderedDict[str, str] = OrderedDict()  # conversation → its variant
        self._turn: dict[str, str | None] = {}  # conversation → variant of its current turn

    def observe(self, kind: str, conversation: str, data: dict[str, Any], at_s: float) -> None:
        if at_s * 1000 < self.rollout.started_at_unix_ms:
            return
        if kind == "user_message":
            self._user_message(conversation, data.get("nlu"), at_s)
        elif kind == "fallback":
            variant = self._turn.get(conversation)
            if variant is not None:
                self.stats[variant].fallbacks.append(at_s)
        elif kind == "feedback" and _negative(data.get("rating")):
            variant = self._served.get(conversation)
            if variant is not None:
                self.stats[variant].negative.append(at_s)

    def _user_message(self, conversation: str, nlu: Any, at_s: float) -> None:
        variant = nlu.get("variant") if isinstance(nlu, dict) else None
        if variant == "canary" and nlu.get("model_version") != self.rollout.candidate:
            variant = None  # an earlier candidate's answer
        if variant not in VARIANTS:
            self._turn[conversation] = None
            return
        self._turn[conversation] = variant
        self._served[conversation] = variant
        self._served.move_to_end(conversation)
        if len(self._served) > MAX_CONVERSATIONS:
            gone, _ = self._served.popitem(last=False)
            self._turn.pop(gone, None)
        self.stats[variant].turns.append(at_s)

    def verdict(self, now_s: float) -> str | None:
        """Why the rollout must be aborted now, or None."""
        for stats in self.stats.values():
            stats.prune(now_s - self.window_s)
        return decide(self.rollout, self.stats["active"], self.stats["canary"])


def decide(rollout: Rollout, active: VariantStats, canary: VariantStats) -> str | None:
    """The abort reason when the canary is worse than the active model by a threshold."""
    if rollout.mode != "canary":
        return None
    if min(len(active.turns), len(canary.turns)) < rollout.min_samples:
        return None
    checks = (("fallback rate", canary.fallback_rate, active.fallback_rate,
               rollout.max_fallback_increase),
              ("negative-feedback rate", canary.negative_rate, active.negative_rate,
               rollout.max_negative_feedback_increase))
    for name, candidate, baseline, limit in checks:
        if candidate - baseline > limit:
            return (f"canary {name} {candidate:.3f} exceeds active {baseline:.3f} by more than "
                    f"{limit:.3f} ({len(canary.turns)} canary / {len(active.turns)} active "
                    "turns)")
    return None


def _negative(rating: Any) -> bool:
    try:
        return int(rating) < 0
    except (TypeError, ValueError):
        return False


@dataclass
class _Watched:
    window: RolloutWindow
    revision: int
    subscription: Any = None
    acting: bool = False


class RolloutGuard:
    """Follows the canary rollouts in KV and aborts the bad ones."""

    def __init__(self, bus: Bus, metrics: RolloutGuardMetrics, *, window_s: float) -> None:
        self._bus = bus
        self._metrics = metrics
        self._window_s = window_s
        self._watched: dict[str, _Watched] = {}
        self._task: asyncio.Task[None] | None = None
        self._actions: set[asyncio.Task[None]] = set()
        self._ready = asyncio.Event()

    async def start(self) -> None:
        kv = await self._bus.kv(KV_BOTS)
        watcher = await kv.watch(f"{ROLLOUT_PREFIX}*")
        self._task = asyncio.get_running_loop().create_task(self._follow(watcher))
        await self._ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._actions:
            await asyncio.gather(*self._actions, return_exceptions=True)
        for bot in list(self._watched):
            await self._unwatch(bot)

    async def _follow(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None:
                self._ready.set()
                continue
            bot = entry.key[len(ROLLOUT_PREFIX):]
            try:
                record = (Rollout.from_bytes(entry.value)
                          if entry.operation is None and entry.value else None)
            except ModelStoreError:
                record = None
            await self._update(bot, record, entry.revision or 0)

    async def _update(self, bot: str, record: Rollout | None, revision: int) -> None:
        current = self._watched.get(bot)
        if current is not None and record is not None and current.window.rollout == record:
            current.revision = revision
            return
        await self._unwatch(bot)
        if record is None or record.mode != "canary":
            return
        watched = _Watched(RolloutWindow(record, self._window_s), revision)
        self._watched[bot] = watched
        start = max(record.started_at_unix_ms / 1000, time.time() - self._window_s)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                opt_start_time=datetime.fromtimestamp(start, UTC))
        watched.subscription = await self._bus.js.subscribe(
            events(bot, ">"), stream="CONV", ordered_consumer=True, config=config,
            cb=functools.partial(self._on_event, bot, watched))
        log.info("rollout_guard_watching", bot=bot, candidate=record.candidate)

    async def _unwatch(self, bot: str) -> None:
        watched = self._watched.pop(bot, None)
        if watched is not None and watched.subscription is not None:
            with contextlib.suppress(Exception):
                await watched.subscription.unsubscribe()

    async def _on_event(self, bot: str, watched: _Watched, msg: Msg) -> None:
        try:
            batch = decode_events(msg.data, msg.headers)
            datas = [json.loads(event.data_json) if event.data_json else {} for event in batch]
        except Exception as exc:  # one bad event never stops the guard
            log.warning("rollout_guard_undecodable", subject=msg.subject, error=repr(exc))
            return
        for event, data in zip(batch, datas, strict=True):
            conversation = event.conversation_id or msg.subject.split(".")[-1]
            at_s = event.at_unix_ms / 1000 if event.at_unix_ms else time.time()
            watched.window.observe(event.type, conversation,
                                   data if isinstance(data, dict) else {}, at_s)
        if watched.acting or self._watched.get(bot) is not watched:
            return
        reason = watched.window.verdict(time.time())
        self._export(bot, watched.window)
        if reason is not None:
            watched.acting = True
            task = asyncio.get_running_loop().create_task(self._abort(bot, watched, reason))
            self._actions.add(task)
            task.add_done_callback(self._actions.discard)

    def _export(self, bot: str, window: RolloutWindow) -> None:
        for variant, stats in window.stats.items():
            self._metrics.turns.labels(bot=bot, variant=variant).set(len(stats.turns))
            self._metrics.rate.labels(bot=bot, variant=variant,
                                      rate="fallback").set(stats.fallback_rate)
            self._metrics.rate.labels(bot=bot, variant=variant,
                                      rate="negative_feedback").set(stats.negative_rate)

    async def _abort(self, bot: str, watched: _Watched, reason: str) -> None:
        """Delete the rollout if it is still the one judged; only the replica that deletes it
        reports it."""
        rollout = watched.window.rollout
        try:
            aborted = await abort_rollout(self._bus, bot, revision=watched.revision)
        except ModelStoreError:  # already gone
            aborted = None
        except Exception as exc:
            log.error("rollout_abort_failed", bot=bot, error=repr(exc))
            watched.acting = False
            return
        if aborted is None:
            return
        self._metrics.aborts.labels(bot=bot).inc()
        log.warning("rollout_aborted", bot=bot, candidate=rollout.candidate, reason=reason)
        event = audit.platform_event(ACTOR, audit.ROLLOUT_ABORTED, {
            "bot_id": bot, "candidate": rollout.candidate, "active": rollout.baseline,
            "mode": rollout.mode, "share": rollout.share, "reason": reason})
        await audit.record(audit.BusAuditLog(self._bus), event)
