"""Conversation routes: send a message, read the transcript, rate a bot message, and the
conversation's WebSocket."""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

from aiohttp import WSMsgType, web

from services.common.errors import DomainError, NotFound, PermissionDenied, Unauthenticated
from services.common.logging import get_logger
from services.common.pb.botfactory.v1 import conversation_pb2
from services.gateway.access import BotNotFound, Permission
from services.gateway.auth import Principal
from services.gateway.backpressure import RetryLater
from services.gateway.channels import all_channels
from services.gateway.channels.store import channel_of
from services.gateway.config import GatewayConfig
from services.gateway.http.bodies import FEEDBACK, MESSAGE
from services.gateway.http.problems import RequestInvalid
from services.gateway.http.sockets import serve_socket
from services.gateway.http.state import (
    PRINCIPAL,
    TOKEN,
    WAITED_WORKFLOWS,
    GatewayState,
    principal_of,
    state_of,
)
from services.gateway.http.wire import (
    json_response,
    parse_json,
    read_json,
    reply_json,
    turn_nlu_json,
)
from services.gateway.ports import ConversationHub, SendResult
from services.gateway.ratelimit import RateLimited

log = get_logger(__name__)

WS_TOKEN_PREFIX = "bearer."
DEFAULT_TRANSCRIPT_LIMIT = 100
WS_POLICY_VIOLATION = 4401
RATED_TYPES = ("bot", "agent")  # transcript entries that can be rated


def now_ms() -> int:
    return int(time.time() * 1000)


def ids(request: web.Request) -> tuple[str, str]:
    return request.match_info["bot"], request.match_info["conversation"]


def user_message(body: Any, bot: str, conversation: str, *, config: GatewayConfig,
                 channel: str, role: str = "user") -> conversation_pb2.UserMessage:
    """The UserMessage a client's JSON body (or gRPC request) asks to send (400 /
    INVALID_ARGUMENT with every bad field: `bodies.MESSAGE`)."""
    fields = MESSAGE.read(body, config)
    if role == "user":
        check_not_a_channel_conversation(conversation)
    return conversation_pb2.UserMessage(
        bot_id=bot, conversation_id=conversation,
        message_id=fields["message_id"] or uuid.uuid4().hex, text=fields["text"],
        channel=channel, sender=fields["sender"] or "", sent_at_unix_ms=now_ms(), role=role,
        metadata=fields["metadata"])


CHANNEL_NAMES = frozenset(all_channels())


def check_not_a_channel_conversation(conversation: str) -> None:
    """A messaging platform's conversation (`telegram-4242`: docs/channels.md) takes user
    messages from its platform only: else a key holder could make the bot write to that
    platform's user. Agents answer there as anywhere (agent-messages)."""
    channel = channel_of(conversation, CHANNEL_NAMES)
    if channel is not None:
        raise RequestInvalid.one("conversation", f"ids starting with '{channel}-' belong to "
                                 f"the {channel} channel: its users write through {channel}")


def wait_requested(request: web.Request) -> bool:
    raw = request.query.get("wait", "true").lower()
    if raw not in ("true", "false", "1", "0"):
        raise RequestInvalid.one("wait", "must be true or false")
    return raw in ("true", "1")


INCLUDES = ("nlu",)
TRANSCRIPT_INCLUDES = ("events",)


def includes_requested(request: web.Request,
                       allowed: tuple[str, ...] = INCLUDES) -> frozenset[str]:
    """`?include=nlu` (comma-separated extras, those `allowed`): 400 for anything else."""
    asked = frozenset(p.strip() for raw in request.query.getall("include", [])
                      for p in raw.split(",") if p.strip())
    unknown = sorted(asked - set(allowed))
    if unknown:
        raise RequestInvalid.one("include", f"unknown {', '.join(unknown)}; allowed: "
                                            f"{', '.join(allowed)}")
    return asked


def send_response(message_id: str, result: SendResult, waited: bool,
                  include: frozenset[str] = frozenset()) -> web.Response:
    """200 when the wait saw the whole turn (`complete`), else 202 (docs/chat-api.md)."""
    body: dict[str, Any] = {
        "message_id": message_id,
        "replies": [reply_json(r) for r in result.replies],
        "complete": result.complete,
        "duplicate": result.duplicate,
        "handoff": result.handoff,
    }
    if "nlu" in include:
        body["nlu"] = turn_nlu_json(result.nlu)
    return json_response(body, status=200 if waited and result.complete else 202)


async def post_message(request: web.Request) -> web.Response:
    state = state_of(request)
    bot, conversation = ids(request)
    waited = wait_requested(request)
    include = includes_requested(request)
    body = await read_json(request, state.config.body_limit_bytes)
    message = user_message(body, bot, conversation, config=state.config,
                           channel="http")
    message.environment = principal_of(request).environment
    if waited:
        result = await state.hub.send(message, wait_s=state.config.sync_wait_s,
                                      workflow_wait_s=state.config.workflow_wait_s)
        request[WAITED_WORKFLOWS] = result.awaited_workflows
    else:
        result = await state.hub.send(message, wait_s=0.0)
    return send_response(message.message_id, result, waited, include)


def transcript_limit(request: web.Request, maximum: int) -> int:
    raw = request.query.get("limit", str(min(DEFAULT_TRANSCRIPT_LIMIT, maximum)))
    return check_limit(int(raw) if raw.isdigit() else 0, maximum)


def check_limit(limit: int, maximum: int) -> int:
    """A transcript limit (HTTP `?limit=`, gRPC `limit`): 1..maximum, else 400 /
    INVALID_ARGUMENT."""
    if not 1 <= limit <= maximum:
        raise RequestInvalid.one("limit", f"must be an integer from 1 to {maximum}")
    return limit


async def get_transcript(request: web.Request) -> web.Response:
    state = state_of(request)
    bot, conversation = ids(request)
    limit = transcript_limit(request, state.config.transcript_max_limit)
    with_events = "events" in includes_requested(request, TRANSCRIPT_INCLUDES)
    if with_events and principal_of(request).is_visitor:
        raise PermissionDenied("?include=events needs an agent or admin key")
    entries = await state.hub.transcript(bot, conversation, limit, with_events=with_events)
    return json_response({"bot_id": bot, "conversation_id": conversation, "entries": entries})


async def post_feedback(request: web.Request) -> web.Response:
    state = state_of(request)
    bot, conversation = ids(request)
    message_id = request.match_info["message_id"]
    fields = FEEDBACK.read(await read_json(request, state.config.body_limit_bytes), state.config)
    rating, comment = fields["rating"], fields["comment"]
    await check_rated_message(state.hub, bot, conversation, message_id)
    await state.hub.feedback(conversation_pb2.Feedback(
        bot_id=bot, conversation_id=conversation, message_id=message_id, rating=rating,
        comment=comment or ""))
    state.metrics.feedback.labels(bot=bot, rating="up" if rating == 1 else "down").inc()
    return json_response({"message_id": message_id, "rating": rating}, status=202)


async def check_rated_message(hub: ConversationHub, bot: str, conversation: str,
                              message_id: str) -> None:
    """404 (gRPC NOT_FOUND) unless `message_id` is a bot (or agent) message of the
    conversation: the HTTP and gRPC feedback calls both check it."""
    entries = await hub.transcript(bot, conversation, sys.maxsize)
    if not any(e.get("message_id") == message_id and e.get("type") in RATED_TYPES
               for e in entries):
        raise NotFound(f"no bot message {message_id!r} in this conversation")


# --- WebSocket --------------------------------------------------------------------------------


def socket_token(request: web.Request) -> str | None:
    """A browser cannot set headers on a WebSocket: it offers `bearer.<key>` (or
    `bearer.<visitor token>`) as a subprotocol."""
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    for protocol in (p.strip() for p in offered.split(",")):
        if protocol.startswith(WS_TOKEN_PREFIX):
            return protocol[len(WS_TOKEN_PREFIX):]
    return None


async def conversation_socket(request: web.Request) -> web.WebSocketResponse:
    state = state_of(request)
    bot, conversation = ids(request)
    state.hub.check_served(bot)
    return await serve_socket(
        request, lambda: state.hub.subscribe(bot, conversation),
        lambda reply: {"type": "message", **reply_json(reply)},
        lambda ws: receive_loop(ws, request, state), max_msg_size=state.config.body_limit_bytes)


async def receive_loop(ws: web.WebSocketResponse, request: web.Request,
                       state: GatewayState) -> None:
    async for frame in ws:
        if frame.type is not WSMsgType.TEXT:
            continue
        answer, key_invalid = await socket_answer(frame.data, request, state)
        await ws.send_json(answer)
        if key_invalid:
            await ws.close(code=WS_POLICY_VIOLATION, message=b"API key no longer valid")
            return


async def socket_answer(raw: str, request: web.Request,
                        state: GatewayState) -> tuple[dict[str, Any], bool]:
    """The answer frame to one client frame, and whether the session's key stopped working."""
    try:
        return await socket_message(raw, request, state), False
    except RateLimited as exc:
        state.metrics.rate_limited.inc()
        return error_frame(exc.http_status, str(exc)), False
    except RetryLater as exc:  # overloaded or the bus is down: retry with the same id
        return {**error_frame(exc.http_status, str(exc)), **exc.extensions()}, False
    except DomainError as exc:
        return (error_frame(exc.http_status, str(exc)),
                isinstance(exc, (Unauthenticated, PermissionDenied, BotNotFound)))
    except Exception:
        log.exception("ws_message_failed")
        return error_frame(500, "internal error"), False


def error_frame(status: int, detail: str) -> dict[str, Any]:
    return {"type": "error", "status": status, "detail": detail}


async def socket_message(raw: str, request: web.Request, state: GatewayState) -> dict[str, Any]:
    """One `{"text": ...}` frame from the client: sent with no wait; replies come as pushes."""
    principal = await recheck(request, state)
    state.limiter.check(principal.key_id)
    bot, conversation = ids(request)
    body = parse_json(raw)
    message = user_message(body, bot, conversation, config=state.config,
                           channel="websocket")
    message.environment = principal.environment
    result = await state.hub.send(message, wait_s=0.0)
    return {"type": "ack", "message_id": message.message_id, "duplicate": result.duplicate}


async def recheck(request: web.Request, state: GatewayState) -> Principal:
    """Re-authenticate a long-lived socket's key, visitor token or person's session (cached),
    so revocation, expiry or the bot moving to another tenant ends the session."""
    token = request.get(TOKEN)
    if not token and state.sessions is not None and state.sessions.present(request):
        principal = await state.sessions.principal(request)
    else:
        principal = await state.auth.authenticate(token)
    bot, conversation = ids(request)
    await state.auth.admit(principal, Permission.CONVERSE, bot, conversation=conversation)
    request[PRINCIPAL] = principal
    return principal
