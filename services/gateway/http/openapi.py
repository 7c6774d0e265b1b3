"""The OpenAPI 3.1 document, written from the route table (`routes.ROUTES`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from services.gateway.config import GatewayConfig
from services.gateway.http.bodies import PATH_IDS
from services.gateway.http.bot_versions import SCHEMAS as VERSION_SCHEMAS
from services.gateway.http.bots import SCHEMAS as BOT_SCHEMAS
from services.gateway.http.channels import SCHEMAS as CHANNEL_SCHEMAS
from services.gateway.http.contract import (
    PATH_EXAMPLES,
    WEBSOCKET_HEADERS,
    body_required,
    request_schemas,
)
from services.gateway.http.model_versions import SCHEMAS as MODEL_SCHEMAS
from services.gateway.http.problems import PROBLEM_CONTENT_TYPE
from services.gateway.http.review import SCHEMAS as REVIEW_SCHEMAS
from services.gateway.http.routes import RouteSpec
from services.gateway.http.runs import STATUSES
from services.gateway.http.trainings import SCHEMAS as TRAINING_SCHEMAS
from services.gateway.http.widget import SCHEMAS as WIDGET_SCHEMAS
from services.gateway.ports import Role

ERROR_TEXT = {
    400: "Invalid request (field-level `errors`)",
    401: "Missing, invalid or revoked API key or visitor token, or an expired visitor token",
    403: "The key's role (a person's roles, a visitor token's conversation) does not allow "
         "this",
    404: "Not found; for a bot out of the caller's reach (another tenant's, not in the key's "
         "bots, or none) always the same answer",
    405: "Method not allowed (a channel whose platform has no GET handshake)",
    409: "Conflict: the current state (of the run, the rollout, the training; a bot owned by "
         "another tenant than `?tenant=` names) does not allow this",
    413: "Request body too large",
    415: "The body is not `application/json` (Content-Type)",
    422: "Invalid bot definition (`issues`)",
    429: "Rate limit exceeded (see Retry-After)",
    500: "Internal error",
    502: "The workflow runner failed",
    503: "Unavailable: the message bus (overloaded or not connected) or the workflow runner; "
         "see Retry-After",
}
PATH_TEXT = {"bot": "Bot id", "conversation": "Conversation id (chosen by the client)",
             "message_id": "A bot message's id", "key_id": "API key id",
             "run_id": "Workflow run id", "name": "File name",
             "channel": "Messaging channel (telegram, ...)",
             "training_id": "Training job id (tr-...)",
             "version": "Bot version id (v + 16 hex digits)",
             "environment": "Environment name (dev, staging, prod, ...)"}
PATH_PATTERNS = {**{name: pattern.pattern for name, pattern in PATH_IDS.items()},
                 "name": r"^[A-Za-z0-9_.-]+$"}


def _obj(required: Iterable[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": properties}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_BUTTON = _obj(["title", "payload"], title=_STR, payload=_STR)
_CITATION = _obj(["title", "document", "heading_path", "url"], title=_STR, document=_STR,
                 heading_path={"type": "array", "items": _STR},
                 url={"type": "string", "description": "Empty when the source has no link"})
_CITATIONS = {"type": "array", "items": {"$ref": "#/components/schemas/Citation"},
              "description": "Sources of a knowledge-base answer (empty for other messages)"}
_REPLY = _obj(["message_id", "text", "buttons", "role"], message_id=_STR, text=_STR,
              buttons={"type": "array", "items": {"$ref": "#/components/schemas/Button"}},
              citations=_CITATIONS,
              role={"enum": ["bot", "agent"]}, in_reply_to=_STR, at_unix_ms=_INT)
_KEY = _obj(["key_id", "tenant", "bots", "role", "revoked"], key_id=_STR, tenant=_STR,
            bots={"type": "array", "items": _STR}, role={"enum": [role.value for role in Role]},
            description=_STR, created_at_unix_ms=_INT,
            revoked_at_unix_ms={"type": ["integer", "null"]}, revoked={"type": "boolean"},
            environment={"type": "string", "description": "The bot environment its "
                         "conversations use (\"\": each bot's default)"})
_NULLABLE_STR = {"type": ["string", "null"]}
_OBJECT = {"type": "object"}
_STEP_RECORD = _obj(["step", "kind", "status", "attempts", "visit"], step=_STR, kind=_STR,
                    status={"enum": ["succeeded", "failed", "skipped", "compensated",
                                     "compensation_failed"]},
                    attempts=_INT, visit=_INT, started_at_unix_ms=_INT,
                    finished_at_unix_ms=_INT, duration_ms={"type": "number"}, outputs=_OBJECT,
                    error=_NULLABLE_STR, compensation={"type": "boolean"})
_APPROVAL = _obj(["step", "message", "approvers"], step=_STR, message=_STR,
                 approvers={"type": "array", "items": _STR}, deadline_unix_ms=_INT,
                 escalation_level=_INT)
_RUN = _obj(["run_id", "bot_id", "workflow", "status", "inputs", "outputs"],
            run_id=_STR, bot_id=_STR, workflow=_STR, status={"enum": list(STATUSES)},
            inputs=_OBJECT, outputs=_OBJECT, error=_NULLABLE_STR,
            conversation_id=_NULLABLE_STR, current_step=_NULLABLE_STR,
            approval={"oneOf": [{"$ref": "#/components/schemas/PendingApproval"},
                                {"type": "null"}]},
            parent_run_id=_NULLABLE_STR, root_run_id=_NULLABLE_STR, steps_executed=_INT,
            resumes=_INT, created_at_unix_ms=_INT, updated_at_unix_ms=_INT,
            finished_at_unix_ms={"type": ["integer", "null"]},
            bot_version={**_NULLABLE_STR,
                         "description": "The bot version whose workflow runs (docs/versions.md);"
                                        " null: the deployed definition"},
            steps={"type": "array", "items": {"$ref": "#/components/schemas/RunStep"},
                   "description": "The step history (not in lists)"})

SCHEMAS: dict[str, Any] = {
    "Problem": _obj(["type", "title", "status", "detail"], type=_STR, title=_STR, status=_INT,
                    detail=_STR,
                    errors={"type": "array", "items": _obj(["field", "message"], field=_STR,
                                                           message=_STR)},
                    issues={"type": "array", "items": {"type": "object"}}),
    "Button": _BUTTON,
    "Citation": _CITATION,
    "Reply": _REPLY,
    "SendResult": _obj(
        ["message_id", "replies", "complete"], message_id=_STR,
        replies={"type": "array", "items": {"$ref": "#/components/schemas/Reply"}},
        complete={"type": "boolean", "description": "Every reply of the turn is here, the "
                  "results of the workflows it started included (docs/chat-api.md)"},
        duplicate={"type": "boolean", "description": "The message_id was seen before in this "
                   "conversation: not processed again"},
        handoff={"type": "boolean", "description": "A human agent has the conversation: the "
                 "bot does not answer; the message went to the agent"},
        nlu={"description": "With ?include=nlu: the NLU result and the flow step (null when "
             "the turn ran no NLU)", "oneOf": [{"type": "null"}, _obj(
                 ["intent", "confidence"], intent=_STR, confidence={"type": "number"},
                 ranking={"type": "array", "items": _obj(["intent", "confidence"],
                                                         intent=_STR,
                                                         confidence={"type": "number"})},
                 entities={"type": "array", "items": _obj(
                     ["entity", "value"], entity=_STR, value=_STR, raw=_STR, start=_INT,
                     end=_INT)},
                 out_of_scope={"type": "boolean"}, sentiment={"type": ["string", "null"]},
                 model_version=_STR, flow={"type": ["string", "null"]},
                 step={"type": ["string", "null"]})]}),
    "Transcript": _obj(["bot_id", "conversation_id", "entries"], bot_id=_STR,
                       conversation_id=_STR, entries={"type": "array", "items": _obj(
                           ["type"], type={"enum": ["user", "bot", "agent", "event"]},
                           message_id=_STR, text=_STR, at_unix_ms=_INT, in_reply_to=_STR,
                           event={"type": "string", "description": "?include=events: the "
                                  "event type (docs/chat-api.md)"},
                           data={"type": "object"},
                           buttons={"type": "array",
                                    "items": {"$ref": "#/components/schemas/Button"}},
                           citations=_CITATIONS)}),
    "VisitorToken": _obj(["token", "bot_id", "conversation_id", "expires_at_unix_ms"],
                         token={"type": "string", "description": "`bfv_...`: the bearer "
                                "credential of this conversation's end user"},
                         bot_id=_STR, conversation_id=_STR, expires_at_unix_ms=_INT),
    "FeedbackAccepted": _obj(["message_id", "rating"], message_id=_STR, rating=_INT),
    "Handoffs": _obj(["bot_id", "handoffs"], bot_id=_STR,
                     handoffs={"type": "array", "items": {"type": "object"}}),
    "AgentMessageAccepted": _obj(["message_id"], message_id=_STR,
                                 duplicate={"type": "boolean"}),
    "Released": _obj(["bot_id", "conversation_id", "released"], bot_id=_STR,
                     conversation_id=_STR, released={"type": "boolean"}),
    "Key": _KEY,
    "CreatedKey": {"allOf": [{"$ref": "#/components/schemas/Key"},
                             _obj(["secret"], secret={
                                 "type": "string",
                                 "description": "The API key; shown only in this response"})]},
    "KeyList": _obj(["keys"],
                    keys={"type": "array", "items": {"$ref": "#/components/schemas/Key"}}),
    "ActiveModel": _obj(["bot_id", "version", "active"], bot_id=_STR, version=_STR,
                        active={"type": "boolean"}),
    "DeployedDefinition": _obj(["bot_id", "revision", "files"], bot_id=_STR, revision=_INT,
                               files={"type": "array", "items": _STR}),
    "Webhook": _obj(["bot_id", "url"], bot_id=_STR, url=_STR),
    "WebhookDeleted": _obj(["bot_id", "deleted"], bot_id=_STR, deleted={"type": "boolean"}),
    "Status": _obj(["status"], status=_STR),
    "RunStep": _STEP_RECORD,
    "PendingApproval": _APPROVAL,
    "Run": _RUN,
    "RunList": _obj(["bot_id", "runs"], bot_id=_STR,
                    runs={"type": "array", "items": {"$ref": "#/components/schemas/Run"}}),
    **REVIEW_SCHEMAS,
    **BOT_SCHEMAS,
    **CHANNEL_SCHEMAS,
    **WIDGET_SCHEMAS,
    **MODEL_SCHEMAS,  # ModelVersions, Activation, Rollout, ...
    **TRAINING_SCHEMAS,  # Training, TrainingList
    **VERSION_SCHEMAS,  # BotVersion, BotEnvironment, ...
}


def build_document(routes: Iterable[RouteSpec], version: str = "1.0.0",
                   config: GatewayConfig | None = None) -> dict[str, Any]:
    """The document of `routes`; the request bodies' limits are those of `config` (default:
    the gateway's defaults)."""
    paths: dict[str, dict[str, Any]] = {}
    for spec in routes:
        paths.setdefault(spec.path, {})[spec.method.lower()] = operation(spec)
    return {
        "openapi": "3.1.0",
        "info": {"title": "botfactory gateway", "version": version,
                 "description": "Chat with bots, hand conversations to agents, start and "
                                "manage workflow runs, administer keys, models, bot "
                                "definitions and webhooks. Errors are "
                                "application/problem+json (RFC 9457). Every GET but the "
                                "WebSockets also answers HEAD (the same status and headers, "
                                "no body); OPTIONS answers with Allow, and CORS preflights "
                                "from the configured origins (none by default) with the "
                                "Access-Control-Allow-* headers."},
        "paths": paths,
        "components": {
            # the request bodies (bodies.py, contract.py) with the limits of `config`
            "schemas": {**SCHEMAS, **request_schemas(config or GatewayConfig())},
            "securitySchemes": {"apiKey": {
                "type": "http", "scheme": "bearer",
                "description": "An API key: `Bearer bfk_...`; where an operation has "
                               "`x-visitor-token: true`, also a visitor token of the path's "
                               "conversation: `Bearer bfv_...`. With OIDC on, a person's "
                               "access or ID token (a JWT of the configured issuer), or the "
                               "session cookie of /auth/login; `x-required-permission` is what "
                               "their roles must grant in the bot's tenant (docs/security.md)"}},
        },
    }


def operation(spec: RouteSpec) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": spec.name, "summary": spec.summary, "tags": [spec.tag],
        "parameters": parameters(spec), "responses": responses(spec),
        "security": [] if spec.role is None else [{"apiKey": []}],
    }
    if spec.needs is not None:
        op["x-required-permission"] = spec.needs.value
    if spec.role is not None:
        op["x-required-role"] = spec.role.value
    if spec.visitor:
        op["x-visitor-token"] = True
    if spec.request is not None:
        op["requestBody"] = {"required": body_required(spec.request), "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{spec.request}"}}}}
    return op


def parameters(spec: RouteSpec) -> list[dict[str, Any]]:
    found = []
    for name in re.findall(r"\{(\w+)\}", spec.path):
        found.append({"name": name, "in": "path", "required": True,
                      "description": PATH_TEXT[name],
                      "schema": {"type": "string", "pattern": PATH_PATTERNS[name],
                                 "examples": [PATH_EXAMPLES[name]]}})
    for query in spec.query:
        found.append({"name": query.name, "in": "query", "required": False,
                      "description": query.description, "schema": query.schema})
    if spec.websocket:
        found.extend(WEBSOCKET_HEADERS)
    return found


def responses(spec: RouteSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, (description, schema) in spec.responses.items():
        out[str(status)] = {"description": description}
        if schema is not None:
            out[str(status)]["content"] = {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{schema}"}}}
        elif status != 101:
            kind = "object" if spec.content_type == "application/json" else "string"
            out[str(status)]["content"] = {spec.content_type: {"schema": {"type": kind}}}
    for status in error_statuses(spec):
        out[str(status)] = {"description": ERROR_TEXT[status], "content": {
            PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    return out


def error_statuses(spec: RouteSpec) -> list[int]:
    statuses = {500, *spec.extra_errors}
    if spec.role is not None:
        statuses |= {400, 401, 403, 429}
        if "{bot}" in spec.path:
            statuses.add(404)  # a bot out of reach
    if spec.request is not None:
        statuses |= {400, 415}  # a body that is not application/json: 415
    return sorted(statuses)
