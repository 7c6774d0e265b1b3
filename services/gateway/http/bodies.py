"""Request bodies and ids defined once, for HTTP and gRPC alike.

Each field has one rule (`Text`, `Identifier`, `Choice`, `StringMap`); a `Body` is a set of
them. From a body come the HTTP validation (`Body.read`: 400 with field-level `errors`), the
gRPC validation (the same `Body.read` on the request's fields: INVALID_ARGUMENT whose detail
is the same `field: message` list) and the OpenAPI schema (`Body.schema`). Limits the gateway
config sets (`BOTFACTORY_GATEWAY_MAX_TEXT_CHARS`, ...) are named by their config attribute
and read from the config the app (or gRPC servicer) is built with.

The ids of paths and gRPC requests (`PATH_IDS`) are checked by `check_path_id`, with the
same message on both APIs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from services.common.botversions import BOT_VERSION_ID, ENV_NAME
from services.gateway.auth import TENANT_RE
from services.gateway.config import GatewayConfig
from services.gateway.http.problems import RequestInvalid
from services.gateway.http.wire import (
    BOT_ID,
    CONVERSATION_ID,
    MAX_METADATA_CHARS,
    MAX_METADATA_ENTRIES,
    MAX_SENDER_CHARS,
    MESSAGE_ID,
    RATED_MESSAGE_ID,
    Fields,
)
from services.gateway.ports import Role

# What `wire.text_problem` refuses: C0 controls but tab, LF and CR; DEL and C1 (a lone
# surrogate, refused too, cannot be sent as UTF-8).
CONTROL = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
KEY_ID = re.compile(r"^[0-9a-f]{1,64}$")
RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # the runner's ids (services/common/subjects.py)
WORKFLOW = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,127}$")
STEP = re.compile(r"^[A-Za-z0-9_#-]{1,128}$")
MAX_NAME_CHARS = 200  # who acts on a run (`by`, `approver`)
VERSION = re.compile(r"^[A-Za-z0-9_.+-]{1,128}$")  # a model version
BOT_SCOPE = re.compile(r"^(\*|[A-Za-z0-9_-]{1,64})$")  # an API key's bots
MAX_DESCRIPTION_CHARS = 200
# Path (and gRPC request) ids: they end up in NATS subjects and KV keys.
MAX_CHANNEL_SETTING_CHARS = 4096  # one channel setting's value (a token, a URL)
CHANNEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # a messaging channel (telegram, ...)
VISITOR_TOKEN = re.compile(r"^bfv_[A-Za-z0-9_.-]{1,1020}$")  # services/gateway/visitor.py
TRAINING_ID = re.compile(r"^tr-[0-9a-f]{1,16}-[0-9a-f]{1,16}$")  # services/common/trainings.py
PATH_IDS: dict[str, re.Pattern[str]] = {
    "bot": BOT_ID, "conversation": CONVERSATION_ID, "message_id": RATED_MESSAGE_ID,
    "key_id": KEY_ID, "run_id": RUN_ID, "channel": CHANNEL_NAME, "training_id": TRAINING_ID,
    "version": BOT_VERSION_ID, "environment": ENV_NAME}  # services/common/botversions.py

Limit = int | str  # a number of characters, or the GatewayConfig attribute that sets it


def limit(value: Limit, config: GatewayConfig) -> int:
    return value if isinstance(value, int) else int(getattr(config, value))


def check_path_id(value: str, name: str) -> str:
    """`value` when it is a valid `name` id (a key of PATH_IDS); else 400 / INVALID_ARGUMENT
    naming the field."""
    pattern = PATH_IDS[name]
    if not pattern.match(value):
        raise RequestInvalid.one(name, f"must match {pattern.pattern}")
    return value


def text_schema(max_chars: int, *, blank: bool = False, min_chars: int = 0) -> dict[str, Any]:
    """A text field as `wire.Fields.text` reads it (`blank`: it may be empty or blank)."""
    pattern = (f"^[^{CONTROL}]*$" if blank
               else rf"^[^{CONTROL}]*[^\s{CONTROL}][^{CONTROL}]*$")
    schema: dict[str, Any] = {"type": "string", "maxLength": max_chars, "pattern": pattern}
    if min_chars:
        schema["minLength"] = min_chars
    return schema


def matching(pattern: str, description: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "pattern": pattern}
    if description:
        schema["description"] = description
    return schema


def object_schema(required: list[str], **properties: Any) -> dict[str, Any]:
    """A request body's object schema (no other fields)."""
    return {"type": "object", "required": required, "properties": properties,
            "additionalProperties": False}


class Rule(Protocol):
    def read(self, fields: Fields, name: str, required: bool, config: GatewayConfig) -> Any: ...

    def schema(self, config: GatewayConfig) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Text:
    max_chars: Limit
    blank: bool = False  # it may be empty or blank
    description: str = ""

    def read(self, fields: Fields, name: str, required: bool, config: GatewayConfig) -> Any:
        return fields.text(name, max_chars=limit(self.max_chars, config), required=required,
                           allow_empty=self.blank)

    def schema(self, config: GatewayConfig) -> dict[str, Any]:
        return _described(text_schema(limit(self.max_chars, config), blank=self.blank),
                          self.description)


@dataclass(frozen=True)
class Identifier:
    pattern: re.Pattern[str]
    description: str = ""

    def read(self, fields: Fields, name: str, required: bool, config: GatewayConfig) -> Any:
        return fields.identifier(name, self.pattern, required=required)

    def schema(self, config: GatewayConfig) -> dict[str, Any]:
        return matching(self.pattern.pattern, self.description or None)


@dataclass(frozen=True)
class Choice:
    """One of `allowed` (JSON types compared too: 1 is not "1" or true); always required."""

    allowed: tuple[Any, ...]

    def read(self, fields: Fields, name: str, required: bool, config: GatewayConfig) -> Any:
        return fields.choice(name, self.allowed)

    def schema(self, config: GatewayConfig) -> dict[str, Any]:
        return {"enum": list(self.allowed)}


@dataclass(frozen=True)
class StringMap:
    max_entries: int = MAX_METADATA_ENTRIES
    max_chars: int = MAX_METADATA_CHARS
    description: str = ""

    def read(self, fields: Fields, name: str, required: bool, config: GatewayConfig) -> Any:
        return fields.string_map(name, max_entries=self.max_entries, max_chars=self.max_chars)

    def schema(self, config: GatewayConfig) -> dict[str, Any]:
        strings = text_schema(self.max_chars, blank=True)
        return _described({"type": "object", "maxProperties": self.max_entries,
                           "propertyNames": strings, "additionalProperties": strings},
                          self.description)


@dataclass(frozen=True)
class StringList:
    """1..max_items strings matching `pattern` (repeats dropped); always required."""

    pattern: re.Pattern[str]
    max_items: int = 100
    description: str = ""

    def read(self, fields: Fields, name: str, required: bool, config: GatewayConfig) -> Any:
        return fields.string_list(name, self.pattern, max_items=self.max_items)

    def schema(self, config: GatewayConfig) -> dict[str, Any]:
        return _described({"type": "array", "minItems": 1, "maxItems": self.max_items,
                           "items": matching(self.pattern.pattern)}, self.description)


@dataclass(frozen=True)
class JsonObject:
    """Any JSON object ({} when absent); what is inside is checked elsewhere."""

    description: str = ""

    def read(self, fields: Fields, name: str, required: bool, config: GatewayConfig) -> Any:
        return fields.object(name)

    def schema(self, config: GatewayConfig) -> dict[str, Any]:
        return _described({"type": "object"}, self.description)


def _described(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {**schema, "description": description} if description else schema


@dataclass(frozen=True)
class Body:
    """A JSON object body: its required and optional fields (no others)."""

    required: Mapping[str, Rule]
    optional: Mapping[str, Rule]
    description: str = ""
    # What the fields' rules cannot say about each other (JSON Schema keywords: if / then).
    constraints: Mapping[str, Any] | None = None

    def read(self, raw: Any, config: GatewayConfig) -> dict[str, Any]:
        """The fields' values (None for an absent optional one); 400 / INVALID_ARGUMENT
        listing every bad field."""
        fields = Fields(raw)
        values = {name: rule.read(fields, name, True, config)
                  for name, rule in self.required.items()}
        values |= {name: rule.read(fields, name, False, config)
                   for name, rule in self.optional.items()}
        fields.done()
        return values

    def schema(self, config: GatewayConfig) -> dict[str, Any]:
        rules = {**self.required, **self.optional}
        schema = _described(object_schema(list(self.required), **{
            name: rule.schema(config) for name, rule in rules.items()}), self.description)
        return {**schema, **(self.constraints or {})}


MESSAGE = Body(
    required={"text": Text("max_text_chars")},
    optional={"message_id": Identifier(MESSAGE_ID, "Idempotency key (generated when absent)"),
              "sender": Text(MAX_SENDER_CHARS, blank=True),
              "metadata": StringMap(description="Free-form string pairs kept with the message")})
FEEDBACK = Body(required={"rating": Choice((1, -1))},
                optional={"comment": Text("max_comment_chars", blank=True)})
_COMMENT = Text("max_comment_chars", blank=True)
_ACTOR = Text(MAX_NAME_CHARS, description="Who acts (recorded with the API key id)")
START_RUN = Body(required={"workflow": Identifier(WORKFLOW)},
                 optional={"inputs": JsonObject("The workflow's inputs (checked by the runner)")})
CANCEL_RUN = Body(required={}, optional={"reason": _COMMENT, "by": _ACTOR},
                  description="May be empty")
DECIDE_RUN = Body(required={}, optional={
    "comment": _COMMENT, "step": Identifier(STEP, "Default: the step it waits on"),
    "approver": _ACTOR}, description="May be empty")
ACTIVATE_MODEL = Body(required={"version": Identifier(VERSION)}, optional={})
CREATE_KEY = Body(required={"tenant": Identifier(TENANT_RE),
                            "bots": StringList(BOT_SCOPE, description='Bot ids, or ["*"]'),
                            "role": Choice(tuple(role.value for role in Role))},
                  optional={"description": Text(MAX_DESCRIPTION_CHARS, blank=True),
                            "environment": Identifier(ENV_NAME, "The bot environment its "
                                                      "conversations use (docs/versions.md); "
                                                      "absent: each bot's default (prod)")},
                  # a publishable key sits in web pages: one bot, never `*` (admin.py)
                  constraints={"if": {"required": ["role"],
                                      "properties": {"role": {"const": "publishable"}}},
                               "then": {"properties": {"bots": {
                                   "maxItems": 1, "items": {"not": {"const": "*"}}}}}})
SET_OWNER = Body(required={"tenant": Identifier(TENANT_RE, "The tenant that owns the bot")},
                 optional={})
WIDGET_SESSION = Body(required={}, optional={
    "visitor_token": Identifier(VISITOR_TOKEN, "The token the widget holds: its conversation "
                                "is resumed while the token is valid (else a new one starts)"),
    "conversation_id": Identifier(CONVERSATION_ID, "The conversation of `visitor_token` (a "
                                  "check; needs the token)")}, description="May be empty")
# The bodies defined here, by their OpenAPI schema name (the first three are those of the gRPC
# API too).
BODIES = {"UserMessageRequest": MESSAGE, "AgentMessageRequest": MESSAGE,
          "FeedbackRequest": FEEDBACK, "StartRunRequest": START_RUN,
          "CancelRunRequest": CANCEL_RUN, "ApprovalDecisionRequest": DECIDE_RUN,
          "ActivateModelRequest": ACTIVATE_MODEL, "CreateKeyRequest": CREATE_KEY,
          "WidgetSessionRequest": WIDGET_SESSION, "BotOwnerRequest": SET_OWNER}


def grpc_fields(request: Any, body: Body) -> dict[str, Any]:
    """The JSON body a gRPC request stands for: its fields of `body` that are set (proto3
    cannot tell an empty string or 0 from an absent field: both are absent)."""
    values = {name: getattr(request, name) for name in (*body.required, *body.optional)}
    return {name: dict(value) if isinstance(value, Mapping) else value
            for name, value in values.items() if value}
