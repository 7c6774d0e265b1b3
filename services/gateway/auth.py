"""API keys: issued with a random secret shown once, stored only as a peppered hash.

A key is `bfk_<key id>_<secret>` (`pk_<key id>_<secret>` for a publishable key, the one role
made to sit in a web page: it passes only the widget routes); the store holds
HMAC-SHA256(pepper, key) and the key's scope: one tenant, a list of bots (`*`: all) and a role
(publishable < client < agent < admin, each including the ones before). Every failure to
authenticate (missing, malformed, unknown, revoked) gives the same error, so the answer tells
nothing about which keys exist.

End users hold visitor tokens instead (`services/gateway/visitor.py`): signed, short-lived,
for one conversation; they authenticate as a Principal bound to that conversation.

Failed attempts are throttled per client address: each failure takes a token from the client's
bucket (`failures`, a RateLimiter); while it is empty, a request from that address whose key
fails gets 429 instead of 401 (and malformed ones are refused without a look-up), while the
valid keys of the address go on working: one bad client behind a NAT locks nobody else out.
Keys have 256 random bits, so answering a right key while throttled gives a guesser nothing.
Failures are logged (`auth_failed`, with the reason and the client; `auth_blocked` when a
client runs out), never with the presented key.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue

from services.common.errors import PermissionDenied, Unauthenticated
from services.common.logging import get_logger
from services.common.nats import Bus
from services.gateway.access import (
    ALL_TENANTS,
    DEFAULT_TENANT,
    ROLE_PERMISSIONS,
    TENANT_NAME,
    BotNotFound,
    Permission,
    bot_tenant,
    least_key_role,
)
from services.gateway.owners import MemoryBotOwners
from services.gateway.ports import ALL_BOTS, ApiKeyRecord, BotOwners, KeyStore, Role
from services.gateway.ratelimit import AuthThrottled, RateLimited, RateLimiter
from services.gateway.visitor import (
    INVALID_TOKEN,
    TokenExpired,
    VisitorClaims,
    VisitorTokens,
    is_visitor_token,
)

log = get_logger(__name__)

KEY_PREFIX = "bfk_"
PUBLISHABLE_PREFIX = "pk_"
KV_APIKEYS = "apikeys"
BOOTSTRAP_KEY_ID = "bootstrap"
INVALID_KEY = "missing or invalid API key"
TENANT_RE = TENANT_NAME
MAX_CACHED_KEYS = 10_000
MAX_TOKEN_CHARS = 256
# A bearer JWT (OIDC, services/gateway/oidc.py): header.payload.signature, base64url.
JWT_SHAPE = re.compile(r"^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
MAX_JWT_CHARS = 16_384
KEY_SHAPE = re.compile(r"^(?:bfk|pk)_([0-9a-f]{1,64})_[A-Za-z0-9_-]{1,190}$")


class KeyExists(Exception):
    """A key with the same id or hash is already stored (a random collision: retry)."""


def now_ms() -> int:
    return int(time.time() * 1000)


def hash_secret(pepper: str, token: str) -> str:
    """The stored form of a presented key: HMAC-SHA256 keyed by the server's pepper (hex)."""
    return hmac.new(pepper.encode(), token.encode(), hashlib.sha256).hexdigest()


def new_token(prefix: str = KEY_PREFIX) -> tuple[str, str]:
    """A fresh (key id, full key); the secret part has 256 random bits."""
    key_id = secrets.token_hex(8)
    return key_id, f"{prefix}{key_id}_{secrets.token_urlsafe(32)}"


def key_prefix(role: Role) -> str:
    """`pk_` for a publishable key, `bfk_` for the others: the prefix tells at a glance which
    keys may sit in a page and which must stay on a server."""
    return PUBLISHABLE_PREFIX if role is Role.PUBLISHABLE else KEY_PREFIX


Grants = tuple[tuple[str, frozenset[Permission]], ...]

# What a route's least key role stood for before routes named permissions (callers that
# still pass a Role: the gRPC API).
ROLE_NEEDS = {Role.PUBLISHABLE: Permission.WIDGET, Role.CLIENT: Permission.CONVERSE,
              Role.AGENT: Permission.AGENT, Role.ADMIN: Permission.ADMIN}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the scope of the key that authenticated the request, of a visitor
    token (`conversation` set: that conversation of its one bot and nothing else), or of a
    person signed in with OIDC (`grants`: their permissions per tenant; `role` None)."""

    key_id: str
    tenant: str
    bots: tuple[str, ...]
    role: Role | None
    conversation: str | None = None
    grants: Grants | None = None
    email: str | None = None
    environment: str = ""  # the key's bot environment ("": the bot's default; versions.md)

    @classmethod
    def of(cls, record: ApiKeyRecord) -> Principal:
        return cls(record.key_id, record.tenant, record.bots, record.role,
                   environment=record.environment)

    @classmethod
    def visitor(cls, claims: VisitorClaims, tenant: str) -> Principal:
        """A visitor's principal; its key id (the rate-limit bucket, the logs) names the
        issuing key and the conversation."""
        return cls(f"{claims.issuer}:{claims.bot}:{claims.conversation}", tenant,
                   (claims.bot,), Role.CLIENT, claims.conversation,
                   environment=claims.environment)

    @classmethod
    def person(cls, subject: str, grants: Grants, email: str | None = None) -> Principal:
        """A person signed in with OIDC: every bot of the tenants they have roles in. `tenant`
        (the audit's actor tenant only: what they may do is in `grants`) is their one tenant,
        `*` with several, empty with none."""
        tenants = {tenant for tenant, _ in grants}
        tenant = next(iter(tenants)) if len(tenants) == 1 else ALL_TENANTS if tenants else ""
        return cls(f"user:{subject}", tenant, (ALL_BOTS,), None, grants=grants, email=email)

    @property
    def is_visitor(self) -> bool:
        return self.conversation is not None

    @property
    def is_person(self) -> bool:
        return self.grants is not None

    @property
    def is_publishable(self) -> bool:
        return self.role is Role.PUBLISHABLE

    @property
    def all_grants(self) -> Grants:
        """(tenant, permissions) pairs: a key's one tenant and role, a person's roles."""
        if self.grants is not None:
            return self.grants
        if self.role is None:
            return ()
        return ((self.tenant, ROLE_PERMISSIONS[self.role.value]),)

    def permissions(self, tenant: str) -> frozenset[Permission]:
        """What this principal may do in `tenant` (grants of `*` count in every tenant)."""
        granted: frozenset[Permission] = frozenset()
        for held, permissions in self.all_grants:
            if held in (ALL_TENANTS, tenant):
                granted |= permissions
        return granted

    def may_somewhere(self, permission: Permission) -> bool:
        return any(permission in permissions for _, permissions in self.all_grants)

    def tenants_with(self, permission: Permission) -> tuple[str, ...]:
        """The tenants where this principal has `permission` (`*`: every tenant)."""
        return tuple(sorted({held for held, permissions in self.all_grants
                             if permission in permissions}))

    def rate_bucket(self, client: str) -> str:
        """The rate-limit bucket of a request: the key's, but a publishable key's is split by
        client address (the key is public: anyone could drain one shared bucket and stop
        the site's widget)."""
        return f"{self.key_id}@{client}" if self.is_publishable else self.key_id

    def allows_bot(self, bot: str) -> bool:
        return ALL_BOTS in self.bots or bot in self.bots

    def manages_tenant(self, tenant: str) -> bool:
        return Permission.ADMIN in self.permissions(tenant)

    def covers_bots(self, bots: Iterable[str]) -> bool:
        """Whether every bot in `bots` is within this key's scope (`*` only within `*`)."""
        return all(self.allows_bot(bot) for bot in bots)

    def bot_permissions(self, bot: str, owner: str | None,
                        default_tenant: str = DEFAULT_TENANT) -> frozenset[Permission] | None:
        """What this principal may do to `bot` (owned by `owner`; None: no owner record, the
        default tenant's); None when the bot is out of its reach.

        A bot is in reach when the principal's bots include it (`*`: all) and it belongs to
        one of the principal's tenants. One exception keeps the keys issued before bots had
        owners working: a key that names a bot without an owner record explicitly (not
        through `*`) reaches it whatever the key's tenant (`make run`'s demo keys do)."""
        if not self.allows_bot(bot):
            return None
        tenant = bot_tenant(owner, default_tenant)
        if any(held in (ALL_TENANTS, tenant) for held, _ in self.all_grants):
            return self.permissions(tenant)
        if owner is None and bot in self.bots and not self.is_person:
            return self.permissions(self.tenant)
        return None


BOOTSTRAP_PRINCIPAL = Principal(BOOTSTRAP_KEY_ID, ALL_TENANTS, (ALL_BOTS,), Role.ADMIN)


class PeopleVerifier(Protocol):
    """Bearer JWTs of people (services/gateway/oidc.py)."""

    async def principal(self, token: str) -> Principal:
        """The person's principal; Unauthenticated for any token that does not verify."""
        ...


@dataclass(frozen=True)
class IssuedKey:
    record: ApiKeyRecord
    secret: str


@dataclass
class _Cached:
    principal: Principal
    expires: float


class Authenticator:
    """Verifies bearer keys against the store (with a short cache) and checks scopes."""

    def __init__(self, store: KeyStore, pepper: str, *, bootstrap_key: str = "",
                 cache_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 failures: RateLimiter | None = None,
                 tokens: VisitorTokens | None = None,
                 owners: BotOwners | None = None,
                 default_tenant: str = DEFAULT_TENANT,
                 people: PeopleVerifier | None = None) -> None:
        self.store = store
        self.failures = failures
        self.tokens = tokens if tokens is not None else VisitorTokens("", 0.0)
        # Which tenant owns each bot (services/gateway/owners.py): every bot is checked.
        self.owners: BotOwners = owners if owners is not None else MemoryBotOwners()
        self.default_tenant = default_tenant
        # Bearer JWTs of people (OIDC, services/gateway/oidc.py); None: OIDC is off.
        self.people = people
        self._pepper = pepper
        self._bootstrap_hash = hash_secret(pepper, bootstrap_key) if bootstrap_key else ""
        self._cache_s = cache_s
        self._clock = clock
        self._cache: dict[str, _Cached] = {}

    async def authenticate(self, token: str | None, client: str | None = None) -> Principal:
        """The key's (or visitor token's) principal; Unauthenticated (401) for any bad one.
        With `client` (the caller's address), failures are counted; once the address has used
        up its tries, its failing requests get AuthThrottled (429), its valid ones go on."""
        if client is None or self.failures is None:
            return await self._authenticate(token)
        wait_s = self.failures.peek(client)
        if wait_s > 0 and not (_well_formed(token) or self._is_bootstrap(token)):
            raise AuthThrottled(wait_s)  # no look-up for garbage while throttled
        try:
            return await self._authenticate(token)
        except TokenExpired:
            raise  # a genuine token, only old: not a guess
        except Unauthenticated:
            if wait_s > 0:
                raise AuthThrottled(wait_s) from None
            self._failed(token, client)
            raise

    def _failed(self, token: str | None, client: str) -> None:
        shape = KEY_SHAPE.match(token or "")
        reason = ("missing" if not token else "visitor_token_invalid" if is_visitor_token(token)
                  else "jwt_invalid" if is_jwt(token)
                  else "malformed" if shape is None else "unknown_or_revoked")
        log.warning("auth_failed", client=client, reason=reason,
                    key_id=shape.group(1) if shape else None)
        assert self.failures is not None
        with contextlib.suppress(RateLimited):
            self.failures.check(client)
        wait_s = self.failures.peek(client)
        if wait_s > 0:  # this failure used the last try: the client is refused from now on
            log.warning("auth_blocked", client=client, retry_after_s=round(wait_s, 1))

    async def _authenticate(self, token: str | None) -> Principal:
        if token and is_visitor_token(token):
            return await self._visitor(token)
        if token and self.people is not None and is_jwt(token):
            return await self.people.principal(token)
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated(INVALID_KEY)
        key_hash = hash_secret(self._pepper, token)
        if self._bootstrap_hash and hmac.compare_digest(key_hash, self._bootstrap_hash):
            return BOOTSTRAP_PRINCIPAL
        cached = self._cache.get(key_hash)
        if cached is not None and cached.expires > self._clock():
            return cached.principal
        return await self._lookup(key_hash)

    def _is_bootstrap(self, token: str | None) -> bool:
        if not token or not self._bootstrap_hash or len(token) > MAX_TOKEN_CHARS:
            return False
        return hmac.compare_digest(hash_secret(self._pepper, token), self._bootstrap_hash)

    async def _visitor(self, token: str) -> Principal:
        """A visitor token's principal: its signature and expiry, then its issuing key (a
        revoked key's tokens stop working with it)."""
        claims = self.tokens.verify(token)
        issuer = await self._issuer(claims.issuer)
        if issuer is None or not issuer.allows_bot(claims.bot):
            raise Unauthenticated(INVALID_TOKEN)
        return Principal.visitor(claims, issuer.tenant)

    async def _issuer(self, key_id: str) -> Principal | None:
        """The principal of a live key by its id (cached like keys), None when revoked."""
        if key_id == BOOTSTRAP_KEY_ID:
            return BOOTSTRAP_PRINCIPAL if self._bootstrap_hash else None
        cached = self._cache.get(f"id:{key_id}")
        if cached is not None and cached.expires > self._clock():
            return cached.principal
        record = await self.store.get(key_id)
        if record is None or record.revoked:
            return None
        principal = Principal.of(record)
        self._remember(f"id:{key_id}", principal)
        return principal

    def _remember(self, cache_key: str, principal: Principal) -> None:
        if self._cache_s > 0:
            if len(self._cache) >= MAX_CACHED_KEYS:
                self._cache.clear()
            self._cache[cache_key] = _Cached(principal, self._clock() + self._cache_s)

    def mint(self, principal: Principal, bot: str, conversation: str) -> tuple[str, int]:
        """A visitor token of `conversation` issued by the principal's key, and its expiry
        (unix seconds). Visitors cannot mint (a token would renew itself forever)."""
        if principal.is_visitor:
            raise PermissionDenied("a visitor token cannot issue visitor tokens")
        if principal.is_person:
            raise PermissionDenied("visitor tokens are issued with API keys (a person's "
                                   "sign-in cannot vouch for them once it ends)")
        token, expires = self.tokens.mint(principal.key_id, bot, conversation,
                                          principal.environment)
        log.info("visitor_token_issued", key_id=principal.key_id, bot=bot,
                 conversation=conversation, expires_unix_s=expires)
        return token, expires

    async def admit(self, principal: Principal, need: Permission | Role, bot: str | None = None,
                    *, conversation: str | None = None) -> str | None:
        """`authorize` with the bot's owner looked up; the tenant the bot belongs to (None
        without a bot). 403 PermissionDenied for a missing permission, 404 BotNotFound for
        a bot out of reach (another tenant's, not in the key's bots, or none)."""
        owner = await self.owners.owner(bot) if bot is not None else None
        authorize(principal, need, bot, conversation=conversation, owner=owner,
                  default_tenant=self.default_tenant)
        return bot_tenant(owner, self.default_tenant) if bot is not None else None

    async def _lookup(self, key_hash: str) -> Principal:
        record = await self.store.get_by_hash(key_hash)
        if record is None or record.revoked or not hmac.compare_digest(record.key_hash, key_hash):
            self._cache.pop(key_hash, None)
            raise Unauthenticated(INVALID_KEY)
        principal = Principal.of(record)
        self._remember(key_hash, principal)
        return principal

    async def issue(self, tenant: str, bots: Iterable[str], role: Role,
                    description: str = "", environment: str = "") -> IssuedKey:
        """Create and store a new key; the returned secret is never stored nor shown again."""
        for _ in range(3):
            key_id, token = new_token(key_prefix(role))
            record = ApiKeyRecord(key_id=key_id, key_hash=hash_secret(self._pepper, token),
                                  tenant=tenant, bots=tuple(bots), role=role,
                                  created_at_unix_ms=now_ms(), description=description,
                                  environment=environment)
            try:
                await self.store.create(record)
            except KeyExists:
                continue
            log.info("api_key_created", key_id=key_id, tenant=tenant, role=role.value)
            return IssuedKey(record, token)
        raise KeyExists("could not allocate a unique key id")

    async def revoke(self, key_id: str) -> ApiKeyRecord | None:
        record = await self.store.revoke(key_id)
        if record is not None:
            self._cache.pop(record.key_hash, None)
            self._cache.pop(f"id:{key_id}", None)
            log.info("api_key_revoked", key_id=key_id, tenant=record.tenant)
        return record


def authorize(principal: Principal, need: Permission | Role, bot: str | None = None, *,
              conversation: str | None = None, owner: str | None = None,
              default_tenant: str = DEFAULT_TENANT) -> None:
    """Raise unless the principal may do what needs `need` to `bot` (owned by `owner`; None:
    no owner record). The checks, in order, so that no answer depends on another tenant:

    1. the principal has `need` in none of its tenants: 403 (whatever the bot);
    2. the bot is out of its reach (another tenant's, not in its key's bots, or a bot that
       does not exist in a tenant it has no role in): 404, one answer for all;
    3. it lacks `need` in the bot's tenant (a person with roles in several tenants): 403.

    `conversation`: the operation is on this conversation and a visitor token of it may do
    it too; without it, visitor tokens are refused. A `Role` stands for its permission
    (ROLE_NEEDS)."""
    if isinstance(need, Role):
        need = ROLE_NEEDS[need]
    if principal.is_visitor:
        _authorize_visitor(principal, bot, conversation)
    elif principal.is_publishable and need is not Permission.WIDGET:
        raise PermissionDenied("a publishable key (pk_) only reads a bot's widget settings "
                               "and starts widget sessions")
    elif not principal.may_somewhere(need):
        raise PermissionDenied(_lacking(principal, need, conversation))
    if bot is None:
        return
    permissions = principal.bot_permissions(bot, owner, default_tenant)
    if permissions is None:
        raise BotNotFound(bot)
    if need not in permissions and not principal.is_visitor:
        raise PermissionDenied(_lacking(principal, need, conversation))


def _lacking(principal: Principal, need: Permission, conversation: str | None) -> str:
    also = "" if conversation is None else ", or a visitor token of this conversation"
    if principal.role is not None:
        return (f"this API key's role ({principal.role.value}) may not do this (needs "
                f"{least_key_role(need)}{also})")
    return f"your roles may not do this here (needs the {need.value} permission{also})"


def _authorize_visitor(principal: Principal, bot: str | None, conversation: str | None) -> None:
    if conversation is None:
        raise PermissionDenied("a visitor token may only send messages to, follow and read "
                               "its own conversation")
    if bot is None or not principal.allows_bot(bot) or conversation != principal.conversation:
        raise PermissionDenied("this visitor token is for another conversation")


def is_jwt(token: str) -> bool:
    return len(token) <= MAX_JWT_CHARS and JWT_SHAPE.match(token) is not None


def _well_formed(token: str | None) -> bool:
    """Whether `token` has the shape of an API key, a visitor token or a JWT (worth a
    look-up)."""
    if not token:
        return False
    return KEY_SHAPE.match(token) is not None or is_visitor_token(token) or is_jwt(token)


def record_to_json(record: ApiKeyRecord) -> bytes:
    data: dict[str, Any] = {
        "key_id": record.key_id, "key_hash": record.key_hash, "tenant": record.tenant,
        "bots": list(record.bots), "role": record.role.value,
        "created_at_unix_ms": record.created_at_unix_ms,
        "revoked_at_unix_ms": record.revoked_at_unix_ms, "description": record.description,
        **({"environment": record.environment} if record.environment else {}),
    }
    return json.dumps(data, separators=(",", ":")).encode()


def record_from_json(raw: bytes) -> ApiKeyRecord:
    data = json.loads(raw)
    return ApiKeyRecord(
        key_id=str(data["key_id"]), key_hash=str(data["key_hash"]), tenant=str(data["tenant"]),
        bots=tuple(str(b) for b in data["bots"]), role=Role(data["role"]),
        created_at_unix_ms=int(data["created_at_unix_ms"]),
        revoked_at_unix_ms=data.get("revoked_at_unix_ms"),
        description=str(data.get("description", "")),
        environment=str(data.get("environment", "")),
    )


async def ensure_apikeys_bucket(bus: Bus, bucket: str = KV_APIKEYS) -> KeyValue:
    """The API key bucket, created if missing (safe to run concurrently)."""
    try:
        return await bus.js.key_value(bucket)
    except BucketNotFoundError:
        kv = await bus.js.create_key_value(bucket=bucket, history=5)
        log.info("kv_created", bucket=bucket)
        return kv


class NatsKeyStore:
    """A KeyStore in the JetStream KV bucket `apikeys`, shared by every gateway replica.

    `h.<hash>` holds the record (JSON); `i.<key id>` holds the hash (the index by id).
    """

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, bus: Bus, bucket: str = KV_APIKEYS) -> NatsKeyStore:
        return cls(await ensure_apikeys_bucket(bus, bucket))

    async def create(self, record: ApiKeyRecord) -> None:
        try:
            await self.kv.create(f"i.{record.key_id}", record.key_hash.encode())
        except KeyWrongLastSequenceError as exc:
            raise KeyExists(record.key_id) from exc
        try:
            await self.kv.create(f"h.{record.key_hash}", record_to_json(record))
        except KeyWrongLastSequenceError as exc:
            await self.kv.delete(f"i.{record.key_id}")
            raise KeyExists(record.key_id) from exc

    async def get_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        if not re.fullmatch(r"[0-9a-f]{64}", key_hash):
            return None
        try:
            entry = await self.kv.get(f"h.{key_hash}")
        except KeyNotFoundError:
            return None
        return record_from_json(entry.value) if entry.value else None

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        key_hash = await self._hash_of(key_id)
        return await self.get_by_hash(key_hash) if key_hash else None

    async def _hash_of(self, key_id: str) -> str | None:
        if not re.fullmatch(r"[0-9a-f]{1,64}", key_id):
            return None
        try:
            entry = await self.kv.get(f"i.{key_id}")
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None

    async def revoke(self, key_id: str) -> ApiKeyRecord | None:
        key_hash = await self._hash_of(key_id)
        if key_hash is None:
            return None
        for _ in range(10):
            try:
                entry = await self.kv.get(f"h.{key_hash}")
            except KeyNotFoundError:
                return None
            record = record_from_json(entry.value or b"{}")
            if record.revoked:
                return record
            revoked = replace(record, revoked_at_unix_ms=now_ms())
            try:
                await self.kv.update(f"h.{key_hash}", record_to_json(revoked), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            return revoked
        raise RuntimeError(f"could not revoke key {key_id}: concurrent updates")

    async def list_keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        try:
            names = [name for name in await self.kv.keys() if name.startswith("h.")]
        except NoKeysError:
            return []
        found = [await self.get_by_hash(name[2:]) for name in names]
        records = [r for r in found if r is not None]
        selected = [r for r in records if tenant is None or r.tenant == tenant]
        return sorted(selected, key=lambda r: (r.created_at_unix_ms, r.key_id))
