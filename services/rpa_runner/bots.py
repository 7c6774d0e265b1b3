"""The workflows this runner can execute: bot folders on disk and definitions deployed through
the admin API (KV `bots`, keys `def.<bot>`), followed live."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.botdef import load_bot
from services.botdef.workflows import (
    RpaSettings,
    WorkflowDef,
    load_rpa_settings,
    parse_workflows,
)
from services.common.definitions import DEF_PREFIX, DefinitionStore, unpack_to_temp
from services.common.logging import get_logger
from services.common.nats import KV_BOTS, Bus

log = get_logger(__name__)


@dataclass(frozen=True)
class BotWorkflows:
    name: str
    workflows: dict[str, WorkflowDef]
    rpa: RpaSettings


def load_bot_workflows(folder: str | Path,
                       overrides: Mapping[str, Any] | None = None) -> BotWorkflows:
    """A bot folder's workflows, validated against its rpa.yml (settings overridden by the
    runner's configuration); raises BotDefinitionError."""
    folder = Path(folder)
    bot = load_bot(folder)
    rpa = load_rpa_settings(folder).with_overrides(overrides or {})
    return BotWorkflows(bot.name, parse_workflows(bot.raw.get("workflows") or {}, rpa), rpa)


class WorkflowRegistry:
    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        self._bots: dict[str, BotWorkflows] = {}
        self._overrides = dict(overrides or {})
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def get(self, bot_id: str) -> BotWorkflows | None:
        return self._bots.get(bot_id)

    def workflow(self, bot_id: str, name: str) -> WorkflowDef | None:
        bot = self._bots.get(bot_id)
        return None if bot is None else bot.workflows.get(name)

    def names(self) -> list[str]:
        return sorted(self._bots)

    def add(self, bot: BotWorkflows) -> None:
        self._bots[bot.name] = bot

    def load_folder(self, folder: Path) -> str:
        bot = load_bot_workflows(folder, self._overrides)
        self._bots[bot.name] = bot
        log.info("bot_loaded", bot=bot.name, source=str(folder), workflows=sorted(bot.workflows))
        return bot.name

    def load_files(self, bot_id: str, files: dict[str, str]) -> None:
        folder = unpack_to_temp(files)
        try:
            bot = load_bot_workflows(folder, self._overrides)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if bot.name != bot_id:
            raise ValueError(f"definition names bot {bot.name!r}, deployed as {bot_id!r}")
        self._bots[bot_id] = bot
        log.info("bot_loaded", bot=bot_id, source="kv", workflows=sorted(bot.workflows))

    async def follow(self, bus: Bus) -> None:
        kv = await bus.kv(KV_BOTS)
        watcher = await kv.watch(f"{DEF_PREFIX}*")
        self._task = asyncio.get_running_loop().create_task(self._follow(watcher))
        await self.ready.wait()

    async def _follow(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None:
                self.ready.set()
                continue
            if entry.operation is not None or not entry.value:
                continue
            bot_id = entry.key[len(DEF_PREFIX):]
            try:
                self.load_files(bot_id, DefinitionStore.decode(entry.value))
            except Exception as exc:  # a bad deployment keeps the previous workflows
                log.error("bot_rejected", bot=bot_id, error=str(exc))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
