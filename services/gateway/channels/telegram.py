"""Telegram Bot API (https://core.telegram.org/bots/api).

Settings: `bot_token` (from @BotFather), `secret_token` (1-256 of A-Z a-z 0-9 _ -, given to
`setWebhook`; Telegram sends it back in `X-Telegram-Bot-Api-Secret-Token`), `api_base`
(default https://api.telegram.org). Updates: `message` (text) and `callback_query` (an inline
keyboard button: its `callback_data` is the button's payload; the press is answered with
`answerCallbackQuery` so the client stops its spinner). Replies: `sendMessage`, split at 4096
characters, buttons as an inline keyboard under the last piece."""

from __future__ import annotations

import hmac
import re
from typing import Any

import aiohttp
from aiohttp import web

from services.common.logging import get_logger
from services.gateway.channels.base import (
    ChannelRefused,
    Incoming,
    Outgoing,
    Parsed,
    SettingsInvalid,
    json_object,
    raise_for_send,
    split_text,
)

log = get_logger(__name__)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_TEXT = 4096
MAX_CALLBACK_DATA = 64  # bytes
TOKEN = re.compile(r"^[0-9]{1,20}:[A-Za-z0-9_-]{20,100}$")
SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
TIMEOUT = aiohttp.ClientTimeout(total=10)


class Telegram:
    name = "telegram"
    required: tuple[str, ...] = ("bot_token", "secret_token")
    secrets: tuple[str, ...] = ("bot_token", "secret_token")
    optional: tuple[str, ...] = ()
    default_api_base = "https://api.telegram.org"

    def check_settings(self, settings: dict[str, Any]) -> None:
        if not TOKEN.match(settings["bot_token"]):
            raise SettingsInvalid("bot_token: not a Telegram bot token (<digits>:<secret>, as "
                                  "@BotFather gives it)")
        if not SECRET.match(settings["secret_token"]):
            raise SettingsInvalid("secret_token: 1-256 characters of A-Z, a-z, 0-9, _ and -")

    async def handshake(self, request: web.Request,
                        settings: dict[str, Any]) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed("GET", ["POST"])

    async def verify(self, request: web.Request, body: bytes, settings: dict[str, Any],
                     session: aiohttp.ClientSession) -> None:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), str(settings["secret_token"]).encode()):
            raise ChannelRefused("token", f"missing or wrong {SECRET_HEADER}")

    async def parse(self, request: web.Request, body: bytes, settings: dict[str, Any],
                    session: aiohttp.ClientSession) -> Parsed:
        update = json_object(body, "update")
        update_id = str(update.get("update_id", ""))
        message = update.get("message")
        if isinstance(message, dict) and isinstance(message.get("text"), str):
            return Parsed([_incoming(update_id, message, message["text"])])
        query = update.get("callback_query")
        if isinstance(query, dict):
            await self._answer_callback(session, settings, str(query.get("id", "")))
            held = query.get("message")
            if isinstance(held, dict) and isinstance(query.get("data"), str):
                return Parsed([_incoming(update_id, {**held, "from": query.get("from")},
                                         query["data"])])
        return Parsed()  # edits, joins, photos...: nothing to answer

    async def send(self, session: aiohttp.ClientSession, settings: dict[str, Any],
                   address: dict[str, str], message: Outgoing) -> None:
        pieces = split_text(message.text, MAX_TEXT)
        for index, piece in enumerate(pieces):
            body: dict[str, Any] = {"chat_id": address["chat_id"], "text": piece}
            if index == len(pieces) - 1 and message.buttons:
                body["reply_markup"] = {"inline_keyboard": [
                    [{"text": b.title[:64], "callback_data": _callback_data(b.payload, b.title)}]
                    for b in message.buttons]}
            await self._call(session, settings, "sendMessage", body)

    async def _answer_callback(self, session: aiohttp.ClientSession, settings: dict[str, Any],
                               query_id: str) -> None:
        if not query_id:
            return
        try:
            await self._call(session, settings, "answerCallbackQuery",
                             {"callback_query_id": query_id})
        except Exception as exc:  # cosmetic (the client's spinner): never fails the update
            log.info("telegram_answer_callback_failed", error=str(exc))

    async def _call(self, session: aiohttp.ClientSession, settings: dict[str, Any],
                    method: str, body: dict[str, Any]) -> dict[str, Any]:
        base = str(settings.get("api_base") or self.default_api_base).rstrip("/")
        url = f"{base}/bot{settings['bot_token']}/{method}"
        async with session.post(url, json=body, timeout=TIMEOUT) as response:
            try:
                answer = await response.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                answer = {}
            answer = answer if isinstance(answer, dict) else {}
            if response.status >= 300 or not answer.get("ok", False):
                parameters = answer.get("parameters")
                retry = parameters.get("retry_after") if isinstance(parameters, dict) else None
                detail = str(answer.get("description", "no description"))[:200]
                raise_for_send(response.status if response.status >= 300 else 400, detail,
                               float(retry) if isinstance(retry, int | float) else None)
            return answer


def _incoming(update_id: str, message: dict[str, Any], text: str) -> Incoming:
    chat = _object(message.get("chat"))
    sender = _object(message.get("from"))
    chat_id = str(chat.get("id", ""))
    return Incoming(native_id=update_id, conversation=chat_id, text=text,
                    address={"chat_id": chat_id}, sender=str(sender.get("id", "")))


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _callback_data(payload: str, title: str) -> str:
    """The payload when it fits Telegram's 64 bytes; else the title (NLU reads it)."""
    for candidate in (payload, title):
        if 0 < len(candidate.encode()) <= MAX_CALLBACK_DATA:
            return candidate
    return title.encode()[:MAX_CALLBACK_DATA].decode(errors="ignore")
