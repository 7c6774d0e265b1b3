"""The web widget's routes (docs/channels.md, "The web widget"): the script any site embeds
(`/widget.js`), its theme, and its sessions.

A page holds only a publishable key (`pk_`, docs/security.md): with it, and only from an
origin on the bot's allow-list (the widget settings' `allowed_origins`), the widget reads the
theme and gets a visitor token of a new conversation, or, after a reload, of the conversation
whose still-valid token it kept. Everything else it does with that visitor token, like any
end user. Refusals are counted (`botfactory_widget_refused_total{reason}`).
"""

from __future__ import annotations

import secrets
from typing import Any, NoReturn

from aiohttp import web

from services.common.errors import PermissionDenied, Unauthenticated
from services.common.logging import get_logger
from services.gateway.auth import Principal
from services.gateway.channels.service import CHANNELS
from services.gateway.channels.widget import WIDGET_CACHE, allowed_origins, theme
from services.gateway.http.bodies import WIDGET_SESSION
from services.gateway.http.problems import RequestInvalid
from services.gateway.http.runs import optional_body
from services.gateway.http.state import principal_of, state_of
from services.gateway.http.system import STATIC_DIR
from services.gateway.http.wire import json_response
from services.gateway.visitor import TokenExpired, VisitorTokens

log = get_logger(__name__)

CONVERSATION_PREFIX = "widget-"
# Sites embed the script without a version in its URL: a short max-age, then a revalidation
# (ETag / Last-Modified) that costs a 304. Any site may load it (it holds nothing secret).
_STR = {"type": "string"}
SCHEMAS: dict[str, Any] = {
    "WidgetSession": {
        "type": "object",
        "required": ["token", "bot_id", "conversation_id", "expires_at_unix_ms", "resumed"],
        "properties": {
            "token": {"type": "string", "description": "`bfv_...`: the visitor token of the "
                      "conversation (send, follow, read its transcript)"},
            "bot_id": _STR, "conversation_id": _STR, "expires_at_unix_ms": {"type": "integer"},
            "resumed": {"type": "boolean",
                        "description": "true: the presented token's conversation goes on"},
            "restarted": {"enum": ["expired", "invalid"],
                          "description": "Why the presented token's conversation was not "
                                         "resumed (a new one started)"}}},
    "WidgetConfig": {
        "type": "object", "required": ["bot_id", "title", "color", "avatar_url", "greeting"],
        "properties": {"bot_id": _STR, "title": _STR, "color": _STR,
                       "avatar_url": {"type": "string", "description": "Empty: none"},
                       "greeting": {"type": "string", "description": "Empty: none"}}},
}
SCRIPT_HEADERS = {"Content-Type": "text/javascript; charset=utf-8",
                  "Cache-Control": "public, max-age=300",
                  "Cross-Origin-Resource-Policy": "cross-origin"}


async def widget_script(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "widget.js", headers=SCRIPT_HEADERS)


async def get_config(request: web.Request) -> web.Response:
    """The theme the widget shows (title, colour, avatar, greeting)."""
    settings = await page_settings(request)
    return json_response({"bot_id": request.match_info["bot"], **theme(settings)})


async def create_session(request: web.Request) -> web.Response:
    """A visitor token for the widget: of the conversation of the token it presents while
    that one is valid (a reload resumes it), else of a new conversation (a random id)."""
    state = state_of(request)
    bot = request.match_info["bot"]
    await page_settings(request)
    fields = await optional_body(request, WIDGET_SESSION)
    state.hub.check_served(bot)
    principal = principal_of(request)
    resumed, restarted = resumable(state.auth.tokens, principal, bot, fields)
    conversation = resumed or new_conversation()
    token, expires = state.auth.mint(principal, bot, conversation)
    outcome = "resumed" if resumed else "restarted" if restarted else "new"
    state.metrics.widget_sessions.labels(bot, outcome).inc()
    body: dict[str, Any] = {"token": token, "bot_id": bot, "conversation_id": conversation,
                            "expires_at_unix_ms": expires * 1000, "resumed": bool(resumed)}
    if restarted:
        body["restarted"] = restarted
    return json_response(body, status=201)


def new_conversation() -> str:
    """A fresh conversation id nobody can guess (the widget's visitor owns it by its token)."""
    return f"{CONVERSATION_PREFIX}{secrets.token_urlsafe(18)}"


def resumable(tokens: VisitorTokens, principal: Principal, bot: str,
              fields: dict[str, Any]) -> tuple[str | None, str]:
    """(the conversation to resume, or None; why the presented token cannot be resumed:
    "expired", "invalid", or "" when none was presented). Only a token this key issued for
    this bot resumes: a token is the proof that the visitor owns the conversation, so a bare
    conversation id is refused (400)."""
    presented, claimed = fields["visitor_token"], fields["conversation_id"]
    if presented is None:
        if claimed is not None:
            raise RequestInvalid.one("visitor_token", "is required with conversation_id: a "
                                     "conversation is resumed with its visitor token")
        return None, ""
    try:
        claims = tokens.verify(presented)
    except TokenExpired:
        return None, "expired"
    except Unauthenticated:
        return None, "invalid"
    if (claims.bot, claims.issuer) != (bot, principal.key_id) or claimed not in (
            None, claims.conversation):
        return None, "invalid"
    return claims.conversation, ""


async def widget_settings(request: web.Request, bot: str) -> dict[str, Any] | None:
    """The bot's widget settings (cached), None when it has none or channels are off."""
    channels = request.app.get(CHANNELS)
    if channels is None:
        return None
    return await request.app[WIDGET_CACHE].get(channels.store, bot)


async def page_settings(request: web.Request) -> dict[str, Any]:
    """The bot's widget settings when the request comes from a page on its allow-list (the
    `Origin` header, compared verbatim); 403, counted, otherwise (also when the gateway has
    channels off: then no bot has a widget)."""
    bot = request.match_info["bot"]
    if CHANNELS not in request.app:
        refuse(request, "not_configured", "web widgets are off on this gateway (channels need "
                                          "BOTFACTORY_GATEWAY_CHANNEL_SECRETS_KEY)")
    settings = await widget_settings(request, bot)
    if settings is None:
        refuse(request, "not_configured", f"bot {bot!r} has no web widget (an admin sets it "
                                          f"up: PUT /v1/admin/bots/{bot}/channels/widget)")
    if request.headers.get("Origin", "") not in allowed_origins(settings):
        refuse(request, "origin", "this page's origin is not on the bot's widget allow-list "
                                  "(allowed_origins)")
    return settings


def refuse(request: web.Request, reason: str, detail: str) -> NoReturn:
    state_of(request).metrics.widget_refused.labels(reason).inc()
    log.info("widget_refused", reason=reason, bot=request.match_info.get("bot"),
             origin=request.headers.get("Origin", "")[:200])
    raise PermissionDenied(detail)
