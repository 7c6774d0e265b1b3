"""Where the bots' webhooks are stored: KV `bots`, key `webhook.<bot>`, JSON
`{"url", "secret_sealed", "since_seq"}` (`NatsWebhookStore`; the signing secret sealed with
`BOTFACTORY_GATEWAY_CHANNEL_SECRETS_KEY` when it is set, else `"secret"` in plain text), and
the admin API's read-through cache (`CachedWebhookStore`). `since_seq` is the last sequence of
stream CONV when the webhook was created: the bot's messages up to it are never delivered
(docs/gateway.md, "Webhooks")."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from nats.js.errors import KeyNotFoundError

from services.common.logging import get_logger
from services.common.nats import KV_BOTS, Bus
from services.common.subjects import check_id
from services.gateway.channels.secrets import SecretBox, SecretUnreadable
from services.gateway.ports import Webhook, WebhookStore

log = get_logger(__name__)

STREAM = "CONV"
KEY_PREFIX = "webhook."
CACHE_S = 5.0
MAX_CACHED_BOTS = 10_000


def webhook_key(bot: str) -> str:
    return f"{KEY_PREFIX}{check_id(bot, 'bot')}"


@dataclass(frozen=True)
class Subscription:
    """A bot's webhook and the last CONV sequence before it existed (0: unknown, all count)."""

    hook: Webhook
    since_seq: int = 0

    def covers(self, sequence: int) -> bool:
        """Whether the message at stream `sequence` (0: unknown) was published after the
        webhook was created."""
        return sequence == 0 or sequence > self.since_seq


class SubscriptionStore(WebhookStore, Protocol):
    async def subscription(self, bot: str) -> Subscription | None:
        """The bot's webhook with its `since_seq`, read from the source (not a cache)."""
        ...

    def stored(self, bot: str, value: bytes | None) -> Subscription | None:
        """A stored KV value as a subscription (None when empty or unreadable)."""
        ...



class NatsWebhookStore:
    """KV `bots`, key `webhook.<bot>`: `{"url", "secret_sealed" | "secret", "since_seq"}` (the
    secret must be kept: it signs; `box` seals it at rest, and opens it)."""

    def __init__(self, bus: Bus, box: SecretBox | None = None) -> None:
        self._bus = bus
        self._box = box

    def stored(self, bot: str, value: bytes | None) -> Subscription | None:
        return stored_subscription(bot, value, self._box)

    async def put(self, bot: str, hook: Webhook) -> None:
        """Store the webhook; a new one gets the current end of stream CONV as `since_seq`,
        a replaced one keeps its own (its backlog is still delivered)."""
        kv = await self._bus.kv(KV_BOTS)
        current = await self.subscription(bot)
        since = current.since_seq if current is not None else await self._conv_last_seq()
        await kv.put(webhook_key(bot), encode(hook, since, self._box))

    async def get(self, bot: str) -> Webhook | None:
        found = await self.subscription(bot)
        return None if found is None else found.hook

    async def subscription(self, bot: str) -> Subscription | None:
        kv = await self._bus.kv(KV_BOTS)
        try:
            entry = await kv.get(webhook_key(bot))
        except KeyNotFoundError:  # KeyDeletedError included
            return None
        return self.stored(bot, entry.value)

    async def delete(self, bot: str) -> bool:
        if await self.get(bot) is None:
            return False
        kv = await self._bus.kv(KV_BOTS)
        await kv.delete(webhook_key(bot))
        return True

    async def _conv_last_seq(self) -> int:
        info = await self._bus.js.stream_info(STREAM)
        return int(info.state.last_seq)


def encode(hook: Webhook, since_seq: int = 0, box: SecretBox | None = None) -> bytes:
    secret = ({"secret_sealed": box.seal(hook.secret)} if box is not None
              else {"secret": hook.secret})
    return json.dumps({"url": hook.url, **secret, "since_seq": since_seq}).encode()


def decode(data: bytes, box: SecretBox | None = None) -> Webhook:
    return decode_subscription(data, box).hook


def decode_subscription(data: bytes, box: SecretBox | None = None) -> Subscription:
    """A stored webhook; a sealed secret needs the `box` that opens it (SecretUnreadable, a
    ValueError, otherwise). A plain one, stored before the key was set, still reads."""
    raw = json.loads(data)
    if isinstance(raw, dict) and isinstance(raw.get("secret_sealed"), str):
        if box is None:
            raise SecretUnreadable("the webhook secret is sealed and "
                                   "BOTFACTORY_GATEWAY_CHANNEL_SECRETS_KEY is not set")
        raw = {**raw, "secret": box.open(raw["secret_sealed"])}
    if not isinstance(raw, dict) or not isinstance(raw.get("url"), str) \
            or not isinstance(raw.get("secret"), str):
        raise ValueError("a webhook needs string fields url and secret")
    since = raw.get("since_seq", 0)  # absent: stored before since_seq existed
    if not isinstance(since, int) or isinstance(since, bool) or since < 0:
        raise ValueError("a webhook's since_seq must be an integer >= 0")
    return Subscription(Webhook(raw["url"], raw["secret"]), since)


def stored_subscription(bot: str, value: bytes | None,
                        box: SecretBox | None = None) -> Subscription | None:
    """A KV value as a subscription; None when empty or invalid (logged)."""
    if not value:
        return None
    try:
        return decode_subscription(value, box)
    except ValueError as exc:
        log.error("webhook_config_invalid", bot=bot, error=str(exc))
        return None


@dataclass
class _Cached:
    hook: Webhook | None
    expires: float


class CachedWebhookStore:
    """Reads through to `inner`, remembering each bot's webhook (or its absence) for `ttl_s`;
    writes go through and update the cache at once. One lookup per bot at a time."""

    def __init__(self, inner: WebhookStore, ttl_s: float = CACHE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self._ttl = ttl_s
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._loading: dict[str, asyncio.Task[Webhook | None]] = {}
        self._generation: dict[str, int] = {}

    async def put(self, bot: str, hook: Webhook) -> None:
        await self.inner.put(bot, hook)
        self._remember(bot, hook)

    async def delete(self, bot: str) -> bool:
        deleted = await self.inner.delete(bot)
        self._remember(bot, None)
        return deleted

    async def get(self, bot: str) -> Webhook | None:
        cached = self._cache.get(bot)
        if cached is not None and cached.expires > self._clock():
            return cached.hook
        task = self._loading.get(bot)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(bot))
            self._loading[bot] = task
        return await asyncio.shield(task)

    async def _load(self, bot: str) -> Webhook | None:
        generation = self._generation.get(bot, 0)
        try:
            hook = await self.inner.get(bot)
        finally:
            self._loading.pop(bot, None)
        if self._generation.get(bot, 0) == generation:  # no write meanwhile
            self._store(bot, hook)
        return hook

    def _remember(self, bot: str, hook: Webhook | None) -> None:
        self._generation[bot] = self._generation.get(bot, 0) + 1
        self._store(bot, hook)

    def _store(self, bot: str, hook: Webhook | None) -> None:
        if len(self._cache) >= MAX_CACHED_BOTS and bot not in self._cache:
            self._cache.clear()
        self._cache[bot] = _Cached(hook, self._clock() + self._ttl)
