"""Messaging-platform channels (docs/channels.md): the contract (`base`), settings and
conversation references (`store`, secrets sealed by `secrets`), the durable outbox (`outbox`),
and one module per platform."""

from __future__ import annotations

from services.gateway.channels.base import Channel
from services.gateway.channels.telegram import Telegram
from services.gateway.channels.whatsapp import WhatsApp


def all_channels() -> dict[str, Channel]:
    """Every platform the gateway speaks, by name."""
    channels: list[Channel] = [Telegram(), WhatsApp()]
    return {channel.name: channel for channel in channels}
