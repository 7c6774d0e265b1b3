"""Figures of one bot's conversation events: pure functions, no I/O.

An event is a dict as read from `conv.event.<bot>.<conversation>` (a `ConversationEvent` with
its `data_json` parsed): `type`, `conversation_id`, `at_unix_ms` and `data`. Events are given
in stream order (per conversation, the order they happened).

Sessions (the "conversations" of containment) follow the rule of the dialogue's analytics
metrics (services/dialogue/analytics.py): a session starts at the first user message of a
conversation and again at each `session_expired` event. A conversation listed in `earlier`
(it has events before the ones given, e.g. before `--since`) does not start a session at its
first user message here. Rates whose denominator is zero are None.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

HOUR_MS = 3_600_000
TOP = 10


@dataclass(frozen=True)
class FlowStats:
    started: int = 0
    completed: int = 0
    cancelled: int = 0

    @property
    def completion_rate(self) -> float | None:
        return ratio(self.completed, self.started)


@dataclass(frozen=True)
class Figures:
    bot: str
    first_at_ms: int | None
    last_at_ms: int | None
    events: int
    conversations: int
    """Sessions started (see the module doc)."""
    conversation_ids: int
    """Distinct conversations with events."""
    user_messages: int
    bot_messages: int
    fallbacks: int
    handoffs: int
    handed_off_sessions: int
    """Sessions started here that were handed to a human at least once."""
    flows: dict[str, FlowStats]
    feedback_up: int
    feedback_down: int
    intents: list[tuple[str, int]]
    """Every intent of the user messages with its count, most frequent first."""
    fallback_texts: list[tuple[str, int]]
    """User texts that led to a fallback, most frequent first."""
    messages_per_hour: list[tuple[int, int]]
    """(hour start, unix ms UTC; user messages), every hour from the first to the last."""
    top: int = field(default=TOP)

    @property
    def containment_rate(self) -> float | None:
        """Sessions without a handoff / sessions."""
        return ratio(self.conversations - self.handed_off_sessions, self.conversations)

    @property
    def handoff_rate(self) -> float | None:
        """Sessions handed off / sessions."""
        return ratio(self.handed_off_sessions, self.conversations)

    @property
    def fallback_rate(self) -> float | None:
        """Fallbacks / user messages."""
        return ratio(self.fallbacks, self.user_messages)

    @property
    def feedback_count(self) -> int:
        return self.feedback_up + self.feedback_down

    @property
    def feedback_score(self) -> float | None:
        """Mean rating, from -1 (all down) to +1 (all up)."""
        return ratio(self.feedback_up - self.feedback_down, self.feedback_count)

    @property
    def flows_started(self) -> int:
        return sum(f.started for f in self.flows.values())

    @property
    def flows_completed(self) -> int:
        return sum(f.completed for f in self.flows.values())

    @property
    def flow_completion_rate(self) -> float | None:
        return ratio(self.flows_completed, self.flows_started)

    @property
    def top_intents(self) -> list[tuple[str, int]]:
        return self.intents[: self.top]

    @property
    def top_fallback_texts(self) -> list[tuple[str, int]]:
        return self.fallback_texts[: self.top]


def ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def message_intent(data: Mapping[str, Any]) -> str | None:
    """The intent of a user message: its NLU result's, else the one a button payload
    (`/intent` or `/intent{...}`, which skips NLU) names; None when neither."""
    nlu = data.get("nlu")
    if isinstance(nlu, Mapping) and nlu.get("intent"):
        return str(nlu["intent"])
    text = str(data.get("text") or "")
    if text.startswith("/"):
        intent = text[1:].split("{", 1)[0].strip()
        return intent or None
    return None


def _rating(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return 0
    return (number > 0) - (number < 0)


@dataclass
class _Flow:
    started: int = 0
    completed: int = 0
    cancelled: int = 0


@dataclass
class Sessions:
    """Session bookkeeping of one pass over the events (the rule in the module doc)."""

    sessions: int = 0
    handed_off: set[tuple[str, int]] = field(default_factory=set)
    opened: set[str] = field(default_factory=set)
    session_of: dict[str, int] = field(default_factory=dict)
    last_text: dict[str, str] = field(default_factory=dict)
    started_at: dict[int, int] = field(default_factory=dict)
    """Session number → the unix ms of the event that opened it."""

    def open_session(self, conversation: str, at: int = 0) -> None:
        self.sessions += 1
        self.session_of[conversation] = self.sessions
        self.started_at[self.sessions] = at

    def user_message(self, conversation: str, at: int) -> None:
        if conversation not in self.opened:
            self.opened.add(conversation)
            self.open_session(conversation, at)

    def expired(self, conversation: str, at: int) -> None:
        self.opened.add(conversation)
        self.open_session(conversation, at)

    def handoff(self, conversation: str) -> None:
        if conversation in self.session_of:
            self.handed_off.add((conversation, self.session_of[conversation]))


def aggregate(bot: str, events: Sequence[Mapping[str, Any]], *,
              earlier: Iterable[str] = (), top: int = TOP) -> Figures:
    """The figures of `events` (one bot's, in stream order)."""
    state = Sessions(opened=set(earlier))
    counts: Counter[str] = Counter()
    flows: dict[str, _Flow] = {}
    intents: Counter[str] = Counter()
    fallback_texts: Counter[str] = Counter()
    hours: Counter[int] = Counter()
    feedback: Counter[int] = Counter()
    times: list[int] = []
    for event in events:
        kind = str(event.get("type", ""))
        conversation = str(event.get("conversation_id", ""))
        data = event.get("data") or {}
        at = int(event.get("at_unix_ms") or 0)
        if at:
            times.append(at)
        counts[kind] += 1
        if kind == "user_message":
            state.user_message(conversation, at)
            state.last_text[conversation] = str(data.get("text") or "")
            intent = message_intent(data)
            if intent is not None:
                intents[intent] += 1
            if at:
                hours[at - at % HOUR_MS] += 1
        elif kind == "session_expired":
            state.expired(conversation, at)
        elif kind == "fallback":
            fallback_texts[state.last_text.get(conversation, "")] += 1
        elif kind == "handoff":
            state.handoff(conversation)
        elif kind in ("flow_started", "flow_completed", "flow_cancelled"):
            flow = flows.setdefault(str(data.get("flow", "")), _Flow())
            if kind == "flow_started":
                flow.started += 1
            elif kind == "flow_completed":
                flow.completed += 1
            else:
                flow.cancelled += 1
        elif kind == "feedback":
            feedback[_rating(data.get("rating"))] += 1
    return Figures(
        bot=bot,
        first_at_ms=min(times) if times else None,
        last_at_ms=max(times) if times else None,
        events=len(events),
        conversations=state.sessions,
        conversation_ids=len({str(e.get("conversation_id", "")) for e in events}),
        user_messages=counts["user_message"],
        bot_messages=counts["bot_message"],
        fallbacks=counts["fallback"],
        handoffs=counts["handoff"],
        handed_off_sessions=len(state.handed_off),
        flows={name: FlowStats(f.started, f.completed, f.cancelled)
               for name, f in sorted(flows.items())},
        feedback_up=feedback[1],
        feedback_down=feedback[-1],
        intents=_ranked(intents),
        fallback_texts=_ranked(fallback_texts),
        messages_per_hour=_hourly(hours),
        top=top,
    )


def _ranked(counter: Counter[str]) -> list[tuple[str, int]]:
    """Most frequent first; ties by name, so the order is stable."""
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))


def _hourly(hours: Counter[int]) -> list[tuple[int, int]]:
    if not hours:
        return []
    first, last = min(hours), max(hours)
    return [(hour, hours[hour]) for hour in range(first, last + HOUR_MS, HOUR_MS)]
