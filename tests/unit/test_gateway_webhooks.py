"""Webhook configuration (admin API over an in-memory store), the cached store, and the relay's
handling of bot messages (delivered, dead-lettered, in order, acked after delivery) with fake
JetStream messages and a local receiver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from services.common.errors import InvalidArgument
from services.common.pb.botfactory.v1 import conversation_pb2
from services.gateway.channels.secrets import SecretBox, new_key
from services.gateway.http import GatewayMetrics, create_app
from services.gateway.http.state import STATE
from services.gateway.ports import Role, Webhook
from services.gateway.webhook_follower import NO_BOT_FILTER, bots_of, filter_target, filters_for
from services.gateway.webhook_relay import DEAD_LETTER_SUBJECT, WebhookRelay, delivery_id
from services.gateway.webhook_store import (
    CachedWebhookStore,
    Subscription,
    decode,
    decode_subscription,
    encode,
    stored_subscription,
    webhook_key,
)
from services.gateway.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSender,
    WebhookSettings,
    sign,
    verify,
)
from tests.support.gateway import BOOTSTRAP, FakeHub, auth, make_config, problem_of
from tests.support.memstores import InMemoryKeyStore, InMemoryWebhookStore

HOOK = "/v1/admin/bots/{bot}/webhook"
SECRET = "webhook-secret-0123456789"
URL = "https://hooks.example.com/botfactory?channel=7"


# --- admin API --------------------------------------------------------------------------------


@dataclass
class Admin:
    client: TestClient[Any, Any]
    store: InMemoryWebhookStore

    async def key(self, role: Role = Role.ADMIN, bots: tuple[str, ...] = ("alpha",)) -> str:
        app = self.client.server.app  # type: ignore[attr-defined]
        issued = await app[STATE].auth.issue("t1", bots, role)
        secret: str = issued.secret
        return secret


async def start_admin(store: InMemoryWebhookStore | None) -> Admin:
    metrics = GatewayMetrics.create(CollectorRegistry())
    app = create_app(FakeHub(), InMemoryKeyStore(), make_config(), metrics, webhooks=store)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return Admin(client, store or InMemoryWebhookStore())


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    gateway = await start_admin(InMemoryWebhookStore())
    try:
        yield gateway
    finally:
        await gateway.client.close()


async def test_put_get_delete_and_the_secret_is_never_shown(admin: Admin) -> None:
    key = await admin.key()
    path = HOOK.format(bot="alpha")
    await problem_of(await admin.client.get(path, headers=auth(key)), 404)
    response = await admin.client.put(path, headers=auth(key), json={"url": URL, "secret": SECRET})
    text = await response.text()
    assert response.status == 200, text
    assert json.loads(text) == {"bot_id": "alpha", "url": URL} and SECRET not in text
    assert admin.store.hooks == {"alpha": Webhook(URL, SECRET)}

    response = await admin.client.get(path, headers=auth(key))
    text = await response.text()
    assert response.status == 200 and json.loads(text) == {"bot_id": "alpha", "url": URL}
    assert SECRET not in text

    other = "http://127.0.0.1:8099/hook"
    response = await admin.client.put(path, headers=auth(key),
                                      json={"url": other, "secret": SECRET[::-1]})
    assert response.status == 200 and admin.store.hooks["alpha"] == Webhook(other, SECRET[::-1])

    response = await admin.client.delete(path, headers=auth(key))
    assert response.status == 200
    assert await response.json() == {"bot_id": "alpha", "deleted": True}
    assert admin.store.hooks == {}
    await problem_of(await admin.client.delete(path, headers=auth(key)), 404)
    await problem_of(await admin.client.get(path, headers=auth(key)), 404)


@pytest.mark.parametrize(("body", "fields"), [
    ({"url": "ftp://example.com/x", "secret": SECRET}, {"url"}),
    ({"url": "https://", "secret": SECRET}, {"url"}),
    ({"url": "example.com/hook", "secret": SECRET}, {"url"}),
    ({"url": "http://exa mple.com/", "secret": SECRET}, {"url"}),
    ({"url": "http://example.com:99999/", "secret": SECRET}, {"url"}),
    ({"url": "https://x.example/" + "a" * 2000, "secret": SECRET}, {"url"}),
    ({"url": URL, "secret": "short"}, {"secret"}),
    ({"url": URL, "secret": "s" * 257}, {"secret"}),
    ({"url": 7, "secret": 7}, {"url", "secret"}),
    ({}, {"url", "secret"}),
    ({"url": URL, "secret": SECRET, "events": ["all"]}, {"events"}),
    ([URL, SECRET], {"body", "url", "secret"}),
])
async def test_webhook_validation_gives_field_errors(admin: Admin, body: Any,
                                                     fields: set[str]) -> None:
    response = await admin.client.put(HOOK.format(bot="alpha"), headers=auth(BOOTSTRAP),
                                      json=body)
    problem = await problem_of(response, 400)
    assert {e["field"] for e in problem["errors"]} == fields
    assert SECRET not in json.dumps(problem)
    assert admin.store.hooks == {}


async def test_webhook_routes_are_admin_only_and_bot_scoped(admin: Admin) -> None:
    body = {"url": URL, "secret": SECRET}
    agent = await admin.key(Role.AGENT)
    scoped = await admin.key(Role.ADMIN, bots=("alpha",))
    for method in ("PUT", "GET", "DELETE"):
        response = await admin.client.request(method, HOOK.format(bot="alpha"),
                                              headers=auth(agent), json=body)
        assert "role" in (await problem_of(response, 403))["detail"]
        response = await admin.client.request(method, HOOK.format(bot="beta"),
                                              headers=auth(scoped), json=body)
        await problem_of(response, 404)  # a bot out of the key's reach
        response = await admin.client.request(method, HOOK.format(bot="alpha"), json=body)
        await problem_of(response, 401)
    response = await admin.client.put(HOOK.format(bot="bad.bot"), headers=auth(BOOTSTRAP),
                                      json=body)
    assert (await problem_of(response, 400))["errors"][0]["field"] == "bot"
    assert admin.store.hooks == {}
    response = await admin.client.put(HOOK.format(bot="beta"), headers=auth(BOOTSTRAP),
                                      json=body)
    assert response.status == 200 and set(admin.store.hooks) == {"beta"}


async def test_webhook_admin_unavailable_when_not_wired() -> None:
    gateway = await start_admin(None)
    try:
        path = HOOK.format(bot="alpha")
        response = await gateway.client.put(path, headers=auth(BOOTSTRAP),
                                            json={"url": URL, "secret": SECRET})
        assert "not available" in (await problem_of(response, 503))["detail"]
        await problem_of(await gateway.client.get(path, headers=auth(BOOTSTRAP)), 503)
        await problem_of(await gateway.client.delete(path, headers=auth(BOOTSTRAP)), 503)
    finally:
        await gateway.client.close()


async def test_webhook_routes_are_documented(admin: Admin) -> None:
    document = await (await admin.client.get("/openapi.json")).json()
    operations = document["paths"]["/v1/admin/bots/{bot}/webhook"]
    assert set(operations) == {"put", "get", "delete"}
    assert operations["put"]["x-required-role"] == "admin"
    assert operations["put"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WebhookRequest"}
    assert {"200", "400", "401", "403", "503"} <= set(operations["put"]["responses"])
    assert {"404", "503"} <= set(operations["get"]["responses"])
    schemas = document["components"]["schemas"]
    assert "secret" not in schemas["Webhook"]["properties"]
    assert schemas["WebhookRequest"]["properties"]["secret"]["minLength"] == 16


# --- stored form and the cache ----------------------------------------------------------------


def test_stored_form_and_key() -> None:
    hook = Webhook(URL, SECRET)
    assert decode(encode(hook)) == hook
    assert webhook_key("banking") == "webhook.banking"
    with pytest.raises(ValueError):
        decode(b'{"url": "x"}')
    with pytest.raises(InvalidArgument):
        webhook_key("a.b")
    assert decode_subscription(encode(hook, 41)) == Subscription(hook, 41)
    # Stored before since_seq existed: every message the consumer hands out counts.
    legacy = json.dumps({"url": URL, "secret": SECRET}).encode()
    assert decode_subscription(legacy) == Subscription(hook, 0)
    for since in ("7", -1, True, 1.5):
        with pytest.raises(ValueError, match="since_seq"):
            decode(json.dumps({"url": URL, "secret": SECRET, "since_seq": since}).encode())


def test_filter_subjects_name_the_bots_with_a_webhook() -> None:
    assert filters_for(["beta", "alpha"]) == ["conv.out.alpha.>", "conv.out.beta.>"]
    assert filters_for([]) == [NO_BOT_FILTER]  # no filter at all would take the whole stream
    assert bots_of(filters_for(["a-1", "b_2"])) == {"a-1", "b_2"}
    assert bots_of([NO_BOT_FILTER, "conv.out.>", "conv.event.x.>"]) == frozenset()


def test_filter_updates_keep_what_other_replicas_added() -> None:
    current = frozenset({"alpha", "beta"})  # alpha: added by a replica this one has not heard
    assert filter_target(current, frozenset({"beta", "gamma"})) == {"alpha", "beta", "gamma"}
    assert filter_target(current, frozenset(), removed=frozenset({"beta"})) == {"alpha"}
    # Removed, then set again before the update: kept.
    assert filter_target(current, frozenset({"beta"}), removed=frozenset({"beta"})) == current
    assert filter_target(current, frozenset({"beta"}), stale=frozenset({"alpha"})) == {"beta"}


@dataclass
class CountingStore(InMemoryWebhookStore):
    gets: int = 0
    gate: asyncio.Event | None = None

    def __post_init__(self) -> None:
        super().__init__()

    async def get(self, bot: str) -> Webhook | None:
        self.gets += 1
        found = await super().get(bot)
        if self.gate is not None:  # answers what it read before the gate opened
            await self.gate.wait()
        return found


async def test_cache_remembers_hooks_and_their_absence_for_a_while() -> None:
    inner = CountingStore()
    now = [100.0]
    cached = CachedWebhookStore(inner, ttl_s=5.0, clock=lambda: now[0])
    assert await cached.get("alpha") is None and await cached.get("alpha") is None
    assert inner.gets == 1
    await inner.put("alpha", Webhook(URL, SECRET))  # written elsewhere (another replica)
    assert await cached.get("alpha") is None
    now[0] += 5.1
    assert await cached.get("alpha") == Webhook(URL, SECRET) and inner.gets == 2
    # Writes through this store apply at once.
    assert await cached.delete("alpha") is True
    assert await cached.get("alpha") is None and inner.gets == 2
    await cached.put("alpha", Webhook(URL, "another-secret-0123"))
    assert await cached.get("alpha") == Webhook(URL, "another-secret-0123")
    assert inner.gets == 2


async def test_cache_looks_a_bot_up_once_at_a_time_and_a_write_wins() -> None:
    inner = CountingStore(gate=asyncio.Event())
    cached = CachedWebhookStore(inner, ttl_s=5.0)
    lookups = [asyncio.ensure_future(cached.get("alpha")) for _ in range(5)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert inner.gets == 1
    await cached.put("alpha", Webhook(URL, SECRET))  # while the (stale) lookup runs
    inner.gate.set()  # type: ignore[union-attr]
    assert await asyncio.gather(*lookups) == [None] * 5 and inner.gets == 1
    assert await cached.get("alpha") == Webhook(URL, SECRET)  # the write, not the stale read
    assert inner.gets == 1


# --- the relay --------------------------------------------------------------------------------


class FakeMsg:
    """The parts of a JetStream message the relay uses; records how it was settled."""

    def __init__(self, message: conversation_pb2.BotMessage | bytes, sequence: int = 0) -> None:
        self.data = message if isinstance(message, bytes) else message.SerializeToString()
        self.subject = "conv.out.alpha.c1"
        self.metadata = SimpleNamespace(sequence=SimpleNamespace(stream=sequence)) \
            if sequence else None
        self.settled: list[str] = []
        self.progress = 0

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nak")

    async def term(self) -> None:
        self.settled.append("term")

    async def in_progress(self) -> None:
        self.progress += 1


@dataclass
class FakeJetStream:
    published: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    async def publish(self, subject: str, payload: bytes, *, headers: dict[str, str],
                      **options: Any) -> None:
        self.published.append((subject, payload, headers))


@dataclass
class FakeBus:
    js: FakeJetStream = field(default_factory=FakeJetStream)


@dataclass
class Receiver:
    """Answers each request with the next status (200 when none is left), after `delay_s`."""

    statuses: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    seen: list[tuple[dict[str, Any], dict[str, str], bytes]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    active: int = 0
    peak: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw)
        self.seen.append((body, dict(request.headers), raw))
        status = self.statuses.pop(0) if self.statuses else 200
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.active -= 1
        if status == 200:
            self.accepted.append(body["message"]["text"])
        return web.Response(status=status)


@dataclass
class Relay:
    relay: WebhookRelay
    bus: FakeBus
    receiver: Receiver
    store: InMemoryWebhookStore
    metrics: GatewayMetrics

    def delivered(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "botfactory_gateway_webhook_deliveries_total", {"outcome": outcome})
        return value or 0.0


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)

    async def no_sleep(_: float) -> None:
        await asyncio.sleep(0)

    async with TestClient(TestServer(app)) as client:
        metrics = GatewayMetrics.create(CollectorRegistry())
        settings = WebhookSettings(timeout_s=2, max_attempts=3, backoff_s=0.01, concurrency=4)
        sender = WebhookSender(client.session, settings, metrics, sleep=no_sleep)
        store = InMemoryWebhookStore()
        await store.put("alpha", Webhook(str(client.make_url("/hook")), SECRET))
        bus = FakeBus()
        yield Relay(WebhookRelay(bus, store, sender), bus,  # type: ignore[arg-type]
                    receiver, store, metrics)


def bot_message(text: str, bot: str = "alpha", conversation: str = "c1",
                message_id: str | None = None) -> conversation_pb2.BotMessage:
    return conversation_pb2.BotMessage(bot_id=bot, conversation_id=conversation,
                                       message_id=message_id or f"m-{text}", text=text,
                                       role="bot")


async def handle(relay: WebhookRelay, *messages: FakeMsg) -> None:
    await asyncio.gather(*(relay.take(m) for m in messages))  # type: ignore[arg-type]


async def test_relay_delivers_signed_with_a_stable_id_then_acks(relay: Relay) -> None:
    relay.receiver.statuses = [503]
    msg = FakeMsg(bot_message("hello"))
    await handle(relay.relay, msg)
    assert msg.settled == ["ack"] and relay.bus.js.published == []
    assert len(relay.receiver.seen) == 2  # one retry
    (first, headers, raw), (again, _, raw_again) = relay.receiver.seen
    assert first == again and raw == raw_again
    assert verify(SECRET, raw, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
    assert first["type"] == "message" and first["bot_id"] == "alpha"
    assert first["conversation_id"] == "c1" and first["message"]["text"] == "hello"
    assert first["delivery_id"] == headers[DELIVERY_HEADER] == delivery_id(bot_message("hello"))
    assert relay.delivered("delivered") == 1.0

    # A redelivery of the same message carries the same delivery id (receivers dedupe).
    again_msg = FakeMsg(bot_message("hello"))
    await handle(relay.relay, again_msg)
    assert relay.receiver.seen[-1][0]["delivery_id"] == first["delivery_id"]
    assert relay.relay.in_flight == 0


async def test_relay_acks_messages_of_bots_without_a_webhook(relay: Relay) -> None:
    messages = [FakeMsg(bot_message("x", bot="beta")), FakeMsg(b"\x0a\xff truncated")]
    await handle(relay.relay, *messages)
    assert messages[0].settled == ["ack"] and messages[1].settled == ["term"]
    assert relay.receiver.seen == [] and relay.bus.js.published == []


async def test_relay_acks_messages_from_before_the_webhook_without_delivering_them(
        relay: Relay) -> None:
    relay.store.since["alpha"] = 10
    messages = [FakeMsg(bot_message(f"m{seq}"), sequence=seq) for seq in (9, 10, 11)]
    await handle(relay.relay, *messages)
    assert all(m.settled == ["ack"] for m in messages)
    assert relay.receiver.accepted == ["m11"] and relay.relay.skipped == 2


async def test_relay_dead_letters_after_the_attempts_run_out(relay: Relay) -> None:
    relay.receiver.statuses = [500, 502, 503]
    msg = FakeMsg(bot_message("lost?"))
    await handle(relay.relay, msg)
    assert len(relay.receiver.seen) == 3 and msg.settled == ["ack"]
    [(subject, payload, headers)] = relay.bus.js.published
    assert subject == DEAD_LETTER_SUBJECT
    body = json.loads(payload)
    assert body["message"]["text"] == "lost?" and body["delivery_id"] == \
        relay.receiver.seen[0][0]["delivery_id"]
    assert headers["Bf-Original-Subject"] == "conv.out.alpha.c1"
    assert headers["Nats-Msg-Id"] == f"webhook-{body['delivery_id']}"
    assert SECRET not in payload.decode()
    assert relay.delivered("failed") == 1.0

    relay.receiver.statuses = [410]  # refused: final at once, dead-lettered too
    msg = FakeMsg(bot_message("gone"))
    await handle(relay.relay, msg)
    assert len(relay.receiver.seen) == 4 and len(relay.bus.js.published) == 2


class BrokenStore(InMemoryWebhookStore):
    async def get(self, bot: str) -> Webhook | None:
        raise TimeoutError("kv unavailable")


async def test_relay_naks_when_the_store_is_unreachable(relay: Relay) -> None:
    broken = WebhookRelay(relay.bus, BrokenStore(), relay.relay._sender)  # type: ignore[arg-type]
    msg = FakeMsg(bot_message("later"))
    await handle(broken, msg)
    assert msg.settled == ["nak"] and relay.receiver.seen == []


async def test_relay_keeps_order_per_conversation_with_concurrent_deliveries(
        relay: Relay) -> None:
    relay.receiver.delay_s = 0.02
    relay.receiver.statuses = [503]  # the first message is retried: the next ones must wait
    first = [FakeMsg(bot_message(f"c1-{i}", conversation="c1")) for i in range(3)]
    second = [FakeMsg(bot_message(f"c2-{i}", conversation="c2")) for i in range(3)]
    await handle(relay.relay, *[m for pair in zip(first, second, strict=True) for m in pair])
    accepted = relay.receiver.accepted
    assert len(relay.receiver.seen) == 7 and len(accepted) == 6
    assert [t for t in accepted if t.startswith("c1")] == ["c1-0", "c1-1", "c1-2"]
    assert [t for t in accepted if t.startswith("c2")] == ["c2-0", "c2-1", "c2-2"]
    assert all(m.settled == ["ack"] for m in first + second)
    assert relay.relay._tails == {}


async def test_relay_bounds_concurrent_deliveries_and_reports_progress(relay: Relay) -> None:
    relay.receiver.delay_s = 0.1
    wrapped = WebhookRelay(relay.bus, relay.store, relay.relay._sender,  # type: ignore[arg-type]
                           concurrency=2, ack_wait_s=0.3)
    wrapped._running = True
    beat = asyncio.ensure_future(wrapped._heartbeat())
    messages = [FakeMsg(bot_message(f"m{i}", conversation=f"c{i}")) for i in range(6)]
    try:
        await handle(wrapped, *messages)
    finally:
        beat.cancel()
    assert len(relay.receiver.seen) == 6 and relay.receiver.peak == 2
    assert any(m.progress > 0 for m in messages)  # in-progress acks while waiting


async def test_stopping_hands_unfinished_messages_back(relay: Relay) -> None:
    relay.receiver.delay_s = 0.5
    msg = FakeMsg(bot_message("slow"))
    relay.relay.take(msg)  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    await relay.relay.stop(grace_s=0.05)
    assert msg.settled == ["nak"] and relay.relay.in_flight == 0


# --- signatures: timestamped, replays refused -------------------------------------------------


def test_the_signature_covers_the_timestamp_and_old_timestamps_are_refused() -> None:
    body, now = b'{"type":"message"}', 1_767_225_600.0
    stamp = str(int(now))
    signature = sign(SECRET, stamp, body)
    assert verify(SECRET, body, stamp, signature, now=now)
    assert verify(SECRET, body, stamp, signature, now=now + 299)
    # A captured request replayed later is refused, even with its valid signature...
    assert not verify(SECRET, body, stamp, signature, now=now + 301)
    assert not verify(SECRET, body, stamp, signature, now=now - 301)
    # ... and a fresh timestamp cannot be put on it: the signature covers the timestamp.
    assert not verify(SECRET, body, str(int(now) + 400), signature, now=now + 400)
    assert not verify(SECRET, body + b" ", stamp, signature, now=now)
    assert not verify(SECRET, body, "not-a-number", signature, now=now)


async def test_each_attempt_is_signed_with_its_own_timestamp() -> None:
    seen: list[tuple[bytes, dict[str, str]]] = []
    statuses = [503, 200]

    async def handle(request: web.Request) -> web.Response:
        seen.append((await request.read(), dict(request.headers)))
        return web.Response(status=statuses.pop(0))

    app = web.Application()
    app.router.add_post("/hook", handle)
    clock = iter([1_767_225_600.0, 1_767_225_700.0])

    async def no_sleep(_: float) -> None:
        await asyncio.sleep(0)

    async with TestClient(TestServer(app)) as client:
        sender = WebhookSender(client.session, WebhookSettings(max_attempts=2), None,
                               sleep=no_sleep, clock=lambda: next(clock))
        hook = Webhook(str(client.make_url("/hook")), SECRET)
        assert await sender.deliver(hook, {"type": "message"}, delivery_id="d1")
    (body, first), (again, second) = seen
    assert body == again and first[DELIVERY_HEADER] == second[DELIVERY_HEADER] == "d1"
    assert (first[TIMESTAMP_HEADER], second[TIMESTAMP_HEADER]) == ("1767225600", "1767225700")
    assert verify(SECRET, body, first[TIMESTAMP_HEADER], first[SIGNATURE_HEADER],
                  now=1_767_225_600.0)
    assert verify(SECRET, body, second[TIMESTAMP_HEADER], second[SIGNATURE_HEADER],
                  now=1_767_225_700.0)


def test_the_secret_is_sealed_at_rest_when_there_is_a_key() -> None:
    """Issue 20: webhook secrets no longer sit in KV as plain text (with the channels' key)."""
    hook, box = Webhook(URL, SECRET), SecretBox(new_key())
    stored = encode(hook, 7, box)
    assert SECRET not in stored.decode() and "secret_sealed" in json.loads(stored)
    assert decode_subscription(stored, box) == Subscription(hook, 7)
    with pytest.raises(ValueError, match="sealed"):
        decode_subscription(stored)  # the key was removed: refused, never used as the secret
    # a plain one (stored before the key was set) still reads, with or without the key
    assert decode_subscription(encode(hook, 7), box) == Subscription(hook, 7)
    assert stored_subscription("banking", stored, SecretBox(new_key())) is None  # wrong key
