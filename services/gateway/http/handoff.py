"""Human handoff routes (role agent or admin): list handed-off conversations, reply as an
agent, give a conversation back to the bot."""

from __future__ import annotations

from aiohttp import web

from services.gateway.http.conversations import ids, user_message
from services.gateway.http.state import principal_of, state_of
from services.gateway.http.wire import json_response, read_json


async def list_handoffs(request: web.Request) -> web.Response:
    state = state_of(request)
    bot = request.match_info["bot"]
    return json_response({"bot_id": bot, "handoffs": await state.hub.handoffs(bot)})


async def post_agent_message(request: web.Request) -> web.Response:
    """Publishes a UserMessage with role "agent"; the dialogue relays it to the user."""
    state = state_of(request)
    bot, conversation = ids(request)
    body = await read_json(request, state.config.body_limit_bytes)
    message = user_message(body, bot, conversation, max_chars=state.config.max_text_chars,
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
