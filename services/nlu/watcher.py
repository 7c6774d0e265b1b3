"""Follows the active model per bot in KV `bots` and hot-swaps the registry to it.

Every `model.<bot>` key is watched (initial values first, then updates). A version that cannot
be fetched or loaded is rejected and logged; the bot keeps its current model.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from services.common.logging import get_logger
from services.common.modelstore import ACTIVE_PREFIX, ModelRef, fetch
from services.common.nats import KV_BOTS, Bus
from services.nlu.registry import ModelRegistry

log = get_logger(__name__)


class ModelWatcher:
    def __init__(self, bus: Bus, registry: ModelRegistry, cache_dir: Path) -> None:
        self._bus = bus
        self._registry = registry
        self._cache_dir = cache_dir
        self._task: asyncio.Task[None] | None = None
        self.initial_load_done = asyncio.Event()

    async def start(self) -> None:
        kv = await self._bus.kv(KV_BOTS)
        watcher = await kv.watch(f"{ACTIVE_PREFIX}*")
        self._task = asyncio.get_running_loop().create_task(self._follow(watcher))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, watcher: object) -> None:
        async for entry in watcher:  # type: ignore[attr-defined]
            if entry is None:
                self.initial_load_done.set()
                continue
            if entry.operation is not None or not entry.value:
                continue
            ref = ModelRef(bot=entry.key[len(ACTIVE_PREFIX):], version=entry.value.decode())
            await self.apply(ref)

    async def apply(self, ref: ModelRef) -> bool:
        """Fetch and load `ref` unless it is already served; False when rejected."""
        current = self._registry.get(ref.bot)
        if current is not None and current.model.version == ref.version:
            return True
        try:
            directory = await fetch(self._bus, ref, self._cache_dir)
            await self._registry.load(directory, source=f"store:{ref.version}")
        except Exception as exc:  # any failure keeps the old model serving
            log.error("model_rejected", bot=ref.bot, version=ref.version, error=str(exc))
            return False
        log.info("model_swapped", bot=ref.bot, version=ref.version)
        return True
