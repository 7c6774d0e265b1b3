"""The Slack channel end to end: the gateway's webhook route, the real dialogue, and the
replies sent through a local fake of the Web API (tests/support/fake_platform.py), with the
request shapes of https://api.slack.com/apis/events-api and
https://api.slack.com/reference/interaction-payloads/block-actions-payload, signed as Slack
signs them."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from botfactory.local.nats_server import NatsServer
from services.common.nats import connect
from tests.support.fake_platform import Call, FakePlatform
from tests.support.polling import eventually
from tests.support.stack import BOOTSTRAP, Stack, channel_stack

TOKEN = "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx"
SIGNING_SECRET = "8f742231b10e8888abcd99aa0c3a85a5"
TEAM = "T0001"
BOT_USER = "UBOT0001"
ADMIN = {"Authorization": f"Bearer {BOOTSTRAP}"}
POST = "/chat.postMessage"


@pytest.fixture
async def slack() -> AsyncIterator[FakePlatform]:
    fake = FakePlatform(lambda path, body: {"ok": True, "ts": f"{time.time():.6f}"})
    yield fake
    await fake.stop()


@pytest.fixture
async def stack(nats_server: NatsServer, tiny_banking_model: Path,
                slack: FakePlatform) -> AsyncIterator[Stack]:
    base = await slack.start()
    settings = {"bot_token": TOKEN, "signing_secret": SIGNING_SECRET,
                "api_base": f"{base}/api/"}
    async with channel_stack(nats_server.url, tiny_banking_model, "slack",
                             settings) as (running, shown):
        assert shown["secrets"] == ["bot_token", "signing_secret"]
        assert TOKEN not in json.dumps(shown) and SIGNING_SECRET not in json.dumps(shown)
        assert shown["webhook_path"] == "/v1/channels/slack/banking"
        yield running


def event(event_id: str, text: str, channel: str = "D0042", **extra: Any) -> dict[str, Any]:
    return {"type": "event_callback", "team_id": TEAM, "api_app_id": "A0001",
            "event_id": event_id, "event_time": int(time.time()),
            "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}],
            "event": {"type": "message", "channel": channel, "channel_type": "im",
                      "user": "U0042", "text": text, "ts": f"{time.time():.6f}", **extra}}


def press(value: str, channel: str = "D0042", trigger_id: str = "1337.42.f00") -> bytes:
    payload = {"type": "block_actions", "trigger_id": trigger_id, "api_app_id": "A0001",
               "user": {"id": "U0042", "team_id": TEAM}, "team": {"id": TEAM},
               "channel": {"id": channel, "name": "directmessage"},
               "container": {"type": "message", "message_ts": "1.1", "channel_id": channel},
               "actions": [{"type": "button", "action_id": "bf-1", "block_id": "b",
                            "value": value, "action_ts": f"{time.time():.6f}"}]}
    return urlencode({"payload": json.dumps(payload)}).encode()


def signature(body: bytes, timestamp: int, secret: str = SIGNING_SECRET) -> str:
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256)
    return f"v0={digest.hexdigest()}"


async def deliver(stack: Stack, body: dict[str, Any] | bytes, secret: str = SIGNING_SECRET,
                  headers: dict[str, str] | None = None, bot: str = "banking") -> int:
    """POST `body` (an event as JSON, or a form-encoded interaction) signed as Slack does."""
    assert stack.session is not None
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    now = int(time.time())
    kind = "application/x-www-form-urlencoded" if isinstance(body, bytes) else "application/json"
    sent = {"Content-Type": kind, "X-Slack-Request-Timestamp": str(now),
            "X-Slack-Signature": signature(raw, now, secret), **(headers or {})}
    async with stack.session.post(f"{stack.base_url}/v1/channels/slack/{bot}", data=raw,
                                  headers=sent) as resp:
        return resp.status


def asks_the_amount(calls: list[Call]) -> bool:
    """Whether the last reply is the transfer's first question (utter_ask_amount)."""
    return bool(calls) and any(word in calls[-1].body["text"] for word in ("much", "amount"))


def metric(stack: Stack, name: str, **labels: str) -> float:
    return stack.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


def to(slack: FakePlatform, channel: str) -> list[Call]:
    return [c for c in slack.to(POST) if c.body["channel"] == channel]


async def test_url_verification_is_answered_with_the_challenge(stack: Stack) -> None:
    assert stack.session is not None
    body = json.dumps({"type": "url_verification", "token": "t", "challenge": "c-123"}).encode()
    now = int(time.time())
    async with stack.session.post(
            f"{stack.base_url}/v1/channels/slack/banking", data=body,
            headers={"Content-Type": "application/json", "X-Slack-Request-Timestamp": str(now),
                     "X-Slack-Signature": signature(body, now)}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"challenge": "c-123"}


async def test_a_conversation_with_buttons_end_to_end(stack: Stack,
                                                      slack: FakePlatform) -> None:
    assert await deliver(stack, event("Ev0001", "/greet")) == 200
    sent = await slack.wait_for(POST)
    assert sent[0].path == "/api/chat.postMessage"
    assert sent[0].headers["Authorization"] == f"Bearer {TOKEN}"
    reply = sent[0].body
    assert reply["channel"] == "D0042" and "thread_ts" not in reply
    assert "banking assistant" in reply["text"] or "Hi there" in reply["text"]
    section, actions = reply["blocks"]
    assert section["type"] == "section" and section["text"]["text"] == reply["text"]
    assert actions["type"] == "actions"
    assert "/transfer_money" in [b["value"] for b in actions["elements"]]
    # a button press: form-encoded block_actions, the button's value is the payload
    assert await deliver(stack, press("/transfer_money")) == 200
    sent = await slack.wait_for(POST, 2)
    assert sent[1].body["channel"] == "D0042"
    transcript = await stack.transcript(f"slack-{TEAM}-D0042")
    assert [e["text"] for e in transcript if e["type"] == "user"] == ["/greet",
                                                                      "/transfer_money"]
    assert metric(stack, "botfactory_channel_received_total", channel="slack",
                  bot="banking") == 2
    assert metric(stack, "botfactory_channel_sent_total", channel="slack") == 2


async def test_a_thread_is_answered_in_the_thread_and_bots_are_not_answered(
        stack: Stack, slack: FakePlatform) -> None:
    mine = event("Ev0101", "I am the bot", channel="C0101", user=BOT_USER)
    other = event("Ev0102", "I am a bot too", channel="C0101", bot_id="B0002")
    assert await deliver(stack, mine) == 200 and await deliver(stack, other) == 200
    mention = event("Ev0103", f"<@{BOT_USER}> /greet", channel="C0101", thread_ts="1700.0001")
    mention["event"]["type"] = "app_mention"
    assert await deliver(stack, mention) == 200
    [reply] = await slack.wait_for(POST)
    assert reply.body["channel"] == "C0101" and reply.body["thread_ts"] == "1700.0001"
    transcript = await stack.transcript(f"slack-{TEAM}-C0101")
    assert (transcript[0]["type"], transcript[0]["text"]) == ("user", "/greet")
    assert metric(stack, "botfactory_channel_received_total", channel="slack",
                  bot="banking") == 1


async def test_a_retried_event_is_answered_once(stack: Stack, slack: FakePlatform) -> None:
    first = event("Ev0777", "/greet", channel="D0077")
    assert await deliver(stack, first) == 200
    retried = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    assert await deliver(stack, first, headers=retried) == 200
    # The next message of the conversation is answered after anything the retry caused
    # (one conversation's messages are handled, and their replies sent, in order).
    assert await deliver(stack, press("/transfer_money", "D0077", "1337.77.f00")) == 200
    await eventually(lambda: asks_the_amount(to(slack, "D0077")), "the reply to the press")
    assert len(to(slack, "D0077")) == 2
    transcript = await stack.transcript(f"slack-{TEAM}-D0077")
    assert [e["text"] for e in transcript if e["type"] == "user"] == ["/greet",
                                                                      "/transfer_money"]
    assert [e["type"] for e in transcript] == ["user", "bot", "user", "bot"]


async def test_a_request_with_a_bad_signature_is_refused(stack: Stack,
                                                         slack: FakePlatform) -> None:
    body = event("Ev0009", "/greet", channel="D0009")
    assert await deliver(stack, body, secret="0" * 32) == 401
    assert await deliver(stack, body, headers={"X-Slack-Signature": ""}) == 401
    stale = {"X-Slack-Request-Timestamp": str(int(time.time()) - 600)}
    assert await deliver(stack, body, headers=stale) == 401
    assert metric(stack, "botfactory_channel_refused_total", channel="slack",
                  reason="signature") == 2
    assert metric(stack, "botfactory_channel_refused_total", channel="slack",
                  reason="timestamp") == 1
    assert await deliver(stack, body, bot="otherbot") == 404  # no slack channel for that bot
    assert not slack.calls
    assert await stack.transcript(f"slack-{TEAM}-D0009") == []


async def test_a_429_is_honoured_and_a_failing_platform_ends_in_a_dead_letter(
        stack: Stack, slack: FakePlatform) -> None:
    slack.fail_next(429, {"ok": False, "error": "ratelimited"}, headers={"Retry-After": "1"})
    assert await deliver(stack, event("Ev0020", "/greet", channel="D0020")) == 200
    sent = await slack.wait_for(POST)
    assert sent[0].at - slack.failed[0].at >= 0.9  # waited as asked
    assert metric(stack, "botfactory_channel_retried_total", channel="slack") == 1

    bus = await connect(stack.nats_url, name="dead-letters")
    try:
        sub = await bus.nc.subscribe("events.deadletter.channel")
        slack.fail_next(500, {"ok": False, "error": "internal"}, times=3)
        assert await deliver(stack, event("Ev0021", "/greet", channel="D0021")) == 200
        dead = json.loads((await sub.next_msg(timeout=20)).data)
        # Slack's usual refusal: HTTP 200 with ok false; final at once
        slack.fail_next(200, {"ok": False, "error": "channel_not_found"})
        assert await deliver(stack, event("Ev0022", "/greet", channel="D0022")) == 200
        refused = json.loads((await sub.next_msg(timeout=20)).data)
    finally:
        await bus.drain()
    assert dead["conversation_id"] == f"slack-{TEAM}-D0021" and dead["channel"] == "slack"
    assert "out of attempts" in dead["reason"]
    assert refused["conversation_id"] == f"slack-{TEAM}-D0022"
    assert "channel_not_found" in refused["reason"]
    assert metric(stack, "botfactory_channel_dead_lettered_total", channel="slack",
                  reason="attempts") == 1
    assert metric(stack, "botfactory_channel_dead_lettered_total", channel="slack",
                  reason="rejected") == 1
