"""Channel routes: per-bot channel settings (admin) and the platforms' inbound webhooks
(`/v1/channels/{channel}/{bot}`, authenticated by each platform's own verification, not by an
API key). docs/channels.md. The web widget's settings go through the same settings routes as a
settings-only entry (services/gateway/channels/widget.py): no inbound route, no secrets."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, Protocol

import nats.errors
import nats.js.errors
from aiohttp import web

from services.common.botversions import ENV_NAME
from services.common.errors import NotFound, Unavailable
from services.common.logging import get_logger
from services.common.pb.botfactory.v1 import conversation_pb2
from services.gateway import audit
from services.gateway.backpressure import RetryLater
from services.gateway.channels.base import Channel, ChannelRefused, Incoming, SettingsInvalid
from services.gateway.channels.outbox import Target
from services.gateway.channels.service import CHANNELS, Channels
from services.gateway.channels.store import ConversationRef, conversation_id
from services.gateway.channels.widget import (
    WIDGET,
    WIDGET_CACHE,
    WIDGET_SETTINGS,
    WidgetSettingsInvalid,
)
from services.gateway.http.admin import audited
from services.gateway.http.bodies import MAX_CHANNEL_SETTING_CHARS
from services.gateway.http.problems import FieldError, PayloadTooLarge, RequestInvalid
from services.gateway.http.state import state_of
from services.gateway.http.wire import json_response, read_json
from services.gateway.hub import BUS_DOWN, BUS_RETRY_AFTER_S

log = get_logger(__name__)
API_BASE = "api_base"
# Any channel: the bot environment its conversations use (docs/versions.md; absent: the
# bot's default environment).
ENVIRONMENT = "environment"

_STR = {"type": "string"}
SCHEMAS: dict[str, Any] = {
    "ChannelSettings": {
        "type": "object", "required": ["bot_id", "channel", "settings", "secrets"],
        "properties": {"bot_id": _STR, "channel": _STR,
                       "settings": {"type": "object", "additionalProperties": _STR},
                       "secrets": {"type": "array", "items": _STR,
                                   "description": "The secret settings that are set"},
                       "webhook_path": _STR}},
    "ChannelDeleted": {"type": "object", "required": ["bot_id", "channel", "deleted"],
                       "properties": {"bot_id": _STR, "channel": _STR,
                                      "deleted": {"type": "boolean"}}},
}


def channels_of(request: web.Request) -> Channels:
    channels = request.app.get(CHANNELS)
    if channels is None:
        raise Unavailable("channels are not available on this gateway (set "
                          "BOTFACTORY_GATEWAY_CHANNEL_SECRETS_KEY)")
    return channels


def adapter_of(channels: Channels, name: str) -> Channel:
    adapter = channels.adapters.get(name)
    if adapter is None:
        known = ", ".join(sorted([*channels.adapters, WIDGET]))
        raise NotFound(f"no channel {name!r}; known: {known}")
    return adapter


class SettingsEntry(Protocol):
    """What the settings routes need of a channel: its setting names and their check (a
    platform adapter, or the widget's settings-only entry)."""

    name: str
    required: tuple[str, ...]
    secrets: tuple[str, ...]
    optional: tuple[str, ...]

    def check_settings(self, settings: dict[str, Any]) -> None: ...


def entry_of(channels: Channels, name: str) -> SettingsEntry:
    return WIDGET_SETTINGS if name == WIDGET else adapter_of(channels, name)


# --- settings (admin) -------------------------------------------------------------------------


def checked_settings(adapter: SettingsEntry, body: Any) -> dict[str, str]:
    if not isinstance(body, dict):
        raise RequestInvalid.one("body", "must be a JSON object of settings")
    platform = () if adapter.name == WIDGET else (API_BASE, ENVIRONMENT)  # the widget calls
    known = {*adapter.required, *adapter.secrets, *adapter.optional, *platform}  # no API
    problems = [(name, "unknown setting") for name in body if name not in known]
    problems += [(name, "required") for name in adapter.required if not body.get(name)]
    problems += [(name, f"must be a string of at most {MAX_CHANNEL_SETTING_CHARS} characters")
                 for name, value in body.items() if name in known
                 and (not isinstance(value, str) or len(value) > MAX_CHANNEL_SETTING_CHARS)]
    base = body.get(API_BASE)
    if isinstance(base, str) and not base.startswith(("https://", "http://")):
        problems.append((API_BASE, "must be an http:// or https:// URL"))
    environment = body.get(ENVIRONMENT)
    if isinstance(environment, str) and environment and not ENV_NAME.match(environment):
        problems.append((ENVIRONMENT, f"must match {ENV_NAME.pattern}"))
    if problems:
        raise RequestInvalid([FieldError(name, text) for name, text in problems])
    settings = {name: str(value) for name, value in body.items() if value != ""}
    try:
        adapter.check_settings(settings)
    except WidgetSettingsInvalid as exc:
        raise RequestInvalid([FieldError(name, text) for name, text in exc.problems]) from exc
    except SettingsInvalid as exc:
        raise RequestInvalid.one("settings", str(exc)) from exc
    return settings


def settings_json(bot: str, adapter: SettingsEntry, settings: dict[str, Any]) -> dict[str, Any]:
    shown = {"bot_id": bot, "channel": adapter.name,
             "settings": {k: v for k, v in settings.items() if k not in adapter.secrets},
             "secrets": sorted(k for k in settings if k in adapter.secrets)}
    if adapter.name != WIDGET:  # the widget has no inbound webhook
        shown["webhook_path"] = f"/v1/channels/{adapter.name}/{bot}"
    return shown


def settings_changed(request: web.Request, bot: str, name: str) -> None:
    """A widget's settings apply at once on this replica (its cache forgets them)."""
    if name == WIDGET and WIDGET_CACHE in request.app:
        request.app[WIDGET_CACHE].forget(bot)


async def put_channel(request: web.Request) -> web.Response:
    channels = channels_of(request)
    bot, name = request.match_info["bot"], request.match_info["channel"]
    adapter = entry_of(channels, name)
    settings = checked_settings(adapter, await read_json(request,
                                                         state_of(request).config.body_limit_bytes))
    await channels.store.put(bot, name, settings)
    settings_changed(request, bot, name)
    await audited(request, audit.CHANNEL_SET, {"bot_id": bot, "channel": name})
    return json_response(settings_json(bot, adapter, settings))


async def get_channel(request: web.Request) -> web.Response:
    channels = channels_of(request)
    bot, name = request.match_info["bot"], request.match_info["channel"]
    adapter = entry_of(channels, name)
    settings = await channels.store.get(bot, name)
    if settings is None:
        raise NotFound(f"bot {bot!r} has no {name} channel")
    return json_response(settings_json(bot, adapter, settings))


async def delete_channel(request: web.Request) -> web.Response:
    channels = channels_of(request)
    bot, name = request.match_info["bot"], request.match_info["channel"]
    entry_of(channels, name)
    if not await channels.store.delete(bot, name):
        raise NotFound(f"bot {bot!r} has no {name} channel")
    settings_changed(request, bot, name)
    await audited(request, audit.CHANNEL_DELETED, {"bot_id": bot, "channel": name})
    return json_response({"bot_id": bot, "channel": name, "deleted": True})


# --- inbound webhooks (the platforms) ----------------------------------------------------------


async def _configured(request: web.Request) -> tuple[Channels, Channel, str, dict[str, Any]]:
    channels = channels_of(request)
    name, bot = request.match_info["channel"], request.match_info["bot"]
    adapter = channels.adapters.get(name)
    settings = None if adapter is None else await channels.store.current(bot, name)
    if adapter is None or settings is None:
        channels.metrics.refused.labels(name if adapter else "unknown", "not_configured").inc()
        raise NotFound(f"no {name} channel is set up for bot {bot!r}")
    return channels, adapter, bot, settings


async def channel_handshake(request: web.Request) -> web.StreamResponse:
    """A platform's GET on the webhook URL (WhatsApp's verification challenge)."""
    channels, adapter, bot, settings = await _configured(request)
    try:
        return await adapter.handshake(request, settings)
    except ChannelRefused as exc:
        _refused(channels, adapter, bot, exc)
        raise


async def channel_inbound(request: web.Request) -> web.StreamResponse:
    """A platform's webhook: verified first (401 otherwise, counted), then each user message
    is stored and sent on like any other (without waiting: the replies go out through the
    channel outbox). 200 at once, so the platform does not retry; 503 + Retry-After while the
    message bus is down (the platform sends the update again: nothing is lost)."""
    try:
        return await _inbound(request)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
        raise RetryLater(BUS_DOWN, BUS_RETRY_AFTER_S) from exc


async def _inbound(request: web.Request) -> web.StreamResponse:
    channels, adapter, bot, settings = await _configured(request)
    limit = state_of(request).config.body_limit_bytes
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(limit)
    try:
        await adapter.verify(request, body, settings, channels.session)
    except ChannelRefused as exc:
        _refused(channels, adapter, bot, exc)
        raise
    parsed = await adapter.parse(request, body, settings, channels.session)
    for incoming in parsed.messages:
        await _take(request, channels, Target(adapter.name, settings, incoming.address), bot,
                    incoming)
    return parsed.response or json_response({"ok": True})


def _refused(channels: Channels, adapter: Channel, bot: str, exc: ChannelRefused) -> None:
    channels.metrics.refused.labels(adapter.name, exc.reason).inc()
    log.warning("channel_refused", channel=adapter.name, bot=bot, reason=exc.reason)


async def _take(request: web.Request, channels: Channels, target: Target, bot: str,
                incoming: Incoming) -> None:
    state = state_of(request)
    conversation = conversation_id(target.channel, incoming.conversation)
    text = incoming.text.strip()[:state.config.max_text_chars]
    if not text:  # a sticker, a photo, an empty message: nothing the bot can read
        return
    message = conversation_pb2.UserMessage(
        bot_id=bot, conversation_id=conversation, text=text, channel=target.channel,
        message_id=conversation_id(target.channel, incoming.native_id),
        sender=incoming.sender[:200], environment=target.settings.get(ENVIRONMENT, ""))
    outbox = channels.outbox
    # The reply address and the message at once: a reply that finds no address yet is taken
    # again shortly (the outbox's ADDRESS_TRIES); either failing, the platform sends it again.
    # The turn's replies go to the outbox's fast path as they come to this replica's inbox.
    await asyncio.gather(
        channels.refs.remember(bot, conversation, ConversationRef(target.channel,
                                                                  incoming.address)),
        state.hub.send(message, wait_s=0.0,
                       on_reply=None if outbox is None else partial(outbox.offer,
                                                                    target=target)))
    channels.metrics.received.labels(target.channel, bot).inc()
