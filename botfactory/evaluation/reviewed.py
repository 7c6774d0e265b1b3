"""Write reviewed items (decided in the review queue) into a bot folder's data files.

Accepted items go to ONE file, `data/nlu/reviewed.yml`, in the ordinary NLU data format with
inline entity annotations, so the rest of the bot's data stays as its authors wrote it. An
item is written only when its intent and entities exist in the bot (an out-of-scope decision
becomes an example of the bot's `nlu.out_of_scope_intent`, which must then exist) and its
normalised text is not already an example anywhere in the bot (a duplicate is reported, and
one with another intent is reported as a conflict). The folder is loaded again after writing;
if it no longer loads, the file is put back as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.botdef import (
    BotDefinition,
    BotDefinitionError,
    EntitySpan,
    Example,
    format_annotated,
    load_bot,
)
from services.botdef.yamlio import dump_yaml, read_yaml, to_plain
from services.common.reviewqueue import normalize_text

REVIEWED_FILE = Path("data") / "nlu" / "reviewed.yml"
HEADER = ("# Examples accepted in the review queue (`botfactory review`); PII is redacted.\n"
          "# Edit freely: `botfactory review` only appends.\n")


class ApplyError(Exception):
    """The bot folder cannot take the reviewed examples (the message says why)."""


@dataclass
class Outcome:
    written: list[str] = field(default_factory=list)
    """Ids of the items written."""
    duplicates: list[str] = field(default_factory=list)
    """Ids of items whose text is already an example with the same intent."""
    rejected: dict[str, str] = field(default_factory=dict)
    """Id → why the item was not written (unknown intent or entity, conflicting label...)."""

    @property
    def done(self) -> list[str]:
        """Items settled (written or already present): to be marked applied."""
        return [*self.written, *self.duplicates]


def example_of(item: Mapping[str, Any], bot: BotDefinition) -> Example:
    """The example a decided item stands for; ValueError when the bot cannot take it."""
    decision = item.get("decision") or {}
    if decision.get("out_of_scope"):
        intent = bot.nlu.out_of_scope_intent
        if intent not in bot.intent_names():
            raise ValueError(f"out of scope, but the bot has no intent {intent!r} "
                             "(nlu.out_of_scope_intent) with examples")
    else:
        intent = str(decision.get("intent") or "")
        if intent not in bot.intent_names():
            raise ValueError(f"unknown intent {intent!r}")
    spans = []
    for span in decision.get("entities") or ():
        if span["entity"] not in bot.entities:
            raise ValueError(f"unknown entity {span['entity']!r}")
        spans.append(EntitySpan(int(span["start"]), int(span["end"]), str(span["entity"]),
                                span.get("value")))
    example = Example(text=str(item["text"]), intent=intent,
                      entities=tuple(sorted(spans, key=lambda s: s.start)))
    format_annotated(example)  # raises ValueError on a bad span
    return example


def existing_labels(bot: BotDefinition) -> dict[str, str]:
    """Normalised text → intent of every example of the bot."""
    return {normalize_text(e.text): e.intent for e in bot.examples()}


def plan(items: Iterable[Mapping[str, Any]], bot: BotDefinition) -> tuple[list[Example], Outcome]:
    """Which items to write (deduplicated against the bot and each other)."""
    known = existing_labels(bot)
    outcome = Outcome()
    examples: list[Example] = []
    for item in items:
        identifier = str(item["id"])
        try:
            example = example_of(item, bot)
        except (ValueError, KeyError, TypeError) as exc:
            outcome.rejected[identifier] = str(exc)
            continue
        normal = normalize_text(example.text)
        if normal in known:
            if known[normal] == example.intent:
                outcome.duplicates.append(identifier)
            else:
                outcome.rejected[identifier] = (f"conflict: already an example of "
                                                f"{known[normal]!r}, reviewed as "
                                                f"{example.intent!r}")
            continue
        known[normal] = example.intent
        examples.append(example)
        outcome.written.append(identifier)
    return examples, outcome


def apply_items(bot_dir: Path, items: Iterable[Mapping[str, Any]]) -> Outcome:
    """Append the decided items to `bot_dir/data/nlu/reviewed.yml`; ApplyError when the bot
    folder does not load (before or after)."""
    try:
        bot = load_bot(bot_dir)
    except BotDefinitionError as exc:
        raise ApplyError(f"invalid bot definition in {bot_dir}:\n{exc}") from None
    examples, outcome = plan(items, bot)
    if examples:
        _append(bot_dir, examples)
    return outcome


def _append(bot_dir: Path, examples: list[Example]) -> None:
    path = bot_dir / REVIEWED_FILE
    before = path.read_text(encoding="utf-8") if path.is_file() else None
    document = _merged(to_plain(read_yaml(path)) if before else None, examples)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + dump_yaml(document), encoding="utf-8")
    try:
        load_bot(bot_dir)
    except BotDefinitionError as exc:
        if before is None:
            path.unlink()
        else:
            path.write_text(before, encoding="utf-8")
        raise ApplyError(f"the reviewed examples would make the bot invalid; "
                         f"{path} left as it was:\n{exc}") from None


def _merged(document: Any, examples: list[Example]) -> dict[str, Any]:
    intents: list[dict[str, Any]] = []
    if isinstance(document, dict) and isinstance(document.get("intents"), list):
        intents = [dict(i) for i in document["intents"] if isinstance(i, dict)]
    by_name = {str(i.get("name")): i for i in intents}
    for example in examples:
        entry = by_name.get(example.intent)
        if entry is None:
            entry = by_name[example.intent] = {"name": example.intent, "examples": []}
            intents.append(entry)
        entry["examples"] = [*entry.get("examples", []), format_annotated(example)]
    return {"version": "1", "intents": intents}
