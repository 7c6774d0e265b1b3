"""The channels' durable outbox: every bot (and agent) message of a channel conversation is
sent to its platform from stream CONV, through one durable pull consumer shared by the gateway
replicas (`gateway-channels`). A message is acknowledged once the platform took it (or once
it is dead-lettered), so a crash resends it (at least once). Messages of one conversation go
out in order: the next waits until the one before is settled. A platform's 429 / 5xx / network
error is retried with exponential backoff (its Retry-After honoured, up to a bound) for
`attempts` tries; then, or at once for a refusal (another 4xx), the message goes to
`events.deadletter.channel` (docs/channels.md, "Delivery").

Messages come through a `ContinuousPull` (one long-lived pull request): each is taken the
moment the server delivers it. A fetch per round would cost two round trips to the server
for what is, at a conversation's pace, mostly one message, and hold a message that arrives
while a fetch waits for company."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.common.logging import get_logger
from services.common.nats import Bus
from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.pull import ContinuousPull, open_pull, settle
from services.common.subjects import HEADER_MSG_ID
from services.gateway.channels.base import Channel, Outgoing, SendRejected, SendRetry
from services.gateway.channels.metrics import ChannelMetrics
from services.gateway.channels.store import ChannelStore, ConversationRefs, channel_of

log = get_logger(__name__)
DURABLE = "gateway-channels"
STREAM = "CONV"
SUBJECTS = "conv.out.>"
DEAD_LETTER_SUBJECT = "events.deadletter.channel"
MAX_ACK_PENDING = 256
PUBLISH_TIMEOUT_S = 5.0
RETRY_DELAY_S = 1.0


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


class ChannelOutbox:
    def __init__(self, bus: Bus, channels: dict[str, Channel], store: ChannelStore,
                 refs: ConversationRefs, session: aiohttp.ClientSession,
                 metrics: ChannelMetrics, *, retries: Retries = Retries(),
                 ack_wait_s: float = 30.0,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self._bus = bus
        self._channels = channels
        self._store = store
        self._refs = refs
        self._session = session
        self._metrics = metrics
        self._retries = retries
        self._ack_wait_s = ack_wait_s
        self._sleep = sleep
        self._slots = asyncio.Semaphore(MAX_ACK_PENDING)
        self._busy: dict[asyncio.Task[None], Msg] = {}
        self._tails: dict[tuple[str, str], asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._pull: ContinuousPull | None = None
        self._running = False

    async def start(self) -> None:
        config = ConsumerConfig(durable_name=DURABLE, filter_subject=SUBJECTS,
                                ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW,
                                ack_wait=self._ack_wait_s, max_deliver=-1,
                                max_ack_pending=MAX_ACK_PENDING, max_waiting=512)
        self._pull = await open_pull(self._bus, STREAM, config)
        self._running = True
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._consume(self._pull), name="channel-outbox"),
                       loop.create_task(self._heartbeat(), name="channel-outbox-heartbeat")]

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop fetching; sends in progress finish within `grace_s`, the rest are redelivered."""
        self._running = False
        consume, heartbeat = self._tasks if self._tasks else (None, None)
        self._tasks = []
        await _cancel(consume)
        if self._pull is not None:  # delivered but not taken: redelivered after the ack wait
            pull, self._pull = self._pull, None
            with contextlib.suppress(nats.errors.Error):
                await pull.stop()
        if self._busy:
            _, pending = await asyncio.wait(list(self._busy), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await _cancel(heartbeat)

    async def _consume(self, pull: ContinuousPull) -> None:
        while self._running:
            await self._slots.acquire()  # the server holds to max_ack_pending too
            try:
                msg = await pull.next()
            except (nats.errors.ConnectionClosedError, nats.errors.DrainTimeoutError):
                self._slots.release()
                return
            except nats.errors.Error as exc:  # e.g. a pull request that could not be sent
                self._slots.release()
                log.warning("channel_fetch_failed", error=repr(exc))
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            except BaseException:
                self._slots.release()
                raise
            self._take(msg)

    def _take(self, msg: Msg) -> None:
        loop = asyncio.get_running_loop()
        try:
            message = conversation_pb2.BotMessage.FromString(msg.data)
        except Exception as exc:
            log.warning("channel_undecodable", subject=msg.subject, error=repr(exc))
            task = loop.create_task(settle(msg.term()))
        else:
            key = (message.bot_id, message.conversation_id)
            previous = self._tails.get(key)
            settled = self._tails[key] = asyncio.Event()
            task = loop.create_task(self._handle(msg, message, previous, settled, key))
        self._busy[task] = msg
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._busy.pop(task, None)
        self._slots.release()

    async def _handle(self, msg: Msg, message: conversation_pb2.BotMessage,
                      previous: asyncio.Event | None, settled: asyncio.Event,
                      key: tuple[str, str]) -> None:
        try:
            if previous is not None:
                await previous.wait()
            await self._deliver(msg, message)
        except asyncio.CancelledError:
            await settle(msg.nak())
            raise
        except Exception as exc:  # the store is unreachable: try again later
            log.warning("channel_delivery_deferred", bot=message.bot_id, error=repr(exc))
            await settle(msg.nak(delay=RETRY_DELAY_S))
        finally:
            settled.set()
            if self._tails.get(key) is settled:
                del self._tails[key]

    async def _deliver(self, msg: Msg, message: conversation_pb2.BotMessage) -> None:
        name = None if message.role == "user" else channel_of(message.conversation_id,
                                                              self._channels)
        if name is None:
            await settle(msg.ack())  # not a channel conversation
            return
        # Both reads at once: the channel a conversation answers on is the one its id names.
        ref, settings = await asyncio.gather(
            self._refs.lookup(message.bot_id, message.conversation_id),
            self._store.get(message.bot_id, name))
        if ref is not None and ref.channel != name:
            settings = await self._store.get(message.bot_id, ref.channel)
        if ref is None or settings is None or ref.channel not in self._channels:
            await settle(msg.ack())  # not a channel conversation (or its channel was removed)
            return
        failure = await self._send(self._channels[ref.channel], settings, ref.address, message)
        if failure is not None:
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

    async def _heartbeat(self) -> None:
        """In-progress acks for the messages held (waiting their turn or a retry)."""
        interval = max(0.2, self._ack_wait_s / 3)
        while True:
            await asyncio.sleep(interval)
            for msg in list(self._busy.values()):
                await settle(msg.in_progress())


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
