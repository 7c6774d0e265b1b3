"""Webhook delivery of bot messages: the bots' webhook configuration and the relay that POSTs
every bot (and agent) message of a bot with a webhook to it.

Configuration: KV `bots`, key `webhook.<bot>`, JSON `{"url", "secret"}` (`NatsWebhookStore`),
read through a short cache (`CachedWebhookStore`, 5 s: a change made on another replica takes
effect within that time, on this replica at once).

Delivery: one durable pull consumer, `gateway-webhooks`, on `conv.out.>` of stream CONV, shared
by every gateway replica, so each message is delivered by one replica. It starts at the messages
published after it was first created (deliver policy NEW) and acks explicitly, each message only
after its delivery finished: accepted by the receiver, or refused / out of attempts, in which
case the payload goes to `events.deadletter.webhook` (stream EVENTS) before the ack, so nothing
is silently lost. At most `max_ack_pending` messages are unacknowledged at once (all replicas
together): a slow receiver holds the consumer back instead of filling memory. In-progress acks
keep a message from being redelivered while it waits or is retried. Delivery is at least once:
a message whose ack is lost (a replica killed mid-delivery) is delivered again, with the same
`delivery_id` (derived from the message), so receivers can drop duplicates. Messages of one
conversation are delivered in order by a replica; across replicas order is not guaranteed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError

from services.common.logging import get_logger
from services.common.nats import KV_BOTS, Bus
from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.subjects import HEADER_MSG_ID, check_id
from services.gateway.ports import Webhook, WebhookStore
from services.gateway.webhooks import WebhookSender, message_payload

log = get_logger(__name__)

DURABLE = "gateway-webhooks"
STREAM = "CONV"
SUBJECT = "conv.out.>"
DEAD_LETTER_SUBJECT = "events.deadletter.webhook"
KEY_PREFIX = "webhook."
MAX_ACK_PENDING = 256
ACK_WAIT_S = 30.0
CACHE_S = 5.0
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


# --- stores -----------------------------------------------------------------------------------


class InMemoryWebhookStore:
    def __init__(self) -> None:
        self.hooks: dict[str, Webhook] = {}

    async def put(self, bot: str, hook: Webhook) -> None:
        self.hooks[bot] = hook

    async def get(self, bot: str) -> Webhook | None:
        return self.hooks.get(bot)

    async def delete(self, bot: str) -> bool:
        return self.hooks.pop(bot, None) is not None


class NatsWebhookStore:
    """KV `bots`, key `webhook.<bot>`: `{"url", "secret"}` (the secret must be kept: it signs)."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def put(self, bot: str, hook: Webhook) -> None:
        kv = await self._bus.kv(KV_BOTS)
        await kv.put(webhook_key(bot), encode(hook))

    async def get(self, bot: str) -> Webhook | None:
        kv = await self._bus.kv(KV_BOTS)
        try:
            entry = await kv.get(webhook_key(bot))
        except KeyNotFoundError:  # KeyDeletedError included
            return None
        if not entry.value:
            return None
        try:
            return decode(entry.value)
        except ValueError as exc:
            log.error("webhook_config_invalid", bot=bot, error=str(exc))
            return None

    async def delete(self, bot: str) -> bool:
        if await self.get(bot) is None:
            return False
        kv = await self._bus.kv(KV_BOTS)
        await kv.delete(webhook_key(bot))
        return True


def encode(hook: Webhook) -> bytes:
    return json.dumps({"url": hook.url, "secret": hook.secret}).encode()


def decode(data: bytes) -> Webhook:
    raw = json.loads(data)
    if not isinstance(raw, dict) or not isinstance(raw.get("url"), str) \
            or not isinstance(raw.get("secret"), str):
        raise ValueError("a webhook needs string fields url and secret")
    return Webhook(raw["url"], raw["secret"])


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


# --- the relay --------------------------------------------------------------------------------


class WebhookRelay:
    """Consumes `conv.out.>` and delivers each message of a bot with a webhook (module doc)."""

    def __init__(self, bus: Bus, store: WebhookStore, sender: WebhookSender, *,
                 max_ack_pending: int = MAX_ACK_PENDING, ack_wait_s: float = ACK_WAIT_S,
                 concurrency: int | None = None) -> None:
        self._bus = bus
        self._store = store
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

    async def start(self) -> None:
        config = ConsumerConfig(
            durable_name=DURABLE, filter_subject=SUBJECT, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW, ack_wait=self._ack_wait, max_deliver=-1,
            max_ack_pending=self._max_ack_pending, max_waiting=512)
        sub = await self._bus.js.pull_subscribe(SUBJECT, durable=DURABLE, stream=STREAM,
                                                config=config)
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
        if consume is not None:
            consume.cancel()
            await asyncio.gather(consume, return_exceptions=True)
        if self._busy:
            _, pending = await asyncio.wait(list(self._busy), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if heartbeat is not None:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)

    async def _consume(self, sub: Any) -> None:
        while self._running:
            await self._slots.acquire()
            free = self._max_ack_pending - len(self._busy)
            try:
                messages = await sub.fetch(max(1, min(free, FETCH_MAX)), timeout=FETCH_TIMEOUT_S)
            except nats.errors.TimeoutError:
                self._slots.release()
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.DrainTimeoutError):
                self._slots.release()
                return
            except nats.errors.Error as exc:  # e.g. JetStream briefly unavailable
                self._slots.release()
                log.warning("webhook_fetch_failed", error=repr(exc))
                await asyncio.sleep(RETRY_DELAY_S)
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
            hook = await self._store.get(message.bot_id) if message.bot_id else None
        except Exception as exc:  # the store is unreachable: try again later, nothing is lost
            log.warning("webhook_lookup_failed", bot=message.bot_id, error=repr(exc))
            await _settle(msg.nak(delay=RETRY_DELAY_S))
            return
        if hook is None:
            await _settle(msg.ack())
            return
        if previous is not None:
            await previous.wait()
        sequence = msg.metadata.sequence.stream if msg.metadata and msg.metadata.sequence else 0
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


async def _settle(action: Any) -> None:
    """Await an ack / nak / term / in-progress, ignoring a closed connection or a message
    already settled (JetStream redelivers whatever was not acknowledged)."""
    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
        await action
