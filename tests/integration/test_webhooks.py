"""Webhook delivery end to end: the admin API configures a bot's webhook (KV `bots`), the
gateway's relay consumes the bot's replies from JetStream and POSTs them, signed, to a local
receiver that refuses the first attempt (so the retry is exercised); without a webhook nothing
is sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from botfactory.local.nats_server import NatsServer
from services.common.nats import KV_BOTS, connect, provision
from services.gateway.webhook_relay import DURABLE, STREAM, NatsWebhookStore
from services.gateway.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, Webhook, verify
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
    for _ in range(200):
        entries = [e for e in await stack.transcript(conversation) if e["type"] == "bot"]
        if entries:
            return entries
        await asyncio.sleep(0.05)
    raise AssertionError(f"no bot reply in conversation {conversation}")


async def relay_caught_up(stack: Stack) -> None:
    """Wait until the relay has taken and acknowledged every bot message in the stream."""
    bus = await connect(stack.nats_url, name="test-webhooks")
    try:
        for _ in range(200):
            info = await bus.js.consumer_info(STREAM, DURABLE)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the webhook relay did not catch up: {info}")
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
            assert verify(SECRET, request.body, request.headers[SIGNATURE_HEADER])
            assert not verify("some-other-secret-123", request.body,
                              request.headers[SIGNATURE_HEADER])
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
        assert json.loads(entry.value) == {"url": "https://example.com/h", "secret": SECRET}
        assert await store.get("banking") == Webhook("https://example.com/h", SECRET)
        assert await store.delete("banking") is True
        assert await store.get("banking") is None and await store.delete("banking") is False
    finally:
        await bus.drain()
