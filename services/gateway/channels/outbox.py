"""The channels' durable outbox: every bot (and agent) message of a channel conversation is
sent to its platform from stream CONV, through one durable pull consumer shared by the gateway
replicas (`gateway-channels`). A message is acknowledged once the platform took it (or once
it is dead-lettered), so a crash resends it (at least once). Messages of one conversation go
out in order: the next waits until the one before is settled. A platform's 429 / 5xx / network
error is retried with exponential backoff (its Retry-After honoured, up to a bound) for
`attempts` tries; then, or at once for a refusal (another 4xx), the message goes to
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
from services.common.subjects import HEADER_MSG_ID
from services.gateway.channels.base import Channel, Outgoing, SendRejected, SendRetry
from services.gateway.channels.metrics import ChannelMetrics
from services.gateway.channels.store import (
    ChannelStore,
    ConversationRefs,
    SentReplies,
    channel_of,
)
from services.gateway.ordered_pull import OrderedPull

log = get_logger(__name__)
DURABLE = "gateway-channels"
STREAM = "CONV"
SUBJECTS = "conv.out.>"
DEAD_LETTER_SUBJECT = "events.deadletter.channel"
MAX_ACK_PENDING = 256
PUBLISH_TIMEOUT_S = 5.0


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


class ChannelOutbox(OrderedPull):
    def __init__(self, bus: Bus, channels: dict[str, Channel], store: ChannelStore,
                 refs: ConversationRefs, session: aiohttp.ClientSession,
                 metrics: ChannelMetrics, *, retries: Retries = Retries(),
                 ack_wait_s: float = 30.0,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
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

    async def start(self) -> None:
        config = ConsumerConfig(durable_name=DURABLE, filter_subject=SUBJECTS,
                                ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW,
                                ack_wait=self._ack_wait, max_deliver=-1,
                                max_ack_pending=MAX_ACK_PENDING, max_waiting=512)
        # A continuous pull: each reply is taken the moment the server delivers it (a fetch
        # costs two round trips for what is, at a conversation's pace, mostly one message).
        self.begin(await open_pull(self._bus, STREAM, config))

    async def deliver(self, msg: Msg, message: conversation_pb2.BotMessage,
                      previous: asyncio.Event | None) -> None:
        if previous is not None:
            await previous.wait()
        await self._deliver(msg, message)

    async def _deliver(self, msg: Msg, message: conversation_pb2.BotMessage) -> None:
        name = None if message.role == "user" else channel_of(message.conversation_id,
                                                              self._channels)
        if name is None:
            await settle(msg.ack())  # not a channel conversation
            return
        bot, conversation = message.bot_id, message.conversation_id
        # The reads at once: the channel a conversation answers on is the one its id names; a
        # reply the platform already took (a redelivery) is not sent again.
        ref, settings, taken = await asyncio.gather(
            self._refs.lookup(bot, conversation), self._store.current(bot, name),
            self._sent.taken(bot, conversation, message.message_id))
        if ref is not None and ref.channel != name:
            settings = await self._store.current(message.bot_id, ref.channel)
        if ref is None or settings is None or ref.channel not in self._channels:
            await settle(msg.ack())  # not a channel conversation (or its channel was removed)
            return
        if taken:
            await settle(msg.ack())  # the platform already took it
            return
        failure = await self._send(self._channels[ref.channel], settings, ref.address, message)
        if failure is None:  # the record and the ack at once: once acked it is not redelivered
            await asyncio.gather(self._sent.record(bot, conversation, message.message_id),
                                 settle(msg.ack()))
            return
        await self._dead_letter(msg, message, ref.channel, failure)
        await settle(msg.ack())

    async def _send(self, channel: Channel, settings: dict[str, Any], address: dict[str, str],
                    message: conversation_pb2.BotMessage) -> str | None:
        """None once sent; else why it was not."""
        outgoing = Outgoing.of(message)
        for attempt in range(1, self._retries.attempts + 1):
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
