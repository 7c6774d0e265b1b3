"""The WhatsApp channel end to end: Meta's verification handshake and signed webhooks through
the gateway's routes, the real dialogue, and the replies sent through a local fake of the Graph
API (tests/support/fake_platform.py), with the webhook shapes of
https://developers.facebook.com/docs/whatsapp/cloud-api/webhooks/payload-examples."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from botfactory.local.nats_server import NatsServer
from services.common.nats import connect
from services.gateway.channels.whatsapp import signature
from tests.support.fake_platform import FakePlatform
from tests.support.stack import BOOTSTRAP, Stack, channel_stack

ACCESS_TOKEN = "EAAGm0PX4ZCpsBAKZCZAtestaccesstoken"
APP_SECRET = "0123456789abcdef0123456789abcdef"
VERIFY_TOKEN = "verify-me-42"
NUMBER_ID = "106540352242922"
ADMIN = {"Authorization": f"Bearer {BOOTSTRAP}"}
WEBHOOK = "/v1/channels/whatsapp/banking"


def graph_answer(path: str, body: Any) -> dict[str, Any]:
    """What the Cloud API answers a sent message."""
    to = body.get("to", "") if isinstance(body, dict) else ""
    return {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": "wamid.sent"}]}


@pytest.fixture
async def graph() -> AsyncIterator[FakePlatform]:
    fake = FakePlatform(answer=graph_answer)
    yield fake
    await fake.stop()


@pytest.fixture
async def stack(nats_server: NatsServer, tiny_banking_model: Path,
                graph: FakePlatform) -> AsyncIterator[Stack]:
    base = await graph.start()
    settings = {"access_token": ACCESS_TOKEN, "app_secret": APP_SECRET,
                "verify_token": VERIFY_TOKEN, "phone_number_id": NUMBER_ID, "api_base": base}
    async with channel_stack(nats_server.url, tiny_banking_model, "whatsapp",
                             settings) as (running, shown):
        assert shown["secrets"] == ["access_token", "app_secret", "verify_token"]
        assert shown["settings"] == {"phone_number_id": NUMBER_ID, "api_base": base}
        assert not [s for s in (ACCESS_TOKEN, APP_SECRET, VERIFY_TOKEN) if s in json.dumps(shown)]
        assert shown["webhook_path"] == WEBHOOK
        yield running


def webhook(wa_id: str, message: dict[str, Any]) -> dict[str, Any]:
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550783881", "phone_number_id": NUMBER_ID},
             "contacts": [{"profile": {"name": "Ana"}, "wa_id": wa_id}],
             "messages": [{"from": wa_id, "timestamp": "1714510003", **message}]}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"value": value,
                                                              "field": "messages"}]}]}


def text(wamid: str, body: str, wa_id: str = "15551234567") -> dict[str, Any]:
    return webhook(wa_id, {"id": wamid, "type": "text", "text": {"body": body}})


def button_reply(wamid: str, reply_id: str, title: str,
                 wa_id: str = "15551234567") -> dict[str, Any]:
    return webhook(wa_id, {"id": wamid, "type": "interactive",
                           "context": {"from": "15550783881", "id": "wamid.bot"},
                           "interactive": {"type": "button_reply",
                                           "button_reply": {"id": reply_id, "title": title}}})


async def deliver(stack: Stack, payload: dict[str, Any], secret: str = APP_SECRET,
                  header: str | None = None) -> int:
    """POST the webhook as Meta does: the raw body signed with the app secret."""
    assert stack.session is not None
    body = json.dumps(payload).encode()
    signed = f"sha256={signature(secret, body)}" if header is None else header
    async with stack.session.post(f"{stack.base_url}{WEBHOOK}", data=body, headers={
            "Content-Type": "application/json", "X-Hub-Signature-256": signed}) as resp:
        return resp.status


def metric(stack: Stack, name: str, **labels: str) -> float:
    return stack.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


def to(graph: FakePlatform, wa_id: str) -> list[dict[str, Any]]:
    return [c.body for c in graph.to("/messages") if c.body["to"] == wa_id]


async def test_the_verification_handshake_echoes_the_challenge(stack: Stack) -> None:
    assert stack.session is not None
    url = f"{stack.base_url}{WEBHOOK}"
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN,
             "hub.challenge": "1158201444"}
    async with stack.session.get(url, params=query) as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        assert await resp.text() == "1158201444"
    async with stack.session.get(url, params={**query, "hub.verify_token": "guess"}) as resp:
        assert resp.status == 401
    async with stack.session.get(f"{stack.base_url}/v1/channels/whatsapp/otherbot",
                                 params=query) as resp:
        assert resp.status == 404  # no whatsapp channel for that bot


async def test_a_conversation_with_buttons_end_to_end(stack: Stack, graph: FakePlatform) -> None:
    assert await deliver(stack, text("wamid.HBgLMTU1NTEyMzQ1NjcVAgASGA==", "/greet")) == 200
    [sent] = await graph.wait_for("/messages")
    assert sent.path == f"/{NUMBER_ID}/messages"
    assert sent.headers["Authorization"] == f"Bearer {ACCESS_TOKEN}"
    reply = sent.body
    assert reply["messaging_product"] == "whatsapp" and reply["to"] == "15551234567"
    assert reply["type"] == "interactive" and reply["interactive"]["type"] == "button"
    body = reply["interactive"]["body"]["text"]
    assert "banking assistant" in body or "Hi there" in body
    buttons = [b["reply"] for b in reply["interactive"]["action"]["buttons"]]
    assert {"id": "/transfer_money", "title": "Transfer money"} in buttons
    assert len(buttons) == 3
    # the press comes back as an interactive button_reply whose id is the payload
    press = button_reply("wamid.HBgLMTU1NTEyMzQ1NjcVAgASGB==", "/transfer_money",
                         "Transfer money")
    assert await deliver(stack, press) == 200
    sent_all = await graph.wait_for("/messages", 2)
    assert sent_all[1].body["to"] == "15551234567"
    transcript = await stack.transcript("whatsapp-15551234567")
    assert [e["text"] for e in transcript if e["type"] == "user"] == ["/greet",
                                                                      "/transfer_money"]
    assert metric(stack, "botfactory_channel_received_total", channel="whatsapp",
                  bot="banking") == 2
    assert metric(stack, "botfactory_channel_sent_total", channel="whatsapp") == 2


async def test_a_redelivered_webhook_is_answered_once(stack: Stack, graph: FakePlatform) -> None:
    payload = text("wamid.HBgLNzc3NzdVAgASGBQz=", "/greet", wa_id="4477")
    assert await deliver(stack, payload) == 200
    assert await deliver(stack, payload) == 200  # Meta retries when it saw no 200 in time
    await graph.wait_for("/messages")
    await asyncio.sleep(1.0)  # time for a second reply, if there were one
    transcript = await stack.transcript("whatsapp-4477")
    assert [e["type"] for e in transcript] == ["user", "bot"]
    assert len(to(graph, "4477")) == 1


async def test_a_webhook_without_the_signature_is_refused(stack: Stack,
                                                          graph: FakePlatform) -> None:
    payload = text("wamid.refused", "/greet", wa_id="99")
    assert await deliver(stack, payload, secret="not-the-app-secret") == 401
    assert await deliver(stack, payload, header="") == 401
    assert metric(stack, "botfactory_channel_refused_total", channel="whatsapp",
                  reason="signature") == 2
    assert not graph.calls
    assert await stack.transcript("whatsapp-99") == []


def graph_error(code: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "OAuthException", "code": code,
                      "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam"}}


async def test_a_429_is_honoured_and_a_failing_platform_ends_in_a_dead_letter(
        stack: Stack, graph: FakePlatform) -> None:
    graph.fail_next(429, graph_error(130429, "(#130429) Rate limit hit"), {"Retry-After": "1"})
    assert await deliver(stack, text("wamid.throttled", "/greet", wa_id="20")) == 200
    await graph.wait_for("/messages")
    assert graph.calls[0].at - graph.failed[0].at >= 0.9  # waited as asked
    assert metric(stack, "botfactory_channel_retried_total", channel="whatsapp") == 1

    bus = await connect(stack.nats_url, name="dead-letters")
    try:
        sub = await bus.nc.subscribe("events.deadletter.channel")
        graph.fail_next(500, graph_error(2, "Service temporarily unavailable"), times=3)
        assert await deliver(stack, text("wamid.failing", "/greet", wa_id="21")) == 200
        dead = json.loads((await sub.next_msg(timeout=20)).data)
        graph.fail_next(400, graph_error(131030, "Recipient phone number not in allowed list"))
        assert await deliver(stack, text("wamid.refused", "/greet", wa_id="22")) == 200
        refused = json.loads((await sub.next_msg(timeout=20)).data)
    finally:
        await bus.drain()
    assert dead["conversation_id"] == "whatsapp-21" and dead["channel"] == "whatsapp"
    assert "out of attempts" in dead["reason"]
    assert metric(stack, "botfactory_channel_dead_lettered_total", channel="whatsapp",
                  reason="attempts") == 1
    assert refused["conversation_id"] == "whatsapp-22"
    assert "not in allowed list" in refused["reason"]
    assert metric(stack, "botfactory_channel_dead_lettered_total", channel="whatsapp",
                  reason="rejected") == 1


async def test_settings_are_validated(stack: Stack) -> None:
    assert stack.session is not None
    url = f"{stack.base_url}/v1/admin/bots/banking/channels/whatsapp"
    async with stack.session.put(url, headers=ADMIN, json={
            "access_token": "t", "app_secret": "s", "verify_token": "v",
            "phone_number_id": "+1 555 0100"}) as resp:
        assert resp.status == 400
        assert "phone_number_id" in await resp.text()
    async with stack.session.get(url, headers=ADMIN) as resp:
        assert resp.status == 200
        assert (await resp.json())["settings"]["phone_number_id"] == NUMBER_ID  # kept
