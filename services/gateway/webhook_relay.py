"""Webhook delivery of bot messages: the bots' webhook configuration and the relay that POSTs
every bot (and agent) message of a bot with a webhook to it.

Configuration: KV `bots`, key `webhook.<bot>`, JSON `{"url", "secret", "since_seq"}`
(`NatsWebhookStore`). `since_seq` is the last sequence of stream CONV when the webhook was
created (kept when it is replaced): the bot's messages up to it predate the webhook and are never
delivered to it. The admin API reads through a short cache (`CachedWebhookStore`, 5 s); the relay
follows the `webhook.*` keys with a KV watch (`WebhookFollower`): a change applies at once on the
replica that made it (`FollowedWebhookStore`) and on the others as soon as their watch sees it
(milliseconds). A bot message of a bot this replica does not know (yet) is looked up in KV.

Delivery: one durable pull consumer, `gateway-webhooks`, on stream CONV, shared by every gateway
replica, so each message is delivered by one replica. Its filter subjects are
`conv.out.<bot>.>` of the bots with a webhook only (with none: `conv.out.~none.>`, which matches
nothing), so the replies of the other bots never reach a gateway. It starts at the messages
published after it was first created (deliver policy NEW) and acks explicitly, each message only
after its delivery finished: accepted by the receiver, or refused / out of attempts, in which
case the payload goes to `events.deadletter.webhook` (stream EVENTS) before the ack, so nothing
is silently lost. At most `max_ack_pending` messages are unacknowledged at once (all replicas
together): a slow receiver holds the consumer back instead of filling memory. In-progress acks
keep a message from being redelivered while it waits or is retried. Delivery is at least once:
a message whose ack is lost (a replica killed mid-delivery) is delivered again, with the same
`delivery_id` (derived from the message), so receivers can drop duplicates. Messages of one
conversation are delivered in order by a replica; across replicas order is not guaranteed.

Following the configuration: nats-server offers no compare-and-set on a consumer's config, so
each replica changes the filter by read-modify-write of the bots it knows changed, never by
writing its whole view: a replica that has not yet seen a bot cannot remove it.
- Adding (PUT on this replica): the bot joins the filter first, then `since_seq` is read and the
  webhook stored. Every message after `since_seq` was published while the filter held the bot,
  so the consumer has not skipped it; earlier ones it may still hand out (a consumer's position
  only moves when it is pulled: the relay keeps pulling, even with no bot, so that backlog stays
  small), and the relay acks those without delivering them.
- Removing (DELETE here, or a deletion the watch shows): the webhook is gone from this replica's
  view at once, so its messages are acked without delivery (deliveries in flight finish); the bot
  leaves the filter unless this replica's view holds it again.
- Every `SYNC_S` each replica adds the bots of its view missing from the filter (an update lost
  to a concurrent one) and removes bots that were in the filter without a webhook at two checks
  in a row (a PUT interrupted between its two steps), and recreates a deleted consumer.
A filter update lost to a concurrent one, or a deletion processed while another replica is in
the middle of re-adding the same bot, can leave a bot out of the filter until the next check
(messages published meanwhile are skipped); everything else converges within the watch delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from services.common.logging import get_logger
from services.common.nats import KV_BOTS, Bus
from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.pull import fetch_or_empty
from services.common.subjects import HEADER_MSG_ID, ID_RE, check_id
from services.gateway.ports import Webhook, WebhookStore
from services.gateway.webhooks import WebhookSender, message_payload

log = get_logger(__name__)

DURABLE = "gateway-webhooks"
STREAM = "CONV"
SUBJECT_PREFIX = "conv.out."
NO_BOT_FILTER = "conv.out.~none.>"  # '~' is not allowed in a bot id: matches no message
DEAD_LETTER_SUBJECT = "events.deadletter.webhook"
KEY_PREFIX = "webhook."
MAX_ACK_PENDING = 256
ACK_WAIT_S = 30.0
CACHE_S = 5.0
SYNC_S = 10.0
MAX_CACHED_BOTS = 10_000
FETCH_MAX = 64
FETCH_TIMEOUT_S = 2.0
PUBLISH_TIMEOUT_S = 5.0
RETRY_DELAY_S = 1.0


def webhook_key(bot: str) -> str:
    return f"{KEY_PREFIX}{check_id(bot, 'bot')}"


def delivery_id(message: conversation_pb2.BotMessage, fallback: str = "") -> str:
    """The same for every delivery of one bot message (redeliveries included)."""
    ident = message.message_id or fallback
    raw = f"{message.bot_id}/{message.conversation_id}/{ident}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


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


# --- stores -----------------------------------------------------------------------------------


class InMemoryWebhookStore:
    def __init__(self) -> None:
        self.hooks: dict[str, Webhook] = {}
        self.since: dict[str, int] = {}

    async def put(self, bot: str, hook: Webhook) -> None:
        self.hooks[bot] = hook

    async def get(self, bot: str) -> Webhook | None:
        return self.hooks.get(bot)

    async def delete(self, bot: str) -> bool:
        return self.hooks.pop(bot, None) is not None

    async def subscription(self, bot: str) -> Subscription | None:
        hook = await self.get(bot)
        return None if hook is None else Subscription(hook, self.since.get(bot, 0))


class NatsWebhookStore:
    """KV `bots`, key `webhook.<bot>`: `{"url", "secret", "since_seq"}` (the secret must be
    kept: it signs)."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def put(self, bot: str, hook: Webhook) -> None:
        """Store the webhook; a new one gets the current end of stream CONV as `since_seq`,
        a replaced one keeps its own (its backlog is still delivered)."""
        kv = await self._bus.kv(KV_BOTS)
        current = await self.subscription(bot)
        since = current.since_seq if current is not None else await self._conv_last_seq()
        await kv.put(webhook_key(bot), encode(hook, since))

    async def get(self, bot: str) -> Webhook | None:
        found = await self.subscription(bot)
        return None if found is None else found.hook

    async def subscription(self, bot: str) -> Subscription | None:
        kv = await self._bus.kv(KV_BOTS)
        try:
            entry = await kv.get(webhook_key(bot))
        except KeyNotFoundError:  # KeyDeletedError included
            return None
        return stored_subscription(bot, entry.value)

    async def delete(self, bot: str) -> bool:
        if await self.get(bot) is None:
            return False
        kv = await self._bus.kv(KV_BOTS)
        await kv.delete(webhook_key(bot))
        return True

    async def _conv_last_seq(self) -> int:
        info = await self._bus.js.stream_info(STREAM)
        return int(info.state.last_seq)


def encode(hook: Webhook, since_seq: int = 0) -> bytes:
    return json.dumps({"url": hook.url, "secret": hook.secret, "since_seq": since_seq}).encode()


def decode(data: bytes) -> Webhook:
    return decode_subscription(data).hook


def decode_subscription(data: bytes) -> Subscription:
    raw = json.loads(data)
    if not isinstance(raw, dict) or not isinstance(raw.get("url"), str) \
            or not isinstance(raw.get("secret"), str):
        raise ValueError("a webhook needs string fields url and secret")
    since = raw.get("since_seq", 0)  # absent: stored before since_seq existed
    if not isinstance(since, int) or isinstance(since, bool) or since < 0:
        raise ValueError("a webhook's since_seq must be an integer >= 0")
    return Subscription(Webhook(raw["url"], raw["secret"]), since)


def stored_subscription(bot: str, value: bytes | None) -> Subscription | None:
    """A KV value as a subscription; None when empty or invalid (logged)."""
    if not value:
        return None
    try:
        return decode_subscription(value)
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



# --- following the configuration: the consumer's filter subjects --------------------------------


def bot_filter(bot: str) -> str:
    return f"{SUBJECT_PREFIX}{bot}.>"


def filters_for(bots: Iterable[str]) -> list[str]:
    """The consumer's filter subjects for `bots` (one that matches nothing when there is none:
    a consumer without a filter would take the whole stream)."""
    return [bot_filter(bot) for bot in sorted(bots)] or [NO_BOT_FILTER]


def filters_of(config: ConsumerConfig) -> list[str]:
    if config.filter_subjects:
        return list(config.filter_subjects)
    return [config.filter_subject] if config.filter_subject else []


def bots_of(filters: Iterable[str]) -> frozenset[str]:
    """The bots named by `conv.out.<bot>.>` filters; any other filter (the placeholder, the
    `conv.out.>` of the relay's first version) names none."""
    bots = set()
    for subject in filters:
        token = subject[len(SUBJECT_PREFIX):-2]
        if subject.startswith(SUBJECT_PREFIX) and subject.endswith(".>") and ID_RE.match(token):
            bots.add(token)
    return frozenset(bots)


def filter_target(current: frozenset[str], live: frozenset[str],
                  removed: frozenset[str] = frozenset(),
                  stale: frozenset[str] = frozenset()) -> frozenset[str]:
    """The bots the filter should hold after a replica's read-modify-write: those it holds
    (`current`, maybe added by replicas this one has not heard from yet), plus the bots with a
    webhook in this replica's view (`live`), minus those it saw removed and those found stale
    twice (`removed`, `stale`) unless its view holds them."""
    return (current | live) - ((removed | stale) - live)


class WebhookFollower:
    """This replica's view of the bots' webhooks (a KV watch on `webhook.*`) and the shared
    consumer's filter subjects, kept in line with it (module doc, "Following")."""

    def __init__(self, bus: Bus, store: SubscriptionStore,
                 consumer: Callable[[list[str]], ConsumerConfig], sync_s: float = SYNC_S) -> None:
        self._bus = bus
        self._store = store
        self._consumer = consumer
        self._sync_s = sync_s
        self.live: dict[str, Subscription] = {}
        self._admitting: dict[str, int] = {}
        self._suspects: frozenset[str] = frozenset()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def get(self, bot: str) -> Subscription | None:
        return self.live.get(bot)

    async def start(self) -> None:
        """Read the current webhooks, create or update the consumer, then follow changes."""
        kv = await self._bus.kv(KV_BOTS)
        watcher = await kv.watch(f"{KEY_PREFIX}*")
        ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow(watcher, ready), name="webhook-follow")]
        await ready.wait()
        await self.sync()
        self._tasks.append(loop.create_task(self._check_regularly(), name="webhook-sync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def wake(self) -> None:
        """Check the consumer now (e.g. after a failed fetch: it may have been deleted)."""
        self._wake.set()

    async def admit(self, bot: str) -> None:
        """Put `bot` in the filter before its webhook is stored (a PUT on this replica)."""
        self._admitting[bot] = self._admitting.get(bot, 0) + 1
        try:
            await self.sync()
        except BaseException:
            self._release(bot)
            raise

    async def refresh(self, bot: str, *, admitted: bool = False) -> None:
        """After a PUT or DELETE on this replica: read the bot's webhook and apply it at once."""
        if admitted:
            self._release(bot)
        found = await self._store.subscription(bot)
        if found is None:
            self.live.pop(bot, None)
            await self.sync(removed=frozenset({bot}))
        else:
            self.live[bot] = found
            await self.sync()

    def _release(self, bot: str) -> None:
        self._admitting[bot] -= 1
        if not self._admitting[bot]:
            del self._admitting[bot]

    async def sync(self, *, removed: frozenset[str] = frozenset(), sweep: bool = False) -> None:
        """Read-modify-write of the consumer's filter (created when missing)."""
        async with self._lock:
            info = await self._info()
            filters = filters_of(info.config) if info is not None else []
            current = bots_of(filters)
            live = frozenset(self.live) | frozenset(self._admitting)
            stale = self._stale(current - live) if sweep else frozenset()
            target = filters_for(filter_target(current, live, removed, stale))
            if info is None or sorted(filters) != target:
                await self._bus.js.add_consumer(STREAM, self._consumer(target))
                log.info("webhook_filter_updated", bots=len(target), created=info is None)

    def _stale(self, unknown: frozenset[str]) -> frozenset[str]:
        """Bots in the filter without a webhook here at this check and the previous one."""
        stale = unknown & self._suspects
        self._suspects = unknown - stale
        return stale

    async def _info(self) -> ConsumerInfo | None:
        try:
            info: ConsumerInfo = await self._bus.js.consumer_info(STREAM, DURABLE)
        except nats.js.errors.NotFoundError:
            return None
        return info

    async def _follow(self, watcher: KeyValue.KeyWatcher, ready: asyncio.Event) -> None:
        removed: set[str] = set()
        async for entry in watcher:
            if entry is None:  # the initial values are read (start syncs; no removals then)
                ready.set()
                removed.clear()
                continue
            self._apply(entry, removed)
            if ready.is_set() and not entry.delta:  # caught up: one update for the batch
                await self._sync_quietly(removed=frozenset(removed))
                removed.clear()

    def _apply(self, entry: KeyValue.Entry, removed: set[str]) -> None:
        bot = entry.key[len(KEY_PREFIX):]
        found = None
        if entry.operation not in (KV_DEL, KV_PURGE):
            found = stored_subscription(bot, entry.value)
        if found is None:
            self.live.pop(bot, None)
            removed.add(bot)
        else:
            self.live[bot] = found
            removed.discard(bot)

    async def _check_regularly(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._sync_s)
            self._wake.clear()
            await self._sync_quietly(sweep=True)

    async def _sync_quietly(self, **options: Any) -> None:
        try:
            await self.sync(**options)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.warning("webhook_filter_sync_failed", error=repr(exc))  # the next check retries


# --- the relay --------------------------------------------------------------------------------


class WebhookRelay:
    """Consumes `conv.out.<bot>.>` of the bots with a webhook and delivers each message
    (module doc). `store` answers for bots this replica's view does not hold."""

    def __init__(self, bus: Bus, store: SubscriptionStore, sender: WebhookSender, *,
                 max_ack_pending: int = MAX_ACK_PENDING, ack_wait_s: float = ACK_WAIT_S,
                 concurrency: int | None = None, sync_s: float = SYNC_S,
                 fetch_timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self._bus = bus
        self._store = store
        self.follower = WebhookFollower(bus, store, self._consumer_config, sync_s)
        self._fetch_timeout = fetch_timeout_s
        self.skipped = 0  # messages published before their bot's webhook existed
        self._sender = sender
        self._max_ack_pending = max_ack_pending
        self._ack_wait = ack_wait_s
        self._slots = asyncio.Semaphore(max_ack_pending)
        self._deliveries = asyncio.Semaphore(concurrency or sender.settings.concurrency)
        self._busy: dict[asyncio.Task[None], Msg] = {}
        # Per conversation, the last message taken: the next one waits for it to be settled.
        self._tails: dict[tuple[str, str], asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    def _consumer_config(self, filters: list[str]) -> ConsumerConfig:
        """Every replica writes the same config but for the filters (create or update; the
        deliver policy applies on creation only)."""
        return ConsumerConfig(
            durable_name=DURABLE, filter_subjects=filters, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW, ack_wait=self._ack_wait, max_deliver=-1,
            max_ack_pending=self._max_ack_pending, max_waiting=512)

    async def start(self) -> None:
        await self.follower.start()
        sub = await self._bus.js.pull_subscribe_bind(DURABLE, STREAM)
        self._running = True
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._consume(sub), name="webhook-relay"),
                       loop.create_task(self._heartbeat(), name="webhook-relay-heartbeat")]

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop fetching; let deliveries in progress finish for up to `grace_s`, then cancel
        the rest (their messages are handed back for redelivery)."""
        self._running = False
        consume, heartbeat = self._tasks if self._tasks else (None, None)
        self._tasks = []
        await _cancel(consume)
        await self.follower.stop()
        if self._busy:
            _, pending = await asyncio.wait(list(self._busy), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await _cancel(heartbeat)

    async def _consume(self, sub: Any) -> None:
        while self._running:
            await self._slots.acquire()
            free = self._max_ack_pending - len(self._busy)
            try:
                messages = await fetch_or_empty(sub, max(1, min(free, FETCH_MAX)),
                                                self._fetch_timeout)
            except (nats.errors.ConnectionClosedError, nats.errors.DrainTimeoutError):
                self._slots.release()
                return
            except nats.errors.Error as exc:  # e.g. JetStream briefly unavailable
                self._slots.release()
                log.warning("webhook_fetch_failed", error=repr(exc))
                self.follower.wake()  # e.g. the consumer was deleted: recreate it
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            if not messages:  # nothing within the fetch timeout
                self._slots.release()
                continue
            for index, msg in enumerate(messages):
                if index > 0:
                    await self._slots.acquire()
                self.take(msg)

    def take(self, msg: Msg) -> asyncio.Task[None]:
        """Start handling a fetched `msg` (it holds one of the `max_ack_pending` slots, the
        caller acquired it); messages of one conversation are delivered in the order taken."""
        loop = asyncio.get_running_loop()
        try:
            message = conversation_pb2.BotMessage.FromString(msg.data)
        except Exception as exc:
            log.warning("webhook_undecodable", subject=msg.subject, error=repr(exc))
            task = loop.create_task(_settle(msg.term()))
        else:
            key = (message.bot_id, message.conversation_id)
            previous = self._tails.get(key)
            settled = self._tails[key] = asyncio.Event()
            task = loop.create_task(self._handle(msg, message, previous, settled, key))
        self._busy[task] = msg
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._busy.pop(task, None)
        self._slots.release()

    async def _handle(self, msg: Msg, message: conversation_pb2.BotMessage,
                      previous: asyncio.Event | None, settled: asyncio.Event,
                      key: tuple[str, str]) -> None:
        try:
            await self._relay(msg, message, previous)
        except asyncio.CancelledError:  # stopping: another replica (or the next start) gets it
            await _settle(msg.nak())
            raise
        finally:
            settled.set()
            if self._tails.get(key) is settled:
                del self._tails[key]

    async def _relay(self, msg: Msg, message: conversation_pb2.BotMessage,
                     previous: asyncio.Event | None) -> None:
        try:
            found = await self._subscription(message.bot_id)
        except Exception as exc:  # the store is unreachable: try again later, nothing is lost
            log.warning("webhook_lookup_failed", bot=message.bot_id, error=repr(exc))
            await _settle(msg.nak(delay=RETRY_DELAY_S))
            return
        sequence = msg.metadata.sequence.stream if msg.metadata and msg.metadata.sequence else 0
        if found is None or not found.covers(sequence):
            if found is not None:
                self.skipped += 1
            await _settle(msg.ack())
            return
        hook = found.hook
        if previous is not None:
            await previous.wait()
        ident = delivery_id(message, fallback=f"seq-{sequence}")
        payload = message_payload(message)
        async with self._deliveries:
            try:
                delivered = await self._sender.deliver(hook, payload, delivery_id=ident)
            except Exception:
                log.exception("webhook_delivery_crashed", bot=message.bot_id)
                self._sender.count("failed")
                delivered = False
        if not delivered:
            try:
                await self._dead_letter(msg, {**payload, "delivery_id": ident}, ident)
            except (nats.errors.Error, TimeoutError) as exc:  # not kept: deliver it again later
                log.warning("webhook_dead_letter_failed", bot=message.bot_id, error=repr(exc))
                await _settle(msg.nak(delay=RETRY_DELAY_S))
                return
        await _settle(msg.ack())

    async def _subscription(self, bot: str) -> Subscription | None:
        """From this replica's view; a bot it does not hold is looked up (a webhook set on
        another replica whose watch event has not arrived, or one just removed)."""
        if not bot:
            return None
        return self.follower.get(bot) or await self._store.subscription(bot)

    async def _dead_letter(self, msg: Msg, payload: dict[str, Any], ident: str) -> None:
        log.error("webhook_dead_lettered", bot=payload.get("bot_id"),
                  conversation=payload.get("conversation_id"), delivery_id=ident)
        headers = {HEADER_MSG_ID: f"webhook-{ident}", "Bf-Original-Subject": msg.subject,
                   "Bf-Reason": "webhook delivery failed (refused or out of attempts)"}
        await self._bus.js.publish(DEAD_LETTER_SUBJECT, json.dumps(payload).encode(),
                                   headers=headers, timeout=PUBLISH_TIMEOUT_S)

    async def _heartbeat(self) -> None:
        """In-progress acks for the messages held, so none is redelivered while it waits."""
        interval = max(0.2, self._ack_wait / 3)
        while True:
            await asyncio.sleep(interval)
            for msg in list(self._busy.values()):
                await _settle(msg.in_progress())


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _settle(action: Any) -> None:
    """Await an ack / nak / term / in-progress, ignoring a closed connection or a message
    already settled (JetStream redelivers whatever was not acknowledged)."""
    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
        await action


class FollowedWebhookStore:
    """The admin API's store on a gateway with a relay: a webhook put or deleted here applies to
    this replica's relay at once (its filter and view), before the watch reports it."""

    def __init__(self, inner: WebhookStore, relay: WebhookRelay) -> None:
        self._inner = inner
        self._follower = relay.follower

    async def put(self, bot: str, hook: Webhook) -> None:
        await self._follower.admit(bot)  # first: no message after since_seq is skipped
        try:
            await self._inner.put(bot, hook)
        finally:
            await self._refresh(bot, admitted=True)

    async def get(self, bot: str) -> Webhook | None:
        return await self._inner.get(bot)

    async def delete(self, bot: str) -> bool:
        deleted = await self._inner.delete(bot)
        await self._refresh(bot)
        return deleted

    async def _refresh(self, bot: str, *, admitted: bool = False) -> None:
        try:
            await self._follower.refresh(bot, admitted=admitted)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            # stored all the same: the watch brings it to the view, the next check to the filter
            log.warning("webhook_refresh_failed", bot=bot, error=repr(exc))
