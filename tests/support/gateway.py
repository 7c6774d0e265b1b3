"""The gateway's HTTP app against in-memory fakes (a hub that echoes, model and definition
stores, a clock): tests/unit/test_gateway_http.py and the gateway tests beside it."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from services.common.pb.botfactory.v1 import conversation_pb2
from services.gateway.config import GatewayConfig
from services.gateway.http import GatewayMetrics, create_app
from services.gateway.http.state import STATE
from services.gateway.owners import MemoryBotOwners
from services.gateway.ports import BotNotServed, Role, SendResult
from tests.support.memstores import InMemoryKeyStore

PEPPER = "test-pepper-0123456789abcdef"
VISITOR_SECRET = "test-visitor-secret-0123456789abcdef"
BOOTSTRAP = "bootstrap-admin-key-0123456789"
CONV = "/v1/bots/{bot}/conversations/{conv}"
PROBLEM = "application/problem+json"


# --- fakes ------------------------------------------------------------------------------------


class FakeHub:
    """Echoes: "echo: <text>"; the text "menu" gets two quick-reply buttons."""

    def __init__(self) -> None:
        self.sent: list[conversation_pb2.UserMessage] = []
        self.feedbacks: list[conversation_pb2.Feedback] = []
        self.released: list[tuple[str, str]] = []
        self.waits: list[float] = []
        self.transcript_limits: list[int] = []
        self.transcript_events: list[bool] = []
        self.turnless_events: list[dict[str, Any]] = []  # e.g. a workflow result's
        self.replies: dict[str, list[conversation_pb2.BotMessage]] = {}
        self.log: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self.subscribers: dict[tuple[str, str], list[asyncio.Queue[Any]]] = defaultdict(list)
        self.handoff_list: dict[str, list[dict[str, Any]]] = {}
        self.complete = True
        self.fail: Exception | None = None
        self.workflow_waits: list[float] = []
        self.result_extra: dict[str, Any] = {}  # SendResult fields of the next answers
        self.handoff_subscribers: dict[str, list[asyncio.Queue[Any]]] = defaultdict(list)
        self.served: set[str] | None = None  # None: every bot is served

    def check_served(self, bot_id: str) -> None:
        if self.served is not None and bot_id not in self.served:
            raise BotNotServed(bot_id)

    async def send(self, message: conversation_pb2.UserMessage, *, wait_s: float,
                   workflow_wait_s: float = 0.0,
                   on_reply: Callable[[conversation_pb2.BotMessage], None] | None = None
                   ) -> SendResult:
        if self.fail is not None:
            raise self.fail
        self.check_served(message.bot_id)
        self.waits.append(wait_s)
        self.workflow_waits.append(workflow_wait_s)
        if message.message_id in self.replies:
            return SendResult(self.replies[message.message_id], complete=True, duplicate=True)
        self.sent.append(message)
        replies = self.answer(message)
        self.replies[message.message_id] = replies
        key = (message.bot_id, message.conversation_id)
        self.log[key].append({"type": message.role or "user", "message_id": message.message_id,
                              "text": message.text, "buttons": [], "at_unix_ms": 1})
        for reply in replies:
            self.log[key].append({"type": "bot", "message_id": reply.message_id,
                                  "text": reply.text, "at_unix_ms": 2, "buttons": [
                                      {"title": b.title, "payload": b.payload}
                                      for b in reply.buttons]})
            for queue in self.subscribers[key]:
                queue.put_nowait(reply)
            if on_reply is not None:
                on_reply(reply)
        if wait_s == 0 or not self.complete:
            return SendResult([], complete=False)
        return SendResult(replies, complete=True, **self.result_extra)

    def answer(self, message: conversation_pb2.UserMessage) -> list[conversation_pb2.BotMessage]:
        if message.role == "agent":
            return []
        buttons = [conversation_pb2.Button(title="Yes", payload="/affirm"),
                   conversation_pb2.Button(title="No", payload="/deny")]
        reply = conversation_pb2.BotMessage(
            bot_id=message.bot_id, conversation_id=message.conversation_id,
            message_id=f"r-{message.message_id}", in_reply_to=message.message_id,
            text=f"echo: {message.text}", index=0, last=True, role="bot",
            buttons=buttons if message.text == "menu" else [])
        return [reply]

    async def transcript(self, bot_id: str, conversation_id: str, limit: int,
                         *, with_events: bool = False) -> list[dict[str, Any]]:
        self.transcript_limits.append(limit)
        self.transcript_events.append(with_events)
        entries = self.log[(bot_id, conversation_id)]
        if with_events:  # an event after each user message
            entries = [shown for entry in entries for shown in (
                [entry, {"type": "event", "event": "slot_rejected", "data": {
                    "slot": "claim_id", "value": "12345", "reason": "regex",
                    "problem": "12345 doesn't look like a claim id"},
                    "in_reply_to": entry["message_id"], "at_unix_ms": 1}]
                if entry["type"] == "user" else [entry])] + self.turnless_events
        return entries[-limit:]

    def subscribe(self, bot_id: str, conversation_id: str) -> Subscription:
        return Subscription(self.subscribers[(bot_id, conversation_id)])

    def handoff_messages(self, bot_id: str) -> Subscription:
        return Subscription(self.handoff_subscribers[bot_id])

    async def feedback(self, feedback: conversation_pb2.Feedback) -> None:
        self.feedbacks.append(feedback)

    async def handoffs(self, bot_id: str) -> list[dict[str, Any]]:
        return self.handoff_list.get(bot_id, [])

    async def release(self, bot_id: str, conversation_id: str) -> None:
        self.released.append((bot_id, conversation_id))

    def push(self, bot: str, conversation: str, text: str) -> None:
        message = conversation_pb2.BotMessage(bot_id=bot, conversation_id=conversation,
                                              message_id=f"async-{text}", text=text, role="bot")
        for queue in self.subscribers[(bot, conversation)]:
            queue.put_nowait(message)


class Subscription:
    """Subscribed at once (not at the first `__anext__`); `aclose` unsubscribes."""

    def __init__(self, subscribers: list[asyncio.Queue[Any]]) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.subscribers = subscribers
        subscribers.append(self.queue)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> conversation_pb2.BotMessage:
        message: conversation_pb2.BotMessage = await self.queue.get()
        return message

    async def aclose(self) -> None:
        if self.queue in self.subscribers:
            self.subscribers.remove(self.queue)


class FakeModels:
    def __init__(self) -> None:
        self.active: dict[str, str] = {}

    async def activate(self, bot: str, version: str) -> None:
        self.active[bot] = version

    async def versions(self, bot: str) -> list[str]:
        return ["v1", "v2"] if bot == "alpha" else []


class FakeDefinitions:
    def __init__(self) -> None:
        self.stored: dict[str, list[dict[str, str]]] = defaultdict(list)

    async def put(self, bot: str, files: dict[str, str]) -> int:
        self.stored[bot].append(files)
        return len(self.stored[bot])

    async def exists(self, bot: str) -> bool:
        return bool(self.stored.get(bot))


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def make_config(**overrides: Any) -> GatewayConfig:
    base = GatewayConfig(api_key_pepper=PEPPER, admin_bootstrap_key=BOOTSTRAP, sync_wait_s=0.5,
                         rate_limit_rps=1000.0, rate_limit_burst=1000,
                         visitor_token_secret=VISITOR_SECRET, visitor_token_ttl_s=600.0)
    return replace(base, **overrides)


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    hub: FakeHub
    keys: InMemoryKeyStore
    metrics: GatewayMetrics
    clock: FakeClock
    models: FakeModels = field(default_factory=FakeModels)
    definitions: FakeDefinitions = field(default_factory=FakeDefinitions)
    readiness: list[bool] = field(default_factory=lambda: [True])

    @property
    def app(self) -> web.Application:
        app = self.client.server.app  # type: ignore[attr-defined]
        assert isinstance(app, web.Application)
        return app

    @property
    def owners(self) -> MemoryBotOwners:
        """The bots' owner records (none: every bot is the default tenant's)."""
        owners = self.app[STATE].auth.owners
        assert isinstance(owners, MemoryBotOwners)
        return owners

    async def key(self, role: Role = Role.CLIENT, bots: tuple[str, ...] = ("alpha",),
                  tenant: str = "t1") -> str:
        issued = await self.app[STATE].auth.issue(tenant, bots, role)
        return issued.secret


async def start_gateway(config: GatewayConfig | None = None, *, models: bool = True) -> Gateway:
    hub, keys, clock = FakeHub(), InMemoryKeyStore(), FakeClock()
    metrics = GatewayMetrics.create(CollectorRegistry())
    fake_models, definitions, readiness = FakeModels(), FakeDefinitions(), [True]
    app = create_app(hub, keys, config or make_config(), metrics,
                     models=fake_models if models else None,
                     definitions=definitions if models else None,
                     ready=lambda: readiness[0], clock=clock)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return Gateway(client, hub, keys, metrics, clock, fake_models, definitions, readiness)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def conv(bot: str = "alpha", conversation: str = "c1") -> str:
    return CONV.format(bot=bot, conv=conversation)


async def problem_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body: dict[str, Any] = await response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    return body


def metric(gw: Gateway, name: str, **labels: str) -> float:
    value = gw.metrics.registry.get_sample_value(name, labels)
    return value or 0.0
