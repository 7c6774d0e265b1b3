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
from services.common.definitions import DeployedBots


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


class WorkflowRegistry(DeployedBots[BotWorkflows]):
    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        settings = dict(overrides or {})
        super().__init__(lambda folder: load_bot_workflows(folder, settings),
                         lambda bot: {"workflows": sorted(bot.workflows)})

    def workflow(self, bot_id: str, name: str) -> WorkflowDef | None:
        bot = self.get(bot_id)
        return None if bot is None else bot.workflows.get(name)
