"""Where channels keep their state, on the bus:

- settings per bot and channel: KV `bots`, key `channel.<bot>.<channel>`, JSON
  `{"settings": {...}, "secrets": {name: sealed}}` (secrets encrypted: channels/secrets.py);
- conversation references: KV `channels`, key `<bot>.<conversation>`, JSON
  `{"channel", "address"}`: where the outbox sends a conversation's replies;
- the replies sent: KV `channel_sent`, key `<bot>.<conversation>.<hash of the message id>`."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nats.js.errors import KeyNotFoundError

from services.common.nats import KV_BOTS, KV_CHANNEL_SENT, KV_CHANNELS, Bus
from services.common.pull import kv_keys
from services.gateway.channels.secrets import SecretBox

SETTINGS_PREFIX = "channel."
MAX_CACHED_SETTINGS = 10_000
ID_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def settings_key(bot: str, channel: str) -> str:
    return f"{SETTINGS_PREFIX}{bot}.{channel}"


def conversation_id(channel: str, native: str) -> str:
    """The conversation id of a platform's conversation: `<channel>-<native key>` (hashed when
    the key has characters an id may not have, or is long)."""
    if ID_SAFE.match(native):
        return f"{channel}-{native}"
    return f"{channel}-h{hashlib.sha256(native.encode()).hexdigest()[:40]}"


def channel_of(conversation: str, channels: Iterable[str]) -> str | None:
    """The channel whose conversation ids `conversation` looks like, if any."""
    head = conversation.split("-", 1)[0]
    return head if head in channels and "-" in conversation else None


@dataclass(frozen=True)
class ConversationRef:
    channel: str
    address: dict[str, str]


class ChannelStore:
    """Channel settings per bot, secrets sealed with `box`.

    `get` reads KV (the admin routes); `current` (every webhook request and every reply) keeps
    the settings it read for `cache_s` seconds: a change or removal made on another replica
    applies there within that time, on this one at once; a channel just set counts at once
    everywhere (absences are not kept). Secrets are decrypted once per revision."""

    BUCKET = KV_BOTS

    def __init__(self, bus: Bus, box: SecretBox, secret_names: dict[str, tuple[str, ...]],
                 *, cache_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._bus = bus
        self._box = box
        self._secret_names = secret_names
        self._opened: dict[str, tuple[int, dict[str, Any]]] = {}  # key -> revision, settings
        self._cache_s = cache_s
        self._clock = clock
        self._recent: dict[str, tuple[float, dict[str, Any]]] = {}  # key -> until, settings

    async def current(self, bot: str, channel: str) -> dict[str, Any] | None:
        """The settings as of at most `cache_s` seconds ago."""
        key = settings_key(bot, channel)
        found = self._recent.get(key)
        now = self._clock()
        if found is not None and found[0] > now:
            return dict(found[1])
        settings = await self.get(bot, channel)
        if settings is None:  # not kept: a channel set on another replica counts at once
            self._recent.pop(key, None)
            return None
        if len(self._recent) > MAX_CACHED_SETTINGS:
            self._recent.clear()
        self._recent[key] = (now + self._cache_s, settings)
        return dict(settings)

    async def put(self, bot: str, channel: str, settings: dict[str, Any]) -> None:
        secret = set(self._secret_names.get(channel, ()))
        record = {
            "settings": {k: v for k, v in settings.items() if k not in secret},
            "secrets": {k: self._box.seal(str(v)) for k, v in settings.items() if k in secret},
        }
        kv = await self._bus.kv(self.BUCKET)
        await kv.put(settings_key(bot, channel), json.dumps(record).encode())
        self._recent.pop(settings_key(bot, channel), None)

    async def get(self, bot: str, channel: str) -> dict[str, Any] | None:
        """The settings with their secrets decrypted; None when the channel is not set."""
        kv = await self._bus.kv(self.BUCKET)
        key = settings_key(bot, channel)
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            entry = None
        if entry is None or not entry.value:
            self._opened.pop(key, None)
            return None
        known = self._opened.get(key)
        if known is not None and entry.revision is not None and known[0] == entry.revision:
            return dict(known[1])
        record = json.loads(entry.value)
        opened = {k: self._box.open(v) for k, v in record.get("secrets", {}).items()}
        settings = {**record.get("settings", {}), **opened}
        if entry.revision is not None:
            self._opened[key] = (entry.revision, settings)
        return dict(settings)

    async def delete(self, bot: str, channel: str) -> bool:
        if await self.get(bot, channel) is None:
            return False
        kv = await self._bus.kv(self.BUCKET)
        await kv.delete(settings_key(bot, channel))
        self._recent.pop(settings_key(bot, channel), None)
        return True

    async def channels(self, bot: str) -> list[str]:
        kv = await self._bus.kv(self.BUCKET)
        prefix = f"{SETTINGS_PREFIX}{bot}."
        return [key[len(prefix):] for key in await kv_keys(kv, prefix)]


class ConversationRefs:
    """Which channel (and address there) each channel conversation answers on.

    Not cached: the address can change with every message (a Slack thread, the Teams activity
    to answer) and another gateway replica may have written it since. Written with every
    inbound message (while it is published); read by the outbox's durable path only (the fast
    path has the address of the message it answers)."""

    BUCKET = KV_CHANNELS

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def remember(self, bot: str, conversation: str, ref: ConversationRef) -> None:
        kv = await self._bus.kv(self.BUCKET)
        value = {"channel": ref.channel, "address": ref.address}
        await kv.put(f"{bot}.{conversation}", json.dumps(value).encode())

    async def lookup(self, bot: str, conversation: str) -> ConversationRef | None:
        kv = await self._bus.kv(self.BUCKET)
        try:
            entry = await kv.get(f"{bot}.{conversation}")
        except KeyNotFoundError:
            return None
        raw = json.loads(entry.value or b"{}")
        return ConversationRef(str(raw.get("channel", "")),
                               {str(k): str(v) for k, v in raw.get("address", {}).items()})


RECENTLY_SENT = 4096


class SentReplies:
    """The replies a platform took, by conversation and message id (KV `channel_sent`, entries
    expire after a day): a reply redelivered to the outbox after the platform took it (the
    gateway died before its ack) is not sent twice. What is left is the moment between the
    platform's answer and this record."""

    BUCKET = KV_CHANNEL_SENT

    def __init__(self, bus: Bus, remembered: int = RECENTLY_SENT) -> None:
        self._bus = bus
        # The last replies this replica sent: a copy that was read before the record of the
        # first was written (both taken at once, the copy waiting for its turn) is caught here.
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._remembered = remembered

    @staticmethod
    def key(bot: str, conversation: str, message_id: str) -> str:
        return f"{bot}.{conversation}.{hashlib.sha256(message_id.encode()).hexdigest()[:32]}"

    def sent_here(self, bot: str, conversation: str, message_id: str) -> None:
        """Remember at once that this replica sent it (its record is written next)."""
        self._recent[self.key(bot, conversation, message_id)] = None
        while len(self._recent) > self._remembered:
            self._recent.popitem(last=False)

    def recently_sent_here(self, bot: str, conversation: str, message_id: str) -> bool:
        return self.key(bot, conversation, message_id) in self._recent

    async def taken(self, bot: str, conversation: str, message_id: str) -> bool:
        kv = await self._bus.kv(self.BUCKET)
        try:
            await kv.get(self.key(bot, conversation, message_id))
        except KeyNotFoundError:
            return False
        return True

    async def record(self, bot: str, conversation: str, message_id: str) -> None:
        kv = await self._bus.kv(self.BUCKET)
        await kv.put(self.key(bot, conversation, message_id), b"1")
