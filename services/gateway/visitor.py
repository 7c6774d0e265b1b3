"""Visitor tokens: an end user's credential for one conversation (docs/security.md).

The holder of a client key (the integrator's server, or the web chat page in the local stack)
asks the gateway for a token of one conversation (`POST .../conversations/{id}/tokens`) and
hands it to the end user. A token is `bfv_<claims>.<signature>`: the claims (base64url JSON:
`k` the issuing key id, `b` the bot, `c` the conversation, `exp` the expiry in unix seconds)
signed with HMAC-SHA256 under the gateway's `VISITOR_TOKEN_SECRET`, so every replica verifies
it without a lookup. It reaches only its own conversation (send, WebSocket, transcript,
feedback), only until it expires, and only while the key that issued it is not revoked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.common.errors import Unauthenticated, Unavailable

VISITOR_PREFIX = "bfv_"
INVALID_TOKEN = "missing or invalid API key"
EXPIRED_TOKEN = "visitor token expired: ask for a new one"
MAX_VISITOR_TOKEN_CHARS = 1024
_DOMAIN = b"botfactory.visitor.v1:"  # keeps these signatures apart from any other HMAC use


class TokenExpired(Unauthenticated):
    """A genuine visitor token past its expiry (401; not counted as a failed attempt)."""

    def __init__(self) -> None:
        super().__init__(EXPIRED_TOKEN)


@dataclass(frozen=True)
class VisitorClaims:
    issuer: str
    bot: str
    conversation: str
    expires_unix_s: int
    environment: str = ""  # the issuing key's bot environment (docs/versions.md)


def is_visitor_token(token: str) -> bool:
    return token.startswith(VISITOR_PREFIX)


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class VisitorTokens:
    """Mints and verifies visitor tokens; `clock` is wall-clock unix seconds.

    With no secret, tokens are off: minting answers 503 and every token is refused."""

    def __init__(self, secret: str, ttl_s: float, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._key = secret.encode()
        self.ttl_s = ttl_s
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return bool(self._key)

    def mint(self, issuer: str, bot: str, conversation: str,
             environment: str = "") -> tuple[str, int]:
        """A token for one conversation, and its expiry (unix seconds)."""
        if not self.enabled:
            raise Unavailable("visitor tokens are off: the gateway has no "
                              "BOTFACTORY_GATEWAY_VISITOR_TOKEN_SECRET")
        expires = int(self.clock() + self.ttl_s)
        claims = {"k": issuer, "b": bot, "c": conversation, "exp": expires,
                  **({"e": environment} if environment else {})}
        payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
        return f"{VISITOR_PREFIX}{payload}.{self._sign(payload)}", expires

    def verify(self, token: str) -> VisitorClaims:
        """The token's claims; Unauthenticated for a forged or malformed token, TokenExpired
        for a genuine one past its expiry."""
        if not self.enabled or len(token) > MAX_VISITOR_TOKEN_CHARS:
            raise Unauthenticated(INVALID_TOKEN)
        payload, _, signature = token[len(VISITOR_PREFIX):].partition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            raise Unauthenticated(INVALID_TOKEN)
        claims = _claims(payload)
        if claims.expires_unix_s <= self.clock():
            raise TokenExpired()
        return claims

    def _sign(self, payload: str) -> str:
        return _b64encode(hmac.new(self._key, _DOMAIN + payload.encode(),
                                   hashlib.sha256).digest())


def _claims(payload: str) -> VisitorClaims:
    """The claims of a correctly signed payload (a signed payload we did not write: 401)."""
    try:
        data = json.loads(_b64decode(payload))
        claims = VisitorClaims(str(data["k"]), str(data["b"]), str(data["c"]), int(data["exp"]),
                               str(data.get("e", "")))
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise Unauthenticated(INVALID_TOKEN) from None
    return claims
