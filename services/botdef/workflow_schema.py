"""JSON Schema (draft 2020-12) of a workflow file (`workflows/*.yml`) and of `rpa.yml`
(docs/workflows.md). `services.botdef.workflows` checks documents against them."""

from __future__ import annotations

from typing import Any

COMPENSATION_KINDS = ("http", "browser", "notify", "set")
INPUT_TYPES = ("string", "number", "integer", "boolean", "object", "list", "any")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
IDENT = "^[A-Za-z_][A-Za-z0-9_]*$"

_DURATION_SCHEMA = {"type": ["string", "number"]}
_TEXT = {"type": "string", "minLength": 1}
_NAMES = {"type": "array", "items": _TEXT}
_RETRY = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
        "initial_interval": _DURATION_SCHEMA,
        "backoff_coefficient": {"type": "number", "minimum": 1, "maximum": 10},
        "max_interval": _DURATION_SCHEMA,
        "non_retryable_statuses": {"type": "array",
                                   "items": {"type": "integer", "minimum": 100, "maximum": 599}},
    },
}
_HTTP = {
    "type": "object", "required": ["url"], "additionalProperties": False,
    "properties": {
        "method": {"enum": [*HTTP_METHODS, *(m.lower() for m in HTTP_METHODS)]},
        "url": _TEXT,
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "query": {"type": "object",
                  "additionalProperties": {"type": ["string", "number", "boolean"]}},
        "json": {},
        "body": {"type": "string"},
        "expect": {"type": "array", "minItems": 1,
                   "items": {"type": "integer", "minimum": 100, "maximum": 599}},
        "outputs": {"type": "object", "propertyNames": {"pattern": IDENT},
                    "additionalProperties": _TEXT},
    },
}
_SELECTOR_VALUE = {"type": "object", "required": ["selector", "value"],
                   "additionalProperties": False,
                   "properties": {"selector": _TEXT, "value": {"type": ["string", "number"]}}}
_ACTION = {
    "type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
    "properties": {
        "goto": _TEXT,
        "fill": _SELECTOR_VALUE,
        "select": _SELECTOR_VALUE,
        "click": _TEXT,
        "wait_for": {"oneOf": [_TEXT, {
            "type": "object", "required": ["selector"], "additionalProperties": False,
            "properties": {"selector": _TEXT,
                           "state": {"enum": ["attached", "detached", "visible", "hidden"]}}}]},
        "extract_text": {"type": "object", "required": ["selector", "output"],
                         "additionalProperties": False,
                         "properties": {"selector": _TEXT,
                                        "output": {"type": "string", "pattern": IDENT}}},
    },
}
_BROWSER = {"type": "object", "required": ["actions"], "additionalProperties": False,
            "properties": {"actions": {"type": "array", "minItems": 1, "items": _ACTION}}}
_EXPRESSIONS = {"type": "object", "minProperties": 1, "propertyNames": {"pattern": IDENT}}
_BRANCH = {"type": "array", "minItems": 1, "items": {"oneOf": [
    {"type": "object", "required": ["if", "goto"], "additionalProperties": False,
     "properties": {"if": {"type": ["string", "boolean"]}, "goto": _TEXT}},
    {"type": "object", "required": ["else"], "additionalProperties": False,
     "properties": {"else": _TEXT}},
]}}
_ESCALATION = {"type": "object", "required": ["timeout"], "additionalProperties": False,
               "properties": {"approvers": _NAMES, "timeout": _DURATION_SCHEMA,
                              "message": {"type": "string"}}}
_APPROVAL = {
    "type": "object", "required": ["timeout"], "additionalProperties": False,
    "properties": {
        "message": {"type": "string"}, "approvers": _NAMES, "timeout": _DURATION_SCHEMA,
        "notify": {"type": "string"}, "escalation": {"type": "array", "items": _ESCALATION},
        "on_timeout": {"enum": ["reject", "approve"]},
    },
}
_SUBWORKFLOW = {"type": "object", "required": ["name"], "additionalProperties": False,
                "properties": {"name": _TEXT, "inputs": {"type": "object"}}}
_KIND_SCHEMAS: dict[str, Any] = {
    "http": _HTTP,
    "set": _EXPRESSIONS,
    "transform": _EXPRESSIONS,
    "branch": _BRANCH,
    "wait": {"oneOf": [_DURATION_SCHEMA, {"type": "object", "required": ["duration"],
                                          "additionalProperties": False,
                                          "properties": {"duration": _DURATION_SCHEMA}}]},
    "subworkflow": _SUBWORKFLOW,
    "approval": _APPROVAL,
    "notify": {"oneOf": [_TEXT, {"type": "object", "required": ["text"],
                                 "additionalProperties": False, "properties": {"text": _TEXT}}]},
    "browser": _BROWSER,
    "fail": _TEXT,
}
_COMMON = {"timeout": _DURATION_SCHEMA, "retry": _RETRY, "description": {"type": "string"}}
_COMPENSATION = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {**{k: _KIND_SCHEMAS[k] for k in COMPENSATION_KINDS}, **_COMMON},
}
_STEP = {
    "type": "object", "required": ["id"], "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": IDENT},
        **_KIND_SCHEMAS, **_COMMON,
        "when": {"type": ["string", "boolean"]},
        "non_idempotent": {"type": "boolean"},
        "compensate": _COMPENSATION,
    },
}
_INPUT = {"type": "object", "additionalProperties": False,
          "properties": {"type": {"enum": list(INPUT_TYPES)}, "required": {"type": "boolean"},
                         "default": {}, "description": {"type": "string"}}}

WORKFLOW_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "botfactory workflow",
    "type": "object",
    "required": ["name", "steps"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": "1"},
        "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_-]*$"},
        "description": {"type": "string"},
        "inputs": {"type": "object", "propertyNames": {"pattern": IDENT},
                   "additionalProperties": {"oneOf": [{"enum": list(INPUT_TYPES)}, _INPUT]}},
        "outputs": {"type": "object", "propertyNames": {"pattern": IDENT}},
        "max_steps": {"type": "integer", "minimum": 1, "maximum": 10000},
        "steps": {"type": "array", "minItems": 1, "items": _STEP},
    },
}

RPA_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "botfactory rpa.yml",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "version": {"const": "1"},
        "allowed_hosts": {"type": "array", "items": _TEXT},
        "settings": {"type": "object", "propertyNames": {"pattern": IDENT},
                     "additionalProperties": {"type": ["string", "number", "boolean"]}},
    },
}
