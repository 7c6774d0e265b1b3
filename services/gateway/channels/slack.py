"""Slack: the Events API and interactivity in, the Web API out (https://api.slack.com/apis).

Settings: `bot_token` (the app's Bot User OAuth Token, `xoxb-...`), `signing_secret` (the
app's Signing Secret), `api_base` (default https://slack.com/api/). Every request Slack sends is
signed (v0: HMAC-SHA256 of `v0:<timestamp>:<body>` with the signing secret) and is refused
unless the signature matches and its timestamp is within 5 minutes (a replay).

In: `url_verification` (answered with its challenge), `event_callback` with a `message` (plain,
`thread_broadcast` or `file_share`) or an `app_mention` event, and `block_actions` (a button
press, form-encoded: its `value` is the button's payload). Messages of a bot, this one
included, are never taken, so the bot never answers itself or another bot. The message id is
the envelope's `event_id`: Slack's retries (`X-Slack-Retry-Num`) carry the same one, so they
are answered once. A conversation is one channel of one workspace (`<team>-<channel>`); a
message in a thread is answered in that thread (`thread_ts` in the address).

Out: `chat.postMessage` with the text as mrkdwn section blocks (3000 characters each, at most
13 a message so the fallback `text` stays under Slack's 40000) and the buttons as an actions
block (25 a block) under the last piece.

The Web API is called through slack_sdk's AsyncWebClient, not by hand, because it can do it our
way: it takes the gateway's shared aiohttp session (`session=`), its own retries can be turned
off (`retry_handlers=[]`) so the outbox alone decides when to retry (Retry-After honoured,
backoff, dead letters), and its SlackApiError carries the status, headers and body that map to
SendRetry / SendRejected. It would read HTTP(S)_PROXY itself; that is turned off, since the
gateway's session decides (as for every channel). A client is made per send: it is a few
attributes, and the token is per bot."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import Clock, SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from services.common.logging import get_logger
from services.gateway.channels.base import (
    Button,
    ChannelRefused,
    Incoming,
    Outgoing,
    Parsed,
    SendRejected,
    SendRetry,
    SettingsInvalid,
    json_object,
    split_text,
)

log = get_logger(__name__)
SIGNATURE_HEADER = "X-Slack-Signature"
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
MAX_AGE_S = 5 * 60
MAX_SECTION = 3000  # characters of a section block's text
SECTIONS_PER_MESSAGE = 13  # 13 x 3000 and the line breaks: under the 40000 of `text`
MAX_BLOCKS = 50
BUTTONS_PER_BLOCK = 25
MAX_BUTTON_TEXT = 75
MAX_BUTTON_VALUE = 2000
SEND_TIMEOUT_S = 10.0
# `message` subtypes that are a person writing; the rest (edits, deletions, joins, bots' posts)
# are not for the bot.
TAKEN_SUBTYPES = frozenset({"", "thread_broadcast", "file_share"})
# `ok: false` errors that are Slack's trouble, not the message's: worth another try.
RETRYABLE_ERRORS = frozenset({"ratelimited", "internal_error", "fatal_error",
                              "service_unavailable", "request_timeout"})
BOT_TOKEN = re.compile(r"^xoxb-[A-Za-z0-9-]{8,250}$")
SIGNING_SECRET = re.compile(r"^[0-9A-Fa-f]{16,128}$")
TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
MENTION = r"<@{user}(?:\|[^>]*)?>"
FORM = "application/x-www-form-urlencoded"


class Slack:
    name = "slack"
    required: tuple[str, ...] = ("bot_token", "signing_secret")
    secrets: tuple[str, ...] = ("bot_token", "signing_secret")
    optional: tuple[str, ...] = ()
    default_api_base = "https://slack.com/api/"

    def __init__(self, clock: Clock | None = None) -> None:
        """`clock`: the time the request timestamps are checked against (tests set it)."""
        self._clock = clock or Clock()

    def check_settings(self, settings: dict[str, Any]) -> None:
        if not BOT_TOKEN.match(settings["bot_token"]):
            raise SettingsInvalid("bot_token: not a Slack bot token (xoxb-..., the app's Bot "
                                  "User OAuth Token)")
        if not SIGNING_SECRET.match(settings["signing_secret"]):
            raise SettingsInvalid("signing_secret: the app's Signing Secret (hexadecimal, from "
                                  "Basic Information)")

    async def handshake(self, request: web.Request,
                        settings: dict[str, Any]) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed("GET", ["POST"])  # Slack verifies the URL by a POST

    async def verify(self, request: web.Request, body: bytes, settings: dict[str, Any],
                     session: aiohttp.ClientSession) -> None:
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        if not TIMESTAMP.match(timestamp) or abs(self._clock.now() - int(timestamp)) > MAX_AGE_S:
            raise ChannelRefused("timestamp", f"{TIMESTAMP_HEADER} missing or not within "
                                              f"{MAX_AGE_S} s of now")
        verifier = SignatureVerifier(str(settings["signing_secret"]), self._clock)
        if not _signed(verifier, body, timestamp, request.headers.get(SIGNATURE_HEADER)):
            raise ChannelRefused("signature", f"missing or wrong {SIGNATURE_HEADER}")

    async def parse(self, request: web.Request, body: bytes, settings: dict[str, Any],
                    session: aiohttp.ClientSession) -> Parsed:
        if request.content_type == FORM:
            return Parsed(_press(_form_payload(body)))
        envelope = json_object(body, "event")
        if envelope.get("type") == "url_verification":
            return Parsed(response=web.json_response({"challenge":
                                                      str(envelope.get("challenge", ""))}))
        if envelope.get("type") == "event_callback":
            return Parsed(_event(envelope))
        return Parsed()  # app_rate_limited and other notices: nothing to answer

    async def send(self, session: aiohttp.ClientSession, settings: dict[str, Any],
                   address: dict[str, str], message: Outgoing) -> None:
        client = self._client(session, settings)
        for text, blocks in posts(message):
            await _post(client, address, text, blocks)

    def _client(self, session: aiohttp.ClientSession,
                settings: dict[str, Any]) -> AsyncWebClient:
        base = str(settings.get("api_base") or self.default_api_base)
        client = AsyncWebClient(token=str(settings["bot_token"]), base_url=base,
                                session=session, retry_handlers=[])
        client.proxy = None  # it read HTTP(S)_PROXY; the shared session decides
        return client


# --- in ----------------------------------------------------------------------------------------


def _signed(verifier: SignatureVerifier, body: bytes, timestamp: str,
            signature: str | None) -> bool:
    try:
        return verifier.is_valid(body, timestamp, signature)
    except UnicodeDecodeError:  # Slack signs UTF-8 bodies: anything else is not Slack's
        return False


def _form_payload(body: bytes) -> dict[str, Any]:
    """An interactive request's `payload` form field, decoded."""
    fields = parse_qs(body.decode("utf-8", errors="replace"))
    return json_object(fields.get("payload", [""])[0].encode(), "event")


def _event(envelope: dict[str, Any]) -> list[Incoming]:
    """The user message of an `event_callback`, if it is one the bot answers."""
    event = _object(envelope.get("event"))
    kind = event.get("type")
    if kind not in ("message", "app_mention") or _by_a_bot(event, envelope):
        return []
    if kind == "message" and str(event.get("subtype") or "") not in TAKEN_SUBTYPES:
        return []
    event_id, user = str(envelope.get("event_id") or ""), str(event.get("user") or "")
    channel = str(event.get("channel") or "")
    if not (event_id and user and channel):
        log.info("slack_event_ignored", event_id=event_id, why="no event id, user or channel")
        return []
    team = str(envelope.get("team_id") or event.get("team") or "")
    text = _readable(str(event.get("text") or ""), _bot_users(envelope))
    return [_incoming(event_id, team, channel, event.get("thread_ts"), text, user)]


def _press(payload: dict[str, Any]) -> list[Incoming]:
    """A `block_actions` button press as the button's payload."""
    actions = payload.get("actions") if payload.get("type") == "block_actions" else None
    buttons = [a for a in actions if isinstance(a, dict) and a.get("type") == "button"
               and isinstance(a.get("value"), str)] if isinstance(actions, list) else []
    container = _object(payload.get("container"))
    channel = str(_object(payload.get("channel")).get("id") or container.get("channel_id") or "")
    if not (buttons and channel):
        return []  # shortcuts, menus, a press outside a conversation: nothing to answer
    user = _object(payload.get("user"))
    team = str(_object(payload.get("team")).get("id") or user.get("team_id") or "")
    user_id = str(user.get("id") or "")
    # trigger_id is unique per press; should it be missing, the press's time and user are too.
    press_id = str(payload.get("trigger_id") or f"{buttons[0].get('action_ts')}-{user_id}")
    thread = container.get("thread_ts") or _object(payload.get("message")).get("thread_ts")
    return [_incoming(press_id, team, channel, thread, buttons[0]["value"], user_id)]


def _incoming(native_id: str, team: str, channel: str, thread_ts: Any, text: str,
              user: str) -> Incoming:
    address = {"channel": channel}
    if isinstance(thread_ts, str) and thread_ts:
        address["thread_ts"] = thread_ts
    return Incoming(native_id=native_id, conversation=f"{team}-{channel}" if team else channel,
                    text=text, address=address, sender=user)


def _by_a_bot(event: dict[str, Any], envelope: dict[str, Any]) -> bool:
    """Whether a bot wrote it (this one or another): never answered, or bots talk forever."""
    return (bool(event.get("bot_id")) or event.get("subtype") == "bot_message"
            or str(event.get("user") or "") in _bot_users(envelope))


def _bot_users(envelope: dict[str, Any]) -> set[str]:
    """This app's bot user ids (the envelope's `authorizations`)."""
    authorizations = envelope.get("authorizations")
    if not isinstance(authorizations, list):
        return set()
    return {str(a["user_id"]) for a in authorizations
            if isinstance(a, dict) and a.get("is_bot") and a.get("user_id")}


def _readable(text: str, bot_users: set[str]) -> str:
    """The text as the user meant it: without the mention of the bot (`<@U123> /greet` is
    `/greet`), Slack's three escapes undone."""
    for user in bot_users:
        text = re.sub(MENTION.format(user=re.escape(user)), "", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# --- out ---------------------------------------------------------------------------------------


def posts(message: Outgoing) -> list[tuple[str, list[dict[str, Any]]]]:
    """The `chat.postMessage` calls for `message`, in order: (fallback text, blocks); the
    buttons go under the last one."""
    sections = sections_of(message.text)
    batches = [sections[i:i + SECTIONS_PER_MESSAGE]
               for i in range(0, len(sections), SECTIONS_PER_MESSAGE)] or [[]]
    calls = [("\n".join(batch), [_section(text) for text in batch]) for batch in batches]
    if message.buttons:
        text, blocks = calls[-1]
        titles = ", ".join(_escape(b.title) for b in message.buttons)
        calls[-1] = (text or titles, [*blocks, *actions_of(message.buttons)])
    return [call for call in calls if call[1]]


def sections_of(text: str) -> list[str]:
    """`text` escaped for mrkdwn, in pieces of at most 3000 characters. Escaping makes a piece
    longer (`&` is `&amp;`): one that outgrows the limit is cut again, 5 times finer."""
    pieces: list[str] = []
    for piece in split_text(text.strip(), MAX_SECTION):
        escaped = _escape(piece)
        if len(escaped) <= MAX_SECTION:
            pieces.append(escaped)
        else:
            pieces.extend(_escape(p) for p in split_text(piece, MAX_SECTION // 5))
    return [piece for piece in pieces if piece]


def actions_of(buttons: tuple[Button, ...]) -> list[dict[str, Any]]:
    """Actions blocks of at most 25 buttons, as many as fit beside the sections."""
    limit = (MAX_BLOCKS - SECTIONS_PER_MESSAGE) * BUTTONS_PER_BLOCK
    elements = [_button(index, button) for index, button in enumerate(buttons[:limit])]
    return [{"type": "actions", "elements": elements[i:i + BUTTONS_PER_BLOCK]}
            for i in range(0, len(elements), BUTTONS_PER_BLOCK)]


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _button(index: int, button: Button) -> dict[str, Any]:
    """A button whose `value` comes back on a press: the payload when it fits Slack's 2000
    characters, else the title (the NLU reads it)."""
    value = button.payload if 0 < len(button.payload) <= MAX_BUTTON_VALUE else button.title
    return {"type": "button", "action_id": f"bf-{index}",
            "text": {"type": "plain_text", "text": (button.title or value)[:MAX_BUTTON_TEXT]},
            "value": value[:MAX_BUTTON_VALUE]}


def _escape(text: str) -> str:
    """The three characters mrkdwn reads as markup (https://api.slack.com/reference/surfaces/
    formatting#escaping): a bot's `<3` stays text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


async def _post(client: AsyncWebClient, address: dict[str, str], text: str,
                blocks: list[dict[str, Any]]) -> None:
    try:
        async with asyncio.timeout(SEND_TIMEOUT_S):  # the shared session has no per-call limit
            await client.chat_postMessage(channel=address["channel"], text=text, blocks=blocks,
                                          thread_ts=address.get("thread_ts"))
    except SlackApiError as exc:
        raise send_failure(exc.response) from exc


def send_failure(response: Any) -> SendRetry | SendRejected:
    """What a failed call means for the outbox. Slack answers most errors with HTTP 200 and
    `{"ok": false, "error": ...}`: Slack's own trouble is retried, the rest (channel_not_found,
    invalid_auth, invalid_blocks, ...) is final; a 429 is retried after its Retry-After, a 5xx
    with backoff. `response`: a SlackResponse (or aiohttp's, for a body that is not JSON)."""
    status = int(getattr(response, "status_code", None) or getattr(response, "status", 0) or 0)
    data = getattr(response, "data", None)
    error = str(data.get("error") or "") if isinstance(data, dict) else ""
    detail = f"HTTP {status}: {error or 'no error code'}"
    if status == 429 or status >= 500 or error in RETRYABLE_ERRORS:
        headers = getattr(response, "headers", None)
        return SendRetry(detail, _retry_after(headers if isinstance(headers, Mapping) else {}))
    return SendRejected(detail)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds (Slack gives seconds; `headers` are case-insensitive)."""
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None
