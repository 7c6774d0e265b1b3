"""The bots this dialogue worker serves: engines compiled from bot folders on disk and from
definitions deployed through the admin API (KV `bots`, keys `def.<bot>`), followed live."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path
from typing import Any

from services.botdef import load_bot
from services.common.definitions import DEF_PREFIX, DefinitionStore, unpack_to_temp
from services.common.logging import get_logger
from services.common.nats import KV_BOTS, Bus
from services.dialogue.engine import DialogueEngine

log = get_logger(__name__)


class BotRegistry:
    def __init__(self) -> None:
        self._engines: dict[str, DialogueEngine] = {}
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def get(self, bot_id: str) -> DialogueEngine | None:
        return self._engines.get(bot_id)

    def names(self) -> list[str]:
        return sorted(self._engines)

    def load_folder(self, folder: Path) -> str:
        bot = load_bot(folder)
        self._engines[bot.name] = DialogueEngine(bot)
        log.info("bot_loaded", bot=bot.name, source=str(folder))
        return bot.name

    def load_files(self, bot_id: str, files: dict[str, str]) -> None:
        folder = unpack_to_temp(files)
        try:
            bot = load_bot(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if bot.name != bot_id:
            raise ValueError(f"definition names bot {bot.name!r}, deployed as {bot_id!r}")
        self._engines[bot_id] = DialogueEngine(bot)
        log.info("bot_loaded", bot=bot_id, source="kv")

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
            except Exception as exc:  # a bad deployment keeps the previous engine
                log.error("bot_rejected", bot=bot_id, error=str(exc))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
