"""Follows the active model and the rollout of each bot in KV `bots` and updates the registry.

Every `model.<bot>` key (the active version) and `rollout.<bot>` key (a candidate in shadow or
canary mode) is watched, initial values first, then updates. A version that cannot be fetched
or loaded is rejected and logged; the bot keeps what it serves. Changes are applied one at a
time, so a promotion (the candidate becomes `model.<bot>`, then the rollout is deleted) reuses
the loaded candidate in whichever order the two keys arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from services.common.logging import get_logger
from services.common.modelstore import (
    ACTIVE_PREFIX,
    ROLLOUT_PREFIX,
    ModelRef,
    ModelStoreError,
    Rollout,
    fetch,
)
from services.common.nats import KV_BOTS, Bus
from services.nlu.registry import ModelRegistry
from services.nlu.rollout import Plan, Rollouts

log = get_logger(__name__)


class ModelWatcher:
    def __init__(self, bus: Bus, registry: ModelRegistry, cache_dir: Path,
                 rollouts: Rollouts | None = None) -> None:
        self._bus = bus
        self._registry = registry
        self._cache_dir = cache_dir
        self._rollouts = rollouts
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._initial: list[asyncio.Event] = []
        self.initial_load_done = asyncio.Event()

    async def start(self) -> None:
        kv = await self._bus.kv(KV_BOTS)
        follows: list[tuple[str, Any]] = [(ACTIVE_PREFIX, self._on_model)]
        if self._rollouts is not None:
            follows.append((ROLLOUT_PREFIX, self._on_rollout))
        loop = asyncio.get_running_loop()
        for prefix, handler in follows:
            watcher = await kv.watch(f"{prefix}*")
            done = asyncio.Event()
            self._initial.append(done)
            self._tasks.append(loop.create_task(self._follow(watcher, prefix, handler, done)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self, watcher: Any, prefix: str, handler: Any,
                      done: asyncio.Event) -> None:
        async for entry in watcher:
            if entry is None:
                done.set()
                if all(e.is_set() for e in self._initial):
                    self.initial_load_done.set()
                continue
            deleted = entry.operation is not None or not entry.value
            await handler(entry.key[len(prefix):], None if deleted else entry.value)

    async def _on_model(self, bot: str, value: bytes | None) -> None:
        if value is not None:
            await self.apply(ModelRef(bot=bot, version=value.decode()))

    async def _on_rollout(self, bot: str, value: bytes | None) -> None:
        if value is None:
            await self.end_rollout(bot)
            return
        try:
            record = Rollout.from_bytes(value)
        except ModelStoreError as exc:
            log.error("rollout_rejected", bot=bot, error=str(exc))
            await self.end_rollout(bot)
            return
        await self.apply_rollout(bot, record)

    async def apply(self, ref: ModelRef) -> bool:
        """Fetch and load `ref` unless it is already served; False when rejected."""
        async with self._lock:
            return await self._apply(ref)

    async def _apply(self, ref: ModelRef) -> bool:
        current = self._registry.get(ref.bot)
        if current is not None and current.model.version == ref.version:
            return True
        if self._rollouts is not None:
            plan = self._rollouts.get(ref.bot)
            if plan is not None and plan.candidate == ref.version:
                self._rollouts.clear(ref.bot)
        if await self._registry.promote_candidate(ref.bot, ref.version):
            log.info("model_promoted", bot=ref.bot, version=ref.version)
            return True
        if not await self._load(ref, candidate=False):
            return False
        log.info("model_swapped", bot=ref.bot, version=ref.version)
        return True

    async def apply_rollout(self, bot: str, record: Rollout) -> bool:
        """Load the candidate (unless loaded) and put the plan in effect; False if rejected."""
        assert self._rollouts is not None
        async with self._lock:
            active = self._registry.get(bot)
            if active is not None and active.model.version == record.candidate:
                self._rollouts.clear(bot)  # already promoted here
                return True
            loaded = self._registry.candidate(bot)
            if loaded is None or loaded.model.version != record.candidate:
                self._rollouts.clear(bot)
                if not await self._load(ModelRef(bot, record.candidate), candidate=True):
                    await self._registry.drop_candidate(bot)
                    return False
            self._rollouts.set(bot, Plan(record.candidate, record.mode, record.share))
        log.info("rollout_applied", bot=bot, candidate=record.candidate, mode=record.mode,
                 share=record.share)
        return True

    async def end_rollout(self, bot: str) -> None:
        assert self._rollouts is not None
        async with self._lock:
            self._rollouts.clear(bot)
            if self._registry.candidate(bot) is not None:
                await self._registry.drop_candidate(bot)
                log.info("rollout_ended", bot=bot)

    async def load_version(self, bot: str, version: str) -> bool:
        """Load a version a request names (a conversation pinned to a bot version) beside the
        active and candidate models; False when it cannot be fetched or loaded."""
        try:
            directory = await fetch(self._bus, ModelRef(bot, version), self._cache_dir)
            await self._registry.load_pinned(directory, source=f"store:{version}")
        except Exception as exc:  # the active model answers instead
            log.error("model_rejected", bot=bot, version=version, error=str(exc), pinned=True)
            return False
        log.info("model_pinned_loaded", bot=bot, version=version)
        return True

    async def _load(self, ref: ModelRef, *, candidate: bool) -> bool:
        try:
            directory = await fetch(self._bus, ref, self._cache_dir)
            await self._registry.load(directory, source=f"store:{ref.version}",
                                      candidate=candidate)
        except Exception as exc:  # any failure keeps the old model serving
            log.error("model_rejected", bot=ref.bot, version=ref.version, error=str(exc),
                      candidate=candidate)
            return False
        return True
