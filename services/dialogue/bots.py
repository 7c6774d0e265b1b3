"""The bots this dialogue worker serves: engines compiled from bot folders on disk and from
definitions deployed through the admin API (KV `bots`, keys `def.<bot>`), followed live."""

from __future__ import annotations

from pathlib import Path

from services.botdef import load_bot
from services.common.definitions import DefinitionFollower, load_deployed
from services.common.logging import get_logger
from services.common.nats import Bus
from services.dialogue.engine import DialogueEngine

log = get_logger(__name__)


class BotRegistry:
    def __init__(self) -> None:
        self._engines: dict[str, DialogueEngine] = {}
        self._follower: DefinitionFollower | None = None

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
        bot = load_deployed(bot_id, files, load_bot)
        self._engines[bot_id] = DialogueEngine(bot)
        log.info("bot_loaded", bot=bot_id, source="kv")

    async def follow(self, bus: Bus) -> None:
        """Load the deployed definitions and follow their updates."""
        self._follower = DefinitionFollower(self.load_files)
        await self._follower.start(bus)

    async def stop(self) -> None:
        if self._follower is not None:
            await self._follower.stop()
