"""Which tenant owns each bot: KV `bots`, key `owner.<bot>`, JSON `{"tenant", "since_unix_ms"}`.

Written when a bot is first deployed through the admin API (the deploying key's tenant, or
the `tenant` the platform's key names), by `PUT /v1/admin/bots/{bot}/owner`, and by the
CLI (`botfactory bots owner BOT TENANT`, `botfactory publish --tenant`). A bot without a
record belongs to the default tenant (services/gateway/access.py).

Every request that names a bot asks for its owner, so `CachedBotOwners` keeps answers for
`cache_s` (the API key cache's time): a change made on this replica applies here at once, on
the others within that time.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError

from services.common.logging import get_logger
from services.common.nats import KV_BOTS, Bus
from services.common.subjects import check_id
from services.gateway.ports import BotOwners

log = get_logger(__name__)

OWNER_PREFIX = "owner."
MAX_CACHED_BOTS = 10_000


def owner_key(bot: str) -> str:
    return f"{OWNER_PREFIX}{check_id(bot, 'bot')}"


def encode_owner(tenant: str) -> bytes:
    return json.dumps({"tenant": tenant, "since_unix_ms": int(time.time() * 1000)},
                      separators=(",", ":")).encode()


def decode_owner(value: bytes | None) -> str | None:
    if not value:
        return None
    try:
        data = json.loads(value)
    except ValueError:
        return None
    tenant = data.get("tenant") if isinstance(data, dict) else None
    return tenant if isinstance(tenant, str) and tenant else None


class MemoryBotOwners:
    """Owner records in memory (a gateway without a bus; the unit tests)."""

    def __init__(self, records: dict[str, str] | None = None) -> None:
        self.records: dict[str, str] = dict(records or {})

    async def owner(self, bot: str) -> str | None:
        return self.records.get(bot)

    async def claim(self, bot: str, tenant: str) -> str:
        return self.records.setdefault(bot, tenant)

    async def set_owner(self, bot: str, tenant: str) -> str | None:
        previous = self.records.get(bot)
        self.records[bot] = tenant
        return previous

    async def owners(self) -> dict[str, str]:
        return dict(self.records)


class NatsBotOwners:
    """Owner records in KV `bots` (shared with the CLI: services and commands alike)."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, bus: Bus) -> NatsBotOwners:
        return cls(await bus.kv(KV_BOTS))

    async def owner(self, bot: str) -> str | None:
        try:
            entry = await self.kv.get(owner_key(bot))
        except KeyNotFoundError:
            return None
        return decode_owner(entry.value)

    async def claim(self, bot: str, tenant: str) -> str:
        try:
            await self.kv.create(owner_key(bot), encode_owner(tenant))
        except KeyWrongLastSequenceError:
            current = await self.owner(bot)
            if current is not None:
                return current
            await self.kv.put(owner_key(bot), encode_owner(tenant))  # a deleted record
        log.info("bot_owner_claimed", bot=bot, tenant=tenant)
        return tenant

    async def set_owner(self, bot: str, tenant: str) -> str | None:
        previous = await self.owner(bot)
        await self.kv.put(owner_key(bot), encode_owner(tenant))
        log.info("bot_owner_set", bot=bot, tenant=tenant, previous=previous)
        return previous

    async def owners(self) -> dict[str, str]:
        try:
            names = [k for k in await self.kv.keys() if k.startswith(OWNER_PREFIX)]
        except NoKeysError:
            return {}
        found: dict[str, str] = {}
        for name in names:
            with contextlib.suppress(KeyNotFoundError):
                tenant = decode_owner((await self.kv.get(name)).value)
                if tenant is not None:
                    found[name[len(OWNER_PREFIX):]] = tenant
        return found


class CachedBotOwners:
    """`owner` answers kept `cache_s` seconds (a missing record too); this replica's own
    changes apply at once."""

    def __init__(self, store: BotOwners, cache_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._cache_s = cache_s
        self._clock = clock
        self._held: dict[str, tuple[str | None, float]] = {}

    async def owner(self, bot: str) -> str | None:
        held = self._held.get(bot)
        now = self._clock()
        if held is not None and held[1] > now:
            return held[0]
        owner = await self.store.owner(bot)
        self._remember(bot, owner)
        return owner

    def _remember(self, bot: str, owner: str | None) -> None:
        if self._cache_s <= 0:
            return
        if len(self._held) >= MAX_CACHED_BOTS:
            self._held.clear()
        self._held[bot] = (owner, self._clock() + self._cache_s)

    async def claim(self, bot: str, tenant: str) -> str:
        owner = await self.store.claim(bot, tenant)
        self._remember(bot, owner)
        return owner

    async def set_owner(self, bot: str, tenant: str) -> str | None:
        previous = await self.store.set_owner(bot, tenant)
        self._remember(bot, tenant)
        return previous

    async def owners(self) -> dict[str, str]:
        return await self.store.owners()
