"""Visitor tokens over HTTP: the holder of a client key gets a token of one conversation to
hand to its end user (services/gateway/visitor.py, docs/security.md)."""

from __future__ import annotations

from aiohttp import web

from services.gateway.http.state import principal_of, state_of
from services.gateway.http.wire import json_response


async def post_token(request: web.Request) -> web.Response:
    bot, conversation = request.match_info["bot"], request.match_info["conversation"]
    token, expires = state_of(request).auth.mint(principal_of(request), bot, conversation)
    return json_response({"token": token, "bot_id": bot, "conversation_id": conversation,
                          "expires_at_unix_ms": expires * 1000}, status=201)
