"""The web widget against the gateway app in process: channel settings kept in memory (a bus
whose KV buckets are MemoryKeyValue), a hub that answers like a small bank bot, and a bot's
widget set up with a publishable key (tests/unit/test_widget.py,
tests/integration/test_widget_browser.py)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from services.common.nats import Bus
from services.common.pb.botfactory.v1 import conversation_pb2
from services.gateway.channels import all_channels
from services.gateway.channels.metrics import ChannelMetrics
from services.gateway.channels.secrets import SecretBox, new_key
from services.gateway.channels.service import CHANNELS, Channels, secret_names
from services.gateway.channels.store import ChannelStore, ConversationRefs
from services.gateway.channels.widget import WIDGET
from services.gateway.config import GatewayConfig
from services.gateway.http import GatewayMetrics, create_app
from services.gateway.http.state import STATE
from services.gateway.ports import Role, SendResult
from tests.support.gateway import FakeClock, FakeHub, make_config
from tests.support.memkv import MemoryKeyValue
from tests.support.memstores import InMemoryKeyStore

BOT = "alpha"
GREETING = "Hi! I am the Alpha Bank assistant."
BUTTONS = (("Check balance", "/check_balance"), ("Transfer money", "/transfer_money"))
ANSWERS = {"/check_balance": "Your balance is 1,250.00 EUR.",
           "/transfer_money": "Sure. Who should the money go to?"}
WELCOME = "Hello! I can check your balance or move money. What would you like to do?"


class MemoryBus:
    """What ChannelStore and ConversationRefs use of a Bus (its KV buckets), in memory."""

    def __init__(self) -> None:
        self.buckets: defaultdict[str, MemoryKeyValue] = defaultdict(MemoryKeyValue)

    async def kv(self, bucket: str) -> MemoryKeyValue:
        return self.buckets[bucket]


class BankHub(FakeHub):
    """Answers like a small bank bot: free text gets a welcome with two quick replies, a
    button's payload its own answer. `delay_s` passes before each answer (the widget shows
    its typing indicator meanwhile)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def send(self, message: conversation_pb2.UserMessage, *, wait_s: float,
                   workflow_wait_s: float = 0.0,
                   on_reply: Callable[[conversation_pb2.BotMessage], None] | None = None
                   ) -> SendResult:
        await asyncio.sleep(self.delay_s)
        return await super().send(message, wait_s=wait_s, workflow_wait_s=workflow_wait_s,
                                  on_reply=on_reply)

    def answer(self, message: conversation_pb2.UserMessage) -> list[conversation_pb2.BotMessage]:
        known = ANSWERS.get(message.text)
        buttons = [] if known else [conversation_pb2.Button(title=t, payload=p)
                                    for t, p in BUTTONS]
        return [conversation_pb2.BotMessage(
            bot_id=message.bot_id, conversation_id=message.conversation_id,
            message_id=f"r-{message.message_id}", in_reply_to=message.message_id,
            text=known or WELCOME, index=0, last=True, role="bot", buttons=buttons)]


def memory_channels(session: aiohttp.ClientSession, registry: CollectorRegistry) -> Channels:
    """The gateway's channels with their settings in memory (secrets sealed as in
    production)."""
    bus = MemoryBus()
    adapters = all_channels()
    store = ChannelStore(cast(Bus, bus), SecretBox(new_key()), secret_names(adapters))
    return Channels(adapters, store, ConversationRefs(cast(Bus, bus)), session,
                    ChannelMetrics.create(registry))


@dataclass
class WidgetApp:
    app: web.Application
    hub: BankHub
    metrics: GatewayMetrics
    clock: FakeClock | None


def widget_app(session: aiohttp.ClientSession, *, hub: BankHub | None = None,
               config: GatewayConfig | None = None,
               clock: FakeClock | None = None) -> WidgetApp:
    """The gateway's app with channels in memory (not started)."""
    hub = hub if hub is not None else BankHub()
    registry = CollectorRegistry()
    metrics = GatewayMetrics.create(registry)
    app = create_app(hub, InMemoryKeyStore(), config or make_config(), metrics, clock=clock)
    app[CHANNELS] = memory_channels(session, registry)
    return WidgetApp(app, hub, metrics, clock)


async def set_widget(app: web.Application, bot: str = BOT, **settings: str) -> None:
    """The bot's widget settings, stored as the admin route stores them."""
    await app[CHANNELS].store.put(bot, WIDGET, settings)


async def publishable_key(app: web.Application, bot: str = BOT, tenant: str = "t1") -> str:
    issued = await app[STATE].auth.issue(tenant, [bot], Role.PUBLISHABLE)
    return issued.secret


def refused(metrics: GatewayMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("botfactory_widget_refused_total",
                                              {"reason": reason})
    return value or 0.0


def sessions(metrics: GatewayMetrics, outcome: str, bot: str = BOT) -> float:
    value = metrics.registry.get_sample_value("botfactory_widget_sessions_total",
                                              {"bot": bot, "outcome": outcome})
    return value or 0.0
