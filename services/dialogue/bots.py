"""The bots this dialogue worker serves: engines compiled from bot folders on disk and from
definitions deployed through the admin API (KV `bots`, keys `def.<bot>`), followed live."""

from __future__ import annotations

from pathlib import Path

from services.botdef import load_bot
from services.common.definitions import DeployedBots
from services.dialogue.engine import DialogueEngine


def _engine(folder: Path) -> DialogueEngine:
    return DialogueEngine(load_bot(folder))


class BotRegistry(DeployedBots[DialogueEngine]):
    def __init__(self) -> None:
        super().__init__(_engine)
