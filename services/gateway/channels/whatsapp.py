"""WhatsApp Business Cloud API (https://developers.facebook.com/docs/whatsapp/cloud-api).

Settings: `access_token` (a system user's permanent token), `app_secret` (the Meta app's
secret: it signs every webhook in `X-Hub-Signature-256`), `verify_token` (chosen by the
operator, echoed by Meta's GET handshake), `phone_number_id` (the business number that answers),
`api_base` (default https://graph.facebook.com/v21.0). Webhooks: field `messages`, whose
`messages[]` are taken (text; an interactive reply or a template quick reply becomes its
payload) and whose `statuses[]` (delivery receipts) are not. Replies: `POST
/{phone_number_id}/messages`, text split at 4096 characters, buttons as reply buttons (up to 3)
or a list (up to 10) after the last piece."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator
from typing import Any

import aiohttp
from aiohttp import web

from services.gateway.channels.base import (
    Button,
    ChannelRefused,
    Incoming,
    Outgoing,
    Parsed,
    SendRetry,
    SettingsInvalid,
    json_object,
    raise_for_send,
    retry_after,
    split_text,
)

SIGNATURE_HEADER = "X-Hub-Signature-256"
MAX_TEXT = 4096
MAX_BUTTONS_BODY = 1024  # an interactive "button" message's body
MAX_LIST_BODY = 4096  # an interactive "list" message's body
MAX_REPLY_BUTTONS = 3
MAX_LIST_ROWS = 10
MAX_BUTTON_ID, MAX_BUTTON_TITLE = 256, 20
MAX_ROW_ID, MAX_ROW_TITLE = 200, 24
LIST_BUTTON = "Choose"  # the label of the button that opens a list (at most 20 characters)
SHORT_BODY = "Choose:"  # the body of buttons sent after a text too long to carry them
MAX_CHALLENGE = 200
# Graph API error codes that mean "slow down" even when the HTTP status is 400:
# 4 (app's API calls), 80007 (account's rate limit), 130429 (Cloud API throughput),
# 131048 (spam rate limit), 131056 (too many messages to one user).
THROTTLED = frozenset({4, 80007, 130429, 131048, 131056})
PHONE_NUMBER_ID = re.compile(r"^[0-9]{1,30}$")
TIMEOUT = aiohttp.ClientTimeout(total=10)


class WhatsApp:
    name = "whatsapp"
    required: tuple[str, ...] = ("access_token", "app_secret", "verify_token", "phone_number_id")
    secrets: tuple[str, ...] = ("access_token", "app_secret", "verify_token")
    optional: tuple[str, ...] = ()
    default_api_base = "https://graph.facebook.com/v21.0"

    def check_settings(self, settings: dict[str, Any]) -> None:
        """The phone number id goes into the send URL: digits only, as Meta shows it (not the
        phone number itself, which has a '+' and is not what the API takes)."""
        if not PHONE_NUMBER_ID.match(settings["phone_number_id"]):
            raise SettingsInvalid("phone_number_id: digits (the id Meta shows for the business "
                                  "number, not the number itself)")

    async def handshake(self, request: web.Request,
                        settings: dict[str, Any]) -> web.StreamResponse:
        """Meta checks the callback URL once with `hub.mode=subscribe`, our verify token and a
        challenge to echo; echoing it for anyone else would let a stranger claim the URL."""
        query = request.query
        given = query.get("hub.verify_token", "")
        expected = str(settings["verify_token"])
        if query.get("hub.mode") != "subscribe" or not _same(given, expected):
            raise ChannelRefused("verify_token", "wrong hub.mode or hub.verify_token")
        challenge = query.get("hub.challenge", "")[:MAX_CHALLENGE]
        return web.Response(text=challenge, content_type="text/plain")

    async def verify(self, request: web.Request, body: bytes, settings: dict[str, Any],
                     session: aiohttp.ClientSession) -> None:
        """Every webhook is signed with the app secret over the raw body: anything else could
        have been sent by anyone who knows the URL."""
        given = request.headers.get(SIGNATURE_HEADER, "")
        expected = "sha256=" + signature(str(settings["app_secret"]), body)
        if not _same(given.lower(), expected):
            raise ChannelRefused("signature", f"missing or wrong {SIGNATURE_HEADER}")

    async def parse(self, request: web.Request, body: bytes, settings: dict[str, Any],
                    session: aiohttp.ClientSession) -> Parsed:
        number = str(settings["phone_number_id"])
        return Parsed(list(incoming_messages(json_object(body, "webhook"), number)))

    async def send(self, session: aiohttp.ClientSession, settings: dict[str, Any],
                   address: dict[str, str], message: Outgoing) -> None:
        for body in outgoing_bodies(address["to"], message):
            await self._call(session, settings, body)

    async def _call(self, session: aiohttp.ClientSession, settings: dict[str, Any],
                    body: dict[str, Any]) -> None:
        base = str(settings.get("api_base") or self.default_api_base).rstrip("/")
        url = f"{base}/{settings['phone_number_id']}/messages"
        headers = {"Authorization": f"Bearer {settings['access_token']}"}
        async with session.post(url, json=body, headers=headers, timeout=TIMEOUT) as response:
            if response.status < 300:
                return
            await _raise_for(response)


def signature(app_secret: str, body: bytes) -> str:
    """The hex HMAC-SHA256 Meta puts after `sha256=` in X-Hub-Signature-256."""
    return hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


# --- inbound -----------------------------------------------------------------------------------


def incoming_messages(webhook: dict[str, Any], phone_number_id: str) -> Iterator[Incoming]:
    """The user messages of a webhook, in order. One app's webhook carries every number of its
    business accounts: a change for another number than the bot's is not the bot's to answer."""
    for entry in _objects(webhook.get("entry")):
        for change in _objects(entry.get("changes")):
            value = _object(change.get("value"))
            number = str(_object(value.get("metadata")).get("phone_number_id", phone_number_id))
            if change.get("field") != "messages" or number != phone_number_id:
                continue
            for message in _objects(value.get("messages")):  # `statuses` are receipts: skipped
                incoming = _incoming(message)
                if incoming is not None:
                    yield incoming


def _incoming(message: dict[str, Any]) -> Incoming | None:
    wa_id, native_id = str(message.get("from", "")), str(message.get("id", ""))
    text = message_text(message)
    if not (wa_id and native_id and text):
        return None  # an image, a location, a reaction...: nothing the bot reads
    return Incoming(native_id=native_id, conversation=wa_id, text=text,
                    address={"to": wa_id}, sender=wa_id)


def message_text(message: dict[str, Any]) -> str:
    """What the bot reads: a text's body, or a button's payload (sent as the reply button's or
    list row's id, or as a template quick reply's payload)."""
    kind = message.get("type")
    if kind == "text":
        return _str(_object(message.get("text")).get("body"))
    if kind == "interactive":
        interactive = _object(message.get("interactive"))
        reply = _object(interactive.get(_str(interactive.get("type"))))
        return _str(reply.get("id")) or _str(reply.get("title"))
    if kind == "button":
        button = _object(message.get("button"))
        return _str(button.get("payload")) or _str(button.get("text"))
    return ""


# --- outbound ----------------------------------------------------------------------------------


def outgoing_bodies(to: str, message: Outgoing) -> list[dict[str, Any]]:
    """The Cloud API requests that send `message`, in order: its text in pieces, the buttons on
    the last one (or after it, with a short body, when it is too long to carry them)."""
    pieces = [p for p in split_text(message.text, MAX_TEXT) if p.strip()]
    if not message.buttons:
        return [_text(to, piece) for piece in pieces]
    limit = MAX_BUTTONS_BODY if len(message.buttons) <= MAX_REPLY_BUTTONS else MAX_LIST_BODY
    body = pieces.pop() if pieces and len(pieces[-1]) <= limit else SHORT_BODY
    return [*(_text(to, piece) for piece in pieces), _interactive(to, body, message.buttons)]


def _text(to: str, piece: str) -> dict[str, Any]:
    return {**_envelope(to), "type": "text", "text": {"body": piece}}


def _interactive(to: str, body: str, buttons: tuple[Button, ...]) -> dict[str, Any]:
    """Up to 3 buttons as reply buttons; more as a list (WhatsApp shows at most 10 rows)."""
    if len(buttons) <= MAX_REPLY_BUTTONS:
        interactive: dict[str, Any] = {"type": "button", "body": {"text": body}, "action": {
            "buttons": [{"type": "reply", "reply": {
                "id": _id(b, MAX_BUTTON_ID), "title": _title(b, MAX_BUTTON_TITLE)}}
                for b in buttons]}}
    else:
        interactive = {"type": "list", "body": {"text": body}, "action": {
            "button": LIST_BUTTON, "sections": [{"rows": [
                {"id": _id(b, MAX_ROW_ID), "title": _title(b, MAX_ROW_TITLE)}
                for b in buttons[:MAX_LIST_ROWS]]}]}}
    return {**_envelope(to), "type": "interactive", "interactive": interactive}


def _envelope(to: str) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to}


def _id(button: Button, limit: int) -> str:
    """The payload when it fits the id; else the title (the NLU reads it; cut, it still reads
    better than a cut payload)."""
    for candidate in (button.payload, button.title):
        if 0 < len(candidate) <= limit:
            return candidate
    return (button.title or button.payload)[:limit]


def _title(button: Button, limit: int) -> str:
    """WhatsApp refuses the whole message for a title over the limit: cut it, marked."""
    title = button.title.strip() or button.payload
    return title if len(title) <= limit else title[:limit - 1].rstrip() + "…"


async def _raise_for(response: aiohttp.ClientResponse) -> None:
    """SendRetry for a throttle (a 429, or a throttling error code on a 400) and a 5xx;
    SendRejected with Meta's message for the rest."""
    error = _object(_object(await _answer(response)).get("error"))
    code = error.get("code")
    detail = f"{_str(error.get('message')) or 'no message'} (code {code})"[:200]
    status = max(response.status, 400)  # a redirect not followed is no delivery either
    if isinstance(code, int) and code in THROTTLED and status < 500:
        raise SendRetry(f"HTTP {status}: {detail}", retry_after(response))
    raise_for_send(status, detail, retry_after(response))


async def _answer(response: aiohttp.ClientResponse) -> Any:
    try:
        return await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {}


# --- helpers -----------------------------------------------------------------------------------


def _same(given: str, expected: str) -> bool:
    """Constant-time, so the time a wrong guess takes tells nothing of the secret."""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _objects(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""
