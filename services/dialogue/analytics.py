"""Conversation analytics: counts the `conv.event.>` events into Prometheus metrics by bot.

One durable pull consumer, `analytics`, on stream CONV, shared by every dialogue replica: each
event goes to one replica, which counts it into its own registry and then acks it, so summing
a counter over the replicas counts each event once (at least once: an event whose ack was lost
is counted again by the replica that gets it next). The consumer starts at the events published
after it was first created (deliver policy NEW); `botfactory report` reads the history.

A conversation (for containment) is a session of it: a session starts at the first user message
of a conversation, and again at each `session_expired` event (the engine emits it in the first
turn after the idle timeout, when the tracker starts a new session). A user message opens its
conversation when the conversation's first event in the stream belongs to the same turn (the
event's `Nats-Msg-Id`, scoped `<bot>.<conversation>.<message id>:e` or, stored before ids were
scoped, `<message id>:e`, names the same message): one stream lookup for a conversation this
process has not seen yet, so the rule holds with any number of replicas and no shared state.
A turn's events come as one message (services/common/events.py); it is acked as a whole.
See docs/observability.md for the metrics and the PromQL of the rates.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from services.common.events import decode_events
from services.common.logging import get_logger
from services.common.nats import Bus
from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.pull import ContinuousPull, open_pull, pulled_batches
from services.common.subjects import HEADER_MSG_ID, unscoped_id
from services.dialogue.metrics import AnalyticsMetrics

log = get_logger(__name__)

DURABLE = "analytics"
STREAM = "CONV"
SUBJECT = "conv.event.>"
FETCH_BATCH = 256
MAX_ACK_PENDING = 4096
SENTIMENTS = ("negative", "neutral", "positive")
KNOWN_CONVERSATIONS = 100_000
"""Conversations remembered as already opened (an LRU; only saves stream lookups)."""


def record(metrics: AnalyticsMetrics, kind: str, bot: str, data: dict[str, Any]) -> None:
    """Count one event of `bot` (conversation starts from user messages are counted by the
    consumer, which needs the stream to tell them)."""
    if kind == "user_message":
        metrics.user_messages.labels(bot=bot).inc()
        nlu = data.get("nlu")
        sentiment = nlu.get("sentiment") if isinstance(nlu, dict) else None
        if sentiment in SENTIMENTS:
            metrics.sentiments.labels(bot=bot, sentiment=sentiment).inc()
    elif kind == "session_expired":
        metrics.conversations.labels(bot=bot).inc()
    elif kind == "fallback":
        metrics.fallbacks.labels(bot=bot).inc()
    elif kind == "handoff":
        metrics.handoffs.labels(bot=bot).inc()
    elif kind == "knowledge_answer":
        metrics.knowledge_answers.labels(bot=bot).inc()
    elif kind in ("flow_started", "flow_completed", "flow_cancelled"):
        counter = {"flow_started": metrics.flows_started,
                   "flow_completed": metrics.flows_completed,
                   "flow_cancelled": metrics.flows_cancelled}[kind]
        counter.labels(bot=bot, flow=str(data.get("flow", ""))).inc()
    elif kind == "feedback":
        rating = _rating(data.get("rating"))
        if rating is not None:
            metrics.feedback.labels(bot=bot, rating=rating).inc()


def _rating(value: Any) -> str | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return "up" if number > 0 else "down" if number < 0 else None


class AnalyticsConsumer:
    def __init__(self, bus: Bus, metrics: AnalyticsMetrics, *, ack_wait_s: float) -> None:
        self._bus = bus
        self._metrics = metrics
        self._ack_wait = ack_wait_s
        self._task: asyncio.Task[None] | None = None
        self._pull: ContinuousPull | None = None
        self._batch: asyncio.Task[None] | None = None
        self._running = False
        self._known: OrderedDict[tuple[str, str], None] = OrderedDict()

    async def start(self) -> None:
        config = ConsumerConfig(
            durable_name=DURABLE, filter_subject=SUBJECT, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW, ack_wait=self._ack_wait,
            max_ack_pending=MAX_ACK_PENDING, max_waiting=512,
        )
        self._pull = await open_pull(self._bus, STREAM, config)
        self._running = True
        self._task = asyncio.get_running_loop().create_task(self._consume(self._pull))

    async def stop(self) -> None:
        """Stop fetching; the batch being counted is finished (and acked) first."""
        self._running = False
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._batch is not None:
            await asyncio.gather(self._batch, return_exceptions=True)
            self._batch = None
        if self._pull is not None:
            await self._pull.stop()
            self._pull = None

    async def _consume(self, pull: ContinuousPull) -> None:
        async for messages in pulled_batches(pull, FETCH_BATCH, lambda: self._running):
            # shielded: a stop request lets the fetched batch be counted and acked
            self._batch = asyncio.get_running_loop().create_task(self._handle_all(messages))
            await asyncio.shield(self._batch)

    async def _handle_all(self, messages: list[Msg]) -> None:
        for msg in messages:
            try:
                await self.handle(msg)
            except Exception as exc:  # never stop counting for one bad event
                log.error("analytics_event_failed", subject=msg.subject, error=repr(exc))

    async def handle(self, msg: Msg) -> None:
        try:
            decoded = [(event, _data(event)) for event in decode_events(msg.data, msg.headers)]
        except Exception as exc:
            log.warning("analytics_undecodable", subject=msg.subject, error=repr(exc))
            await msg.term()
            return
        opened: set[str] = set()
        for event, data in decoded:
            if event.type != "user_message":
                continue
            bot, conversation = _ids(msg.subject, event)
            try:
                if await self._opens_conversation(msg, bot, conversation, data):
                    opened.add(bot)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("analytics_lookup_failed", subject=msg.subject, error=repr(exc))
                await msg.nak(delay=1.0)  # nothing counted yet: count it on redelivery
                return
        for bot in opened:
            self._metrics.conversations.labels(bot=bot).inc()
        for event, data in decoded:
            record(self._metrics, event.type, _ids(msg.subject, event)[0], data)
        await msg.ack()

    async def _opens_conversation(self, msg: Msg, bot: str, conversation: str,
                                  data: dict[str, Any]) -> bool:
        """Whether this user message is the first turn of its conversation."""
        key = (bot, conversation)
        if key in self._known:
            self._known.move_to_end(key)
            return False
        try:
            first = await self._bus.js.get_msg(STREAM, seq=1, subject=msg.subject, next=True)
        except NotFoundError:  # purged meanwhile: cannot tell, do not count
            return False
        self._known[key] = None
        if len(self._known) > KNOWN_CONVERSATIONS:
            self._known.popitem(last=False)
        if msg.metadata is not None and first.seq == msg.metadata.sequence.stream:
            return True
        message_id = str(data.get("message_id", ""))
        first_id = unscoped_id((first.headers or {}).get(HEADER_MSG_ID, ""))
        return bool(message_id) and first_id.startswith(f"{message_id}:e")


def _data(event: conversation_pb2.ConversationEvent) -> dict[str, Any]:
    data = json.loads(event.data_json) if event.data_json else {}
    if not isinstance(data, dict):
        raise ValueError("data_json is not an object")
    return data


def _ids(subject: str, event: conversation_pb2.ConversationEvent) -> tuple[str, str]:
    parts = subject.split(".")
    bot = event.bot_id or (parts[2] if len(parts) > 2 else "")
    conversation = event.conversation_id or (parts[3] if len(parts) > 3 else "")
    return bot, conversation
