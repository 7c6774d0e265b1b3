"""Webhook delivery of bot messages: the relay that POSTs every bot (and agent) message of a bot
with a webhook to it, reading them from stream CONV through one durable pull consumer shared by
every gateway replica (`WebhookRelay`), and the admin API's store that applies a change to this
replica's relay at once (`FollowedWebhookStore`). Where webhooks are stored: `webhook_store`;
which bots the consumer takes: `webhook_follower`; the design (delivery at least once, order,
backpressure, following the configuration): docs/gateway.md, "Webhooks"."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.common.logging import get_logger
from services.common.nats import Bus
from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.pull import settle as _settle
from services.common.subjects import HEADER_MSG_ID
from services.gateway.ordered_pull import OrderedPull, Turn
from services.gateway.ports import Webhook, WebhookStore
from services.gateway.webhook_follower import DURABLE, SYNC_S, WebhookFollower
from services.gateway.webhook_store import STREAM, Subscription, SubscriptionStore
from services.gateway.webhooks import WebhookSender, message_payload

log = get_logger(__name__)

DEAD_LETTER_SUBJECT = "events.deadletter.webhook"
MAX_ACK_PENDING = 256
ACK_WAIT_S = 30.0
FETCH_TIMEOUT_S = 2.0
PUBLISH_TIMEOUT_S = 5.0
RETRY_DELAY_S = 1.0


def delivery_id(message: conversation_pb2.BotMessage, fallback: str = "") -> str:
    """The same for every delivery of one bot message (redeliveries included)."""
    ident = message.message_id or fallback
    raw = f"{message.bot_id}/{message.conversation_id}/{ident}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class WebhookRelay(OrderedPull):
    """Consumes `conv.out.<bot>.>` of the bots with a webhook and delivers each message
    (docs/gateway.md, "Delivery semantics"). `store` answers for bots this replica's view
    does not hold."""

    def __init__(self, bus: Bus, store: SubscriptionStore, sender: WebhookSender, *,
                 max_ack_pending: int = MAX_ACK_PENDING, ack_wait_s: float = ACK_WAIT_S,
                 concurrency: int | None = None, sync_s: float = SYNC_S,
                 fetch_timeout_s: float = FETCH_TIMEOUT_S) -> None:
        super().__init__("webhook-relay", max_ack_pending=max_ack_pending,
                         ack_wait_s=ack_wait_s, fetch_timeout_s=fetch_timeout_s)
        self._bus = bus
        self._store = store
        self.follower = WebhookFollower(bus, store, self._consumer_config, sync_s)
        self.skipped = 0  # messages published before their bot's webhook existed
        self._sender = sender
        self._deliveries = asyncio.Semaphore(concurrency or sender.settings.concurrency)

    def _consumer_config(self, filters: list[str]) -> ConsumerConfig:
        """Every replica writes the same config but for the filters (create or update; the
        deliver policy applies on creation only)."""
        return ConsumerConfig(
            durable_name=DURABLE, filter_subjects=filters, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW, ack_wait=self._ack_wait, max_deliver=-1,
            max_ack_pending=self._max_ack_pending, max_waiting=512)

    async def start(self) -> None:
        await self.follower.start()
        self.begin(await self._bus.js.pull_subscribe_bind(DURABLE, STREAM))

    def fetch_failed(self) -> None:
        self.follower.wake()  # e.g. the consumer was deleted: recreate it

    async def stopping(self) -> None:
        await self.follower.stop()

    async def deliver(self, msg: Msg, message: conversation_pb2.BotMessage,
                      turn: Turn) -> None:
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
        await turn.wait()
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
