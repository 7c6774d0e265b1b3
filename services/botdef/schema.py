"""JSON Schema (draft 2020-12) of the bot folder's YAML files, and schema checking.

`BOT_FILE_SCHEMA` is for `bot.yml`, `DATA_FILE_SCHEMA` for each file under `data/`. The
sections used by later work (`slots`, `responses`, `flows`) are loose for now: a mapping or
a list, kept raw.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from services.botdef.model import DefinitionIssue
from services.botdef.yamlio import PathPart, field_path, line_of

DRAFT = "https://json-schema.org/draft/2020-12/schema"
BOT_NAME_PATTERN = "^[a-z0-9_-]+$"
INTENT_NAME_PATTERN = "^[A-Za-z0-9_][A-Za-z0-9_.#-]*$"
ENTITY_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_.-]*$"
LANGUAGE_PATTERN = "^[a-z]{2,3}([-_][A-Za-z0-9]+)*$"

_PATTERN_NAMES = {
    BOT_NAME_PATTERN: "bot name (lower-case letters, digits, '_', '-')",
    INTENT_NAME_PATTERN: "intent name (letters, digits, '_', '.', '#', '-')",
    ENTITY_NAME_PATTERN: "entity name (a letter or '_', then letters, digits, '_', '.', '-')",
    LANGUAGE_PATTERN: "language code (e.g. en, de, pt-BR)",
}

_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}}
_LOOSE = {"type": ["object", "array"]}

_DEFS: dict[str, Any] = {
    "intent": {
        "type": "object",
        "required": ["name", "examples"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": INTENT_NAME_PATTERN},
            "description": {"type": "string"},
            "examples": _STRINGS,
        },
    },
    "entity": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": ENTITY_NAME_PATTERN},
            "description": {"type": "string"},
            "synonyms": {"type": "object", "additionalProperties": _STRINGS},
            "regex": _STRINGS,
            "lookup": _STRINGS,
        },
    },
    "nlu": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "base_model": {"type": ["string", "null"], "minLength": 1},
            "confidence_threshold": {"type": "number", "minimum": 0, "maximum": 1},
            "out_of_scope_intent": {"type": "string", "pattern": INTENT_NAME_PATTERN},
            "max_length": {"type": "integer", "minimum": 8, "maximum": 512},
            "epochs": {"type": "integer", "minimum": 1},
            "learning_rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "batch_size": {"type": "integer", "minimum": 1},
            "seed": {"type": "integer", "minimum": 0},
        },
    },
}

_SECTIONS: dict[str, Any] = {
    "intents": {"type": "array", "items": {"$ref": "#/$defs/intent"}},
    "entities": {"type": "array", "items": {"$ref": "#/$defs/entity"}},
    "slots": _LOOSE,
    "responses": _LOOSE,
    "flows": _LOOSE,
}

BOT_FILE_SCHEMA: dict[str, Any] = {
    "$schema": DRAFT,
    "title": "botfactory bot.yml",
    "type": "object",
    "required": ["version", "name"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": "1"},
        "name": {"type": "string", "pattern": BOT_NAME_PATTERN},
        "description": {"type": "string"},
        "language": {"type": "string", "pattern": LANGUAGE_PATTERN},
        "nlu": {"$ref": "#/$defs/nlu"},
        **_SECTIONS,
    },
    "$defs": _DEFS,
}

DATA_FILE_SCHEMA: dict[str, Any] = {
    "$schema": DRAFT,
    "title": "botfactory data file",
    "type": "object",
    "additionalProperties": False,
    "properties": {"version": {"const": "1"}, **_SECTIONS},
    "$defs": _DEFS,
}

SECTION_KEYS = ("slots", "responses", "flows")
"""Top-level sections kept raw (merged over all files) for the dialogue and later work."""


def schema_issues(doc: Any, file: str, schema: dict[str, Any]) -> list[DefinitionIssue]:
    """Every schema violation of `doc`, each with its file, line and field path."""
    return check_schema(doc, file, schema)[0]


def check_schema(
    doc: Any, file: str, schema: dict[str, Any]
) -> tuple[list[DefinitionIssue], set[tuple[PathPart, ...]]]:
    """The issues of `doc`, and the paths (cut to 2 parts, e.g. `("intents", 3)`) in error.

    An unknown key's path includes the key.
    """
    validator = Draft202012Validator(schema)
    issues: list[DefinitionIssue] = []
    bad: set[tuple[PathPart, ...]] = set()
    for error in validator.iter_errors(doc):
        found = _issues_of(error, doc, file)
        issues.extend(found)
        bad.update(_bad_paths(error))
    return sorted(issues, key=lambda issue: (issue.line, issue.field)), bad


def _bad_paths(error: ValidationError) -> list[tuple[PathPart, ...]]:
    path: tuple[PathPart, ...] = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        extra = [key for key in error.instance if key not in schema.get("properties", {})]
        return [(*path, key)[:2] for key in extra]
    return [path[:2]]


def _issues_of(error: ValidationError, doc: Any, file: str) -> list[DefinitionIssue]:
    path: list[PathPart] = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        allowed = list(schema.get("properties", {}))
        return [
            DefinitionIssue(
                file,
                line_of(doc, [*path, key]),
                field_path([*path, str(key)]),
                f"unknown key {key!r} (allowed: {', '.join(allowed)})",
            )
            for key in error.instance
            if key not in allowed
        ]
    return [DefinitionIssue(file, line_of(doc, path), field_path(path), _message(error))]


def _message(error: ValidationError) -> str:
    if error.validator == "pattern" and error.validator_value in _PATTERN_NAMES:
        return f"{error.instance!r} is not a valid {_PATTERN_NAMES[error.validator_value]}"
    if error.validator == "const":
        return f"must be {error.validator_value!r} (got {error.instance!r})"
    if error.validator == "type" and error.instance is None:
        return f"is empty (expected {_type_names(error.validator_value)})"
    return error.message


def _type_names(value: Any) -> str:
    names = [value] if isinstance(value, str) else list(value)
    words = {"object": "a mapping", "array": "a list", "string": "a string"}
    return " or ".join(words.get(name, f"a {name}") for name in names)
