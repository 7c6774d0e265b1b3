"""What the channel routes and the outbox share, kept on the application (`CHANNELS`)."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web

from services.gateway.channels.base import Channel
from services.gateway.channels.metrics import ChannelMetrics
from services.gateway.channels.outbox import ChannelOutbox
from services.gateway.channels.store import ChannelStore, ConversationRefs


@dataclass
class Channels:
    adapters: dict[str, Channel]
    store: ChannelStore
    refs: ConversationRefs
    session: aiohttp.ClientSession
    metrics: ChannelMetrics
    outbox: ChannelOutbox | None = None  # its fast path takes the replies of inbound messages


CHANNELS = web.AppKey("channels", Channels)


def secret_names(adapters: dict[str, Channel]) -> dict[str, tuple[str, ...]]:
    return {name: adapter.secrets for name, adapter in adapters.items()}
