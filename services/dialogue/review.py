"""The review collector: fills the annotation inbox (KV `review`) from events.

Two durable pull consumers shared by every dialogue replica (each event goes to one of them):
`review` on `conv.event.>` (stream CONV) and `review-shadow` on `events.nlu.shadow.>` (stream
EVENTS). A user message is queued when

- its NLU confidence is below `review_low_confidence` (reason `low_confidence`), or NLU flagged
  it out of scope (`out_of_scope`) — from the `user_message` event;
- the turn fell back (`fallback`) — from the `fallback` event, whose turn's `user_message`
  event (same message id, `Nats-Msg-Id` `<bot>.<conversation>.<message id>:e`, or
  `<message id>:e` when stored before ids were scoped) gives the text;
- the user rated the bot's answer -1 (`negative_feedback`) — the rated message id is
  `<user message id>:<index>`; the user message is looked up in the conversation's events;
- the live and the candidate model disagreed in shadow mode (`disagreement`): JSON
  `{text, active: {intent, confidence, version}, candidate: {...}, conversation_id, ...}`.

Button payloads (`/intent{...}`, which skip NLU) are never queued. Texts are PII-redacted
again before they are stored (a bot that keeps PII in its events still gets a redacted inbox).
See services/common/reviewqueue.py for items and their priority.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from services.common.events import decode_events
from services.common.logging import get_logger
from services.common.nats import KV_REVIEW, Bus
from services.common.pull import ContinuousPull, open_pull, pulled_batches
from services.common.reviewqueue import EntityGuess, Observation, ReviewQueue
from services.common.subjects import HEADER_MSG_ID, unscoped_id

log = get_logger(__name__)

CONV_DURABLE, CONV_STREAM, CONV_SUBJECT = "review", "CONV", "conv.event.>"
SHADOW_DURABLE, SHADOW_STREAM, SHADOW_SUBJECT = "review-shadow", "EVENTS", "events.nlu.shadow.>"
FETCH_BATCH = 128
MAX_SCAN = 500
"""Most events of one conversation read to find a user message."""


@dataclass(frozen=True)
class UserTurn:
    text: str
    nlu: dict[str, Any]
    message_id: str


def nlu_observation(bot: str, turn: UserTurn, reason: str, at_ms: int) -> Observation:
    nlu = turn.nlu
    entities = tuple(EntityGuess(str(e.get("entity", "")), str(e.get("value", "")))
                     for e in nlu.get("entities") or () if isinstance(e, dict))
    return Observation(bot=bot, text=turn.text, reason=reason, message_id=turn.message_id,
                       confidence=_float(nlu.get("confidence")), intent=str(nlu.get("intent", "")),
                       entities=entities, at_ms=at_ms)


def user_message_reason(nlu: dict[str, Any], low_confidence: float) -> str | None:
    """Why a user message goes to review by its NLU result alone (None: it does not)."""
    if nlu.get("out_of_scope"):
        return "out_of_scope"
    if _float(nlu.get("confidence")) < low_confidence:
        return "low_confidence"
    return None


def shadow_observation(bot: str, data: dict[str, Any], at_ms: int) -> Observation | None:
    text = data.get("text")
    active, candidate = data.get("active"), data.get("candidate")
    if not isinstance(text, str) or not text.strip() or not isinstance(active, dict):
        return None
    message_id = str(data.get("message_id") or "")
    return Observation(
        bot=bot, text=text, reason="disagreement", message_id=message_id,
        confidence=_float(active.get("confidence")), intent=str(active.get("intent", "")),
        at_ms=int(data.get("at_unix_ms") or at_ms),
        candidate=candidate if isinstance(candidate, dict) else None)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


class ReviewCollector:
    def __init__(self, bus: Bus, *, ack_wait_s: float, low_confidence: float) -> None:
        self._bus = bus
        self._ack_wait = ack_wait_s
        self._low = low_confidence
        self._tasks: list[asyncio.Task[None]] = []
        self._pulls: list[ContinuousPull] = []
        self._running = False
        self.queue: ReviewQueue | None = None

    async def start(self) -> None:
        self.queue = ReviewQueue(await self._bus.kv(KV_REVIEW))
        self._running = True
        for durable, stream, subject, handle in (
                (CONV_DURABLE, CONV_STREAM, CONV_SUBJECT, self.handle_conversation_event),
                (SHADOW_DURABLE, SHADOW_STREAM, SHADOW_SUBJECT, self.handle_shadow_event)):
            config = ConsumerConfig(
                durable_name=durable, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.NEW, ack_wait=self._ack_wait, max_ack_pending=4096)
            pull = await open_pull(self._bus, stream, config)
            self._pulls.append(pull)
            self._tasks.append(asyncio.get_running_loop().create_task(self._consume(pull, handle)))

    async def stop(self) -> None:
        self._running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for pull in self._pulls:
            await pull.stop()
        self._pulls.clear()

    async def _consume(self, pull: ContinuousPull,
                       handle: Callable[[Msg], Awaitable[None]]) -> None:
        async for messages in pulled_batches(pull, FETCH_BATCH, lambda: self._running):
            for msg in messages:
                await asyncio.shield(self._handle_one(msg, handle))

    async def _handle_one(self, msg: Msg, handle: Callable[[Msg], Awaitable[None]]) -> None:
        try:
            await handle(msg)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("review_event_retry", subject=msg.subject, error=repr(exc))
            await msg.nak(delay=1.0)
            return
        except Exception as exc:  # never stop collecting for one bad event
            log.error("review_event_failed", subject=msg.subject, error=repr(exc))
        await msg.ack()

    async def handle_conversation_event(self, msg: Msg) -> None:
        try:
            batch = [(event, _object(event.data_json))
                     for event in decode_events(msg.data, msg.headers)]
        except Exception:
            return
        # the dialogue writes a turn's events together: its user message is in the same batch
        said = next((_turn(data) for event, data in batch
                     if event.type == "user_message" and data is not None), None)
        parts = msg.subject.split(".")
        for event, data in batch:
            if data is None:
                continue
            bot = event.bot_id or (parts[2] if len(parts) > 2 else "")
            conversation = event.conversation_id or (parts[3] if len(parts) > 3 else "")
            at_ms = event.at_unix_ms or int(time.time() * 1000)
            observation = await self._observe(msg, event.type, bot, conversation, data, at_ms,
                                              said)
            if observation is not None and self.queue is not None:
                await self.queue.record(observation)

    async def _observe(self, msg: Msg, kind: str, bot: str, conversation: str,
                       data: dict[str, Any], at_ms: int,
                       said: UserTurn | None) -> Observation | None:
        if kind == "user_message":
            turn = _turn(data)
            reason = None if turn is None else user_message_reason(turn.nlu, self._low)
            return None if turn is None or reason is None else nlu_observation(
                bot, turn, reason, at_ms)
        if kind == "fallback":
            header = unscoped_id((msg.headers or {}).get(HEADER_MSG_ID, ""))
            message_id = header.rsplit(":e", 1)[0]
            turn = said or await self.find_user_message(bot, conversation, message_id)
            return None if turn is None else nlu_observation(bot, turn, "fallback", at_ms)
        if kind == "feedback" and _float(data.get("rating")) < 0:
            message_id = str(data.get("message_id", "")).rsplit(":", 1)[0]
            turn = await self.find_user_message(bot, conversation, message_id)
            return None if turn is None else nlu_observation(bot, turn, "negative_feedback",
                                                             at_ms)
        return None

    async def find_user_message(self, bot: str, conversation: str,
                                message_id: str) -> UserTurn | None:
        """The `user_message` event of `message_id` in the conversation's events."""
        if not message_id:
            return None
        subject, seq = f"conv.event.{bot}.{conversation}", 1
        for _ in range(MAX_SCAN):
            try:
                raw = await self._bus.js.get_msg(CONV_STREAM, seq=seq, subject=subject, next=True)
            except NotFoundError:
                return None
            if raw.seq is None:
                return None
            seq = raw.seq + 1
            header = unscoped_id((raw.headers or {}).get(HEADER_MSG_ID, ""))
            if not header.startswith(f"{message_id}:e"):
                continue
            for event in decode_events(raw.data or b"", raw.headers):
                if event.type == "user_message":
                    return _turn(_object(event.data_json) or {})
        return None

    async def handle_shadow_event(self, msg: Msg) -> None:
        try:
            data = json.loads(msg.data)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        bot = str(data.get("bot_id") or msg.subject.split(".")[3])
        observation = shadow_observation(bot, data, int(time.time() * 1000))
        if observation is not None and self.queue is not None:
            await self.queue.record(observation)


def _object(data_json: str) -> dict[str, Any] | None:
    """An event's data; None unless it is a JSON object."""
    data = json.loads(data_json) if data_json else {}
    return data if isinstance(data, dict) else None


def _turn(data: dict[str, Any]) -> UserTurn | None:
    text, nlu = data.get("text"), data.get("nlu")
    if not isinstance(text, str) or not text.strip() or not isinstance(nlu, dict):
        return None  # no NLU result: NLU was down, or a button payload (`/intent`)
    return UserTurn(text=text, nlu=nlu, message_id=str(data.get("message_id", "")))
