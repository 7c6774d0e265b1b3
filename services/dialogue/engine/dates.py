"""Dates and times from what users write (`yesterday`, `last Friday`, `3 March at 5pm`,
`2026-03-03`), read in the bot's language and timezone relative to a given moment, so that the
engine stays deterministic: the moment is the turn's `now`, never the wall clock.

`dateparser` does the reading (offline: its language data ships with the package; imported on
first use, ~0.4 s, and its language data loaded on the first parse, ~0.4 s more: `warm_up`
does both when a bot with date slots is compiled, not in a customer's turn). A date
slot's value is an ISO date (`2026-12-06`); a datetime slot's an ISO timestamp with the UTC
offset of the bot's timezone at that moment (`2026-12-06T17:00:00+01:00`).
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from services.dialogue.engine import zh


@dataclass(frozen=True)
class Clock:
    """Where relative dates are read from: the moment `now` (unix seconds; default: when the
    Clock is made), in `timezone` (IANA name), for text in `language` (ISO 639-1)."""

    now: float = field(default_factory=time.time)
    timezone: str = "UTC"
    language: str = "en"

    def local_now(self) -> dt.datetime:
        """`now` as a naive datetime in the clock's timezone (what dateparser reads from)."""
        return dt.datetime.fromtimestamp(self.now, ZoneInfo(self.timezone)).replace(tzinfo=None)


def parse_date(text: str, with_time: bool, clock: Clock) -> str | None:
    """The one date (with its time when `with_time`) `text` names, as ISO text; None when it
    names none, or several different ones. A bare number (`5`, `12345`) is no date."""
    text = text.strip()
    if not text or text.isdigit():
        return None
    found = _iso(text) or _read(text, clock)
    if found is None:
        return None
    if not with_time:
        return found.date().isoformat()
    zone = ZoneInfo(clock.timezone)
    aware = found.astimezone(zone) if found.tzinfo is not None else found.replace(tzinfo=zone)
    return aware.isoformat()


def warm_up(clock: Clock) -> None:
    """Import dateparser and load the clock's language data now (a bot with date slots is
    being compiled) rather than in the first customer's turn that needs them."""
    _read("yesterday", clock)


def _iso(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def _read(text: str, clock: Clock) -> dt.datetime | None:
    if zh.has_cjk(text):  # dateparser misreads Chinese dates (zh.py)
        found = zh.read_datetime(text, clock.local_now())
        if found is not None:
            return found[0]
    settings: dict[str, Any] = {"RELATIVE_BASE": clock.local_now(),
                                "RETURN_AS_TIMEZONE_AWARE": False}
    parser, search_dates, known = _dateparser()
    code = clock.language.split("-")[0].lower()
    languages = [code] if code in known else None  # a language dateparser lacks: detected
    if code in ("zh", "ja", "ko") and not zh.has_cjk(text):
        languages = None  # "tomorrow at 5pm" in a Chinese conversation: not read as Chinese
    whole = parser(languages=languages, settings=settings).get_date_data(text)
    if whole.date_obj is not None:
        return _naive(whole.date_obj, clock)
    hits = search_dates(text, languages=languages, settings=settings) or []
    dates = {_naive(when, clock) for _, when in hits}
    return dates.pop() if len(dates) == 1 else None


def _naive(when: dt.datetime, clock: Clock) -> dt.datetime:
    """`when` in the clock's timezone, without tzinfo (an aware result is converted)."""
    if when.tzinfo is None:
        return when
    return when.astimezone(ZoneInfo(clock.timezone)).replace(tzinfo=None)


@functools.cache
def _dateparser() -> tuple[Any, Any, frozenset[str]]:
    """dateparser's parser class, its search function and the languages it knows (imported
    on first use: services that never read a date do not pay for it)."""
    from dateparser.data.languages_info import language_order
    from dateparser.date import DateDataParser
    from dateparser.search import search_dates

    return DateDataParser, search_dates, frozenset(language_order)
