"""The channels' durable outbox: every bot (and agent) message of a channel conversation is
sent to its platform from stream CONV, through one durable pull consumer shared by the gateway
replicas (`gateway-channels`). A message is acknowledged once the platform took it (or once
it is dead-lettered), so a crash resends it (at least once). Messages of one conversation go
out in order: the next is sent once the platform took the one before (where it goes is read
meanwhile; the one before's record and ack are written while the next is sent). A platform's
429 / 5xx / network error is retried with exponential backoff (its Retry-After honoured, up to
a bound) for `attempts` tries; then, or at once for a refusal (another 4xx), the message goes to
`events.deadletter.channel` (docs/channels.md, "Delivery")."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.common.logging import get_logger
from services.common.nats import Bus
from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.pull import open_pull, settle
from services.common.subjects import HEADER_MSG_ID, HEADER_REPLY_INBOX
from services.gateway.channels.base import Channel, Outgoing, SendRejected, SendRetry
from services.gateway.channels.metrics import ChannelMetrics
from services.gateway.channels.store import (
    ChannelStore,
    ConversationRefs,
    SentReplies,
    channel_of,
)
from services.gateway.ordered_pull import OrderedPull, Turn

log = get_logger(__name__)
DURABLE = "gateway-channels"
STREAM = "CONV"
SUBJECTS = "conv.out.>"
DEAD_LETTER_SUBJECT = "events.deadletter.channel"
MAX_ACK_PENDING = 256
PUBLISH_TIMEOUT_S = 5.0
ADDRESS_TRIES = 5
# A reply another replica's fast path may be sending is left to it this long after it was
# written (longer than a fast attempt may take); a conversation whose fast send failed takes
# the durable path this long.
FAST_SEND_TIMEOUT_S = 10.0
FAST_GRACE_S = 15.0
FAST_OFF_S = 60.0
FAST_OFF_KEPT = 1024
ADDRESS_RETRY_S = 0.2


class AddressNotYet(Exception):
    """A channel conversation's reply address is not (yet) stored."""


@dataclass(frozen=True)
class Retries:
    attempts: int = 6
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    # The longest Retry-After obeyed; a platform asking for more gets this (the message stays
    # held meanwhile, in-progress acks keep it from being redelivered).
    max_retry_after_s: float = 60.0

    def delay(self, attempt: int, asked: float | None) -> float:
        if asked is not None:
            return float(min(asked, self.max_retry_after_s))
        return float(min(self.backoff_s * 2.0 ** (attempt - 1), self.backoff_max_s))


@dataclass(frozen=True)
class Target:
    channel: str
    settings: dict[str, Any]
    address: dict[str, str]


@dataclass(frozen=True)
class FastTry:
    """A fast attempt that failed: when the next may be made, or why it was refused."""

    retry_at: float  # time.monotonic()
    rejected: str | None = None


class ChannelOutbox(OrderedPull):
    def __init__(self, bus: Bus, channels: dict[str, Channel], store: ChannelStore,
                 refs: ConversationRefs, session: aiohttp.ClientSession,
                 metrics: ChannelMetrics, *, retries: Retries = Retries(),
                 ack_wait_s: float = 30.0, ours: Callable[[str], bool] = lambda inbox: False,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        """`ours`: whether a reply inbox is this replica's (BusHub.owns)."""
        super().__init__("channel-outbox", max_ack_pending=MAX_ACK_PENDING,
                         ack_wait_s=ack_wait_s, fetch_timeout_s=0.0)
        self._bus = bus
        self._channels = channels
        self._store = store
        self._refs = refs
        self._sent = SentReplies(bus)
        self._session = session
        self._metrics = metrics
        self._retries = retries
        self._sleep = sleep
        self._ours = ours
        # Replies being sent here (fast or durable path), by SentReplies key: the outcome.
        self._claims: dict[str, asyncio.Future[bool]] = {}
        self._fast_tasks: set[asyncio.Task[None]] = set()
        # Conversations whose fast send failed: until when their replies take the durable path.
        self._fast_off: dict[tuple[str, str], float] = {}
        # Replies whose fast attempt failed, by SentReplies key: when the next may be made.
        self._fast_tries: dict[str, FastTry] = {}
        self._closing = False
        self.fast_grace_s = FAST_GRACE_S

    async def start(self) -> None:
        config = ConsumerConfig(durable_name=DURABLE, filter_subject=SUBJECTS,
                                ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW,
                                ack_wait=self._ack_wait, max_deliver=-1,
                                max_ack_pending=MAX_ACK_PENDING, max_waiting=512)
        # A continuous pull: each reply is taken the moment the server delivers it (a fetch
        # costs two round trips for what is, at a conversation's pace, mostly one message).
        self.begin(await open_pull(self._bus, STREAM, config))

    def offer(self, message: conversation_pb2.BotMessage, target: Target) -> None:
        """The fast path: a reply that came to this replica's inbox for a message this replica
        took from `target`'s platform. It is sent at once, in its conversation's order, with one
        attempt; what this does not send (a failure, a stop), the durable path sends, from
        conv.out, with its retries."""
        bot, conversation, ident = message.bot_id, message.conversation_id, message.message_id
        key = SentReplies.key(bot, conversation, ident)
        if message.role == "user" or self._closing or key in self._claims or \
                self._sent.recently_sent_here(bot, conversation, ident) or \
                target.channel not in self._channels:
            return
        outcome = self._claims[key] = asyncio.get_running_loop().create_future()
        task = self.in_turn(message, lambda turn: self._fast(message, target, turn, outcome))
        self._fast_tasks.add(task)
        task.add_done_callback(self._fast_tasks.discard)

    async def _fast(self, message: conversation_pb2.BotMessage, target: Target, turn: Turn,
                    outcome: asyncio.Future[bool]) -> None:
        bot, conversation, ident = message.bot_id, message.conversation_id, message.message_id
        sent = False
        try:
            await turn.wait()
            if self._fast_off.get((bot, conversation), 0.0) > time.monotonic():
                return  # an earlier reply failed here: the durable path keeps the order
            sent = await self._send_once(self._channels[target.channel], target, message)
        finally:
            if sent:
                self._sent.sent_here(bot, conversation, ident)
            self._claims.pop(SentReplies.key(bot, conversation, ident), None)
            outcome.set_result(sent)
        if not sent:
            return
        turn.release()
        try:
            await self._sent.record(bot, conversation, ident)
        except Exception as exc:  # this replica remembers it all the same
            log.warning("channel_sent_record_failed", bot=bot, error=repr(exc))

    def _fast_failed(self, message: conversation_pb2.BotMessage, tried: FastTry) -> None:
        """Its conversation's replies take the durable path for a while; the durable path
        counts this attempt and waits before the next as the platform asked."""
        now = time.monotonic()
        if len(self._fast_off) >= FAST_OFF_KEPT:
            self._fast_off = {key: until for key, until in self._fast_off.items() if until > now}
            self._fast_tries = {key: tried for key, tried in self._fast_tries.items()
                                if tried.retry_at > now - FAST_OFF_S}
        self._fast_off[(message.bot_id, message.conversation_id)] = now + FAST_OFF_S
        key = SentReplies.key(message.bot_id, message.conversation_id, message.message_id)
        self._fast_tries[key] = tried

    async def _send_once(self, channel: Channel, target: Target,
                         message: conversation_pb2.BotMessage) -> bool:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(FAST_SEND_TIMEOUT_S):
                await channel.send(self._session, target.settings, target.address,
                                   Outgoing.of(message))
        except Exception as exc:  # the durable path retries it (or dead-letters a refusal)
            log.info("channel_send_deferred", channel=channel.name, bot=message.bot_id,
                     error=str(exc))
            if isinstance(exc, SendRejected):  # the durable path dead-letters it
                self._fast_failed(message, FastTry(0.0, str(exc)))
                return False
            self._metrics.retried.labels(channel.name).inc()
            asked = exc.retry_after_s if isinstance(exc, SendRetry) else None
            self._fast_failed(message, FastTry(time.monotonic() +
                                               self._retries.delay(1, asked)))
            return False
        self._metrics.sent.labels(channel.name).inc()
        self._metrics.send_seconds.labels(channel.name).observe(time.perf_counter() - started)
        return True

    async def stopping(self) -> None:
        self._closing = True
        for task in list(self._fast_tasks):
            task.cancel()
        await asyncio.gather(*self._fast_tasks, return_exceptions=True)

    async def deliver(self, msg: Msg, message: conversation_pb2.BotMessage,
                      turn: Turn) -> None:
        bot, conversation, ident = message.bot_id, message.conversation_id, message.message_id
        key = SentReplies.key(bot, conversation, ident)
        claimed = self._claims.get(key)
        if (claimed is not None and await asyncio.shield(claimed)) or \
                self._sent.recently_sent_here(bot, conversation, ident):
            await settle(msg.ack())  # the fast path sent it
            return
        wait = self._fast_elsewhere(msg, message)
        if wait > 0:
            await settle(msg.nak(delay=wait))
            return
        outcome = self._claims[key] = asyncio.get_running_loop().create_future()
        try:
            await self._durable(msg, message, turn)
        finally:
            self._claims.pop(key, None)
            outcome.set_result(False)

    def _fast_elsewhere(self, msg: Msg, message: conversation_pb2.BotMessage) -> float:
        """How long to leave a reply to another replica's fast path (its inbox got it too):
        until FAST_GRACE_S after it was written; then it is sent here unless it was taken."""
        inbox = (msg.headers or {}).get(HEADER_REPLY_INBOX)
        if not inbox or self._ours(inbox) or not message.sent_at_unix_ms:
            return 0.0
        left = message.sent_at_unix_ms / 1000.0 + self.fast_grace_s - time.time()
        return float(min(max(left, 0.0), self.fast_grace_s))  # whatever the clocks' skew

    async def _durable(self, msg: Msg, message: conversation_pb2.BotMessage,
                       turn: Turn) -> None:
        # Where it goes is read while the conversation's message before is still being sent.
        try:
            target = await self._target(message)
        except AddressNotYet:
            await self._address_not_yet(msg, message)
            return
        if target is None:
            await settle(msg.ack())  # not for a channel (or already taken): nothing to send
            return
        await turn.wait()
        bot, conversation, ident = message.bot_id, message.conversation_id, message.message_id
        if self._sent.recently_sent_here(bot, conversation, ident):
            await settle(msg.ack())  # a copy went out while this one waited for its turn
            return
        # A failed fast attempt counts: a refusal is final, a Retry-After (or backoff) honoured.
        tried = self._fast_tries.pop(SentReplies.key(bot, conversation, ident), None)
        if tried is not None and tried.rejected is None:
            await self._sleep(max(0.0, tried.retry_at - time.monotonic()))
        if tried is not None and tried.rejected is not None:
            self._metrics.dead_lettered.labels(target.channel, "rejected").inc()
            failure: str | None = tried.rejected
        else:
            failure = await self._send(self._channels[target.channel], target.settings,
                                       target.address, message, first=1 if tried is None else 2)
        if failure is None:
            self._sent.sent_here(bot, conversation, ident)
            turn.release()  # the next reply may go while this one's record and ack are written
            # the record and the ack at once: once acked it is not redelivered
            await asyncio.gather(self._sent.record(bot, conversation, ident),
                                 settle(msg.ack()))
            return
        await self._dead_letter(msg, message, target.channel, failure)
        await settle(msg.ack())

    async def _target(self, message: conversation_pb2.BotMessage) -> Target | None:
        """Where a bot message goes; None for a message of no channel conversation (or of a
        channel since removed) and for one the platform already took (a redelivery)."""
        name = None if message.role == "user" else channel_of(message.conversation_id,
                                                              self._channels)
        if name is None:
            return None
        bot, conversation = message.bot_id, message.conversation_id
        # The reads at once: the channel a conversation answers on is the one its id names.
        ref, settings, taken = await asyncio.gather(
            self._refs.lookup(bot, conversation), self._store.current(bot, name),
            self._sent.taken(bot, conversation, message.message_id))
        if ref is not None and ref.channel != name:
            settings = await self._store.current(bot, ref.channel)
        if ref is None and settings is not None and not taken:
            raise AddressNotYet
        if ref is None or settings is None or ref.channel not in self._channels or taken:
            return None
        return Target(ref.channel, settings, ref.address)

    async def _address_not_yet(self, msg: Msg, message: conversation_pb2.BotMessage) -> None:
        """A reply to a channel conversation without an address: the inbound webhook writes it
        while the user's message goes on, so it is taken again shortly; one still without it
        after ADDRESS_TRIES (e.g. an agent's message after the address expired) is dropped."""
        delivered = msg.metadata.num_delivered if msg.metadata else None
        if delivered is not None and delivered < ADDRESS_TRIES:
            await settle(msg.nak(delay=ADDRESS_RETRY_S))
            return
        log.warning("channel_no_address", bot=message.bot_id,
                    conversation=message.conversation_id, message_id=message.message_id)
        await settle(msg.ack())

    async def _send(self, channel: Channel, settings: dict[str, Any], address: dict[str, str],
                    message: conversation_pb2.BotMessage, first: int = 1) -> str | None:
        """None once sent; else why it was not (`first`: the attempt this is)."""
        outgoing = Outgoing.of(message)
        if first > self._retries.attempts:
            self._metrics.dead_lettered.labels(channel.name, "attempts").inc()
            return "out of attempts"
        for attempt in range(first, self._retries.attempts + 1):
            started = time.perf_counter()
            try:
                await channel.send(self._session, settings, address, outgoing)
            except SendRejected as exc:
                self._metrics.dead_lettered.labels(channel.name, "rejected").inc()
                return str(exc)
            except Exception as exc:  # 429 / 5xx / network, or a client library's surprise
                asked = exc.retry_after_s if isinstance(exc, SendRetry) else None
                if attempt == self._retries.attempts:
                    self._metrics.dead_lettered.labels(channel.name, "attempts").inc()
                    return f"out of attempts: {exc}"
                self._metrics.retried.labels(channel.name).inc()
                log.info("channel_send_retry", channel=channel.name, attempt=attempt,
                         error=str(exc), retry_after_s=asked)
                await self._sleep(self._retries.delay(attempt, asked))
            else:
                self._metrics.sent.labels(channel.name).inc()
                self._metrics.send_seconds.labels(channel.name).observe(
                    time.perf_counter() - started)
                return None
        return "out of attempts"

    async def _dead_letter(self, msg: Msg, message: conversation_pb2.BotMessage, channel: str,
                           reason: str) -> None:
        log.error("channel_dead_lettered", bot=message.bot_id, channel=channel,
                  conversation=message.conversation_id, message_id=message.message_id,
                  reason=reason)
        payload = {"bot_id": message.bot_id, "conversation_id": message.conversation_id,
                   "message_id": message.message_id, "channel": channel, "text": message.text,
                   "reason": reason}
        headers = {HEADER_MSG_ID: f"channel-{message.bot_id}-{message.conversation_id}-"
                                  f"{message.message_id}", "Bf-Original-Subject": msg.subject}
        await self._bus.js.publish(DEAD_LETTER_SUBJECT, json.dumps(payload).encode(),
                                   headers=headers, timeout=PUBLISH_TIMEOUT_S)
