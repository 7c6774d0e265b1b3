"""The web widget's settings (docs/channels.md, "The web widget").

Kept where the channels keep theirs (`ChannelStore`: KV `bots`, key `channel.<bot>.widget`),
but a settings-only entry: the widget has no platform, no inbound webhook and no secrets.
Everything here is shown to any page on the allow-list, so nothing secret may go in; the
values are strings (the channel settings body is an object of strings) and are checked here
because the widget puts them in a page: an origin list the browser's `Origin` header is
compared with verbatim, a CSS colour, an image URL.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from services.gateway.channels.base import SettingsInvalid
from services.gateway.channels.store import ChannelStore

WIDGET = "widget"
DEFAULT_TITLE = "Chat"
DEFAULT_COLOR = "#0b5fff"
MAX_ORIGINS = 20
MAX_TITLE_CHARS = 60
MAX_GREETING_CHARS = 500
MAX_AVATAR_URL_CHARS = 4096
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# An origin as a browser sends it: lowercase scheme and host, a port only when not the default.
# https for every host; http only for the local machine (development).
ORIGIN = re.compile(rf"^(?:https://{_LABEL}(?:\.{_LABEL})*|http://(?:localhost|127\.0\.0\.1|"
                    rf"\[::1\]))(?::([0-9]{{1,5}}))?$")
COLOR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
DATA_IMAGE = re.compile(r"^data:image/(?:png|jpeg|gif|webp|svg\+xml);base64,[A-Za-z0-9+/]+=*$")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
# What the API refuses in text (services/gateway/http/wire.py): C0 controls but tab and line
# breaks, DEL, C1, lone surrogates.
NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


class WidgetSettingsInvalid(SettingsInvalid):
    """Widget settings with bad values: one (field, problem) per value, shown field by field."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{name}: {problem}" for name, problem in problems))
        self.problems = problems


class WidgetSettings:
    """The widget's entry beside the platform adapters: names and checks of its settings."""

    name = WIDGET
    required: tuple[str, ...] = ("allowed_origins",)
    secrets: tuple[str, ...] = ()
    optional: tuple[str, ...] = ("title", "color", "avatar_url", "greeting")

    def check_settings(self, settings: dict[str, Any]) -> None:
        checks: dict[str, Callable[[str], str | None]] = {
            "allowed_origins": origins_problem, "title": title_problem,
            "color": color_problem, "avatar_url": avatar_problem,
            "greeting": greeting_problem}
        problems = [(name, problem) for name, check in checks.items()
                    if name in settings and (problem := check(str(settings[name])))]
        if problems:
            raise WidgetSettingsInvalid(problems)


WIDGET_SETTINGS = WidgetSettings()


def split_origins(value: str) -> list[str]:
    return [part.strip() for part in value.split(",")]


def allowed_origins(settings: dict[str, Any]) -> frozenset[str]:
    """The origins a page may embed the widget from (stored checked, compared verbatim)."""
    return frozenset(o for o in split_origins(str(settings.get("allowed_origins", ""))) if o)


def origins_problem(value: str) -> str | None:
    origins = split_origins(value)
    if len(origins) > MAX_ORIGINS:
        return f"at most {MAX_ORIGINS} origins"
    for origin in origins:
        problem = origin_problem(origin)
        if problem:
            return f"{origin!r} {problem}"
    return None


def origin_problem(origin: str) -> str | None:
    """Why `origin` cannot be on an allow-list (None when it can): it must be written the way
    a browser sends it in `Origin`, since the two are compared as strings."""
    if not origin:
        return "is empty: list origins separated by commas"
    if origin == "*":
        return "is not allowed: list each site's origin"
    match = ORIGIN.match(origin)
    if match is None:
        return ("must be an origin as the browser sends it: https://host[:port] in lowercase, "
                "with no path or trailing slash (http:// only for localhost)")
    port = match.group(1)
    if port is not None and not 0 < int(port) < 65536:
        return "has a port out of range"
    default = "443" if origin.startswith("https://") else "80"
    if port == default:
        return f"must leave out the default port :{default} (browsers do)"
    return None


def title_problem(value: str) -> str | None:
    if not value.strip() or len(value) > MAX_TITLE_CHARS or "\n" in value or "\r" in value:
        return f"must be one line of 1 to {MAX_TITLE_CHARS} characters"
    return text_problem(value)


def text_problem(value: str) -> str | None:
    return "must not contain control characters" if NOT_TEXT.search(value) else None


def greeting_problem(value: str) -> str | None:
    if len(value) > MAX_GREETING_CHARS:
        return f"at most {MAX_GREETING_CHARS} characters"
    return text_problem(value)


def color_problem(value: str) -> str | None:
    return None if COLOR.match(value) else "must be a hex colour: #rgb or #rrggbb"


def avatar_problem(value: str) -> str | None:
    """An https image URL without credentials (http only for localhost), or a small data:
    image; nothing that could break out of the attribute it is put in."""
    if len(value) > MAX_AVATAR_URL_CHARS:
        return f"at most {MAX_AVATAR_URL_CHARS} characters"
    if DATA_IMAGE.match(value):
        return None
    if re.search(r"[\s\"'<>\\`]", value):
        return "must not contain spaces, quotes, angle brackets or backslashes"
    try:
        url = urlsplit(value)
        host = url.hostname
    except ValueError:
        return "is not a valid URL"
    if url.username is not None or url.password is not None:
        return "must not carry credentials (user:password@)"
    local = url.scheme == "http" and host in LOCAL_HOSTS
    if not host or (url.scheme != "https" and not local):
        return ("must be an https:// URL (http:// only for localhost) or a "
                "data:image/...;base64 URI")
    return None


def theme(settings: dict[str, Any]) -> dict[str, str]:
    """What the widget shows: title, colour, avatar, greeting (defaults for those unset)."""
    return {"title": str(settings.get("title") or DEFAULT_TITLE),
            "color": str(settings.get("color") or DEFAULT_COLOR),
            "avatar_url": str(settings.get("avatar_url") or ""),
            "greeting": str(settings.get("greeting") or "")}


class WidgetSettingsCache:
    """The bots' widget settings, read through for `ttl_s` seconds: every widget request and
    every CORS preflight of a widget page needs its bot's allow-list, and preflights come
    without a key, so they must not cost a KV read each. A change made through this replica
    applies at once (`forget`); one made through another replica within `ttl_s`."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, dict[str, Any] | None]] = {}

    async def get(self, store: ChannelStore, bot: str) -> dict[str, Any] | None:
        """The bot's widget settings, None when it has no widget."""
        cached = self._entries.get(bot)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        settings = await store.get(bot, WIDGET)
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[bot] = (self._clock() + self._ttl_s, settings)
        return settings

    def forget(self, bot: str) -> None:
        self._entries.pop(bot, None)


WIDGET_CACHE = web.AppKey("widget_settings", WidgetSettingsCache)
