"""The Telegram channel end to end: the gateway's webhook route, the real dialogue, and the
replies sent through a local fake of the Bot API (tests/support/fake_platform.py), with the
update shapes of https://core.telegram.org/bots/api#update."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from botfactory.local.nats_server import NatsServer
from services.common.nats import connect
from services.common.pb.botfactory.v1 import conversation_pb2
from services.gateway.channels.store import ConversationRef, ConversationRefs
from tests.support.fake_platform import FakePlatform
from tests.support.polling import eventually
from tests.support.stack import BOOTSTRAP, Stack, channel_stack

TOKEN = "123456:ABCdefGhIJKlmNoPQRstuVWxyz0123456789"
SECRET = "hook-secret_0123"
ADMIN = {"Authorization": f"Bearer {BOOTSTRAP}"}


@pytest.fixture
async def telegram() -> AsyncIterator[FakePlatform]:
    fake = FakePlatform()
    yield fake
    await fake.stop()


@pytest.fixture
async def stack(nats_server: NatsServer, tiny_banking_model: Path,
                telegram: FakePlatform) -> AsyncIterator[Stack]:
    base = await telegram.start()
    settings = {"bot_token": TOKEN, "secret_token": SECRET, "api_base": base}
    async with channel_stack(nats_server.url, tiny_banking_model, "telegram",
                             settings) as (running, shown):
        assert shown["secrets"] == ["bot_token", "secret_token"]
        assert TOKEN not in json.dumps(shown) and SECRET not in json.dumps(shown)
        assert shown["webhook_path"] == "/v1/channels/telegram/banking"
        yield running


def update(update_id: int, text: str, chat: int = 4242) -> dict[str, Any]:
    return {"update_id": update_id, "message": {
        "message_id": update_id, "date": int(time.time()), "text": text,
        "chat": {"id": chat, "type": "private", "first_name": "Ana"},
        "from": {"id": chat, "is_bot": False, "first_name": "Ana"}}}


async def deliver(stack: Stack, body: dict[str, Any], secret: str = SECRET) -> int:
    assert stack.session is not None
    async with stack.session.post(f"{stack.base_url}/v1/channels/telegram/banking", json=body,
                                  headers={"X-Telegram-Bot-Api-Secret-Token": secret}) as resp:
        return resp.status


def metric(stack: Stack, name: str, **labels: str) -> float:
    return stack.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_conversation_with_buttons_end_to_end(stack: Stack,
                                                      telegram: FakePlatform) -> None:
    assert await deliver(stack, update(1, "/greet")) == 200
    sent = await telegram.wait_for("/sendMessage")
    assert sent[0].path == f"/bot{TOKEN}/sendMessage"
    reply = sent[0].body
    assert reply["chat_id"] == "4242"
    assert "banking assistant" in reply["text"] or "Hi there" in reply["text"]
    keyboard = reply["reply_markup"]["inline_keyboard"]
    payloads = [row[0]["callback_data"] for row in keyboard]
    assert "/transfer_money" in payloads
    # a button press: the callback query's data is the payload; the press is answered
    press = {"update_id": 2, "callback_query": {
        "id": "cbq-1", "from": {"id": 4242, "is_bot": False, "first_name": "Ana"},
        "message": {"message_id": 1, "date": 0, "chat": {"id": 4242, "type": "private"}},
        "chat_instance": "x", "data": "/transfer_money"}}
    assert await deliver(stack, press) == 200
    assert (await telegram.wait_for("/answerCallbackQuery"))[0].body == {
        "callback_query_id": "cbq-1"}
    sent = await telegram.wait_for("/sendMessage", 2)
    assert sent[1].body["chat_id"] == "4242"
    transcript = await stack.transcript("telegram-4242")
    assert [e["text"] for e in transcript if e["type"] == "user"] == ["/greet",
                                                                      "/transfer_money"]
    assert metric(stack, "botfactory_channel_received_total", channel="telegram",
                  bot="banking") == 2
    assert metric(stack, "botfactory_channel_sent_total", channel="telegram") == 2


async def test_a_redelivered_update_is_answered_once(stack: Stack,
                                                     telegram: FakePlatform) -> None:
    assert await deliver(stack, update(7, "/greet", chat=77)) == 200
    assert await deliver(stack, update(7, "/greet", chat=77)) == 200  # Telegram retries
    await telegram.wait_for("/sendMessage")
    await asyncio.sleep(1.0)  # time for a second reply, if there were one
    transcript = await stack.transcript("telegram-77")
    assert [e["type"] for e in transcript] == ["user", "bot"]
    assert len([c for c in telegram.to("/sendMessage") if c.body["chat_id"] == "77"]) == 1


async def test_a_request_without_the_secret_token_is_refused(stack: Stack,
                                                             telegram: FakePlatform) -> None:
    assert await deliver(stack, update(9, "/greet", chat=9), secret="wrong") == 401
    assert await deliver(stack, update(9, "/greet", chat=9), secret="") == 401
    assert metric(stack, "botfactory_channel_refused_total", channel="telegram",
                  reason="token") == 2
    assert stack.session is not None
    async with stack.session.post(f"{stack.base_url}/v1/channels/telegram/otherbot",
                                  json=update(9, "hi")) as resp:
        assert resp.status == 404  # no telegram channel for that bot
    assert not telegram.calls
    assert await stack.transcript("telegram-9") == []


async def test_a_429_is_honoured_and_a_failing_platform_ends_in_a_dead_letter(
        stack: Stack, telegram: FakePlatform) -> None:
    telegram.fail_next(429, {"ok": False, "error_code": 429, "description": "Too Many Requests",
                             "parameters": {"retry_after": 1}})
    assert await deliver(stack, update(20, "/greet", chat=20)) == 200
    sent = await telegram.wait_for("/sendMessage")
    assert sent[0].at - telegram.failed[0].at >= 0.9  # waited as asked
    assert metric(stack, "botfactory_channel_retried_total", channel="telegram") == 1

    bus = await connect(stack.nats_url, name="dead-letters")
    try:
        sub = await bus.nc.subscribe("events.deadletter.channel")
        telegram.fail_next(500, {"ok": False, "description": "Internal"}, times=3)
        assert await deliver(stack, update(21, "/greet", chat=21)) == 200
        dead = json.loads((await sub.next_msg(timeout=20)).data)
    finally:
        await bus.drain()
    assert dead["conversation_id"] == "telegram-21" and dead["channel"] == "telegram"
    assert "out of attempts" in dead["reason"]
    assert metric(stack, "botfactory_channel_dead_lettered_total", channel="telegram",
                  reason="attempts") == 1


async def test_settings_are_shown_without_secrets_validated_and_removed(
        stack: Stack) -> None:
    assert stack.session is not None
    url = f"{stack.base_url}/v1/admin/bots/banking/channels/telegram"
    async with stack.session.get(url, headers=ADMIN) as resp:
        assert resp.status == 200
        assert TOKEN not in await resp.text()
    async with stack.session.put(url, headers=ADMIN, json={"bot_token": "nope",
                                                           "colour": "red"}) as resp:
        assert resp.status == 400
        fields = {e["field"] for e in (await resp.json())["errors"]}
        assert fields == {"colour", "secret_token"}
    async with stack.session.put(f"{stack.base_url}/v1/admin/bots/banking/channels/fax",
                                 headers=ADMIN, json={}) as resp:
        assert resp.status == 404
    async with stack.session.get(url, headers={"Authorization":
                                               f"Bearer {stack.client_key}"}) as resp:
        assert resp.status == 403
    async with stack.session.delete(url, headers=ADMIN) as resp:
        assert resp.status == 200 and (await resp.json())["deleted"] is True
    async with stack.session.get(url, headers=ADMIN) as resp:
        assert resp.status == 404
    assert await deliver(stack, update(30, "/greet", chat=30)) == 404


async def test_webhook_secrets_are_sealed_with_the_same_key(stack: Stack) -> None:
    """With BOTFACTORY_GATEWAY_CHANNEL_SECRETS_KEY set, a bot's webhook secret is not kept in
    KV as plain text either; the gateway still reads it back."""
    assert stack.session is not None
    secret = "w" * 40
    async with stack.session.put(f"{stack.base_url}/v1/admin/bots/banking/webhook",
                                 headers=ADMIN, json={"url": "https://hooks.example.com/bf",
                                                      "secret": secret}) as resp:
        assert resp.status == 200, await resp.text()
    bus = await connect(stack.nats_url, name="kv-reader")
    try:
        raw = (await (await bus.kv("bots")).get("webhook.banking")).value or b""
    finally:
        await bus.drain()
    assert secret not in raw.decode() and "secret_sealed" in json.loads(raw)
    relay = stack.gateway.webhooks
    assert relay is not None
    found = await eventually(lambda: relay.follower.get("banking"), "the relay's view")
    assert found.hook.secret == secret  # the relay signs with the opened secret


async def test_a_reply_handed_to_the_outbox_twice_reaches_the_platform_once(
        stack: Stack, telegram: FakePlatform) -> None:
    """A gateway that dies after Telegram took a reply but before its ack gets the reply
    redelivered: the record of the replies sent (KV channel_sent) keeps it from going out
    twice. Simulated by publishing the same bot message twice to the outbox's subject."""
    assert await deliver(stack, update(40, "/greet", chat=40)) == 200
    await telegram.wait_for("/sendMessage")
    reply = conversation_pb2.BotMessage(bot_id="banking", conversation_id="telegram-40",
                                        message_id="agent-note:0", text="A note from us.",
                                        role="agent", last=True)
    bus = await connect(stack.nats_url, name="redeliver")
    try:
        for attempt in ("a", "b"):  # two stream messages, one bot message
            await bus.js.publish("conv.out.banking.telegram-40", reply.SerializeToString(),
                                 headers={"Nats-Msg-Id": f"redelivery-{attempt}"})
    finally:
        await bus.drain()
    await telegram.wait_for("/sendMessage", 2)
    await asyncio.sleep(1.0)  # time for a second copy, if there were one
    notes = [c for c in telegram.to("/sendMessage") if c.body["text"] == "A note from us."]
    assert len(notes) == 1


async def test_many_chats_at_once_each_answered_once_and_in_order(
        stack: Stack, telegram: FakePlatform) -> None:
    """Updates of a dozen chats sent together, three a chat: every reply goes out once, each
    chat's in the order of its updates (the outbox takes replies as the server delivers them,
    many at a time, each conversation's in turn)."""
    chats = range(500, 512)
    texts = ["/greet", "/faq_opening_hours", "/faq_fees"]

    async def converse(chat: int) -> list[int]:  # a chat's updates one after the other
        return [await deliver(stack, update(chat * 10 + n, text, chat=chat))
                for n, text in enumerate(texts)]

    statuses = await asyncio.gather(*(converse(chat) for chat in chats))
    assert {s for chat in statuses for s in chat} == {200}
    sent = await telegram.wait_for("/sendMessage", len(chats) * len(texts))
    await asyncio.sleep(0.5)  # time for an extra reply, if there were one
    assert len(telegram.to("/sendMessage")) == len(sent) == len(chats) * len(texts)
    for chat in chats:
        replies = [c.body["text"] for c in sent if c.body["chat_id"] == str(chat)]
        transcript = await stack.transcript(f"telegram-{chat}")
        assert replies == [e["text"] for e in transcript if e["type"] == "bot"]
        assert [e["text"] for e in transcript if e["type"] == "user"] == texts


async def test_a_reply_that_comes_before_its_address_waits_for_it(
        stack: Stack, telegram: FakePlatform) -> None:
    """The webhook writes a conversation's reply address while the user's message goes on:
    a reply that finds no address yet is taken again shortly and sent once it is there; one
    whose address never comes is dropped after a few tries, not sent anywhere."""
    def note(conversation: str) -> conversation_pb2.BotMessage:
        return conversation_pb2.BotMessage(bot_id="banking", conversation_id=conversation,
                                           message_id="agent-note:0", text=f"For {conversation}",
                                           role="agent", last=True)

    bus = await connect(stack.nats_url, name="early-reply")
    try:
        for conversation in ("telegram-41", "telegram-42"):
            await bus.js.publish(f"conv.out.banking.{conversation}",
                                 note(conversation).SerializeToString())
        await asyncio.sleep(0.3)  # taken at least once without an address
        await ConversationRefs(bus).remember("banking", "telegram-41",
                                             ConversationRef("telegram", {"chat_id": "41"}))
        sent = await telegram.wait_for("/sendMessage")
        assert [(c.body["chat_id"], c.body["text"]) for c in sent] == [("41",
                                                                        "For telegram-41")]

        async def settled() -> bool:
            info = await bus.js.consumer_info("CONV", "gateway-channels")
            return info.num_ack_pending == 0 and info.num_pending == 0

        await eventually(settled, "the address-less reply dropped")
        assert len(telegram.to("/sendMessage")) == 1
    finally:
        await bus.drain()


async def test_replies_take_the_fast_path_from_the_reply_inbox(
        stack: Stack, telegram: FakePlatform, monkeypatch: pytest.MonkeyPatch) -> None:
    """A turn's replies come to the gateway's reply inbox before conv.out delivers them: the
    outbox sends them from there (the durable consumer, held back here, is the fallback)."""
    outbox = stack.gateway.outbox
    assert outbox is not None
    held: list[str] = []

    async def held_back(msg: Any, message: conversation_pb2.BotMessage, turn: Any) -> None:
        held.append(message.message_id)  # neither sent nor acked: redelivered after the test

    monkeypatch.setattr(outbox, "deliver", held_back)
    assert await deliver(stack, update(60, "/greet", chat=60)) == 200
    sent = await telegram.wait_for("/sendMessage")
    assert sent[0].body["chat_id"] == "60"
    await eventually(lambda: held, "the durable copy")  # conv.out delivered it as well


async def test_a_reply_another_replica_is_sending_is_left_to_it_for_a_grace(
        stack: Stack, telegram: FakePlatform) -> None:
    """A reply whose turn another gateway replica took (its inbox named in the stream copy)
    is that replica's to send; after the grace (15 s; 2 s here) it is sent here unless it was
    taken."""
    from services.gateway.channels.store import SentReplies

    assert stack.gateway.outbox is not None
    stack.gateway.outbox.fast_grace_s = grace = 2.0
    bus = await connect(stack.nats_url, name="other-replica")
    try:
        refs = ConversationRefs(bus)
        for chat in ("61", "62"):
            await refs.remember("banking", f"telegram-{chat}",
                                ConversationRef("telegram", {"chat_id": chat}))
        await SentReplies(bus).record("banking", "telegram-62", "m:0")  # the other one sent it
        published = time.monotonic()
        for chat in ("61", "62"):
            reply = conversation_pb2.BotMessage(
                bot_id="banking", conversation_id=f"telegram-{chat}", message_id="m:0",
                text=f"Hi {chat}", last=True, sent_at_unix_ms=int(time.time() * 1000))
            await bus.js.publish(f"conv.out.banking.telegram-{chat}",
                                 reply.SerializeToString(),
                                 headers={"Bf-Reply-Inbox": "_INBOX.elsewhere.replies.x.y"})
        sent = await telegram.wait_for("/sendMessage")
    finally:
        await bus.drain()
    assert time.monotonic() - published >= grace - 0.2
    await asyncio.sleep(0.5)
    assert [c.body["text"] for c in telegram.to("/sendMessage")] == ["Hi 61"]
    assert [c.body["text"] for c in sent] == ["Hi 61"]
