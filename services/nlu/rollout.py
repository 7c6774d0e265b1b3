"""Rollouts in the NLU service: which variant parses a request, and the shadow comparisons.

canary: a stable hash of (bot, candidate, conversation id) puts `share` of the conversations on
the candidate, the same ones on every replica and for every message (raising the share keeps
the conversations already on it there). No conversation id: the active model.
shadow: the active model answers; the text is queued (bounded; dropped when full) for the
candidate, which parses it on its own thread, off the request path. Agreement and confidence
deltas go to metrics, each disagreement (text redacted) to `events.nlu.shadow.<bot>`.
See docs/rollout.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from services.common.logging import get_logger
from services.common.modelrollouts import canary_point
from services.common.pii import redact
from services.nlu.engine import Prediction
from services.nlu.metrics import RolloutMetrics
from services.nlu.registry import ACTIVE, CANARY, ModelRegistry

log = get_logger(__name__)

SHADOW_SUBJECT = "events.nlu.shadow"

Publish = Callable[[str, bytes], Awaitable[Any]]


@dataclass(frozen=True)
class Plan:
    """A bot's rollout as this replica serves it (set once the candidate is loaded)."""

    candidate: str
    mode: str  # "shadow" or "canary"
    share: float

    def variant(self, bot: str, conversation_id: str) -> str:
        if self.mode != "canary" or not conversation_id:
            return ACTIVE
        inside = canary_point(bot, self.candidate, conversation_id) < self.share
        return CANARY if inside else ACTIVE


class Rollouts:
    """The plans in effect per bot."""

    def __init__(self, metrics: RolloutMetrics) -> None:
        self._plans: dict[str, Plan] = {}
        self._metrics = metrics

    def get(self, bot: str) -> Plan | None:
        return self._plans.get(bot)

    def set(self, bot: str, plan: Plan) -> None:
        self.clear(bot)
        self._plans[bot] = plan
        share = plan.share if plan.mode == "canary" else 0.0
        self._metrics.rollout.labels(bot, plan.candidate, plan.mode).set(share)

    def clear(self, bot: str) -> None:
        old = self._plans.pop(bot, None)
        if old is not None:
            with contextlib.suppress(KeyError):
                self._metrics.rollout.remove(bot, old.candidate, old.mode)

    def variant_for(self, bot: str, conversation_id: str) -> str:
        plan = self._plans.get(bot)
        return plan.variant(bot, conversation_id) if plan is not None else ACTIVE

    def shadowing(self, bot: str) -> bool:
        plan = self._plans.get(bot)
        return plan is not None and plan.mode == "shadow"


@dataclass(frozen=True)
class ShadowItem:
    bot: str
    text: str
    conversation_id: str
    active_version: str
    active: Prediction


class ShadowRunner:
    """Parses queued texts with the bot's candidate on one thread of its own."""

    def __init__(self, registry: ModelRegistry, metrics: RolloutMetrics,
                 publish: Publish | None, *, queue_size: int, batch_size: int) -> None:
        self._registry = registry
        self._metrics = metrics
        self._publish = publish
        self._batch_size = batch_size
        self._queue: asyncio.Queue[ShadowItem] = asyncio.Queue(maxsize=queue_size)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="nlu-shadow",
                                            initializer=lower_thread_priority)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    def offer(self, item: ShadowItem) -> None:
        """Queue `item` for the candidate; never waits (dropped and counted when full)."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._metrics.shadow_dropped.labels(bot=item.bot).inc()

    async def _run(self) -> None:
        while True:
            items = [await self._queue.get()]
            while len(items) < self._batch_size and not self._queue.empty():
                items.append(self._queue.get_nowait())
            for bot in dict.fromkeys(i.bot for i in items):
                try:
                    await self._compare(bot, [i for i in items if i.bot == bot])
                except Exception as exc:  # a failed comparison never stops the shadow
                    log.warning("shadow_failed", bot=bot, error=repr(exc))

    async def _compare(self, bot: str, items: list[ShadowItem]) -> None:
        candidate = self._registry.candidate(bot)
        if candidate is None:
            return
        loop = asyncio.get_running_loop()
        texts = [i.text for i in items]
        predictions = await loop.run_in_executor(self._executor, candidate.model.predict, texts)
        for item, prediction in zip(items, predictions, strict=True):
            agree = item.active.intent == prediction.intent
            self._metrics.shadow_comparisons.labels(
                bot=bot, agree="true" if agree else "false").inc()
            self._metrics.shadow_confidence_delta.labels(bot=bot).observe(
                prediction.confidence - item.active.confidence)
            if not agree and self._publish is not None:
                body = disagreement(item, candidate.model.version, prediction)
                await self._publish(f"{SHADOW_SUBJECT}.{bot}", json.dumps(body).encode())


def lower_thread_priority() -> None:
    """Run this thread at the lowest CPU priority (Linux: threads have their own nice value),
    so that on a busy machine the active model's inference threads go first."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _side(version: str, prediction: Prediction) -> dict[str, Any]:
    return {"version": version, "intent": prediction.intent,
            "confidence": round(prediction.confidence, 4),
            "out_of_scope": prediction.out_of_scope}


def disagreement(item: ShadowItem, candidate_version: str,
                 candidate: Prediction) -> dict[str, Any]:
    """The `events.nlu.shadow.<bot>` event body (docs/rollout.md)."""
    return {
        "bot_id": item.bot, "conversation_id": item.conversation_id,
        "text": redact(item.text), "at_unix_ms": int(time.time() * 1000),
        "active": _side(item.active_version, item.active),
        "candidate": _side(candidate_version, candidate),
    }
