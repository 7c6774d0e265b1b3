"""The request side of the OpenAPI document, exact enough for a fuzzer: a request the document
allows is accepted (or refused only for a reason a schema cannot state: an unknown resource,
a conflict, a bot definition that does not load) and a request it does not allow gets a 4xx.

The bodies shared with the gRPC API are defined once in `bodies.py` (their schema, HTTP and
gRPC validation come from that definition, with the limits of the app's config); the schemas
of the HTTP-only bodies restate their handlers' checks (`wire.Fields`, the id patterns of each
module):
text fields refuse control characters (other than tab and line breaks) and lone surrogates
and, unless they may be empty, blank text; `null` for an optional field is the same as
leaving it out; path parameters carry an example each (a bot of the demo, ...), so that a
fuzzer's requests reach the handlers instead of stopping at 404.
"""

from __future__ import annotations

import copy
from typing import Any

from services.botdef.annotation import ENTITY_NAME_RE
from services.gateway.config import GatewayConfig
from services.gateway.http.admin import (
    MAX_DEFINITION_FILES,
    MAX_WEBHOOK_SECRET_CHARS,
    MAX_WEBHOOK_URL_CHARS,
    MIN_WEBHOOK_SECRET_CHARS,
    WEBHOOK_URL,
)
from services.gateway.http.bodies import (
    BODIES,
    MAX_CHANNEL_SETTING_CHARS,
    VERSION,
    matching,
    object_schema,
    text_schema,
)
from services.gateway.http.bot_versions import REQUEST_SCHEMAS as VERSION_REQUESTS
from services.gateway.http.review import INTENT, ITEM_ID, MAX_APPLIED, MAX_ENTITIES
from services.gateway.http.trainings import REQUEST_PROPERTIES as TRAINING_PROPERTIES

# A bot folder's file: up to 8 names, none hidden, a YAML file (admin.check_definition_path).
_NAME = r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}"
_YAML = r"[A-Za-z0-9_-](?:[A-Za-z0-9_.-]{0,95}\.yml|[A-Za-z0-9_.-]{0,94}\.yaml)"
DEFINITION_FILE = rf"^(?:{_NAME}/){{0,7}}{_YAML}$"


def _described(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {**schema, "description": description}


_SPAN = {"type": "object", "required": ["entity", "start", "end"], "additionalProperties": False,
         "properties": {"entity": matching(f"^{ENTITY_NAME_RE.pattern}$"),
                        "start": {"type": "integer", "minimum": 0},
                        "end": {"type": "integer", "minimum": 1},
                        "value": {"type": "string", "maxLength": 200}},
         "description": "A span of the item's text: 0 <= start < end <= its length, not "
                        "blank, spans not overlapping"}
_SHARE = {"type": "number", "minimum": 0, "maximum": 1}
_ROLLOUT_LIMITS = {
    "candidate": matching(VERSION.pattern), "mode": {"enum": ["shadow", "canary"]},
    "share": {**_SHARE, "description": "Canary: share of conversations on the candidate "
                                       "(above 0)"},
    "max_fallback_increase": {**_SHARE, "default": 0.05},
    "max_negative_feedback_increase": {**_SHARE, "default": 0.05},
    "min_samples": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000, "default": 50},
}


_FILES = {
    "type": "object", "required": ["bot.yml"], "maxProperties": MAX_DEFINITION_FILES,
    "propertyNames": matching(DEFINITION_FILE), "additionalProperties": {"type": "string"},
    "description": "Relative path in the bot folder (bot.yml, data/...) → YAML text; 422 when "
                   "the files are not a valid bot definition"}


def restated_schemas() -> dict[str, Any]:
    """The schemas of the bodies not (yet) defined in `bodies.BODIES`, restating their
    handlers' checks."""
    return {
        "DefinitionRequest": object_schema(["files"], files=_FILES),
        "TrainingRequest": _described(object_schema([], **TRAINING_PROPERTIES, files={
            **_FILES, "description": "The bot folder to train (default: the bot's deployed "
                                     "definition when the training is asked for); "
                                     + str(_FILES["description"])}),
            "May be empty: trains the deployed definition"),
        "ChannelSettingsRequest": {
            "type": "object", "maxProperties": 32,
            "additionalProperties": {"type": "string", "maxLength": MAX_CHANNEL_SETTING_CHARS},
            "description": "The platform's credentials and options (docs/channels.md): e.g. "
                           "Telegram {bot_token, secret_token, api_base?}. Secrets are stored "
                           "encrypted and never shown back."},
        "WebhookRequest": object_schema(
            ["url", "secret"],
            url={**matching(WEBHOOK_URL.pattern, "An http:// or https:// URL with a host name "
                                                 "or IPv4 address, in printable ASCII (an IDN "
                                                 "host in punycode)"),
                 "maxLength": MAX_WEBHOOK_URL_CHARS},
            secret={**text_schema(MAX_WEBHOOK_SECRET_CHARS, min_chars=MIN_WEBHOOK_SECRET_CHARS),
                    "description": "Signs each delivery (HMAC-SHA256); never shown back"}),
        "ReviewDecisionRequest": {
            **_described(object_schema(["item"], item=matching(ITEM_ID.pattern),
                                       intent=matching(INTENT.pattern),
                                       out_of_scope={"type": "boolean"},
                                       entities={"type": "array", "maxItems": MAX_ENTITIES,
                                                 "items": _SPAN}),
                         "Exactly one of `intent` and `out_of_scope: true`."),
            "oneOf": [{"required": ["intent"], "properties": {"intent": {"type": "string"},
                                                              "out_of_scope": {"const": False}}},
                      {"required": ["out_of_scope"],
                       "properties": {"intent": {"type": "null"},
                                      "out_of_scope": {"const": True},
                                      "entities": {"anyOf": [{"type": "null"},
                                                             {"maxItems": 0}]}}}]},
        "ReviewItemRequest": object_schema(["item"], item=matching(ITEM_ID.pattern)),
        "ReviewAppliedRequest": object_schema(["items"], items={
            "type": "array", "minItems": 1, "maxItems": MAX_APPLIED,
            "items": matching(ITEM_ID.pattern)}),
        "RolloutRequest": {
            **object_schema(["candidate", "mode"], **_ROLLOUT_LIMITS),
            "if": {"properties": {"mode": {"const": "canary"}}},
            "then": {"required": ["share"],
                     "properties": {"share": {"type": "number", "exclusiveMinimum": 0}}}},
        **VERSION_REQUESTS,
    }


PATH_EXAMPLES = {"bot": "banking", "conversation": "c1", "message_id": "m1:0",
                 "key_id": "0123456789abcdef", "run_id": "run-0", "name": "chat.js",
                 "channel": "telegram", "training_id": "tr-18f3a2b4c5d-0a1b2c",
                 "version": "v0123456789abcdef", "environment": "staging"}

# A WebSocket route answers 400 to a plain GET: the handshake headers are part of the request.
WEBSOCKET_HEADERS = (
    {"name": "Upgrade", "in": "header", "required": True, "schema": {"const": "websocket"}},
    {"name": "Connection", "in": "header", "required": True, "schema": {"const": "Upgrade"}},
    {"name": "Sec-WebSocket-Version", "in": "header", "required": True,
     "schema": {"const": "13"}},
    {"name": "Sec-WebSocket-Key", "in": "header", "required": True,
     "schema": {"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==$"}},
)


# Optional fields read by hand, where null is refused like any other non-boolean.
NOT_NULLABLE = {"ReviewDecisionRequest": frozenset({"out_of_scope"})}


def nullable_optionals(schema: dict[str, Any],
                       keep: frozenset[str] = frozenset()) -> dict[str, Any]:
    """`schema` where every optional property but `keep` also accepts null (read as
    absent)."""
    out = copy.deepcopy(schema)
    required = set(out.get("required", ()))
    for name, prop in out.get("properties", {}).items():
        if name not in required and name not in keep:
            out["properties"][name] = {"anyOf": [prop, {"type": "null"}]}
    return out


def request_schemas(config: GatewayConfig) -> dict[str, Any]:
    """Every request body's schema, with the limits of `config`."""
    schemas = {**{name: body.schema(config) for name, body in BODIES.items()},
               **restated_schemas()}
    return {name: nullable_optionals(schema, NOT_NULLABLE.get(name, frozenset()))
            for name, schema in schemas.items()}


def body_required(name: str) -> bool:
    """A body whose fields are all optional may be left out (runs.optional_body); one that
    must hold one of several field sets (`oneOf`) may not."""
    schema = request_schemas(GatewayConfig())[name]
    return bool(schema.get("required") or schema.get("oneOf"))
