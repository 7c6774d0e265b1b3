"""What the knowledge-base commands read from a bot folder's `bot.yml`: the bot name and the
`knowledge:` answering settings (answer_threshold, max_sentences, k)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.botdef.yamlio import YamlSyntaxError, read_yaml
from services.knowledge.errors import KnowledgeFormatError

BOT_FILE = "bot.yml"


@dataclass(frozen=True)
class BotKnowledge:
    bot: str
    answer_threshold: float = 0.5
    max_sentences: int = 2
    k: int = 5


def read_bot_knowledge(bot_dir: Path) -> BotKnowledge:
    """The bot's name and `knowledge:` settings from `bot.yml` (defaults where absent)."""
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
        k=int(_number(section, "k", defaults.k, path)))


def _number(section: dict[str, Any], key: str, default: float, path: Path) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KnowledgeFormatError(f"{path}: knowledge.{key} must be a number, got {value!r}")
    return float(value)
