"""Trends and breakdowns of one bot's conversation events: pure functions, no I/O.

Beside the totals of `aggregate`, one pass over the same events gives

- fallback and containment **trends** per hour or per day (UTC buckets, every bucket from the
  first event to the last): fallback rate = fallbacks / user messages of the bucket,
  containment = sessions started in the bucket without a handoff / sessions started in it;
- the top **unrecognised phrasings**: user messages that fell back or that NLU flagged out of
  scope, PII-redacted and grouped by normalised text (the review queue's item key, so a row
  can show that item's status), counted once per message;
- **feedback by intent and by flow**: a rating counts for the intent of the user message the
  rated reply answered, and for the flow that turn ran in (the flow started in the turn, else
  the one under way when it began; `-` for none);
- **live figures per model version** (`nlu.model_version` of the user messages): messages,
  fallbacks and ratings of the turns each version answered.

Session rules are those of `aggregate` (botfactory/analytics/aggregate.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from botfactory.analytics.aggregate import HOUR_MS, Sessions, message_intent, ratio
from services.common.pii import redact
from services.common.reviewqueue import item_id, normalize_text

DAY_MS = 24 * HOUR_MS
AUTO_HOURLY_SPAN_MS = 48 * HOUR_MS
"""`auto` buckets per hour when the events span at most this, else per day."""
NO_FLOW = "-"
UNKNOWN = "(unknown)"
Bucket = Literal["auto", "hour", "day"]
SENTIMENTS = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class TrendPoint:
    start_ms: int
    user_messages: int = 0
    fallbacks: int = 0
    sessions: int = 0
    handed_off: int = 0
    negative: int = 0  # user messages by the NLU's sentiment (none without a sentiment model)
    neutral: int = 0
    positive: int = 0

    @property
    def fallback_rate(self) -> float | None:
        return ratio(self.fallbacks, self.user_messages)

    @property
    def with_sentiment(self) -> int:
        return self.negative + self.neutral + self.positive

    @property
    def negative_rate(self) -> float | None:
        """Share of the messages with a sentiment that were negative."""
        return ratio(self.negative, self.with_sentiment)

    @property
    def containment_rate(self) -> float | None:
        return ratio(self.sessions - self.handed_off, self.sessions)


@dataclass(frozen=True)
class Phrasing:
    """An unrecognised user text (redacted), how many messages had it and why."""

    item_id: str
    text: str
    count: int
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class FeedbackRow:
    name: str
    up: int = 0
    down: int = 0

    @property
    def count(self) -> int:
        return self.up + self.down

    @property
    def score(self) -> float | None:
        """Mean rating, -1..+1."""
        return ratio(self.up - self.down, self.count)


@dataclass(frozen=True)
class VersionLive:
    """What the conversations saw of one model version."""

    version: str
    user_messages: int = 0
    fallbacks: int = 0
    feedback_up: int = 0
    feedback_down: int = 0
    first_at_ms: int | None = None
    last_at_ms: int | None = None

    @property
    def fallback_rate(self) -> float | None:
        return ratio(self.fallbacks, self.user_messages)

    @property
    def feedback_score(self) -> float | None:
        return ratio(self.feedback_up - self.feedback_down, self.feedback_up + self.feedback_down)


@dataclass(frozen=True)
class Insights:
    bucket: Literal["hour", "day"]
    trend: list[TrendPoint]
    unrecognised: list[Phrasing]
    """Most frequent first (all of them; `top_unrecognised` is the report's cut)."""
    feedback_by_intent: list[FeedbackRow]
    feedback_by_flow: list[FeedbackRow]
    versions: list[VersionLive]
    """In order of first use."""
    top: int = 10

    @property
    def top_unrecognised(self) -> list[Phrasing]:
        return self.unrecognised[: self.top]


@dataclass
class _Turn:
    """One user message and what followed it."""

    key: str
    at: int
    intent: str
    version: str
    flow: str


@dataclass
class _Phrase:
    text: str
    turns: set[str] = field(default_factory=set)
    reasons: list[str] = field(default_factory=list)


@dataclass
class _Walk:
    sessions: Sessions
    turns: dict[str, _Turn] = field(default_factory=dict)
    current: dict[str, _Turn] = field(default_factory=dict)
    flows: dict[str, list[str]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    """Turn key → the user's text."""
    phrases: dict[str, _Phrase] = field(default_factory=dict)
    messages: Counter[int] = field(default_factory=Counter)
    fallbacks: Counter[int] = field(default_factory=Counter)
    by_intent: dict[str, Counter[int]] = field(default_factory=dict)
    by_flow: dict[str, Counter[int]] = field(default_factory=dict)
    live: dict[str, dict[str, int]] = field(default_factory=dict)
    sentiments: dict[str, Counter[int]] = field(
        default_factory=lambda: {label: Counter() for label in SENTIMENTS})


def analyse(events: Sequence[Mapping[str, Any]], *, earlier: Iterable[str] = (),
            bucket: Bucket = "auto", top: int = 10) -> Insights:
    """The trends and breakdowns of `events` (one bot's, in stream order)."""
    walk = _Walk(Sessions(opened=set(earlier)))
    for index, event in enumerate(events):
        _step(walk, index, event)
    size = _bucket_size(events, bucket)
    return Insights(
        bucket="hour" if size == HOUR_MS else "day",
        trend=_trend(walk, size),
        unrecognised=_phrasings(walk),
        feedback_by_intent=_feedback_rows(walk.by_intent),
        feedback_by_flow=_feedback_rows(walk.by_flow),
        versions=[_version(name, counts) for name, counts in walk.live.items()],
        top=top,
    )


def _step(walk: _Walk, index: int, event: Mapping[str, Any]) -> None:
    kind = str(event.get("type", ""))
    conversation = str(event.get("conversation_id", ""))
    data = event.get("data") or {}
    at = int(event.get("at_unix_ms") or 0)
    if kind == "user_message":
        _user_message(walk, conversation, data, at, index)
    elif kind == "session_expired":
        walk.sessions.expired(conversation, at)
        walk.flows.pop(conversation, None)
    elif kind == "fallback":
        _fallback(walk, conversation, str(data.get("reason") or "fallback"), at)
    elif kind == "handoff":
        walk.sessions.handoff(conversation)
    elif kind == "flow_started":
        _flow_started(walk, conversation, str(data.get("flow", "")))
    elif kind in ("flow_completed", "flow_cancelled"):
        _flow_ended(walk, conversation, str(data.get("flow", "")))
    elif kind == "feedback":
        _feedback(walk, data)


def _user_message(walk: _Walk, conversation: str, data: Mapping[str, Any], at: int,
                  index: int) -> None:
    walk.sessions.user_message(conversation, at)
    raw = data.get("nlu")
    nlu: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    stack = walk.flows.get(conversation) or [NO_FLOW]
    key = str(data.get("message_id") or f"#{index}")
    turn = _Turn(key=key, at=at, intent=message_intent(data) or UNKNOWN,
                 version=str(nlu.get("model_version") or ""), flow=stack[-1])
    walk.turns[key] = walk.current[conversation] = turn
    walk.texts[key] = str(data.get("text") or "")
    if at:
        walk.messages[at] += 1
    if turn.version:
        _live(walk, turn.version, at)["user_messages"] += 1
    if nlu.get("out_of_scope"):
        _unrecognised(walk, key, "out_of_scope")
    sentiment = str(nlu.get("sentiment") or "")
    if at and sentiment in walk.sentiments:
        walk.sentiments[sentiment][at] += 1


def _fallback(walk: _Walk, conversation: str, reason: str, at: int) -> None:
    if at:
        walk.fallbacks[at] += 1
    turn = walk.current.get(conversation)
    if turn is None:
        return
    _unrecognised(walk, turn.key, reason)
    if turn.version:
        _live(walk, turn.version, at)["fallbacks"] += 1


def _unrecognised(walk: _Walk, key: str, reason: str) -> None:
    text = redact(walk.texts.get(key, "").strip())
    normal = normalize_text(text)
    if not normal:
        return
    phrase = walk.phrases.setdefault(normal, _Phrase(text=text))
    phrase.turns.add(key)
    if reason not in phrase.reasons:
        phrase.reasons.append(reason)


def _flow_started(walk: _Walk, conversation: str, flow: str) -> None:
    walk.flows.setdefault(conversation, []).append(flow)
    turn = walk.current.get(conversation)
    if turn is not None:
        turn.flow = flow


def _flow_ended(walk: _Walk, conversation: str, flow: str) -> None:
    stack = walk.flows.get(conversation, [])
    if flow in stack:
        del stack[len(stack) - 1 - stack[::-1].index(flow)]


def _feedback(walk: _Walk, data: Mapping[str, Any]) -> None:
    rating = _rating(data.get("rating"))
    if rating == 0:
        return
    turn = walk.turns.get(str(data.get("message_id", "")).rsplit(":", 1)[0])
    intent, flow = (turn.intent, turn.flow) if turn is not None else (UNKNOWN, UNKNOWN)
    walk.by_intent.setdefault(intent, Counter())[rating] += 1
    walk.by_flow.setdefault(flow, Counter())[rating] += 1
    if turn is not None and turn.version:
        _live(walk, turn.version, 0)["feedback_up" if rating > 0 else "feedback_down"] += 1


def _rating(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return 0
    return (number > 0) - (number < 0)


def _live(walk: _Walk, version: str, at: int) -> dict[str, int]:
    counts = walk.live.setdefault(version, Counter())
    if at:
        counts["first_at_ms"] = min(counts.get("first_at_ms") or at, at)
        counts["last_at_ms"] = max(counts.get("last_at_ms", 0), at)
    return counts


def _version(name: str, counts: Mapping[str, int]) -> VersionLive:
    return VersionLive(
        version=name, user_messages=counts.get("user_messages", 0),
        fallbacks=counts.get("fallbacks", 0), feedback_up=counts.get("feedback_up", 0),
        feedback_down=counts.get("feedback_down", 0),
        first_at_ms=counts.get("first_at_ms") or None, last_at_ms=counts.get("last_at_ms") or None)


def _bucket_size(events: Sequence[Mapping[str, Any]], bucket: Bucket) -> int:
    if bucket != "auto":
        return HOUR_MS if bucket == "hour" else DAY_MS
    times = [int(e.get("at_unix_ms") or 0) for e in events]
    times = [t for t in times if t]
    span = max(times) - min(times) if times else 0
    return HOUR_MS if span <= AUTO_HOURLY_SPAN_MS else DAY_MS


def _trend(walk: _Walk, size: int) -> list[TrendPoint]:
    sessions: Counter[int] = Counter()
    handed: Counter[int] = Counter()
    handed_off = {number for _, number in walk.sessions.handed_off}
    for number, at in walk.sessions.started_at.items():
        if at:
            sessions[at - at % size] += 1
            handed[at - at % size] += number in handed_off
    messages = _bucketed(walk.messages, size)
    fallbacks = _bucketed(walk.fallbacks, size)
    moods = {label: _bucketed(counts, size) for label, counts in walk.sentiments.items()}
    starts = set(messages) | set(fallbacks) | set(sessions)
    if not starts:
        return []
    return [TrendPoint(start, messages[start], fallbacks[start], sessions[start], handed[start],
                       moods["negative"][start], moods["neutral"][start],
                       moods["positive"][start])
            for start in range(min(starts), max(starts) + size, size)]


def _bucketed(counts: Counter[int], size: int) -> Counter[int]:
    found: Counter[int] = Counter()
    for at, count in counts.items():
        found[at - at % size] += count
    return found


def _phrasings(walk: _Walk) -> list[Phrasing]:
    rows = [Phrasing(item_id(p.text), p.text, len(p.turns), tuple(p.reasons))
            for p in walk.phrases.values()]
    return sorted(rows, key=lambda row: (-row.count, row.text))


def _feedback_rows(counts: Mapping[str, Counter[int]]) -> list[FeedbackRow]:
    rows = [FeedbackRow(name, c[1], c[-1]) for name, c in counts.items()]
    return sorted(rows, key=lambda row: (-row.count, row.name))
