"""JSON Schema (draft 2020-12) of the bot folder's YAML files, and schema checking.

`BOT_FILE_SCHEMA` is for `bot.yml`, `DATA_FILE_SCHEMA` for each file under `data/` and
`domain/`. In a file, the conversation sections (`slots`, `responses`, `flows`) are only
checked to be a mapping or a list; once merged over all files, each entry is checked against
`CONVERSATION_SCHEMA` (`$defs`: `slot`, `response`, `flow`, ...) by `services.botdef.builder`.
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
IDENTIFIER_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"
FLOW_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_-]*$"
LANGUAGE_PATTERN = "^[a-z]{2,3}([-_][A-Za-z0-9]+)*$"

_PATTERN_NAMES = {
    BOT_NAME_PATTERN: "bot name (lower-case letters, digits, '_', '-')",
    INTENT_NAME_PATTERN: "intent name (letters, digits, '_', '.', '#', '-')",
    ENTITY_NAME_PATTERN: "entity name (a letter or '_', then letters, digits, '_', '.', '-')",
    LANGUAGE_PATTERN: "language code (e.g. en, de, pt-BR)",
    IDENTIFIER_PATTERN: "name (a letter or '_', then letters, digits, '_')",
    FLOW_NAME_PATTERN: "flow name (a letter or '_', then letters, digits, '_', '-')",
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
            # the language of the examples (default: the file's `language`, else the bot's
            # default language)
            "language": {"type": "string", "pattern": LANGUAGE_PATTERN},
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
    # docs/bot-definition.md, "Knowledge base": answering from the bot's knowledge/ folder.
    "knowledge": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "answer_threshold": {"type": "number", "minimum": 0, "maximum": 1},
            "faq_intent": {"type": ["string", "null"], "pattern": INTENT_NAME_PATTERN},
            "on_out_of_scope": {"type": "boolean"},
            "max_sentences": {"type": "integer", "minimum": 1, "maximum": 10},
            "k": {"type": "integer", "minimum": 1, "maximum": 50},
            "answer_intents": {"type": "array", "uniqueItems": True,
                               "items": {"type": "string", "pattern": INTENT_NAME_PATTERN}},
            "intent_margin": {"type": "number", "minimum": -1, "maximum": 1},
            "score_calibration": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "required": ["slope", "intercept"],
                "properties": {"slope": {"type": "number", "exclusiveMinimum": 0},
                               "intercept": {"type": "number"}},
            },
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

TIMEZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$"

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
        # a multilingual bot: its languages (the first is the default unless
        # `default_language` names another); `language` then must not be given
        "languages": {"type": "array", "minItems": 1, "uniqueItems": True,
                      "items": {"type": "string", "pattern": LANGUAGE_PATTERN}},
        "default_language": {"type": "string", "pattern": LANGUAGE_PATTERN},
        # date and datetime slots read relative dates in it (IANA name; default UTC)
        "timezone": {"type": "string", "pattern": TIMEZONE_PATTERN},
        "nlu": {"$ref": "#/$defs/nlu"},
        "knowledge": {"$ref": "#/$defs/knowledge"},
        # docs/security.md: PII is redacted from events and transcripts unless turned off.
        "privacy": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"redact_pii": {"type": "boolean"}},
        },
        **_SECTIONS,
    },
    "$defs": _DEFS,
}

DATA_FILE_SCHEMA: dict[str, Any] = {
    "$schema": DRAFT,
    "title": "botfactory data file",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "version": {"const": "1"},
        # the language of the file's intents' examples (default: the bot's default language)
        "language": {"type": "string", "pattern": LANGUAGE_PATTERN},
        **_SECTIONS,
    },
    "$defs": _DEFS,
}

SECTION_KEYS = ("slots", "responses", "flows")
"""The conversation sections: merged over all files, then checked entry by entry."""

SLOT_TYPES = ("text", "number", "boolean", "categorical", "entity", "date", "datetime")
DATE_TYPES = ("date", "datetime")
"""Slot types whose values are ISO dates / timestamps read in the bot's `timezone`."""
SLOT_TYPE_ALIASES = ("float", "int", "integer", "bool", "string", "str")

_NUMBER = {"type": "number"}
_IDENT = {"type": "string", "pattern": IDENTIFIER_PATTERN}
_FLOW_NAME = {"type": "string", "pattern": FLOW_NAME_PATTERN}
_TEXT = {"type": "string", "minLength": 1}
_INTENTS = {
    "type": ["string", "array"],
    "pattern": INTENT_NAME_PATTERN,
    "minItems": 1,
    "items": {"type": "string", "pattern": INTENT_NAME_PATTERN},
}
_MESSAGE = {"$ref": "#/$defs/message"}
_VALIDATION_PROPERTIES: dict[str, Any] = {
    "regex": _TEXT,
    "choices": {"type": "array", "minItems": 1, "items": {"type": ["string", "number"]}},
    "min": _NUMBER,
    "max": _NUMBER,
    "gt": _NUMBER,
    "lt": _NUMBER,
}

_MESSAGE_KEYWORDS: dict[str, Any] = {
    "minLength": 1,
    "additionalProperties": False,
    "properties": {
        "text": _TEXT,
        "buttons": {"type": "array", "items": {"$ref": "#/$defs/button"}},
    },
    # a multilingual bot: one message per language, `{en: ..., zh: ...}` (each a string or
    # `{text, buttons}`); `text` is then checked by the builder (it is required otherwise)
    "patternProperties": {LANGUAGE_PATTERN: {"$ref": "#/$defs/message_in_language"}},
}
_IN_LANGUAGES = {"type": ["string", "object"], "minLength": 1,
                 "additionalProperties": False,
                 "patternProperties": {LANGUAGE_PATTERN: _TEXT}}
"""A flow's `title` or a slot's `label`: a string, or one per language `{en: ..., zh: ...}`."""

# JSON Schema keywords apply by instance type ("properties" to mappings, "items" to lists),
# so one schema with several types accepts each short form without `oneOf` (whose errors
# are unreadable).
_CONVERSATION_DEFS: dict[str, Any] = {
    "button": {
        "type": "object",
        "required": ["title", "payload"],
        "additionalProperties": False,
        "properties": {"title": _TEXT, "payload": _TEXT},
    },
    "message": {"type": ["string", "object"], **_MESSAGE_KEYWORDS},
    "message_in_language": {
        "type": ["string", "object"],
        "minLength": 1,
        "required": ["text"],
        "additionalProperties": False,
        "properties": _MESSAGE_KEYWORDS["properties"],
    },
    "response_in_language": {
        "type": ["string", "object", "array"],
        "minLength": 1,
        "minItems": 1,
        "items": {"$ref": "#/$defs/message_in_language"},
        "additionalProperties": False,
        "properties": {
            "text": _TEXT,
            "buttons": {"type": "array", "items": {"$ref": "#/$defs/button"}},
            "variations": {"type": "array", "minItems": 1,
                           "items": {"$ref": "#/$defs/message_in_language"}},
        },
    },
    "response": {
        "type": ["string", "object", "array"],
        "minLength": 1,
        "minItems": 1,
        "items": _MESSAGE,
        "additionalProperties": False,
        "properties": {
            "name": _IDENT,
            "text": _TEXT,
            "buttons": {"type": "array", "items": {"$ref": "#/$defs/button"}},
            "variations": {"type": "array", "minItems": 1, "items": _MESSAGE},
        },
        # a multilingual bot: one response per language, `{en: ..., zh: ...}`
        "patternProperties": {LANGUAGE_PATTERN: {"$ref": "#/$defs/response_in_language"}},
    },
    "slot": {
        "type": ["string", "object"],
        "if": {"type": "string"},
        "then": {"enum": [*SLOT_TYPES, *SLOT_TYPE_ALIASES]},
        "additionalProperties": False,
        "properties": {
            "name": _IDENT,
            "type": {"enum": [*SLOT_TYPES, *SLOT_TYPE_ALIASES]},
            "description": {"type": "string"},
            "label": _IN_LANGUAGES,
            "entity": {"type": "string", "pattern": ENTITY_NAME_PATTERN},
            "initial": {"type": ["string", "number", "boolean", "null"]},
            "ask": _MESSAGE,
            "invalid": _MESSAGE,
            "from_text": {"type": "boolean"},
            "keep": {"type": "boolean"},
            "lookup_only": {"type": "boolean"},
            "fuzzy": {"type": "number", "minimum": 0, "maximum": 1},
            "currencies": {"type": "array", "minItems": 1, "uniqueItems": True,
                           "items": {"type": "string", "pattern": "^[A-Za-z]{3}$"}},
            **_VALIDATION_PROPERTIES,
        },
    },
    "flow": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": _FLOW_NAME,
            "id": _FLOW_NAME,
            "title": _IN_LANGUAGES,
            "description": {"type": "string"},
            "trigger": _INTENTS,
            "steps": {"$ref": "#/$defs/steps"},
        },
    },
    "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}},
    "step": {
        "type": ["string", "object"],
        "minLength": 1,
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
        "properties": {
            "say": _MESSAGE,
            "collect": {"$ref": "#/$defs/collect"},
            "set": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"pattern": IDENTIFIER_PATTERN},
                "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
            },
            "branch": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/case"}},
            "call": _FLOW_NAME,
            "workflow": {"$ref": "#/$defs/workflow"},
            "search": {"$ref": "#/$defs/search"},
            "handoff": {"type": ["null", "boolean", "string", "object"], **_MESSAGE_KEYWORDS},
            "end": {"type": ["null", "boolean"]},
        },
    },
    "collect": {
        "type": ["string", "object"],
        "pattern": IDENTIFIER_PATTERN,
        "required": ["slot"],
        "additionalProperties": False,
        "properties": {
            "slot": _IDENT,
            "ask": _MESSAGE,
            "invalid": _MESSAGE,
            "fallback": _MESSAGE,
            "max_attempts": {"type": "integer", "minimum": 1, "maximum": 10},
            "validation": {
                "type": "object",
                "additionalProperties": False,
                "properties": _VALIDATION_PROPERTIES,
            },
        },
    },
    "search": {
        "type": ["null", "string", "object"],
        "minLength": 1,
        "additionalProperties": False,
        "properties": {"query": _TEXT, "not_found": _MESSAGE, "save": _IDENT},
    },
    "case": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {
            "if": {"anyOf": [{"type": "string", "minLength": 1},  # an expression over slots
                             {"$ref": "#/$defs/condition"}]},
            "then": {"$ref": "#/$defs/steps"},
            "else": {"$ref": "#/$defs/steps"},
        },
    },
    "condition": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {
            "slot": _IDENT,
            "equals": {"type": ["string", "number", "boolean", "null"]},
            "not_equals": {"type": ["string", "number", "boolean", "null"]},
            "in": {"type": "array", "items": {"type": ["string", "number", "boolean"]}},
            "gt": _NUMBER,
            "lt": _NUMBER,
            "gte": _NUMBER,
            "lte": _NUMBER,
            "present": {"type": "boolean"},
            "all": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/condition"}},
            "any": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/condition"}},
            "not": {"$ref": "#/$defs/condition"},
        },
    },
    "workflow": {
        "type": ["string", "object"],
        "minLength": 1,
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": _TEXT,
            "inputs": {
                "type": ["array", "object"],
                "items": _IDENT,
                "additionalProperties": {
                    "type": ["string", "object"],
                    "pattern": IDENTIFIER_PATTERN,
                    "required": ["value"],
                    "additionalProperties": False,
                    "properties": {"value": {}},
                },
            },
            "save": {"type": "object", "additionalProperties": _IDENT},
            "started": _MESSAGE,
            "on_success": _MESSAGE,
            "on_failure": _MESSAGE,
        },
    },
}

CONVERSATION_SCHEMA: dict[str, Any] = {
    "$schema": DRAFT,
    "title": "botfactory conversation sections (merged over all files, mapping form)",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "slots": {"type": "object", "additionalProperties": {"$ref": "#/$defs/slot"}},
        "responses": {"type": "object", "additionalProperties": {"$ref": "#/$defs/response"}},
        "flows": {"type": "object", "additionalProperties": {"$ref": "#/$defs/flow"}},
    },
    "$defs": _CONVERSATION_DEFS,
}

ENTRY_SCHEMAS: dict[str, dict[str, Any]] = {
    section: {"$schema": DRAFT, "$ref": f"#/$defs/{kind}", "$defs": _CONVERSATION_DEFS}
    for section, kind in (("slots", "slot"), ("responses", "response"), ("flows", "flow"))
}
"""The schema of one entry of each conversation section."""


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
        found = _issues_of(error, doc, file, ())
        issues.extend(found)
        bad.update(_bad_paths(error))
    return sorted(issues, key=lambda issue: (issue.line, issue.field)), bad


def entry_issues(
    value: Any, doc: Any, file: str, prefix: tuple[PathPart, ...], schema: dict[str, Any]
) -> list[DefinitionIssue]:
    """The schema issues of `value`, found at `prefix` inside the file's document `doc`."""
    validator = Draft202012Validator(schema)
    issues = [
        issue
        for error in validator.iter_errors(value)
        for issue in _issues_of(error, doc, file, prefix)
    ]
    return sorted(set(issues), key=lambda issue: (issue.line, issue.field, issue.message))


def _bad_paths(error: ValidationError) -> list[tuple[PathPart, ...]]:
    path: tuple[PathPart, ...] = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        extra = [key for key in error.instance if key not in schema.get("properties", {})]
        return [(*path, key)[:2] for key in extra]
    return [path[:2]]


def _issues_of(
    error: ValidationError, doc: Any, file: str, prefix: tuple[PathPart, ...]
) -> list[DefinitionIssue]:
    path: list[PathPart] = [*prefix, *error.absolute_path]
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
    if error.validator == "maxProperties":
        instance: dict[str, Any] = error.instance if isinstance(error.instance, dict) else {}
        keys = ", ".join(str(key) for key in instance)
        return f"has several keys ({keys}); only {error.validator_value} allowed here"
    if error.validator == "minProperties":
        return f"needs at least {error.validator_value} key(s)"
    return error.message


def _type_names(value: Any) -> str:
    names = [value] if isinstance(value, str) else list(value)
    words = {
        "object": "a mapping",
        "array": "a list",
        "string": "a string",
        "integer": "an integer",
        "null": "null",
    }
    return " or ".join(words.get(name, f"a {name}") for name in names)
