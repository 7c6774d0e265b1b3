"""Human handoff routes (role agent or admin): list handed-off conversations, follow their
user messages (agent desk WebSocket), reply as an agent, give a conversation back to the
bot."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.common.pb.botfactory.v1.conversation_pb2 import BotMessage
from services.gateway.http.conversations import ids, user_message
from services.gateway.http.sockets import serve_socket
from services.gateway.http.state import principal_of, state_of
from services.gateway.http.wire import json_response, read_json, reply_json


async def list_handoffs(request: web.Request) -> web.Response:
    state = state_of(request)
    bot = request.match_info["bot"]
    return json_response({"bot_id": bot, "handoffs": await state.hub.handoffs(bot)})


async def handoff_socket(request: web.Request) -> web.WebSocketResponse:
    """Agent desks: every user message of the bot's handed-off conversations, pushed as
    `{"type": "user_message", "bot_id", "conversation_id", ...reply fields}` (role "user").
    Frames from the client are ignored; agents answer with POST .../agent-messages."""
    state = state_of(request)
    bot = request.match_info["bot"]
    return await serve_socket(request, lambda: state.hub.handoff_messages(bot), _user_frame,
                              _ignore_frames)


def _user_frame(message: BotMessage) -> dict[str, Any]:
    return {"type": "user_message", "bot_id": message.bot_id,
            "conversation_id": message.conversation_id, **reply_json(message)}


async def _ignore_frames(ws: web.WebSocketResponse) -> None:
    async for _ in ws:  # until the client closes it
        pass


async def post_agent_message(request: web.Request) -> web.Response:
    """Publishes a UserMessage with role "agent"; the dialogue relays it to the user."""
    state = state_of(request)
    bot, conversation = ids(request)
    body = await read_json(request, state.config.body_limit_bytes)
    message = user_message(body, bot, conversation, config=state.config,
                           channel="agent", role="agent")
    if not message.sender:
        message.sender = principal_of(request).key_id
    result = await state.hub.send(message, wait_s=0.0)
    return json_response({"message_id": message.message_id, "duplicate": result.duplicate},
                         status=202)


async def post_release(request: web.Request) -> web.Response:
    state = state_of(request)
    bot, conversation = ids(request)
    await state.hub.release(bot, conversation)
    return json_response({"bot_id": bot, "conversation_id": conversation, "released": True})
