"""What the knowledge-base commands read from a bot folder: the bot name and the `knowledge:`
answering settings (answer_threshold, max_sentences, k).

They come from the loaded bot definition (services.botdef, the same values the dialogue
uses) when the folder loads; a partial folder (e.g. a test fixture with only bot.yml) falls
back to the raw `bot.yml` keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.botdef import BotDefinitionError, KnowledgeSettings, load_bot
from services.botdef.yamlio import YamlSyntaxError, read_yaml
from services.knowledge.errors import KnowledgeFormatError

BOT_FILE = "bot.yml"


@dataclass(frozen=True)
class BotKnowledge:
    bot: str
    answer_threshold: float = 0.5
    max_sentences: int = 2
    k: int = 5
    source: str = "definition"
    """"definition" (the loaded bot folder) or "bot.yml" (raw keys of a partial folder)."""


def read_bot_knowledge(bot_dir: Path) -> BotKnowledge:
    """The bot's name and `knowledge:` settings (defaults where absent): from the loaded bot
    definition, else from the raw `bot.yml` of a folder that does not load as a whole."""
    try:
        definition = load_bot(bot_dir)
    except BotDefinitionError:
        return _read_raw(bot_dir)
    settings = definition.knowledge or KnowledgeSettings()
    return BotKnowledge(bot=definition.name, answer_threshold=settings.answer_threshold,
                        max_sentences=settings.max_sentences, k=settings.k)


def _read_raw(bot_dir: Path) -> BotKnowledge:
    path = bot_dir / BOT_FILE
    if not path.is_file():
        raise KnowledgeFormatError(f"{bot_dir}: not a bot folder (no {BOT_FILE})")
    try:
        doc = read_yaml(path)
    except (YamlSyntaxError, OSError, UnicodeDecodeError) as exc:
        raise KnowledgeFormatError(f"{path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise KnowledgeFormatError(f"{path}: no bot name (name: ...)")
    section = doc.get("knowledge") or {}
    if not isinstance(section, dict):
        raise KnowledgeFormatError(f"{path}: knowledge must be a mapping")
    defaults = BotKnowledge(bot=str(doc["name"]))
    return BotKnowledge(
        bot=defaults.bot,
        answer_threshold=_number(section, "answer_threshold", defaults.answer_threshold, path),
        max_sentences=int(_number(section, "max_sentences", defaults.max_sentences, path)),
        k=int(_number(section, "k", defaults.k, path)), source="bot.yml")


def _number(section: dict[str, Any], key: str, default: float, path: Path) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KnowledgeFormatError(f"{path}: knowledge.{key} must be a number, got {value!r}")
    return float(value)
