"""The contract every messaging-platform channel implements (docs/channels.md).

A channel turns a platform's webhook requests into user messages (`verify`, then `parse`) and
sends the bot's replies back through the platform's API (`send`). The gateway does the rest
the same way for every platform: settings per bot (secrets encrypted), the inbound route,
redelivery handling through the message id, the durable outbox with retries and dead letters,
metrics (services/gateway/channels/)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from services.common.errors import DomainError, InvalidArgument, Unauthenticated
from services.common.pb.botfactory.v1 import conversation_pb2


class ChannelRefused(Unauthenticated):
    """A webhook request that fails the platform's verification: 401, counted, nothing kept."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # the metric label: signature, timestamp, token, ...


class SettingsInvalid(InvalidArgument):
    """Channel settings that are missing a field or have a bad value (400)."""


class SendRetry(DomainError):
    """The platform could not take the message now (429, 5xx, network): try again after
    `retry_after_s` (the platform's Retry-After when it gave one, else the backoff)."""

    def __init__(self, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class SendRejected(DomainError):
    """The platform refused the message for good (4xx other than 429): dead-lettered."""


@dataclass(frozen=True)
class Incoming:
    """One user message from a platform.

    `native_id`: the platform's id of the message (Telegram `update_id`, Slack `event_id`, ...):
    a redelivery carries the same one, so it becomes the message id and is never answered twice.
    `conversation`: the platform's conversation (chat, channel, phone number) as a stable key.
    `address`: what `send` needs to answer there (chat id, channel, service URL, ...)."""

    native_id: str
    conversation: str
    text: str
    address: dict[str, str]
    sender: str = ""


@dataclass
class Parsed:
    """What one webhook request holds: user messages, and/or the answer the platform expects
    at once (a URL verification, a challenge)."""

    messages: list[Incoming] = field(default_factory=list)
    response: web.StreamResponse | None = None


@dataclass(frozen=True)
class Button:
    title: str
    payload: str


@dataclass(frozen=True)
class Outgoing:
    """A bot (or agent) message to send: its text split at the platform's limit by the
    channel, its buttons as the platform's quick replies."""

    text: str
    buttons: tuple[Button, ...]
    message_id: str

    @classmethod
    def of(cls, message: conversation_pb2.BotMessage) -> Outgoing:
        return cls(message.text, tuple(Button(b.title, b.payload) for b in message.buttons),
                   message.message_id)


class Channel(Protocol):
    name: str
    # Setting names: required ones, secret ones (encrypted at rest, never shown), optional
    # others (`api_base` is always allowed).
    required: tuple[str, ...]
    secrets: tuple[str, ...]
    optional: tuple[str, ...]
    default_api_base: str

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Raise SettingsInvalid for a value the platform would refuse (beyond presence)."""
        ...

    async def handshake(self, request: web.Request,
                        settings: dict[str, Any]) -> web.StreamResponse:
        """A GET on the inbound URL (WhatsApp's `hub.challenge`); 405 when the platform has
        none."""
        ...

    async def verify(self, request: web.Request, body: bytes, settings: dict[str, Any],
                     session: aiohttp.ClientSession) -> None:
        """Raise ChannelRefused unless the request comes from the platform. `session`: for a
        proof checked against the platform's published keys (Bot Framework's JWKS), fetched
        once and cached by the channel."""
        ...

    async def parse(self, request: web.Request, body: bytes, settings: dict[str, Any],
                    session: aiohttp.ClientSession) -> Parsed:
        """The messages of a verified request (a button press becomes its payload)."""
        ...

    async def send(self, session: aiohttp.ClientSession, settings: dict[str, Any],
                   address: dict[str, str], message: Outgoing) -> None:
        """Send `message` (split as needed, in order); SendRetry / SendRejected on failure."""
        ...


def json_object(body: bytes, what: str) -> dict[str, Any]:
    """A verified request's JSON object (`{}` for another JSON value); 400 when not JSON."""
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise InvalidArgument(f"the {what} is not JSON") from exc
    return value if isinstance(value, dict) else {}


def split_text(text: str, limit: int) -> list[str]:
    """`text` in pieces of at most `limit` characters, cut at a paragraph, line or word break
    where there is one."""
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = _cut(rest, limit)
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not pieces:
        pieces.append(rest)
    return pieces


def _cut(text: str, limit: int) -> int:
    """Where to cut `text` (longer than `limit`): the last paragraph break in the second half
    of the window, else the last line break there, else the last space, else at the limit."""
    breaks = [text.rfind(sep, 0, limit + 1) for sep in ("\n\n", "\n", " ")]
    for cut in breaks:
        if cut > limit // 2:
            return cut
    return max(breaks) if max(breaks) > 0 else limit


def retry_after(response: aiohttp.ClientResponse, default: float | None = None) -> float | None:
    """The response's Retry-After in seconds (a number of seconds; a date is not used)."""
    raw = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(raw))
    except ValueError:
        return default


def raise_for_send(status: int, detail: str, retry_s: float | None = None) -> None:
    """SendRetry for 429 / 5xx, SendRejected for another 4xx; nothing for 2xx."""
    if status == 429 or status >= 500:
        raise SendRetry(f"HTTP {status}: {detail}", retry_s)
    if status >= 400:
        raise SendRejected(f"HTTP {status}: {detail}")
