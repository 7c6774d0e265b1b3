"""The gateway's side of the bus: publishes user messages to JetStream and collects replies.

Each gateway replica subscribes to its own inbox prefix; a user message carries
`Bf-Reply-Inbox: <prefix>.<message id>` so the dialogue worker answers this replica directly,
while the replies also go to `conv.out.<bot>.<conversation>` (transcript, sockets, webhooks).

The transcript (docs/security.md) is read from the stream: the user's messages from the
dialogue's `user_message` events (`conv.in` keeps a message only until it is handled), the
bot's from `conv.out`; PII is masked in what it returns unless the bot keeps it (`Bf-Pii:
keep`). Feedback comments are stored with PII masked.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NoKeysError

from services.common.errors import Unavailable
from services.common.logging import get_logger
from services.common.nats import KV_HANDOFFS, OBJ_MODELS, Bus
from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.pii import redact
from services.common.subjects import (
    HEADER_CORRELATION,
    HEADER_KIND,
    HEADER_MSG_ID,
    HEADER_PII,
    HEADER_REPLY_INBOX,
    KIND_AGENT,
    KIND_MESSAGE,
    KIND_RELEASE,
    PII_KEEP,
    check_id,
    events,
    inbound,
    outbound,
)
from services.gateway.ports import SendResult

log = get_logger(__name__)
PUBLISH_TIMEOUT_S = 5.0


@dataclass
class _Waiter:
    replies: dict[int, conversation_pb2.BotMessage] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, message: conversation_pb2.BotMessage) -> None:
        self.replies[message.index] = message
        if message.last and len(self.replies) == message.index + 1:
            self.done.set()

    def ordered(self) -> list[conversation_pb2.BotMessage]:
        return [self.replies[i] for i in sorted(self.replies)]


class BusHub:
    def __init__(self, bus: Bus, partitions: int) -> None:
        self._bus = bus
        self._partitions = partitions
        self._prefix = f"_INBOX.gw.{uuid.uuid4().hex}"
        self._waiters: dict[str, _Waiter] = {}
        self._sub: Any = None

    @property
    def connected(self) -> bool:
        return bool(self._bus.nc.is_connected)

    async def start(self) -> None:
        self._sub = await self._bus.nc.subscribe(f"{self._prefix}.>", cb=self._on_reply)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_reply(self, msg: Msg) -> None:
        message_id = msg.subject[len(self._prefix) + 1:]
        waiter = self._waiters.get(message_id)
        if waiter is not None:
            waiter.add(conversation_pb2.BotMessage.FromString(msg.data))

    async def send(self, message: conversation_pb2.UserMessage, *, wait_s: float) -> SendResult:
        check_id(message.bot_id, "bot")
        check_id(message.conversation_id, "conversation")
        if not message.message_id:
            message.message_id = uuid.uuid4().hex
        check_id(message.message_id, "message_id")
        if not message.sent_at_unix_ms:
            message.sent_at_unix_ms = int(time.time() * 1000)
        kind = KIND_AGENT if message.role == "agent" else KIND_MESSAGE
        waiter = _Waiter()
        self._waiters[message.message_id] = waiter
        try:
            ack = await self._publish_inbound(message, kind, wait_s > 0)
            if ack.duplicate:
                return SendResult(await self._replies_to(message), complete=True,
                                  duplicate=True)
            if wait_s <= 0:
                return SendResult([], complete=False)
            try:
                await asyncio.wait_for(waiter.done.wait(), wait_s)
            except TimeoutError:
                return SendResult(waiter.ordered(), complete=False)
            return SendResult(waiter.ordered(), complete=True)
        finally:
            del self._waiters[message.message_id]

    async def _publish_inbound(self, message: conversation_pb2.UserMessage, kind: str,
                               wants_reply: bool) -> Any:
        headers = {HEADER_MSG_ID: message.message_id, HEADER_KIND: kind,
                   HEADER_CORRELATION: message.metadata.get("correlation_id")
                   or message.message_id}
        if wants_reply:
            headers[HEADER_REPLY_INBOX] = f"{self._prefix}.{message.message_id}"
        subject = inbound(message.bot_id, message.conversation_id, self._partitions)
        try:
            return await self._bus.js.publish(subject, message.SerializeToString(),
                                              headers=headers, timeout=PUBLISH_TIMEOUT_S)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("publish_failed", error=repr(exc))
            raise Unavailable("the message bus is unavailable; please retry") from exc

    async def _replies_to(self, message: conversation_pb2.UserMessage
                          ) -> list[conversation_pb2.BotMessage]:
        found = await self._read(outbound(message.bot_id, message.conversation_id))
        return [m for _, m in found if isinstance(m, conversation_pb2.BotMessage)
                and m.in_reply_to == message.message_id]

    async def _read(self, subject: str, *, mask: bool = False) -> list[tuple[int, Any]]:
        """All stored messages of one subject with their stream sequence, decoded (PII
        masked when `mask`, as the transcript shows them)."""
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
                                filter_subject=subject, inactive_threshold=5.0)
        sub = await self._bus.js.pull_subscribe(subject, stream="CONV", config=config)
        found: list[tuple[int, Any]] = []
        try:
            while True:
                try:
                    batch = await sub.fetch(256, timeout=0.5)
                except nats.errors.TimeoutError:
                    break
                for msg in batch:
                    found.append((msg.metadata.sequence.stream, _decode(msg, mask)))
                if batch[-1].metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return found

    async def transcript(self, bot_id: str, conversation_id: str,
                         limit: int) -> list[dict[str, Any]]:
        check_id(bot_id, "bot")
        check_id(conversation_id, "conversation")
        said = [(seq, m) for seq, m in
                await self._read(events(bot_id, conversation_id), mask=True)
                if isinstance(m, UserEntry)]
        replies = await self._read(outbound(bot_id, conversation_id), mask=True)
        # A user message's event is written with its replies: it goes before the first one.
        first_reply: dict[str, float] = {}
        for seq, reply in replies:
            first_reply.setdefault(reply.in_reply_to, seq)
        merged = [(min(seq, first_reply.get(m.message_id, seq)) - 0.5, m) for seq, m in said]
        merged += [(float(seq), m) for seq, m in replies]
        merged.sort(key=lambda item: item[0])
        return [_entry(m) for _, m in merged][-limit:]

    async def subscribe(self, bot_id: str,
                        conversation_id: str) -> AsyncIterator[conversation_pb2.BotMessage]:
        check_id(bot_id, "bot")
        check_id(conversation_id, "conversation")
        queue: asyncio.Queue[conversation_pb2.BotMessage] = asyncio.Queue(maxsize=256)

        async def on_message(msg: Msg) -> None:
            if not queue.full():
                queue.put_nowait(conversation_pb2.BotMessage.FromString(msg.data))

        sub = await self._bus.nc.subscribe(outbound(bot_id, conversation_id), cb=on_message)
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
        try:
            await self._bus.js.publish(events(feedback.bot_id, feedback.conversation_id),
                                       event.SerializeToString(), headers={HEADER_MSG_ID: msg_id},
                                       timeout=PUBLISH_TIMEOUT_S)
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable("the message bus is unavailable; please retry") from exc

    async def handoffs(self, bot_id: str) -> list[dict[str, Any]]:
        check_id(bot_id, "bot")
        kv = await self._bus.kv(KV_HANDOFFS)
        try:
            keys = await kv.keys(filters=[f"{bot_id}.>"])
        except NoKeysError:
            return []
        result = []
        for key in sorted(keys):
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


def _decode(msg: Msg, mask: bool) -> Any:
    """A BotMessage (conv.out), a UserEntry (a `user_message` event), else None; with PII
    masked when `mask`, unless the writer marked it `Bf-Pii: keep`."""
    keep = not mask or (msg.headers or {}).get(HEADER_PII) == PII_KEEP
    if msg.subject.startswith("conv.out."):
        message = conversation_pb2.BotMessage.FromString(msg.data)
        if not keep:
            message.text = redact(message.text)
            for button in message.buttons:
                button.title, button.payload = redact(button.title), redact(button.payload)
        return message
    if msg.subject.startswith("conv.event."):
        event = conversation_pb2.ConversationEvent.FromString(msg.data)
        if event.type != "user_message":
            return None
        data = json.loads(event.data_json or "{}")
        text = str(data.get("text", ""))
        return UserEntry(str(data.get("message_id", "")), text if keep else redact(text),
                         int(data.get("sent_at_unix_ms") or event.at_unix_ms))
    return None


def _entry(message: Any) -> dict[str, Any]:
    if isinstance(message, conversation_pb2.BotMessage):
        return {"type": message.role or "bot", "message_id": message.message_id,
                "in_reply_to": message.in_reply_to, "text": message.text,
                "buttons": [{"title": b.title, "payload": b.payload} for b in message.buttons],
                "at_unix_ms": message.sent_at_unix_ms}
    return {"type": "user", "message_id": message.message_id, "text": message.text,
            "buttons": [], "at_unix_ms": message.at_unix_ms}
