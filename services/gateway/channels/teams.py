"""Microsoft Teams through the Bot Framework (Bot Connector REST API v3,
https://learn.microsoft.com/azure/bot-service/rest-api/bot-framework-rest-connector-authentication).

Settings: `app_id` (the Microsoft App ID of the Azure Bot, a GUID), `app_password` (its client
secret), optionally `tenant_id` (a single-tenant bot: its tokens come from the tenant and, given
as a GUID, activities from other tenants are refused),
`openid_metadata_url` and `token_url` (Microsoft's by default; a local fake in tests).
`api_base` is not used: replies go to the `serviceUrl` each activity names.

Inbound: the Bot Connector signs every activity with a JWT (`Authorization: Bearer`). It is
checked against the keys its OpenID metadata lists (fetched once, cached 24 h, refetched when
a token names a key not seen yet): RS256, `aud` the app id, `iss` https://api.botframework.com,
exp/nbf with 5 minutes of leeway, the key endorsed for the activity's `channelId`, and the
token's `serviceUrl` claim equal to the activity's, so only a service URL Microsoft vouched
for is ever stored (and later sent the bot's token). Activities: `message` (its text, the
bot's `<at>mention</at>` taken out; a card button press as its payload); the rest
(conversationUpdate, typing, invoke...) are ignored.

Outbound: an OAuth2 client-credentials token (cached until shortly before it expires), then a
reply to the user's activity (`POST {serviceUrl}/v3/conversations/{id}/activities/{activity}`),
split at 28000 bytes, buttons as a hero card of `imBack` actions under the last piece."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
from aiohttp import web
from yarl import URL

from services.common.errors import InvalidArgument
from services.common.logging import get_logger
from services.common.openid import (
    KEYS_REFETCH_S,
    KEYS_TTL_S,
    OpenIdKeys,
    SigningKey,
    safe_url,
)
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
    raise_for_send,
    retry_after,
    split_text,
)

log = get_logger(__name__)
ISSUER = "https://api.botframework.com"
SCOPE = "https://api.botframework.com/.default"
DEFAULT_METADATA_URL = "https://login.botframework.com/v1/.well-known/openidconfiguration"
DEFAULT_TOKEN_URL = "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token"
TENANT_TOKEN_URL = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
ALGORITHM = "RS256"
LEEWAY_S = 300.0
# A token naming an unknown key refetches the keys at most every KEYS_REFETCH_S: a flood of
# made-up key ids must not become a flood of requests to Microsoft.
TOKEN_MARGIN_S = 300.0
MAX_TEXT_BYTES = 28_000  # Teams refuses messages over about 28 KB
HERO_CARD = "application/vnd.microsoft.card.hero"
GUID = re.compile(r"^[0-9A-Fa-f]{8}-([0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$")
TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,99}$")  # a GUID or a domain
AT_TAG = re.compile(r"<at>(.*?)</at>", re.DOTALL)
TIMEOUT = aiohttp.ClientTimeout(total=10)


class ConnectorKeys(OpenIdKeys):
    """The Bot Connector's signing keys per OpenID metadata URL (RS256; services/common/
    openid.py, shared with single sign-on): cached so that a verified request costs no
    network call; refetched after `ttl_s`, or when a token names an unknown key (key
    rollover), at most every `refetch_s`."""

    def __init__(self, ttl_s: float = KEYS_TTL_S, refetch_s: float = KEYS_REFETCH_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ttl_s, refetch_s, clock, algorithms=(ALGORITHM,),
                         name="Bot Framework")


@dataclass(frozen=True)
class _Token:
    value: str
    good_until: float


class AppTokens:
    """The bot's OAuth2 client-credentials tokens for the Bot Connector, per app (and
    password), kept until shortly before they expire: one token request per hour, not one
    per reply."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._held: dict[tuple[str, str, str], _Token] = {}
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    async def get(self, session: aiohttp.ClientSession, settings: dict[str, Any]) -> str:
        key = _token_key(settings)
        # One token request per app at a time, not one per reply waiting for it.
        async with self._locks.setdefault(key, asyncio.Lock()):
            held = self._held.get(key)
            if held is None or self._clock() >= held.good_until:
                held = await self._fetch(session, settings)
                self._held[key] = held
            return held.value

    def forget(self, settings: dict[str, Any]) -> None:
        """Drop the token the connector refused (revoked, or the password changed)."""
        self._held.pop(_token_key(settings), None)

    async def _fetch(self, session: aiohttp.ClientSession, settings: dict[str, Any]) -> _Token:
        form = {"grant_type": "client_credentials", "client_id": str(settings["app_id"]),
                "client_secret": str(settings["app_password"]), "scope": SCOPE}
        async with session.post(token_url(settings), data=form, timeout=TIMEOUT) as response:
            answer = await _json_or_empty(response)
            if response.status >= 300:
                detail = str(answer.get("error", "no error code"))[:100]
                raise_for_send(response.status if response.status >= 400 else 502,
                               f"token: {detail}", retry_after(response))
        token, expires_in = answer.get("access_token"), answer.get("expires_in")
        if not isinstance(token, str) or not token:
            raise SendRetry("token: the answer has no access_token")
        life = _seconds(expires_in)
        return _Token(token, self._clock() + life - min(TOKEN_MARGIN_S, life / 2))


def _token_key(settings: dict[str, Any]) -> tuple[str, str, str]:
    password = hashlib.sha256(str(settings["app_password"]).encode()).hexdigest()
    return token_url(settings), str(settings["app_id"]), password


def _seconds(value: Any) -> float:
    """`expires_in` (a number; the v1 endpoint gave a string); an hour when absent."""
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return 3600.0


async def _json_or_empty(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        value = await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {}
    return value if isinstance(value, dict) else {}


def token_url(settings: dict[str, Any]) -> str:
    """The settings' `token_url`; else the tenant's (single-tenant bots) or Bot Framework's."""
    if settings.get("token_url"):
        return str(settings["token_url"])
    if settings.get("tenant_id"):
        return TENANT_TOKEN_URL.format(tenant=settings["tenant_id"])
    return DEFAULT_TOKEN_URL


class Teams:
    name = "teams"
    required: tuple[str, ...] = ("app_id", "app_password")
    secrets: tuple[str, ...] = ("app_password",)
    optional: tuple[str, ...] = ("tenant_id", "openid_metadata_url", "token_url")
    # Not used for replies (they go to each activity's serviceUrl); the global Teams service.
    default_api_base = "https://smba.trafficmanager.net/teams"

    def __init__(self, keys: ConnectorKeys | None = None,
                 tokens: AppTokens | None = None) -> None:
        self.keys = keys or ConnectorKeys()
        self.tokens = tokens or AppTokens()

    def check_settings(self, settings: dict[str, Any]) -> None:
        if not GUID.match(settings["app_id"]):
            raise SettingsInvalid("app_id: the Microsoft App ID, a GUID (as Azure shows it)")
        tenant = settings.get("tenant_id")
        if tenant is not None and not TENANT.match(tenant):
            raise SettingsInvalid("tenant_id: a tenant GUID or domain")
        for name in ("openid_metadata_url", "token_url"):
            if name in settings and not safe_url(settings[name]):
                raise SettingsInvalid(f"{name}: must be an https:// URL")

    async def handshake(self, request: web.Request,
                        settings: dict[str, Any]) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed("GET", ["POST"])

    async def verify(self, request: web.Request, body: bytes, settings: dict[str, Any],
                     session: aiohttp.ClientSession) -> None:
        token = _bearer(request)
        activity = _activity_or_empty(body)
        key = await self._key_of(session, settings, token)
        claims = _claims(token, key, str(settings["app_id"]))
        if key.endorsements is not None and activity.get("channelId") not in key.endorsements:
            raise ChannelRefused("endorsement", "the signing key is not endorsed for the "
                                                "activity's channel")
        service_url = activity.get("serviceUrl")
        if not isinstance(service_url, str) or claims.get("serviceUrl") != service_url:
            raise ChannelRefused("service_url", "the token's serviceUrl is not the activity's")
        _check_tenant(activity, settings.get("tenant_id"))

    async def _key_of(self, session: aiohttp.ClientSession, settings: dict[str, Any],
                      token: str) -> SigningKey:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise ChannelRefused("jwt", "the bearer token is not a JWT") from exc
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(kid, str):
            raise ChannelRefused("jwt", f"the token is not {ALGORITHM} with a key id")
        metadata_url = str(settings.get("openid_metadata_url") or DEFAULT_METADATA_URL)
        key = await self.keys.find(session, metadata_url, kid)
        if key is None:
            raise ChannelRefused("jwt", "the token's signing key is not the Bot Connector's")
        return key

    async def parse(self, request: web.Request, body: bytes, settings: dict[str, Any],
                    session: aiohttp.ClientSession) -> Parsed:
        activity = json_object(body, "activity")
        if activity.get("type") != "message":
            return Parsed()  # conversationUpdate, typing, invoke...: nothing to answer
        activity_id = activity.get("id")
        conversation = _object(activity.get("conversation")).get("id")
        if not isinstance(activity_id, str) or not isinstance(conversation, str):
            return Parsed()
        if not activity_id or not conversation:
            return Parsed()
        address = {"service_url": str(activity.get("serviceUrl", "")),
                   "conversation_id": conversation, "activity_id": activity_id}
        sender = str(_object(activity.get("from")).get("id", ""))
        return Parsed([Incoming(native_id=activity_id, conversation=conversation,
                                text=text_of(activity), address=address, sender=sender)])

    async def send(self, session: aiohttp.ClientSession, settings: dict[str, Any],
                   address: dict[str, str], message: Outgoing) -> None:
        url = activities_url(address)
        pieces = split_bytes(message.text, MAX_TEXT_BYTES)
        for index, piece in enumerate(pieces):
            activity: dict[str, Any] = {"type": "message", "text": piece, "textFormat": "plain"}
            if address.get("activity_id"):
                activity["replyToId"] = address["activity_id"]
            if index == len(pieces) - 1 and message.buttons:
                activity["attachments"] = [hero_card(message.buttons)]
            await self._post(session, settings, url, activity)

    async def _post(self, session: aiohttp.ClientSession, settings: dict[str, Any], url: URL,
                    activity: dict[str, Any]) -> None:
        token = await self.tokens.get(session, settings)
        headers = {"Authorization": f"Bearer {token}",
                   "Content-Type": "application/json; charset=utf-8"}
        body = json.dumps(activity, ensure_ascii=False).encode()
        async with session.post(url, data=body, headers=headers, timeout=TIMEOUT) as response:
            if response.status == 401:  # the token was revoked or the password changed
                self.tokens.forget(settings)
                raise SendRetry("HTTP 401: the connector refused the bot's token; a new one "
                                "is fetched")
            detail = (await response.text())[:200]
            raise_for_send(response.status, detail, retry_after(response))


def _check_tenant(activity: dict[str, Any], tenant: Any) -> None:
    """A single-tenant bot (a `tenant_id` GUID) answers its own tenant's activities only (Teams
    names the tenant in `channelData.tenant.id` and `conversation.tenantId`); a tenant given
    as a domain cannot be compared with them and checks nothing."""
    if not isinstance(tenant, str) or not GUID.match(tenant):
        return
    named = {_object(_object(activity.get("channelData")).get("tenant")).get("id"),
             _object(activity.get("conversation")).get("tenantId")} - {None}
    if not named or any(not isinstance(t, str) or t.lower() != tenant.lower() for t in named):
        raise ChannelRefused("tenant", "the activity is not from the bot's tenant")


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ChannelRefused("jwt", "no bearer token")
    return token.strip()


def _claims(token: str, key: SigningKey, app_id: str) -> dict[str, Any]:
    """The token's claims once its signature, audience, issuer and lifetime hold."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key.key, algorithms=[ALGORITHM], audience=app_id, issuer=ISSUER,
            leeway=LEEWAY_S, options={"require": ["exp", "iss", "aud"]})
    except jwt.InvalidAudienceError as exc:
        raise ChannelRefused("audience", "the token is not for this bot") from exc
    except jwt.InvalidIssuerError as exc:
        raise ChannelRefused("issuer", "the token is not the Bot Connector's") from exc
    except jwt.PyJWTError as exc:
        raise ChannelRefused("jwt", f"the token is not valid: {exc}") from exc
    return claims


def text_of(activity: dict[str, Any]) -> str:
    """What the user said: a card button's payload (messageBack or an Adaptive Card submit
    with `value: {"payload": ...}`), else the text (an imBack puts the payload there) without
    the bot's @mention (every channel message to a bot starts with one)."""
    value = activity.get("value")
    if isinstance(value, dict) and isinstance(value.get("payload"), str):
        return str(value["payload"])
    text = activity.get("text")
    return strip_mentions(text, activity) if isinstance(text, str) else ""


def strip_mentions(text: str, activity: dict[str, Any]) -> str:
    """`text` without the mentions of the bot (the recipient); other mentions keep the name."""
    bot = _object(activity.get("recipient")).get("id")
    for item in _list(activity.get("entities")):
        entity = _object(item)
        mentioned = _object(entity.get("mentioned")).get("id")
        said = entity.get("text")
        if entity.get("type") == "mention" and bot and mentioned == bot and isinstance(said, str):
            text = text.replace(said, " ")
    return AT_TAG.sub(r"\1", text).strip()


def hero_card(buttons: tuple[Button, ...]) -> dict[str, Any]:
    """The buttons as a hero card: an `imBack` sends its value (the payload) as the user's
    text, which comes back through `text_of`."""
    actions = [{"type": "imBack", "title": b.title, "value": b.payload or b.title}
               for b in buttons]
    return {"contentType": HERO_CARD, "content": {"buttons": actions}}


def activities_url(address: dict[str, str]) -> URL:
    """Where a reply goes: the conversation's activities on the service URL of the verified
    activity, as a reply to it when its id is known. Never anything but https (or loopback):
    the bot's token goes with it."""
    service_url = address.get("service_url", "")
    conversation = address.get("conversation_id", "")
    if not conversation or not safe_url(service_url):
        raise SendRejected(f"no usable service URL or conversation ({service_url!r})")
    path = f"/v3/conversations/{quote(conversation, safe='')}/activities"
    if address.get("activity_id"):
        path += f"/{quote(address['activity_id'], safe='')}"
    base = str(URL(service_url.rstrip("/")))
    return URL(base + path, encoded=True)  # keep the ids' %-escapes as sent


def split_bytes(text: str, limit: int) -> list[str]:
    """`text` split (at a paragraph, line or word break) into pieces of at most `limit`
    UTF-8 bytes: Teams' limit is on the message size, not its characters."""
    chars = limit
    pieces = split_text(text, chars)
    while chars > 1 and any(len(piece.encode()) > limit for piece in pieces):
        chars //= 2
        pieces = split_text(text, chars)
    return pieces


def _activity_or_empty(body: bytes) -> dict[str, Any]:
    try:
        return json_object(body, "activity")
    except InvalidArgument:
        return {}  # no serviceUrl: refused as such once the token is checked


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
