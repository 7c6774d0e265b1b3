"""The channel framework's pure parts: text splitting, the outbox's retry delays, sealed
secrets (with key rotation), conversation ids, the channel state's KV handles, settings
validation, Telegram's parsing and message shapes, and the gateway config's channel
settings."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from nats.js.errors import KeyNotFoundError

from services.common.config import ConfigError
from services.gateway.channels.base import (
    Button,
    Outgoing,
    SendRejected,
    SendRetry,
    SettingsInvalid,
    raise_for_send,
    split_text,
)
from services.gateway.channels.outbox import Retries
from services.gateway.channels.secrets import SecretBox, SecretUnreadable, new_key, parse_keys
from services.gateway.channels.store import (
    ChannelStore,
    ConversationRef,
    ConversationRefs,
    channel_of,
    conversation_id,
)
from services.gateway.channels.telegram import Telegram, _callback_data
from services.gateway.config import load


def test_split_text_cuts_at_breaks_within_the_limit() -> None:
    text = "first paragraph here\n\nsecond one is longer than that"
    assert split_text(text, 30) == ["first paragraph here", "second one is longer than that"]
    assert split_text("a" * 25, 10) == ["a" * 10, "a" * 10, "a" * 5]
    assert split_text("short", 10) == ["short"] and split_text("", 10) == [""]
    words = " ".join(["word"] * 50)
    pieces = split_text(words, 42)
    assert all(len(p) <= 42 for p in pieces) and " ".join(pieces) == words


def test_retry_delays_back_off_and_honour_retry_after_up_to_a_bound() -> None:
    retries = Retries(attempts=6, backoff_s=0.5, backoff_max_s=3.0, max_retry_after_s=10.0)
    assert [retries.delay(n, None) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert retries.delay(1, 7.0) == 7.0 and retries.delay(1, 500.0) == 10.0


def test_send_errors_by_status() -> None:
    with pytest.raises(SendRetry) as retry:
        raise_for_send(429, "slow down", 3.0)
    assert retry.value.retry_after_s == 3.0
    with pytest.raises(SendRetry):
        raise_for_send(502, "bad gateway")
    with pytest.raises(SendRejected):
        raise_for_send(403, "blocked by the user")
    raise_for_send(200, "fine")


def test_secrets_are_sealed_and_keys_rotate() -> None:
    old, new = new_key(), new_key()
    sealed = SecretBox(old).seal("xoxb-123")
    assert "xoxb" not in sealed
    rotated = SecretBox(f"{new},{old}")
    assert rotated.open(sealed) == "xoxb-123"  # the old key still opens
    assert SecretBox(new).open(rotated.seal("t")) == "t"  # the new one seals
    with pytest.raises(SecretUnreadable):
        SecretBox(new).open(sealed)
    with pytest.raises(ValueError, match="key 2 is not a Fernet key"):
        parse_keys(f"{new},not-a-key")


def test_a_bad_channel_key_stops_the_gateway_with_a_clear_message() -> None:
    env = {"BOTFACTORY_GATEWAY_API_KEY_PEPPER": "p" * 20,
           "BOTFACTORY_GATEWAY_VISITOR_TOKEN_SECRET": "v" * 40,
           "BOTFACTORY_GATEWAY_CHANNEL_SECRETS_KEY": "hunter2"}
    with pytest.raises(ConfigError, match=r"CHANNEL_SECRETS_KEY.*Fernet"):
        load(env)
    assert load({**env, "BOTFACTORY_GATEWAY_CHANNEL_SECRETS_KEY": new_key()})


def test_conversation_ids_are_valid_ids_and_name_their_channel() -> None:
    assert conversation_id("telegram", "-100123") == "telegram--100123"
    hashed = conversation_id("whatsapp", "wamid.HBgLMzE2=")
    assert hashed.startswith("whatsapp-h") and len(hashed) < 64
    assert conversation_id("whatsapp", "wamid.HBgLMzE2=") == hashed
    assert channel_of("telegram-42", {"telegram"}) == "telegram"
    assert channel_of("c1", {"telegram"}) is None
    assert channel_of("slack-T1-C1", {"telegram"}) is None


class MemoryKV:
    def __init__(self) -> None:
        self.values: dict[str, tuple[int, bytes]] = {}
        self.revision = 0

    async def put(self, key: str, value: bytes) -> int:
        self.revision += 1
        self.values[key] = (self.revision, value)
        return self.revision

    async def get(self, key: str) -> Any:
        if key not in self.values:
            raise KeyNotFoundError
        revision, value = self.values[key]
        return SimpleNamespace(value=value, revision=revision)

    async def delete(self, key: str) -> None:
        self.values.pop(key, None)


class CountingBus:
    """`kv(bucket)`: an in-memory bucket per name."""

    def __init__(self) -> None:
        self.buckets: dict[str, MemoryKV] = {}

    async def kv(self, bucket: str) -> MemoryKV:
        return self.buckets.setdefault(bucket, MemoryKV())


async def test_channel_state_reads_fresh_values() -> None:
    """Addresses are never cached (another replica may have written one since); the bucket
    handles themselves are (Bus.kv, tests/unit/test_bus_kv.py)."""
    bus = CountingBus()
    store = ChannelStore(bus, SecretBox(new_key()),  # type: ignore[arg-type]
                         {"telegram": ("bot_token",)})
    refs = ConversationRefs(bus)  # type: ignore[arg-type]
    await store.put("banking", "telegram", {"bot_token": "123:abc", "api_base": "http://x"})
    await refs.remember("banking", "telegram-1", ConversationRef("telegram", {"chat_id": "1"}))
    for n in range(5):
        assert await store.get("banking", "telegram") == {"bot_token": "123:abc",
                                                         "api_base": "http://x"}
        await refs.remember("banking", "telegram-1",
                            ConversationRef("telegram", {"chat_id": "1", "thread": str(n)}))
        found = await refs.lookup("banking", "telegram-1")
        assert found is not None and found.address["thread"] == str(n)  # never a stale copy
    assert await refs.lookup("banking", "telegram-2") is None


class CountingBox(SecretBox):
    opened = 0

    def open(self, sealed: str) -> str:
        self.opened += 1
        return super().open(sealed)


async def test_channel_settings_are_read_fresh_and_decrypted_once_per_revision() -> None:
    box = CountingBox(new_key())
    store = ChannelStore(CountingBus(), box,  # type: ignore[arg-type]
                         {"telegram": ("bot_token", "secret_token")})
    await store.put("banking", "telegram", {"bot_token": "1:a", "secret_token": "s"})
    first = await store.get("banking", "telegram")
    assert first == {"bot_token": "1:a", "secret_token": "s"} and box.opened == 2
    first["bot_token"] = "changed by a caller"
    for _ in range(3):
        assert await store.get("banking", "telegram") == {"bot_token": "1:a",
                                                         "secret_token": "s"}
    assert box.opened == 2  # the same revision: not decrypted again
    await store.put("banking", "telegram", {"bot_token": "2:b", "secret_token": "s"})
    assert await store.get("banking", "telegram") == {"bot_token": "2:b", "secret_token": "s"}
    assert box.opened == 4
    assert await store.delete("banking", "telegram")
    assert await store.get("banking", "telegram") is None


def test_telegram_settings_and_message_shapes() -> None:
    telegram = Telegram()
    telegram.check_settings({"bot_token": "123:" + "a" * 30, "secret_token": "ok_1-2"})
    with pytest.raises(SettingsInvalid, match="bot_token"):
        telegram.check_settings({"bot_token": "nope", "secret_token": "ok"})
    with pytest.raises(SettingsInvalid, match="secret_token"):
        telegram.check_settings({"bot_token": "123:" + "a" * 30, "secret_token": "no spaces"})
    long_payload = '/transfer_money{"amount": "500", "recipient": "a very long name here"}'
    assert _callback_data("/greet", "Hi") == "/greet"
    assert _callback_data(long_payload, "Transfer") == "Transfer"


class FakeSession:
    """Records Bot API calls made through `session.post` (aiohttp's shape)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []

    def post(self, url: str, json: Any = None, timeout: Any = None) -> FakeResponse:
        self.posts.append((url, json))
        return FakeResponse()


class FakeResponse:
    status = 200

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}

    async def __aenter__(self) -> FakeResponse:
        return self

    async def __aexit__(self, *args: Any) -> None:
        return None

    async def json(self, content_type: Any = None) -> dict[str, Any]:
        return {"ok": True, "result": {}}


async def test_telegram_sends_pieces_with_the_keyboard_under_the_last() -> None:
    session: Any = FakeSession()
    settings = {"bot_token": "1:" + "a" * 30, "api_base": "http://tg"}
    message = Outgoing("x" * 5000, (Button("Balance", "/check_balance"),), "m1")
    await Telegram().send(session, settings, {"chat_id": "9"}, message)
    (first_url, first), (_, second) = session.posts
    assert first_url == f"http://tg/bot{settings['bot_token']}/sendMessage"
    assert len(first["text"]) == 4096 and "reply_markup" not in first
    assert second["reply_markup"] == {"inline_keyboard": [[
        {"text": "Balance", "callback_data": "/check_balance"}]]}


async def test_telegram_parses_messages_and_button_presses() -> None:
    session: Any = FakeSession()
    settings = {"bot_token": "1:" + "a" * 30, "api_base": "http://tg"}
    telegram = Telegram()
    text = {"update_id": 5, "message": {"message_id": 1, "chat": {"id": 42}, "text": "hi",
                                        "from": {"id": 7}}}
    parsed = await telegram.parse(None, json.dumps(text).encode(), settings,  # type: ignore[arg-type]
                                  session)
    assert [(m.native_id, m.conversation, m.text, m.address, m.sender)
            for m in parsed.messages] == [("5", "42", "hi", {"chat_id": "42"}, "7")]
    press = {"update_id": 6, "callback_query": {"id": "q1", "from": {"id": 7}, "data": "/greet",
                                                "message": {"message_id": 1, "chat": {"id": 42}}}}
    parsed = await telegram.parse(None, json.dumps(press).encode(), settings,  # type: ignore[arg-type]
                                  session)
    assert [m.text for m in parsed.messages] == ["/greet"]
    assert session.posts[-1] == (f"http://tg/bot{settings['bot_token']}/answerCallbackQuery",
                                 {"callback_query_id": "q1"})
    photo = {"update_id": 7, "message": {"message_id": 2, "chat": {"id": 42}, "photo": []}}
    assert (await telegram.parse(None, json.dumps(photo).encode(), settings,  # type: ignore[arg-type]
                                 session)).messages == []


async def test_a_webhook_while_the_bus_is_down_is_503_with_retry_after() -> None:
    """The platform sends the update again later (a 500 would be logged as a crash)."""
    import nats.errors
    from aiohttp.test_utils import TestClient, TestServer
    from prometheus_client import CollectorRegistry

    from services.gateway.channels.service import CHANNELS
    from services.gateway.http import GatewayMetrics, create_app
    from tests.support.gateway import FakeHub, make_config
    from tests.support.memstores import InMemoryKeyStore

    class DownStore:
        async def current(self, bot: str, channel: str) -> None:
            raise nats.errors.TimeoutError

    app = create_app(FakeHub(), InMemoryKeyStore(), make_config(),
                     GatewayMetrics.create(CollectorRegistry()))
    channels: Any = SimpleNamespace(adapters={"telegram": Telegram()}, store=DownStore(),
                                    metrics=None, refs=None, session=None)
    app[CHANNELS] = channels
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/v1/channels/telegram/banking", json={"update_id": 1})
        assert response.status == 503 and response.headers["Retry-After"] == "2"
        assert (await response.json())["type"].endswith(":unavailable")


async def test_the_hot_path_keeps_settings_a_few_seconds_but_never_an_absence() -> None:
    """Every webhook request and reply reads the settings: `current` keeps them `cache_s`
    (a change on another replica applies within it), but a channel just set counts at once."""
    now = [0.0]
    bus = CountingBus()
    store = ChannelStore(bus, SecretBox(new_key()),  # type: ignore[arg-type]
                         {"telegram": ("bot_token",)}, cache_s=5.0, clock=lambda: now[0])
    assert await store.current("banking", "telegram") is None
    kv = await bus.kv("bots")
    await store.put("banking", "telegram", {"bot_token": "t1"})
    assert (await store.current("banking", "telegram") or {})["bot_token"] == "t1"
    # another replica changes it: this one keeps what it read until cache_s has passed
    record = json.loads(kv.values["channel.banking.telegram"][1])
    record["settings"]["x"] = "1"
    kv.values["channel.banking.telegram"] = (99, json.dumps(record).encode())
    assert "x" not in (await store.current("banking", "telegram") or {})
    now[0] += 6.0
    assert (await store.current("banking", "telegram") or {})["x"] == "1"
    # a change made here applies here at once
    await store.put("banking", "telegram", {"bot_token": "t2"})
    assert (await store.current("banking", "telegram") or {})["bot_token"] == "t2"


def test_a_channel_may_belong_to_a_bot_environment() -> None:
    from services.gateway.http.channels import checked_settings
    from services.gateway.http.problems import RequestInvalid

    telegram = Telegram()
    settings = checked_settings(telegram, {"bot_token": "1:" + "a" * 30,
                                           "secret_token": "s" * 16, "environment": "staging"})
    assert settings["environment"] == "staging"
    with pytest.raises(RequestInvalid, match="environment"):
        checked_settings(telegram, {"bot_token": "1:" + "a" * 30, "secret_token": "s" * 16,
                                    "environment": "Not An Env"})
