"""The workflows this runner can execute: bot folders on disk and definitions deployed through
the admin API (KV `bots`, keys `def.<bot>`), followed live; and the workflows of bot versions
(KV `bot_versions`, docs/versions.md), loaded when a job names one, compiled once per version
and kept for the most recently used `VERSIONS_KEPT`."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.botdef import load_bot
from services.botdef.model import BotDefinitionError
from services.botdef.workflows import (
    RpaSettings,
    WorkflowDef,
    load_rpa_settings,
    parse_workflows,
)
from services.common.botversions import VersionError, VersionStore
from services.common.definitions import DefinitionError, DeployedBots, load_deployed
from services.common.logging import get_logger
from services.common.nats import Bus

log = get_logger(__name__)
VERSIONS_KEPT = 32  # compiled bot versions kept per runner (least recently used dropped)
VersionFiles = Callable[[str, str], Awaitable[dict[str, str]]]


@dataclass(frozen=True)
class BotWorkflows:
    name: str
    workflows: dict[str, WorkflowDef]
    rpa: RpaSettings


class VersionUnavailable(Exception):
    """A bot version whose workflows cannot be loaded (no such version, or a definition that
    does not load): runs that name it fail. Bus errors are not this: the job is retried."""


def load_bot_workflows(folder: str | Path,
                       overrides: Mapping[str, Any] | None = None) -> BotWorkflows:
    """A bot folder's workflows, validated against its rpa.yml (settings overridden by the
    runner's configuration); raises BotDefinitionError."""
    folder = Path(folder)
    bot = load_bot(folder)
    rpa = load_rpa_settings(folder).with_overrides(overrides or {})
    return BotWorkflows(bot.name, parse_workflows(bot.raw.get("workflows") or {}, rpa), rpa)


class WorkflowRegistry(DeployedBots[BotWorkflows]):
    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        settings = dict(overrides or {})
        super().__init__(lambda folder: load_bot_workflows(folder, settings),
                         lambda bot: {"workflows": sorted(bot.workflows)})
        self._settings = settings
        self._version_files: VersionFiles | None = None
        self._versions: OrderedDict[tuple[str, str], BotWorkflows] = OrderedDict()
        self._loading: dict[tuple[str, str], asyncio.Future[BotWorkflows]] = {}

    def workflow(self, bot_id: str, name: str) -> WorkflowDef | None:
        bot = self.get(bot_id)
        return None if bot is None else bot.workflows.get(name)

    async def follow(self, bus: Bus) -> None:
        """Follow the deployed definitions; load bot versions from KV `bot_versions`."""
        store = VersionStore(bus)

        async def files(bot: str, version: str) -> dict[str, str]:
            return (await store.get(bot, version)).files

        self.use_versions(files)
        await super().follow(bus)

    def use_versions(self, files: VersionFiles) -> None:
        """Where a version's files come from (`follow` reads them from KV `bot_versions`)."""
        self._version_files = files

    async def resolve(self, bot_id: str, version: str = "") -> BotWorkflows | None:
        """The bot's workflows in `version`, or the deployed ones when `version` is ""
        (None: the bot is not deployed). Raises VersionUnavailable for a version that cannot
        be loaded; other errors (the bus) propagate."""
        if not version:
            return self.get(bot_id)
        key = (bot_id, version)
        found = self._versions.get(key)
        if found is not None:
            self._versions.move_to_end(key)
            return found
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load_version(bot_id, version))
            self._loading[key] = pending
            pending.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(pending)

    async def _load_version(self, bot_id: str, version: str) -> BotWorkflows:
        if self._version_files is None:
            raise VersionUnavailable("this runner does not read bot versions")
        try:
            files = await self._version_files(bot_id, version)
            bot = await asyncio.to_thread(
                load_deployed, bot_id, files,
                lambda folder: load_bot_workflows(folder, self._settings))
        except (VersionError, DefinitionError, BotDefinitionError, ValueError) as exc:
            log.error("version_rejected", bot=bot_id, version=version, error=str(exc))
            raise VersionUnavailable(f"bot version {version} of {bot_id!r}: {exc}") from exc
        self._versions[(bot_id, version)] = bot
        while len(self._versions) > VERSIONS_KEPT:
            self._versions.popitem(last=False)
        log.info("version_loaded", bot=bot_id, version=version, workflows=sorted(bot.workflows))
        return bot
