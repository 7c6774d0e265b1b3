"""Write examples and entities as a bot folder that `load_bot` reads back."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.botdef.annotation import ENTITY_NAME_RE, format_annotated
from services.botdef.loader import BOT_FILE, DATA_DIR, MIN_EXAMPLES
from services.botdef.model import EntityDef, Example, NluSettings
from services.botdef.schema import BOT_NAME_PATTERN, INTENT_NAME_PATTERN
from services.botdef.yamlio import dump_yaml
from services.common.regexsafety import pattern_issue

INTENTS_FILE = "intents.yml"
ENTITIES_FILE = "entities.yml"
_TRAINING_OVERRIDES = ("epochs", "learning_rate", "batch_size", "seed")


def write_bot(
    directory: Path,
    name: str,
    examples: Sequence[Example],
    *,
    description: str = "",
    entities: Sequence[EntityDef] = (),
    nlu: NluSettings | None = None,
) -> Path:
    """Write `bot.yml`, `data/intents.yml` and `data/entities.yml` into `directory`.

    Intents keep the order of their first example. Entities used in the examples but not
    given in `entities` are declared plainly. Overwrites those three files (other files of
    the folder are left alone). Returns `directory`. Raises ValueError, before writing
    anything, on a bad bot or intent name, an intent with fewer than two examples, an
    example that cannot be written, or an entity given twice.
    """
    _check_name(name)
    intents = _intents_document(examples)
    entity_list = _entities_document(examples, entities)
    bot = _bot_document(name, description, nlu or NluSettings())
    directory = Path(directory)
    (directory / DATA_DIR).mkdir(parents=True, exist_ok=True)
    (directory / BOT_FILE).write_text(dump_yaml(bot), encoding="utf-8")
    (directory / DATA_DIR / INTENTS_FILE).write_text(dump_yaml(intents), encoding="utf-8")
    (directory / DATA_DIR / ENTITIES_FILE).write_text(dump_yaml(entity_list), encoding="utf-8")
    return directory


def _check_name(name: str) -> None:
    if not re.fullmatch(BOT_NAME_PATTERN, name):
        raise ValueError(f"bot name {name!r} must be lower-case letters, digits, '_' or '-'")


def _bot_document(name: str, description: str, nlu: NluSettings) -> dict[str, Any]:
    settings: dict[str, Any] = {"base_model": nlu.base_model}
    if nlu.confidence_threshold is not None:
        settings["confidence_threshold"] = nlu.confidence_threshold
    settings["out_of_scope_intent"] = nlu.out_of_scope_intent
    settings["max_length"] = nlu.max_length
    for key in _TRAINING_OVERRIDES:
        if getattr(nlu, key) is not None:
            settings[key] = getattr(nlu, key)
    return {
        "version": "1",
        "name": name,
        "description": description,
        "language": nlu.language,
        "nlu": settings,
    }


def _intents_document(examples: Sequence[Example]) -> dict[str, Any]:
    grouped: dict[str, list[str]] = {}
    for example in examples:
        if not re.fullmatch(INTENT_NAME_PATTERN, example.intent):
            raise ValueError(f"invalid intent name {example.intent!r} (example {example.text!r})")
        if not example.text.strip():
            raise ValueError(f"empty example text (intent {example.intent!r})")
        grouped.setdefault(example.intent, []).append(format_annotated(example))
    few = [f"{name} ({len(texts)})" for name, texts in grouped.items() if len(texts) < MIN_EXAMPLES]
    if few:
        raise ValueError(
            f"intents need at least {MIN_EXAMPLES} examples; too few: {', '.join(few)}"
        )
    if not grouped:
        raise ValueError("no examples to write")
    return {
        "version": "1",
        "intents": [{"name": name, "examples": texts} for name, texts in grouped.items()],
    }


def _entities_document(
    examples: Sequence[Example], entities: Sequence[EntityDef]
) -> dict[str, Any]:
    given: dict[str, EntityDef] = {}
    for entity in entities:
        if entity.name in given:
            raise ValueError(f"entity {entity.name!r} is given twice")
        _check_entity(entity)
        given[entity.name] = entity
    for example in examples:
        for span in example.entities:
            given.setdefault(span.entity, EntityDef(span.entity, {}, (), ()))
    return {"version": "1", "entities": [_entity_entry(e) for e in given.values()]}


def _check_entity(entity: EntityDef) -> None:
    if not ENTITY_NAME_RE.fullmatch(entity.name):
        raise ValueError(f"invalid entity name {entity.name!r}")
    for pattern in entity.regex:
        issue = pattern_issue(pattern)  # as the loader will check it
        if issue is not None:
            raise ValueError(f"entity {entity.name!r}: {issue}")
    seen: dict[str, str] = {}
    for canonical, variants in entity.synonyms.items():
        for variant in [canonical, *variants]:
            other = seen.setdefault(variant.lower(), canonical)
            if other != canonical:
                raise ValueError(
                    f"entity {entity.name!r}: {variant!r} is a synonym of both "
                    f"{other!r} and {canonical!r}"
                )


def _entity_entry(entity: EntityDef) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": entity.name}
    if entity.synonyms:
        entry["synonyms"] = {k: list(v) for k, v in entity.synonyms.items()}
    if entity.regex:
        entry["regex"] = list(entity.regex)
    if entity.lookup:
        entry["lookup"] = list(entity.lookup)
    return entry
