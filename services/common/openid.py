"""OpenID Connect discovery and signing keys, shared by everything that checks JWTs of an
issuer: the Teams channel (the Bot Connector's tokens, services/gateway/channels/teams.py) and
single sign-on (people's tokens, services/gateway/oidc.py).

`OpenIdKeys` keeps, per discovery URL (`.../.well-known/openid-configuration`), the document
and the signing keys of its `jwks_uri`, so that a verified token costs no network call. They
are fetched again after `ttl_s`, or when a token names a key not seen yet (key rotation), at
most every `refetch_s`: a flood of made-up key ids must not become a flood of requests to
the issuer. A failed refetch keeps what is held; a failed first fetch raises `Unavailable`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt

from services.common.errors import Unavailable
from services.common.logging import get_logger

log = get_logger(__name__)

KEYS_TTL_S = 24 * 3600.0
KEYS_REFETCH_S = 300.0
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
TIMEOUT = aiohttp.ClientTimeout(total=10)
# Asymmetric algorithms only: a verifier never accepts `none` or an HMAC (whose "secret"
# would be the public key anyone can fetch).
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
              "ES512", "EdDSA")
_DEFAULT_ALG = {"RSA": "RS256", "OKP": "EdDSA"}
_EC_ALG = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


@dataclass(frozen=True)
class SigningKey:
    key: jwt.PyJWK
    algorithm: str  # the one algorithm tokens signed with this key may use
    endorsements: tuple[str, ...] | None  # Bot Framework: the channels it may sign for


@dataclass(frozen=True)
class _Held:
    metadata: dict[str, Any]
    keys: dict[str, SigningKey]
    fetched_at: float
    tried_at: float


def safe_url(url: str) -> bool:
    """https, or http to this machine (a local fake in tests): tokens and secrets go there."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if not host:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and host in LOOPBACK)


class OpenIdKeys:
    """Discovery documents and signing keys per discovery URL (see the module's docstring).

    `algorithms`: the algorithms accepted (a key whose JWK names another, or whose type has
    none of them, is left out). `name`: what log lines and errors call the issuer."""

    def __init__(self, ttl_s: float = KEYS_TTL_S, refetch_s: float = KEYS_REFETCH_S,
                 clock: Callable[[], float] = time.monotonic, *,
                 algorithms: tuple[str, ...] = ASYMMETRIC, name: str = "OpenID") -> None:
        if any(alg not in ASYMMETRIC for alg in algorithms):
            raise ValueError(f"only asymmetric algorithms: {ASYMMETRIC}")
        self._ttl_s = ttl_s
        self._refetch_s = refetch_s
        self._clock = clock
        self._algorithms = algorithms
        self._name = name
        self._held: dict[str, _Held] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def find(self, session: aiohttp.ClientSession, metadata_url: str,
                   kid: str) -> SigningKey | None:
        """The key `kid` of the issuer (None: it has no such key, even after a refetch)."""
        held = self._held.get(metadata_url)
        if held is None or self._due(held, kid):
            held = await self._refresh(session, metadata_url, held)
        return held.keys.get(kid)

    async def metadata(self, session: aiohttp.ClientSession,
                       metadata_url: str) -> dict[str, Any]:
        """The discovery document (authorization, token and end-session endpoints...)."""
        held = self._held.get(metadata_url)
        if held is None or self._due(held, None):
            held = await self._refresh(session, metadata_url, held)
        return held.metadata

    def _due(self, held: _Held, kid: str | None) -> bool:
        now = self._clock()
        wanted = (kid is not None and kid not in held.keys) or \
            now - held.fetched_at >= self._ttl_s
        return wanted and now - held.tried_at >= self._refetch_s

    async def _refresh(self, session: aiohttp.ClientSession, url: str,
                       seen: _Held | None) -> _Held:
        """One fetch at a time per URL; a failed refetch keeps what is held (and waits
        `refetch_s` before trying again), a failed first fetch is Unavailable (503)."""
        async with self._locks.setdefault(url, asyncio.Lock()):
            current = self._held.get(url)
            if current is not None and current is not seen:
                return current  # refreshed by a request that held the lock before us
            now = self._clock()
            try:
                metadata, keys = await fetch_signing_keys(session, url, self._algorithms)
                fresh = _Held(metadata, keys, now, now)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("openid_keys_fetch_failed", issuer=self._name, url=url,
                            error=str(exc))
                if seen is None:
                    raise Unavailable(f"the {self._name} signing keys cannot be fetched "
                                      "now") from exc
                fresh = _Held(seen.metadata, seen.keys, seen.fetched_at, now)
            else:
                if seen is not None and set(keys) != set(seen.keys):
                    log.info("openid_keys_rotated", issuer=self._name, kids=sorted(keys))
            self._held[url] = fresh
            return fresh


async def fetch_signing_keys(session: aiohttp.ClientSession, metadata_url: str,
                             algorithms: tuple[str, ...] = ASYMMETRIC
                             ) -> tuple[dict[str, Any], dict[str, SigningKey]]:
    """The discovery document at `metadata_url` and the keys (by `kid`) of its `jwks_uri`."""
    metadata = await get_json(session, metadata_url)
    jwks_uri = metadata.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not safe_url(jwks_uri):
        raise ValueError("the OpenID metadata has no usable jwks_uri")
    keys: dict[str, SigningKey] = {}
    for entry in _list((await get_json(session, jwks_uri)).get("keys")):
        key = signing_key(entry, algorithms)
        if key is not None:
            keys[str(entry["kid"])] = key
    if not keys:
        raise ValueError("the JWKS holds no usable key")
    return metadata, keys


def signing_key(entry: Any, algorithms: tuple[str, ...]) -> SigningKey | None:
    """A JWKS entry as a key for one of `algorithms` (None: not a usable signing key)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
        return None
    if entry.get("use", "sig") != "sig":
        return None
    kty = str(entry.get("kty"))
    algorithm = entry.get("alg")
    if not algorithm:  # a JWK may leave it out: the usual one for its type
        algorithm = _EC_ALG.get(str(entry.get("crv"))) if kty == "EC" else _DEFAULT_ALG.get(kty)
    if algorithm not in algorithms:
        return None
    try:
        key = jwt.PyJWK(entry, algorithm)
    except jwt.PyJWTError:
        return None  # a malformed key: not one we accept
    endorsements = entry.get("endorsements")
    return SigningKey(key, str(algorithm), tuple(str(e) for e in endorsements)
                      if isinstance(endorsements, list) else None)


async def get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url, timeout=TIMEOUT) as response:
        if response.status != 200:
            raise ValueError(f"GET {url}: HTTP {response.status}")
        value = await response.json(content_type=None)
    if not isinstance(value, dict):
        raise ValueError(f"GET {url}: not a JSON object")
    return value


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
