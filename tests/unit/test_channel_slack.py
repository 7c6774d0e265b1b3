"""The Slack channel on its own: request signatures (a fixed clock), the Events API and
interactivity payloads it takes or ignores, the chat.postMessage calls it builds (mrkdwn
sections, actions blocks, long texts split), and how Slack's answers become retries or
refusals (a local fake of the Web API, tests/support/fake_platform.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from slack_sdk.signature import Clock

from services.gateway.channels import all_channels
from services.gateway.channels.base import (
    Button,
    ChannelRefused,
    Outgoing,
    SendRejected,
    SendRetry,
    SettingsInvalid,
)
from services.gateway.channels.slack import (
    MAX_SECTION,
    Slack,
    actions_of,
    posts,
    sections_of,
    send_failure,
)
from tests.support.fake_platform import FakePlatform

SECRET = "8f742231b10e8888abcd99aa0c3a85a5"
TOKEN = "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx"
NOW = 1_700_000_000
SETTINGS: dict[str, Any] = {"bot_token": TOKEN, "signing_secret": SECRET}
BOT_USER = "UBOT0001"

# Verifying calls nobody: the session the route passes is not used.
NO_SESSION = cast("aiohttp.ClientSession", None)


class FixedClock(Clock):
    def __init__(self, now: float) -> None:
        self.at = now

    def now(self) -> float:
        return self.at


def signed(body: bytes, timestamp: int = NOW, secret: str = SECRET,
           content_type: str = "application/json") -> dict[str, str]:
    """The headers Slack sends: v0 signature, computed here independently of slack_sdk."""
    base = f"v0:{timestamp}:".encode() + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={digest}",
            "Content-Type": content_type}


async def verify(slack: Slack, body: bytes, headers: dict[str, str]) -> None:
    request = make_mocked_request("POST", "/v1/channels/slack/banking", headers=headers)
    await slack.verify(request, body, SETTINGS, NO_SESSION)


async def refusal(slack: Slack, body: bytes, headers: dict[str, str]) -> str:
    with pytest.raises(ChannelRefused) as refused:
        await verify(slack, body, headers)
    return refused.value.reason


def envelope(event: dict[str, Any], event_id: str = "Ev001") -> dict[str, Any]:
    return {"type": "event_callback", "team_id": "T001", "api_app_id": "A001",
            "event_id": event_id, "event_time": NOW, "event": event,
            "authorizations": [{"team_id": "T001", "user_id": BOT_USER, "is_bot": True}]}


def message(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "message", "channel": "D042", "user": "U042", "text": text,
            "ts": "1700000000.000100", "channel_type": "im", **extra}


async def parse(body: bytes, content_type: str = "application/json") -> Any:
    request = make_mocked_request("POST", "/v1/channels/slack/banking",
                                  headers={"Content-Type": content_type})
    async with aiohttp.ClientSession() as session:
        return await Slack().parse(request, body, SETTINGS, session)


async def parse_event(event: dict[str, Any]) -> Any:
    return await parse(json.dumps(envelope(event)).encode())


# --- settings and signatures -------------------------------------------------------------------


def test_slack_is_a_channel_with_secret_settings() -> None:
    slack = all_channels()["slack"]
    assert isinstance(slack, Slack)
    assert set(slack.secrets) == {"bot_token", "signing_secret"} == set(slack.required)
    slack.check_settings(SETTINGS)
    with pytest.raises(SettingsInvalid, match="bot_token"):
        slack.check_settings({**SETTINGS, "bot_token": "xoxp-a-user-token-0000"})
    with pytest.raises(SettingsInvalid, match="signing_secret"):
        slack.check_settings({**SETTINGS, "signing_secret": "not hex!"})


async def test_a_request_signed_with_the_signing_secret_is_taken() -> None:
    body = json.dumps(envelope(message("hi"))).encode()
    await verify(Slack(FixedClock(NOW + 299)), body, signed(body))


async def test_a_wrong_or_missing_signature_is_refused() -> None:
    slack = Slack(FixedClock(NOW))
    body = b'{"type": "event_callback"}'
    assert await refusal(slack, body, signed(body, secret="0" * 32)) == "signature"
    assert await refusal(slack, body + b" ", signed(body)) == "signature"  # body changed
    headers = signed(body)
    del headers["X-Slack-Signature"]
    assert await refusal(slack, body, headers) == "signature"
    assert await refusal(slack, b"\xff\xfe", signed(b"\xff\xfe")) == "signature"


async def test_a_stale_or_missing_timestamp_is_refused() -> None:
    body = b'{"type": "event_callback"}'
    clock = FixedClock(NOW)
    slack = Slack(clock)
    await verify(slack, body, signed(body))
    clock.at = NOW + 301  # the same request, replayed 5 minutes later
    assert await refusal(slack, body, signed(body)) == "timestamp"
    clock.at = NOW - 301  # or stamped in the future
    assert await refusal(slack, body, signed(body)) == "timestamp"
    headers = {**signed(body), "X-Slack-Request-Timestamp": "yesterday"}
    assert await refusal(slack, body, headers) == "timestamp"


# --- what comes in -----------------------------------------------------------------------------


async def test_url_verification_is_answered_with_its_challenge() -> None:
    parsed = await parse(json.dumps({"type": "url_verification", "token": "x",
                                     "challenge": "3eZbrw1aBm2rZgRNFdxV"}).encode())
    assert parsed.messages == []
    assert parsed.response is not None and parsed.response.status == 200
    assert json.loads(parsed.response.body) == {"challenge": "3eZbrw1aBm2rZgRNFdxV"}


async def test_a_direct_message_becomes_a_user_message() -> None:
    parsed = await parse_event(message("Tom &amp; Jerry &lt;3"))
    [incoming] = parsed.messages
    assert incoming.native_id == "Ev001"  # Slack's retries carry the same event_id
    assert incoming.conversation == "T001-D042"
    assert incoming.address == {"channel": "D042"}
    assert incoming.sender == "U042"
    assert incoming.text == "Tom & Jerry <3"
    assert parsed.response is None


async def test_a_mention_in_a_thread_is_answered_in_the_thread() -> None:
    event = {"type": "app_mention", "channel": "C777", "user": "U042", "ts": "1700000001.0002",
             "thread_ts": "1700000000.0001", "text": f"<@{BOT_USER}> /greet"}
    [incoming] = (await parse_event(event)).messages
    assert incoming.text == "/greet"
    assert incoming.conversation == "T001-C777"
    assert incoming.address == {"channel": "C777", "thread_ts": "1700000000.0001"}


@pytest.mark.parametrize("event", [
    message("my own reply", user=BOT_USER),
    message("another bot", bot_id="B999"),
    message("legacy bot", subtype="bot_message"),
    message("edited", subtype="message_changed"),
    message("joined", subtype="channel_join"),
    {"type": "reaction_added", "user": "U042", "reaction": "tada"},
    {"type": "message", "channel": "D042", "text": "no user"},
])
async def test_bots_and_other_events_are_not_answered(event: dict[str, Any]) -> None:
    assert (await parse_event(event)).messages == []


async def test_a_button_press_becomes_its_payload() -> None:
    payload = {"type": "block_actions", "trigger_id": "1337.42.abcdef",
               "user": {"id": "U042", "team_id": "T001"}, "team": {"id": "T001"},
               "channel": {"id": "C777", "name": "general"},
               "container": {"type": "message", "message_ts": "1700000002.0003",
                             "channel_id": "C777", "thread_ts": "1700000000.0001"},
               "actions": [{"type": "button", "action_id": "bf-1", "block_id": "x",
                            "value": "/transfer_money", "action_ts": "1700000003.1",
                            "text": {"type": "plain_text", "text": "Transfer money"}}]}
    body = urlencode({"payload": json.dumps(payload)}).encode()
    [incoming] = (await parse(body, "application/x-www-form-urlencoded")).messages
    assert incoming.text == "/transfer_money"
    assert incoming.native_id == "1337.42.abcdef"
    assert incoming.conversation == "T001-C777"
    assert incoming.address == {"channel": "C777", "thread_ts": "1700000000.0001"}
    assert incoming.sender == "U042"
    shortcut = urlencode({"payload": json.dumps({**payload, "type": "shortcut"})}).encode()
    assert (await parse(shortcut, "application/x-www-form-urlencoded")).messages == []


# --- what goes out -----------------------------------------------------------------------------


def test_buttons_become_an_actions_block_under_the_text() -> None:
    buttons = (Button("Check my balance", "/check_balance"), Button("T" * 90, "/transfer"),
               Button("Long", "x" * 2001))
    [(text, blocks)] = posts(Outgoing("Hello *there* <friend>", buttons, "m1"))
    assert text == "Hello *there* &lt;friend&gt;"
    assert blocks[0] == {"type": "section",
                         "text": {"type": "mrkdwn", "text": "Hello *there* &lt;friend&gt;"}}
    [actions] = blocks[1:]
    assert actions["type"] == "actions"
    elements = actions["elements"]
    assert [e["value"] for e in elements] == ["/check_balance", "/transfer", "Long"]
    assert [e["action_id"] for e in elements] == ["bf-0", "bf-1", "bf-2"]
    assert all(e["type"] == "button" and e["text"]["type"] == "plain_text" for e in elements)
    assert elements[1]["text"]["text"] == "T" * 75


def test_more_than_25_buttons_take_several_actions_blocks() -> None:
    blocks = actions_of(tuple(Button(f"b{i}", f"/p{i}") for i in range(30)))
    assert [len(b["elements"]) for b in blocks] == [25, 5]
    ids = [e["action_id"] for b in blocks for e in b["elements"]]
    assert len(set(ids)) == 30


def test_a_long_text_is_split_into_sections_and_messages() -> None:
    words = " ".join(f"word{i:05d}" for i in range(5000))  # 49999 characters
    calls = posts(Outgoing(words, (Button("Ok", "/ok"),), "m2"))
    assert len(calls) == 2
    sections = [b["text"]["text"] for _, blocks in calls for b in blocks
                if b["type"] == "section"]
    assert all(0 < len(s) <= MAX_SECTION for s in sections)
    assert " ".join(sections).split() == words.split()  # nothing lost, cut between words
    assert all(len(text) <= 40_000 and len(blocks) <= 50 for text, blocks in calls)
    assert all(b["type"] == "section" for b in calls[0][1])  # the buttons: under the last
    assert calls[1][1][-1]["type"] == "actions"


def test_escaping_never_makes_a_section_too_long() -> None:
    sections = sections_of("&" * 3000)
    assert all(len(s) <= MAX_SECTION for s in sections)
    assert "".join(sections) == "&amp;" * 3000


def test_nothing_is_posted_for_an_empty_message() -> None:
    assert posts(Outgoing("  ", (), "m3")) == []
    [(text, blocks)] = posts(Outgoing("", (Button("Yes", "/yes"),), "m4"))
    assert text == "Yes" and [b["type"] for b in blocks] == ["actions"]


@pytest.mark.parametrize(("status", "body", "headers", "expected", "retry_after"), [
    (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "7"}, SendRetry, 7.0),
    (200, {"ok": False, "error": "ratelimited"}, {}, SendRetry, None),
    (503, {}, {}, SendRetry, None),
    (200, {"ok": False, "error": "internal_error"}, {}, SendRetry, None),
    (200, {"ok": False, "error": "channel_not_found"}, {}, SendRejected, None),
    (200, {"ok": False, "error": "invalid_blocks"}, {}, SendRejected, None),
    (404, {}, {}, SendRejected, None),
])
def test_slack_answers_become_retries_or_refusals(status: int, body: dict[str, Any],
                                                  headers: dict[str, str],
                                                  expected: type[Exception],
                                                  retry_after: float | None) -> None:
    failure = send_failure(SimpleNamespace(status_code=status, data=body, headers=headers))
    assert type(failure) is expected
    if isinstance(failure, SendRetry):
        assert failure.retry_after_s == retry_after


@pytest.fixture
async def web_api() -> AsyncIterator[tuple[FakePlatform, dict[str, Any]]]:
    fake = FakePlatform(lambda path, body: {"ok": True, "channel": "C777", "ts": "1.2"})
    base = await fake.start()
    yield fake, {**SETTINGS, "api_base": f"{base}/api/"}
    await fake.stop()


async def test_send_posts_to_the_web_api_in_the_thread(
        web_api: tuple[FakePlatform, dict[str, Any]]) -> None:
    fake, settings = web_api
    async with aiohttp.ClientSession() as session:
        await Slack().send(session, settings, {"channel": "C777", "thread_ts": "1.0"},
                           Outgoing("Hi", (Button("Ok", "/ok"),), "m5"))
    [call] = fake.calls
    assert call.path == "/api/chat.postMessage"
    assert call.headers["Authorization"] == f"Bearer {TOKEN}"
    assert call.body["channel"] == "C777" and call.body["thread_ts"] == "1.0"
    assert call.body["text"] == "Hi"
    assert [b["type"] for b in call.body["blocks"]] == ["section", "actions"]


async def test_send_leaves_retries_to_the_outbox(
        web_api: tuple[FakePlatform, dict[str, Any]]) -> None:
    fake, settings = web_api
    fake.fail_next(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "30"})
    fake.fail_next(200, {"ok": False, "error": "not_in_channel"})
    async with aiohttp.ClientSession() as session:
        with pytest.raises(SendRetry) as retry:
            await Slack().send(session, settings, {"channel": "C1"}, Outgoing("a", (), "m6"))
        assert retry.value.retry_after_s == 30.0
        with pytest.raises(SendRejected, match="not_in_channel"):
            await Slack().send(session, settings, {"channel": "C1"}, Outgoing("b", (), "m7"))
    assert len(fake.failed) == 2 and fake.calls == []  # one try each: no retries of its own
