"""Loads the models and knowledge indexes of the bot versions that environments serve before
their first conversation (docs/versions.md): follows KV `bot_versions`
(`env.<bot>.<environment>`) and, for each version an environment serves or canaries, loads its
model beside the active and candidate ones, and its knowledge index (if it names one) beside
the active index, unless they are loaded already. A request naming a version not loaded yet
still loads it on first use (servicer.py, knowledge.py); this keeps that load off the
conversation's path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from services.common.botversions import ENV_PREFIX, Environment, VersionStore
from services.common.logging import get_logger
from services.common.nats import KV_BOT_VERSIONS, Bus
from services.nlu.registry import ModelRegistry

# Loads a bot's model or knowledge-index version beside the active one (False: it cannot be).
Loader = Callable[[str, str], Awaitable[bool]]

log = get_logger(__name__)


class VersionPrewarmer:
    def __init__(self, bus: Bus, registry: ModelRegistry, load: Loader,
                 load_kb: Loader | None = None) -> None:
        self._bus = bus
        self._registry = registry
        self._load = load
        self._load_kb = load_kb  # loads nothing already loaded
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        kv = await self._bus.kv(KV_BOT_VERSIONS)
        watcher = await kv.watch(f"{ENV_PREFIX}>")
        self._task = asyncio.get_running_loop().create_task(self._follow(watcher))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None or entry.operation is not None or not entry.value:
                continue
            try:
                await self._warm(Environment.from_bytes(entry.value))
            except Exception as exc:  # a model that cannot load is loaded on use, or not
                log.warning("version_prewarm_failed", key=entry.key, error=str(exc))

    async def _warm(self, environment: Environment) -> None:
        store = VersionStore(self._bus)
        for version in {environment.version, environment.canary_version} - {""}:
            record = await store.get(environment.bot, version)
            if self._registry.version(environment.bot, record.model) is None:
                await self._load(environment.bot, record.model)
            if record.kb and self._load_kb is not None:
                await self._load_kb(environment.bot, record.kb)
