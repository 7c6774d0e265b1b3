"""The workflows this runner can execute: bot folders on disk and definitions deployed through
the admin API (KV `bots`, keys `def.<bot>`), followed live."""

from __future__ import annotations

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
from services.common.definitions import DefinitionFollower, load_deployed
from services.common.logging import get_logger
from services.common.nats import Bus

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
        self._follower: DefinitionFollower | None = None

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
        bot = load_deployed(bot_id, files,
                            lambda folder: load_bot_workflows(folder, self._overrides))
        self._bots[bot_id] = bot
        log.info("bot_loaded", bot=bot_id, source="kv", workflows=sorted(bot.workflows))

    async def follow(self, bus: Bus) -> None:
        """Load the deployed definitions and follow their updates."""
        self._follower = DefinitionFollower(self.load_files)
        await self._follower.start(bus)

    async def stop(self) -> None:
        if self._follower is not None:
            await self._follower.stop()
