"""Webhook delivery end to end: the admin API configures a bot's webhook (KV `bots`), the
gateway's relay consumes the bot's replies from JetStream and POSTs them, signed, to a local
receiver that refuses the first attempt (so the retry is exercised); without a webhook nothing
is sent. Then the relay's consumer on its own, with two replicas on the gateway's NATS identity:
it takes only the replies of bots with a webhook, follows changes made on either replica, never
delivers a message from before a webhook existed, and converges after racing updates."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import CollectorRegistry

from botfactory.local.nats_server import NatsServer
from services.common.nats import KV_BOTS, Bus, connect, provision
from services.common.pb.botfactory.v1 import conversation_pb2
from services.gateway.http import GatewayMetrics
from services.gateway.webhook_follower import DURABLE, NO_BOT_FILTER, bot_filter
from services.gateway.webhook_relay import FollowedWebhookStore, WebhookRelay
from services.gateway.webhook_store import STREAM, NatsWebhookStore
from services.gateway.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Webhook,
    WebhookSender,
    WebhookSettings,
    verify,
)
from tests.support.polling import eventually
from tests.support.stack import BOOTSTRAP, Stack, running_stack

SECRET = "integration-webhook-secret"


@dataclass
class Request:
    body: bytes
    headers: dict[str, str]
    status: int

    @property
    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Receiver:
    """Records every request; answers 503 to the first `fail_first`, then 200."""

    fail_first: int = 1
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        status = 503 if len(self.requests) < self.fail_first else 200
        self.requests.append(Request(await request.read(), dict(request.headers), status))
        return web.Response(status=status)

    def accepted(self) -> list[Request]:
        return [r for r in self.requests if r.status == 200]


@contextlib.asynccontextmanager
async def receiving(fail_first: int = 1) -> AsyncIterator[Receiver]:
    receiver = Receiver(fail_first)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    receiver.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()


async def admin(stack: Stack, method: str, body: Any = None) -> tuple[int, str]:
    assert stack.session is not None
    url = f"{stack.base_url}/v1/admin/bots/banking/webhook"
    headers = {"Authorization": f"Bearer {BOOTSTRAP}"}
    async with stack.session.request(method, url, json=body, headers=headers) as resp:
        return resp.status, await resp.text()


async def bot_replies(stack: Stack, conversation: str) -> list[dict[str, Any]]:
    """The conversation's bot messages, once the dialogue has answered."""
    async def replies() -> list[dict[str, Any]]:
        return [e for e in await stack.transcript(conversation) if e["type"] == "bot"]

    return await eventually(replies, f"a bot reply in conversation {conversation}")


async def relay_caught_up(stack: Stack) -> None:
    """Wait until the relay has taken and acknowledged every bot message in the stream."""
    bus = await connect(stack.nats_url, name="test-webhooks")
    try:
        await caught_up(bus)
    finally:
        await bus.drain()


async def test_replies_are_delivered_to_the_webhook_signed_once_after_a_retry(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    async with receiving(fail_first=1) as receiver, \
            running_stack(nats_server.url, tiny_banking_model) as stack:
        # No webhook: the reply is only in the stream.
        status, _ = await stack.post("w-none", "/greet", wait=False)
        assert status == 202
        await bot_replies(stack, "w-none")
        await relay_caught_up(stack)
        assert receiver.requests == []

        status, text = await admin(stack, "PUT", {"url": receiver.url, "secret": SECRET})
        assert status == 200, text
        assert json.loads(text) == {"bot_id": "banking", "url": receiver.url}
        status, text = await admin(stack, "GET")
        assert status == 200 and json.loads(text)["url"] == receiver.url
        assert SECRET not in text

        status, body = await stack.post("w-hook", "/greet", wait=False)
        assert status == 202 and body["complete"] is False
        replies = await bot_replies(stack, "w-hook")
        for _ in range(200):
            if len(receiver.accepted()) >= len(replies):
                break
            await asyncio.sleep(0.05)
        await relay_caught_up(stack)

        accepted = receiver.accepted()
        # Each reply accepted exactly once; the refused first attempt was retried as is.
        assert sorted(r.payload["message"]["message_id"] for r in accepted) == \
            sorted(e["message_id"] for e in replies)
        assert len(receiver.requests) == len(replies) + 1
        first, retried = receiver.requests[0], receiver.requests[1]
        assert first.status == 503 and first.body == retried.body
        assert first.headers[DELIVERY_HEADER] == retried.headers[DELIVERY_HEADER]
        for request in receiver.requests:
            signed = request.headers[TIMESTAMP_HEADER], request.headers[SIGNATURE_HEADER]
            assert verify(SECRET, request.body, *signed)
            assert not verify("some-other-secret-123", request.body, *signed)
            payload = request.payload
            assert payload["type"] == "message" and payload["bot_id"] == "banking"
            assert payload["conversation_id"] == "w-hook"
            assert payload["delivery_id"] == request.headers[DELIVERY_HEADER]
        greeting = accepted[0].payload["message"]
        assert greeting["text"] == replies[0]["text"] and greeting["role"] == "bot"
        assert "banking assistant" in greeting["text"] or "Hi there" in greeting["text"]
        registry = stack.gateway.metrics.registry
        assert registry.get_sample_value("botfactory_gateway_webhook_deliveries_total",
                                         {"outcome": "delivered"}) == len(replies)

        # Removed: nothing more is sent.
        status, _ = await admin(stack, "DELETE")
        assert status == 200
        assert (await admin(stack, "GET"))[0] == 404
        sent = len(receiver.requests)
        status, _ = await stack.post("w-after", "/greet", wait=False)
        assert status == 202
        await bot_replies(stack, "w-after")
        await relay_caught_up(stack)
        assert len(receiver.requests) == sent


async def test_the_nats_store_keeps_webhooks_in_the_bots_bucket(
        nats_server: NatsServer) -> None:
    bus = await connect(nats_server.url, name="test-webhook-store")
    try:
        await provision(bus)
        store = NatsWebhookStore(bus)
        assert await store.get("banking") is None and await store.delete("banking") is False
        await store.put("banking", Webhook("https://example.com/h", SECRET))
        entry = await (await bus.kv(KV_BOTS)).get("webhook.banking")
        assert entry.value is not None
        assert json.loads(entry.value) == {"url": "https://example.com/h", "secret": SECRET,
                                           "since_seq": 0}
        assert await store.get("banking") == Webhook("https://example.com/h", SECRET)
        # since_seq: the end of stream CONV when the webhook was created, kept when replaced.
        first = await publish(bus, "banking", "before")
        await store.put("banking", Webhook("https://example.com/rotated", SECRET))
        assert (await store.subscription("banking")) is not None
        assert (await store.subscription("banking")).since_seq == 0  # type: ignore[union-attr]
        assert await store.delete("banking") is True
        assert await store.get("banking") is None and await store.delete("banking") is False
        await store.put("banking", Webhook("https://example.com/h", SECRET))
        assert (await store.subscription("banking")).since_seq == first  # type: ignore[union-attr]
    finally:
        await bus.drain()


# --- the relay's consumer, two replicas -------------------------------------------------------


@dataclass
class Replica:
    relay: WebhookRelay
    store: FollowedWebhookStore

    def knows(self, bot: str) -> bool:
        return self.relay.follower.get(bot) is not None


@contextlib.asynccontextmanager
async def replica(nats_server: NatsServer, session: aiohttp.ClientSession,
                  fetch_timeout_s: float = 2.0) -> AsyncIterator[Replica]:
    """A gateway's relay on the gateway's NATS identity; its regular check is left to the test
    (`follower.sync(sweep=True)`)."""
    bus = await connect(nats_server.url_for("gateway"), name="test-relay")
    metrics = GatewayMetrics.create(CollectorRegistry())
    sender = WebhookSender(session, WebhookSettings(timeout_s=2, max_attempts=1), metrics)
    relay = WebhookRelay(bus, NatsWebhookStore(bus), sender, sync_s=3600,
                         fetch_timeout_s=fetch_timeout_s)
    await relay.start()
    try:
        yield Replica(relay, FollowedWebhookStore(NatsWebhookStore(bus), relay))
    finally:
        await relay.stop(grace_s=1)
        await bus.drain()


async def publish(bus: Bus, bot: str, text: str) -> int:
    message = conversation_pb2.BotMessage(bot_id=bot, conversation_id="c1", message_id=text,
                                          text=text, role="bot")
    ack = await bus.js.publish(f"conv.out.{bot}.c1", message.SerializeToString())
    return int(ack.seq)


async def filters(bus: Bus) -> list[str]:
    config = (await bus.js.consumer_info(STREAM, DURABLE)).config
    return sorted(config.filter_subjects or [config.filter_subject or ""])


async def caught_up(bus: Bus) -> Any:
    """The relay's consumer once it has taken and acknowledged every bot message."""
    async def info() -> Any:
        found = await bus.js.consumer_info(STREAM, DURABLE)
        return found if found.num_pending == 0 and found.num_ack_pending == 0 else None

    return await eventually(info, "the webhook relay to catch up")


@contextlib.asynccontextmanager
async def admin_bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    bus = await connect(nats_server.url, name="test-admin")
    try:
        await provision(bus)
        yield bus
    finally:
        await bus.drain()


async def test_the_relay_takes_only_the_replies_of_bots_with_a_webhook(
        nats_server: NatsServer) -> None:
    async with admin_bus(nats_server) as bus, receiving(fail_first=0) as receiver, \
            aiohttp.ClientSession() as session:
        # The consumer of the relay's first version, on every reply: the filter replaces it.
        await bus.js.add_consumer(STREAM, ConsumerConfig(
            durable_name=DURABLE, filter_subject="conv.out.>", ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW, max_ack_pending=256))
        async with replica(nats_server, session) as a, replica(nats_server, session) as b:
            assert await filters(bus) == [NO_BOT_FILTER]
            await publish(bus, "alpha", "a0")
            await publish(bus, "beta", "b0")
            info = await bus.js.consumer_info(STREAM, DURABLE)
            assert info.num_pending == 0 and info.delivered.stream_seq == 0  # nothing taken

            # Set on replica a: its filter and view change at once; b's view follows.
            await a.store.put("alpha", Webhook(receiver.url, SECRET))
            assert await filters(bus) == [bot_filter("alpha")] and a.knows("alpha")
            await eventually(lambda: b.knows("alpha"), "replica b sees alpha's webhook")
            await publish(bus, "beta", "b1")
            await publish(bus, "alpha", "a1")
            await eventually(lambda: len(receiver.requests) == 1, "a1 delivered")
            assert receiver.requests[0].payload["message"]["text"] == "a1"  # a0: before
            info = await caught_up(bus)
            # Taken: a1, and a0 when the consumer's position was still before it (skipped);
            # beta's replies never reached a gateway.
            taken = info.delivered.consumer_seq
            assert taken == 1 + a.relay.skipped + b.relay.skipped

            # Removed on replica b: the filter at once, a's view within the watch delay.
            assert await b.store.delete("alpha") is True
            assert await filters(bus) == [NO_BOT_FILTER] and not b.knows("alpha")
            await eventually(lambda: not a.knows("alpha"), "replica a forgets alpha")
            await publish(bus, "alpha", "a2")
            await asyncio.sleep(0.2)
            assert len(receiver.requests) == 1
            info = await caught_up(bus)
            assert info.delivered.consumer_seq == taken


async def test_messages_from_before_a_webhook_are_never_delivered_to_it(
        nats_server: NatsServer) -> None:
    """The consumer's position moves only when it is pulled: with a pull waiting (30 s), the
    replies published meanwhile are behind it, and it hands them out once their bot joins the
    filter; the relay acks them without delivering them (they predate since_seq)."""
    async with admin_bus(nats_server) as bus, receiving(fail_first=0) as receiver, \
            aiohttp.ClientSession() as session, \
            replica(nats_server, session, fetch_timeout_s=30) as a:

        async def pull_waiting() -> bool:
            return bool((await bus.js.consumer_info(STREAM, DURABLE)).num_waiting)

        await eventually(pull_waiting, "the relay's pull request waits")
        await publish(bus, "alpha", "old-0")
        await publish(bus, "alpha", "old-1")
        await a.store.put("alpha", Webhook(receiver.url, SECRET))
        await publish(bus, "alpha", "new")
        await eventually(lambda: a.relay.skipped == 2 and len(receiver.requests) == 1,
                         "the old replies skipped, the new one delivered")
        assert [r.payload["message"]["text"] for r in receiver.requests] == ["new"]

        # Deleted and set again: the replies published in between are not delivered either.
        await a.store.delete("alpha")
        await publish(bus, "alpha", "between")
        await a.store.put("alpha", Webhook(receiver.url, SECRET))
        await publish(bus, "alpha", "again")
        await eventually(lambda: len(receiver.requests) == 2, "the next reply delivered")
        await asyncio.sleep(0.2)
        assert [r.payload["message"]["text"] for r in receiver.requests] == ["new", "again"]


async def test_replicas_racing_on_the_filter_converge(nats_server: NatsServer) -> None:
    async with admin_bus(nats_server) as bus, receiving(fail_first=0) as receiver, \
            aiohttp.ClientSession() as session, \
            replica(nats_server, session) as a, replica(nats_server, session) as b:
        hook = Webhook(receiver.url, SECRET)
        # a is in the middle of a PUT of alpha (in the filter, not stored yet) while b, which
        # cannot know of it, updates the filter for another bot: b keeps alpha.
        await a.relay.follower.admit("alpha")
        await b.store.put("beta", hook)
        assert await filters(bus) == [bot_filter("alpha"), bot_filter("beta")]
        assert await b.store.delete("beta") is True
        assert await filters(bus) == [bot_filter("alpha")]
        await NatsWebhookStore(bus).put("alpha", hook)  # a's PUT completes
        await a.relay.follower.refresh("alpha", admitted=True)
        await eventually(lambda: b.knows("alpha"), "replica b sees alpha's webhook")

        # An update lost to a concurrent one (alpha dropped), a PUT that died half-way
        # (gamma in the filter, never stored): each replica's regular check repairs the first
        # at once and drops the second at its second check.
        await bus.js.add_consumer(STREAM, a.relay._consumer_config([bot_filter("gamma")]))
        await b.relay.follower.sync(sweep=True)
        assert await filters(bus) == [bot_filter("alpha"), bot_filter("gamma")]
        await b.relay.follower.sync(sweep=True)
        assert await filters(bus) == [bot_filter("alpha")]
        await a.relay.follower.sync(sweep=True)  # idempotent: nothing to change
        assert await filters(bus) == [bot_filter("alpha")]

        # A deleted consumer is recreated (deliver policy NEW) by the next check.
        await bus.js.delete_consumer(STREAM, DURABLE)
        await a.relay.follower.sync(sweep=True)
        assert await filters(bus) == [bot_filter("alpha")]
        await publish(bus, "alpha", "after")
        await eventually(lambda: len(receiver.requests) == 1, "delivered after the repair")
