"""The gateway's side of the bus: publishes user messages to JetStream and collects replies.

Each gateway replica subscribes to its own inbox prefix; a user message carries
`Bf-Reply-Inbox: <prefix>.<bot>.<conversation>.<message id>` so the dialogue worker answers this
replica directly, while the replies also go to `conv.out.<bot>.<conversation>` (transcript,
sockets, webhooks). Message ids are unique per conversation only: the `Nats-Msg-Id`, the
waiters, the reply inbox and the pending messages are all keyed by `subjects.scoped_id`.

A turn's replies end with its TurnSummary (conversation.proto): the sync wait ends when the
summary and the replies it counts are here. When the turn started workflows, their results
come to the same inbox (the dialogue remembers where the run's turn was waited for) and the
wait goes on for up to `workflow_wait_s` more; a handed-off conversation's turn ends at once
with no replies and `handoff` set.

The transcript (docs/security.md) is read from the stream: the user's messages from the
dialogue's `user_message` events (`conv.in` keeps a message only until it is handled), the
bot's from `conv.out`; PII is masked in what it returns unless the bot keeps it (`Bf-Pii:
keep`). Feedback comments are stored with PII masked. With `with_events` (agents and admins,
`?include=events`), each turn's other events (nlu, slot_set, slot_rejected, fallback,
workflow_finished, ...) follow its user message, in the order the dialogue wrote them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.common.events import decode_events
from services.common.logging import current_correlation_id, get_logger
from services.common.nats import KV_HANDOFFS, OBJ_MODELS, Bus
from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.pii import redact
from services.common.pull import fetch_or_empty, kv_keys
from services.common.served import ServedBots
from services.common.subjects import (
    GATEWAY_REPLIES,
    HEADER_CORRELATION,
    HEADER_KIND,
    HEADER_MSG_ID,
    HEADER_PII,
    HEADER_REPLY_INBOX,
    KIND_AGENT,
    KIND_MESSAGE,
    KIND_RELEASE,
    KIND_TURN,
    PII_KEEP,
    check_id,
    events,
    inbound,
    outbound,
    scoped_id,
)
from services.gateway.backpressure import Backpressure, RetryLater
from services.gateway.ports import BotNotServed, SendResult

log = get_logger(__name__)
PUBLISH_TIMEOUT_S = 5.0
BUS_RETRY_AFTER_S = 2.0
BUS_DOWN = "the message bus is unavailable; please retry"
# After a sync wait that got no reply: how long to look for replies already published (a
# retry of a message handled before, after the dedupe window).
LOOKUP_TIMEOUT_S = 1.0
# The role of a user's message relayed on conv.out to the human agent of a handed-off
# conversation (services/dialogue/worker.py): not a reply, not shown back to the user.
RELAYED_ROLE = "user"
# How long a turn's replies are forwarded to `send`'s `on_reply` after it returned; later ones
# (and every one, should this replica stop) reach the channels through conv.out all the same.
FORWARD_S = 30.0


@contextlib.contextmanager
def bus_errors(message_id: str = "") -> Iterator[None]:
    """NATS failures (not connected, timeouts, JetStream errors) as a retriable 503."""
    try:
        yield
    except (nats.errors.Error, TimeoutError) as exc:
        log.warning("bus_call_failed", error=repr(exc))
        raise RetryLater(BUS_DOWN, BUS_RETRY_AFTER_S, message_id=message_id) from exc


@dataclass
class _Waiter:
    """What came to one message's reply inbox: its turn's replies and summary, and those of
    the workflow runs the turn started (by message id, in arrival order: each turn's replies
    come in order on one connection)."""

    replies: dict[str, conversation_pb2.BotMessage] = field(default_factory=dict)
    summaries: dict[bytes, conversation_pb2.TurnSummary] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    on_reply: Callable[[conversation_pb2.BotMessage], None] | None = None

    def add(self, message: conversation_pb2.BotMessage) -> None:
        if self.on_reply is not None and message.message_id not in self.replies:
            self.on_reply(message)
        self.replies[message.message_id] = message
        self.changed.set()

    def summarize(self, summary: conversation_pb2.TurnSummary) -> None:
        self.summaries[summary.SerializeToString(deterministic=True)] = summary
        self.changed.set()

    @property
    def turn(self) -> conversation_pb2.TurnSummary | None:
        """The summary of the message's own turn (not of a workflow's result)."""
        return next((s for s in self.summaries.values() if not s.run_id), None)

    def turn_done(self) -> bool:
        """The message's turn is over and every reply the summaries count is here."""
        return self.turn is not None and \
            len(self.replies) >= sum(s.replies for s in self.summaries.values())

    def outstanding(self) -> set[str]:
        """Workflow runs started by the turn (or by a result of one) not answered yet."""
        awaited = {run for s in self.summaries.values() for run in s.awaiting_runs}
        answered = {s.run_id for s in self.summaries.values()
                    if s.run_id and s.run_id not in s.awaiting_runs}
        return awaited - answered

    def all_done(self) -> bool:
        return self.turn_done() and not self.outstanding()

    async def until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until `done()` holds, at most `timeout_s`; whether it holds."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not done():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return True

    def result(self, *, duplicate: bool = False, awaited_workflows: bool = False) -> SendResult:
        turn = self.turn
        return SendResult(list(self.replies.values()), complete=self.all_done(),
                          duplicate=duplicate, handoff=bool(turn and turn.handoff),
                          nlu=turn.nlu if turn is not None and turn.HasField("nlu") else None,
                          awaited_workflows=awaited_workflows)



def citation_json(citation: conversation_pb2.Citation) -> dict[str, Any]:
    """The source of a knowledge-base answer (replies, WebSocket, webhooks, transcript)."""
    return {"title": citation.title, "document": citation.document,
            "heading_path": list(citation.heading_path), "url": citation.url}

def _complete(replies: list[conversation_pb2.BotMessage]) -> bool:
    """Whether stored replies (found for a retry) are whole turns: each turn's (a user
    message's, a workflow result's) has its last one and every index before it."""
    if not replies:
        return False
    turns: dict[str, list[conversation_pb2.BotMessage]] = {}
    for reply in replies:
        turns.setdefault(reply.message_id.rsplit(":", 1)[0], []).append(reply)
    return all(any(r.last for r in turn) and len({r.index for r in turn}) ==
               max(r.index for r in turn) + 1 for turn in turns.values())


class BusHub:
    """`backpressure` (optional): admission of each new message before it is published
    (services/gateway/backpressure.py)."""

    def __init__(self, bus: Bus, partitions: int, backpressure: Backpressure | None = None,
                 *, publish_timeout_s: float = PUBLISH_TIMEOUT_S,
                 served: ServedBots | None = None) -> None:
        """`served`: the bots dialogue replicas announce; None accepts messages to any bot."""
        self._bus = bus
        self._served = served
        self._partitions = partitions
        self._prefix = f"{bus.inbox}.{GATEWAY_REPLIES}.{uuid.uuid4().hex}"
        self._waiters: dict[str, list[_Waiter]] = {}
        self._forwarding: set[asyncio.Task[None]] = set()
        self._sub: Any = None
        self._backpressure = backpressure
        self._publish_timeout_s = publish_timeout_s

    @property
    def connected(self) -> bool:
        return bool(self._bus.nc.is_connected)

    async def start(self) -> None:
        self._sub = await self._bus.nc.subscribe(f"{self._prefix}.>", cb=self._on_reply)

    def check_served(self, bot_id: str) -> None:
        if self._served is not None and not self._served.serves(bot_id):
            raise BotNotServed(bot_id)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        for task in list(self._forwarding):
            task.cancel()
        await asyncio.gather(*self._forwarding, return_exceptions=True)

    async def _on_reply(self, msg: Msg) -> None:
        """A reply (BotMessage) or the TurnSummary (`Bf-Kind: turn`) that ends a turn."""
        key = msg.subject[len(self._prefix) + 1:]
        if (msg.headers or {}).get(HEADER_KIND) == KIND_TURN:  # `<inbox>.turn`
            key = key.removesuffix(f".{KIND_TURN}")
            summary = conversation_pb2.TurnSummary.FromString(msg.data)
            for waiter in self._waiters.get(key, ()):
                waiter.summarize(summary)
            if not summary.run_id and self._backpressure is not None:
                self._backpressure.release(key)
            return
        reply = conversation_pb2.BotMessage.FromString(msg.data)
        for waiter in self._waiters.get(key, ()):
            waiter.add(reply)

    def owns(self, inbox: str) -> bool:
        """Whether a reply inbox is this replica's."""
        return inbox.startswith(f"{self._prefix}.")

    async def send(self, message: conversation_pb2.UserMessage, *, wait_s: float,
                   workflow_wait_s: float = 0.0,
                   on_reply: Callable[[conversation_pb2.BotMessage], None] | None = None
                   ) -> SendResult:
        """Publish `message` (once JetStream stored it, it is accepted) and wait up to `wait_s`
        for its turn's replies, then up to `workflow_wait_s` more for the results of the
        workflows the turn started. Raises RetryLater (503) when overloaded or the bus is
        down, BotNotServed (404) when no dialogue replica serves the bot.

        `on_reply`: called with each reply of the turn as it comes to the inbox, for up to
        FORWARD_S after the return (the channels' fast path; not for a redelivered message)."""
        check_id(message.bot_id, "bot")
        self.check_served(message.bot_id)
        check_id(message.conversation_id, "conversation")
        if not message.message_id:
            message.message_id = uuid.uuid4().hex
        check_id(message.message_id, "message_id")
        if not message.sent_at_unix_ms:
            message.sent_at_unix_ms = int(time.time() * 1000)
        kind = KIND_AGENT if message.role == "agent" else KIND_MESSAGE
        key = scoped_id(message.bot_id, message.conversation_id, message.message_id)
        admitted = self._admit(message, key)
        waiter = _Waiter(on_reply=on_reply)
        self._waiters.setdefault(key, []).append(waiter)
        try:
            ack = await self._publish_inbound(message, kind, wants_reply=True)
        except BaseException:
            if admitted and self._backpressure is not None:
                self._backpressure.release(key)
            self._forget(key, waiter)
            raise
        forwarding = False
        try:
            if ack.duplicate:
                return await self._duplicate(message, waiter, wait_s)
            result = await self._wait(message, waiter, wait_s, workflow_wait_s)
            forwarding = on_reply is not None and not waiter.turn_done()
            return result
        finally:
            if forwarding:
                self._keep(self._forward(key, waiter))
            else:
                self._forget(key, waiter)

    async def _forward(self, key: str, waiter: _Waiter) -> None:
        """Keep `waiter` (and its `on_reply`) until its turn is over, FORWARD_S at most."""
        try:
            await waiter.until(waiter.turn_done, FORWARD_S)
        finally:
            self._forget(key, waiter)

    def _keep(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._forwarding.add(task)
        task.add_done_callback(self._forwarding.discard)

    def _admit(self, message: conversation_pb2.UserMessage, key: str) -> bool:
        """Refuse (503) before publishing when overloaded or when the bus is not connected."""
        if not self.connected:
            if self._backpressure is not None:
                self._backpressure.refused("bus_unavailable")
            raise RetryLater(BUS_DOWN, BUS_RETRY_AFTER_S, message_id=message.message_id)
        if self._backpressure is None:
            return False
        return self._backpressure.admit(message.bot_id, key)

    def _forget(self, message_id: str, waiter: _Waiter) -> None:
        waiters = self._waiters.get(message_id, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiters.pop(message_id, None)

    async def _wait(self, message: conversation_pb2.UserMessage, waiter: _Waiter,
                    wait_s: float, workflow_wait_s: float) -> SendResult:
        if wait_s <= 0:
            return SendResult([], complete=False)
        if not await waiter.until(waiter.turn_done, wait_s):
            if waiter.replies or waiter.turn is not None:
                return waiter.result()
            return await self._handled_before(message)
        if workflow_wait_s > 0 and waiter.outstanding():
            await waiter.until(waiter.all_done, workflow_wait_s)
            return waiter.result(awaited_workflows=True)
        return waiter.result()

    async def _handled_before(self, message: conversation_pb2.UserMessage) -> SendResult:
        """No reply within the wait: a retry of a message handled before, after the dedupe
        window, gets its earlier replies (the dialogue does not handle it twice)."""
        try:
            found = await asyncio.wait_for(self._replies_to(message), LOOKUP_TIMEOUT_S)
        except (RetryLater, TimeoutError):
            found = []
        if _complete(found):
            return SendResult(found, complete=True, duplicate=True)
        return SendResult([], complete=False)

    async def _duplicate(self, message: conversation_pb2.UserMessage, waiter: _Waiter,
                         wait_s: float) -> SendResult:
        """A retry within the dedupe window: the replies already published, else (the original
        is still being handled) those that come within the wait."""
        found = await self._replies_to(message)
        if _complete(found) or wait_s <= 0:
            return SendResult(found, complete=_complete(found), duplicate=True)
        if await waiter.until(waiter.turn_done, wait_s):
            return waiter.result(duplicate=True)
        found = await self._replies_to(message)
        return SendResult(found, complete=_complete(found), duplicate=True)

    async def _publish_inbound(self, message: conversation_pb2.UserMessage, kind: str,
                               wants_reply: bool) -> Any:
        key = scoped_id(message.bot_id, message.conversation_id, message.message_id)
        headers = {HEADER_MSG_ID: key, HEADER_KIND: kind,
                   HEADER_CORRELATION: message.metadata.get("correlation_id")
                   or current_correlation_id() or message.message_id}
        if wants_reply:
            headers[HEADER_REPLY_INBOX] = f"{self._prefix}.{key}"
        subject = inbound(message.bot_id, message.conversation_id, self._partitions)
        with bus_errors(message.message_id):
            return await self._bus.js.publish(subject, message.SerializeToString(),
                                              headers=headers, timeout=self._publish_timeout_s)

    async def _replies_to(self, message: conversation_pb2.UserMessage
                          ) -> list[conversation_pb2.BotMessage]:
        found = await self._read(outbound(message.bot_id, message.conversation_id))
        return [m for _, m in found if isinstance(m, conversation_pb2.BotMessage)
                and m.in_reply_to == message.message_id]

    async def _read(self, subject: str, *, mask: bool = False,
                    with_events: bool = False) -> list[tuple[int, Any]]:
        """All stored messages of one subject with their stream sequence, decoded (PII
        masked when `mask`, as the transcript shows them; the turns' events too when
        `with_events`)."""
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
                                filter_subject=subject, inactive_threshold=5.0)
        with bus_errors():
            sub = await self._bus.js.pull_subscribe(subject, stream="CONV", config=config)
        found: list[tuple[int, Any]] = []
        try:
            while True:
                batch = await fetch_or_empty(sub, 256, 0.5)
                if not batch:
                    break
                for msg in batch:
                    seq = msg.metadata.sequence.stream
                    found.extend((seq, item) for item in _decode(msg, mask, with_events))
                if batch[-1].metadata.num_pending == 0:
                    break
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await sub.unsubscribe()
        return found

    async def transcript(self, bot_id: str, conversation_id: str, limit: int,
                         *, with_events: bool = False) -> list[dict[str, Any]]:
        check_id(bot_id, "bot")
        check_id(conversation_id, "conversation")
        said = [(seq, m) for seq, m in
                await self._read(events(bot_id, conversation_id), mask=True,
                                 with_events=with_events)
                if isinstance(m, UserEntry | EventEntry)]
        replies = [(seq, m) for seq, m in
                   await self._read(outbound(bot_id, conversation_id), mask=True)
                   if m.role != RELAYED_ROLE]
        # A user message's event is written with its replies: it goes before the first one,
        # and the other events of its turn right after it.
        first_reply: dict[str, float] = {}
        for seq, reply in replies:
            first_reply.setdefault(reply.in_reply_to, seq)
        merged: list[tuple[tuple[float, int], Any]] = []
        for index, (seq, m) in enumerate(said):
            turn = m.message_id if isinstance(m, UserEntry) else m.turn
            place = min(seq, first_reply.get(turn, seq)) - 0.5 if turn else float(seq)
            merged.append(((place, index), m))
        merged += [((float(seq), 0), m) for seq, m in replies]
        merged.sort(key=lambda item: item[0])
        return [_entry(m) for _, m in merged][-limit:]

    async def subscribe(self, bot_id: str,
                        conversation_id: str) -> AsyncIterator[conversation_pb2.BotMessage]:
        """The conversation's bot and agent messages (not the user's own messages relayed to
        a human agent)."""
        check_id(bot_id, "bot")
        check_id(conversation_id, "conversation")
        async for message in self._follow(outbound(bot_id, conversation_id)):
            if message.role != RELAYED_ROLE:
                yield message

    async def handoff_messages(self, bot_id: str) -> AsyncIterator[conversation_pb2.BotMessage]:
        """For agent desks: the user messages of `bot_id`'s handed-off conversations, live
        (BotMessage with role "user", text PII-masked unless the bot keeps PII)."""
        check_id(bot_id, "bot")
        async for message in self._follow(outbound(bot_id, "*")):
            if message.role == RELAYED_ROLE:
                yield message

    async def _follow(self, subject: str) -> AsyncIterator[conversation_pb2.BotMessage]:
        """Live BotMessages on `subject` (core NATS; a slow reader loses the overflow)."""
        queue: asyncio.Queue[conversation_pb2.BotMessage] = asyncio.Queue(maxsize=256)

        async def on_message(msg: Msg) -> None:
            if not queue.full():
                queue.put_nowait(conversation_pb2.BotMessage.FromString(msg.data))

        sub = await self._bus.nc.subscribe(subject, cb=on_message)
        try:
            while True:
                yield await queue.get()
        finally:
            await sub.unsubscribe()

    async def feedback(self, feedback: conversation_pb2.Feedback) -> None:
        event = conversation_pb2.ConversationEvent(
            bot_id=feedback.bot_id, conversation_id=feedback.conversation_id, type="feedback",
            at_unix_ms=int(time.time() * 1000),
            data_json=json.dumps({"message_id": feedback.message_id, "rating": feedback.rating,
                                  "comment": redact(feedback.comment)}))
        msg_id = f"fb-{feedback.message_id}-{uuid.uuid4().hex[:8]}"
        with bus_errors():
            await self._bus.js.publish(events(feedback.bot_id, feedback.conversation_id),
                                       event.SerializeToString(), headers={HEADER_MSG_ID: msg_id},
                                       timeout=self._publish_timeout_s)

    async def handoffs(self, bot_id: str) -> list[dict[str, Any]]:
        check_id(bot_id, "bot")
        with bus_errors():
            kv = await self._bus.kv(KV_HANDOFFS)
            keys = await kv_keys(kv, f"{bot_id}.")
        result = []
        for key in keys:
            entry = await kv.get(key)
            since = json.loads(entry.value or b"{}").get("since")
            result.append({"conversation_id": key.split(".", 1)[1], "since": since})
        return result

    async def release(self, bot_id: str, conversation_id: str) -> None:
        message = conversation_pb2.UserMessage(
            bot_id=bot_id, conversation_id=conversation_id, message_id=f"rel-{uuid.uuid4().hex}",
            role="agent", sent_at_unix_ms=int(time.time() * 1000))
        check_id(bot_id, "bot")
        check_id(conversation_id, "conversation")
        await self._publish_inbound(message, KIND_RELEASE, wants_reply=False)


class BusModelAdmin:
    """ModelAdmin over the model store (object store `models` + KV `bots`)."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def activate(self, bot: str, version: str) -> None:
        from services.common.modelstore import ModelRef, activate

        await activate(self._bus, ModelRef(bot, version))

    async def versions(self, bot: str) -> list[str]:
        store = await self._bus.object_store(OBJ_MODELS)
        try:
            infos = await store.list()
        except Exception:  # nats-py raises NotFoundError when the store is empty
            return []
        prefix = f"{bot}/"
        return sorted(i.name[len(prefix):-len(".tar")] for i in infos
                      if i.name.startswith(prefix) and not i.deleted)


@dataclass(frozen=True)
class UserEntry:
    """A user message of the transcript, from its `user_message` event."""

    message_id: str
    text: str
    at_unix_ms: int


@dataclass(frozen=True)
class EventEntry:
    """Another event of a turn (`?include=events`): `turn` is the id of the turn's user
    message ("" for a turn no user message started, e.g. a workflow result's)."""

    kind: str
    data: dict[str, Any]
    at_unix_ms: int
    turn: str


HIDDEN_EVENTS = frozenset({"user_message", "bot_message", "agent_message"})
"""Events the transcript shows as messages, not as events."""


def _decode(msg: Msg, mask: bool, with_events: bool = False) -> list[Any]:
    """The BotMessage (conv.out) or the UserEntry of a `user_message` event (conv.event) in
    `msg`, or nothing; with PII masked when `mask`, unless the writer marked it `Bf-Pii: keep`
    (the events' data is masked when written, unless the bot keeps PII). With `with_events`,
    the other events of a conv.event message too (EventEntry; the user message's NLU result
    as the first, `nlu`)."""
    keep = not mask or (msg.headers or {}).get(HEADER_PII) == PII_KEEP
    if msg.subject.startswith("conv.out."):
        message = conversation_pb2.BotMessage.FromString(msg.data)
        if not keep:
            message.text = redact(message.text)
            for button in message.buttons:
                button.title, button.payload = redact(button.title), redact(button.payload)
        return [message]
    if msg.subject.startswith("conv.event."):
        decoded = decode_events(msg.data, msg.headers)
        users = [_user_entry(event, keep) for event in decoded if event.type == "user_message"]
        if not with_events:
            return users
        return [*users, *_event_entries(decoded, users[0].message_id if users else "")]
    return []


def _event_entries(decoded: list[conversation_pb2.ConversationEvent],
                   turn: str) -> list[EventEntry]:
    found: list[EventEntry] = []
    for event in decoded:
        data = json.loads(event.data_json or "{}")
        if event.type == "user_message" and isinstance(data.get("nlu"), dict):
            found.append(EventEntry("nlu", data["nlu"], event.at_unix_ms, turn))
        elif event.type not in HIDDEN_EVENTS:
            found.append(EventEntry(event.type, data, event.at_unix_ms, turn))
    return found


def _user_entry(event: conversation_pb2.ConversationEvent, keep: bool) -> UserEntry:
    data = json.loads(event.data_json or "{}")
    text = str(data.get("text", ""))
    return UserEntry(str(data.get("message_id", "")), text if keep else redact(text),
                     int(data.get("sent_at_unix_ms") or event.at_unix_ms))


def _entry(message: Any) -> dict[str, Any]:
    if isinstance(message, conversation_pb2.BotMessage):
        return {"type": message.role or "bot", "message_id": message.message_id,
                "in_reply_to": message.in_reply_to, "text": message.text,
                "buttons": [{"title": b.title, "payload": b.payload} for b in message.buttons],
                "citations": [citation_json(c) for c in message.citations],
                "at_unix_ms": message.sent_at_unix_ms}
    if isinstance(message, EventEntry):
        return {"type": "event", "event": message.kind, "in_reply_to": message.turn,
                "data": message.data, "at_unix_ms": message.at_unix_ms}
    return {"type": "user", "message_id": message.message_id, "text": message.text,
            "buttons": [], "citations": [], "at_unix_ms": message.at_unix_ms}
