"""The report's trends and breakdowns (botfactory/analytics/trends.py, models.py) on synthetic
events: fallback and containment per bucket, unrecognised phrasings (redacted, grouped, counted
once per message), feedback by intent and flow, live figures and the model timeline
(tests/integration/test_report_store.py: the report command reading the model store and the
review queue from a real nats-server)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from botfactory.analytics.aggregate import HOUR_MS, aggregate
from botfactory.analytics.html import render
from botfactory.analytics.models import StoreState, scores, timeline
from botfactory.analytics.trends import DAY_MS, analyse
from services.common.modelstore import Activation, VersionInfo
from services.common.reviewqueue import item_id

T0 = 1_700_006_400_000  # 2023-11-15 00:00 UTC, a day boundary
CARD = "4111 1111 1111 1111"


def ev(kind: str, conversation: str, minute: float, **data: Any) -> dict[str, Any]:
    return {"type": kind, "conversation_id": conversation,
            "at_unix_ms": T0 + int(minute * 60_000), "data": data}


def user(conversation: str, mid: str, text: str, minute: float, intent: str,
         version: str = "v1", out_of_scope: bool = False, sentiment: str = "") -> dict[str, Any]:
    nlu = {"intent": intent, "confidence": 0.5, "entities": [], "out_of_scope": out_of_scope,
           "sentiment": sentiment, "model_version": version, "variant": "active"}
    return ev("user_message", conversation, minute, message_id=mid, text=text, nlu=nlu)


def events() -> list[dict[str, Any]]:
    return [
        # hour 0: c1 starts a transfer (rated up), c2 falls back twice on the same phrasing
        user("c1", "m1", "send 50 to anna", 0, "transfer_money"),
        ev("flow_started", "c1", 0, flow="transfer_money", entry="trigger"),
        ev("bot_message", "c1", 0, text="Sure?"),
        user("c1", "m2", "yes", 1, "affirm"),
        ev("flow_completed", "c1", 1, flow="transfer_money"),
        ev("feedback", "c1", 2, message_id="m1:0", rating=1),
        ev("feedback", "c1", 2, message_id="m2:0", rating=1),
        user("c2", "m3", f"My card {CARD} is weird!", 10, "block_card"),
        ev("fallback", "c2", 10, reason="low_confidence", intent="block_card"),
        user("c2", "m4", f"my card {CARD} is  weird", 11, "block_card"),
        ev("fallback", "c2", 11, reason="low_confidence", intent="block_card"),
        ev("feedback", "c2", 12, message_id="m4:0", rating=-1),
        # hour 2: c3 out of scope (and a fallback for the same message: counted once), handoff
        user("c3", "m5", "what's the weather", 125, "oos", version="v2", out_of_scope=True),
        ev("fallback", "c3", 125, reason="out_of_scope", intent="oos"),
        ev("handoff", "c3", 126, reason="fallbacks"),
        ev("feedback", "c3", 127, message_id="m5:0", rating=-1),
        ev("feedback", "c3", 127, message_id="gone:0", rating=1),  # turn not in the window
    ]


def test_trend_per_hour_counts_fallbacks_and_containment_per_bucket() -> None:
    insights = analyse(events())
    assert insights.bucket == "hour"
    hours = [(p.start_ms, p.user_messages, p.fallbacks, p.sessions, p.handed_off)
             for p in insights.trend]
    assert hours == [(T0, 4, 2, 2, 0), (T0 + HOUR_MS, 0, 0, 0, 0),
                     (T0 + 2 * HOUR_MS, 1, 1, 1, 1)]
    assert insights.trend[0].fallback_rate == pytest.approx(0.5)
    assert insights.trend[0].containment_rate == 1.0
    assert insights.trend[1].fallback_rate is None
    assert insights.trend[2].containment_rate == 0.0


def test_sentiment_over_time_per_bucket() -> None:
    found = [user("c1", "m1", "thanks!", 0, "thanks", sentiment="positive"),
             user("c1", "m2", "this is awful", 5, "complain", sentiment="negative"),
             user("c2", "m3", "balance", 10, "balance", sentiment="neutral"),
             user("c2", "m4", "hello", 11, "greet"),  # no sentiment model then
             user("c3", "m5", "terrible service", 130, "complain", sentiment="negative")]
    insights = analyse(found)
    assert [(p.negative, p.neutral, p.positive) for p in insights.trend] == [
        (1, 1, 1), (0, 0, 0), (1, 0, 0)]
    assert insights.trend[0].negative_rate == pytest.approx(1 / 3)
    assert insights.trend[1].negative_rate is None and insights.trend[2].negative_rate == 1.0
    page = render(aggregate("banking", found), insights=insights, models=None, review={},
                  generated_at=datetime(2024, 1, 1, tzinfo=UTC))
    assert "<h2>Sentiment per hour</h2>" in page
    assert "<td>2023-11-15 00:00</td><td class=\"num\">3</td><td class=\"num\">1</td>" \
           "<td class=\"num\">1</td><td class=\"num\">1</td><td class=\"num\">33.3%</td>" in page
    quiet = analyse(events())
    assert "No message carried a sentiment" in render(
        aggregate("banking", events()), insights=quiet, models=None, review={},
        generated_at=datetime(2024, 1, 1, tzinfo=UTC))


def test_trend_per_day_and_auto_choice() -> None:
    later = [*events(), user("c4", "m6", "hi", 3 * 24 * 60 + 5, "greet")]
    auto = analyse(later)
    assert auto.bucket == "day"
    assert [(p.start_ms, p.user_messages, p.sessions) for p in auto.trend] == [
        (T0, 5, 3), (T0 + DAY_MS, 0, 0), (T0 + 2 * DAY_MS, 0, 0), (T0 + 3 * DAY_MS, 1, 1)]
    assert auto.trend[0].containment_rate == pytest.approx(2 / 3)
    assert analyse(events(), bucket="day").bucket == "day"
    assert len(analyse(later, bucket="hour").trend) == 3 * 24 + 1


def test_unrecognised_phrasings_are_redacted_grouped_and_counted_once() -> None:
    phrasings = analyse(events()).unrecognised
    assert [(p.text, p.count, p.reasons) for p in phrasings] == [
        ("My card [CARD] is weird!", 2, ("low_confidence",)),
        ("what's the weather", 1, ("out_of_scope",)),
    ]
    assert CARD not in repr(phrasings)
    assert phrasings[0].item_id == item_id(f"my card {CARD} is weird")  # the review item


def test_feedback_by_intent_and_flow() -> None:
    insights = analyse(events())
    by_intent = {r.name: (r.up, r.down) for r in insights.feedback_by_intent}
    assert by_intent == {"transfer_money": (1, 0), "affirm": (1, 0), "block_card": (0, 1),
                         "oos": (0, 1), "(unknown)": (1, 0)}
    by_flow = {r.name: (r.up, r.down, r.score) for r in insights.feedback_by_flow}
    # m1 started the flow, m2 ran in it (it completed in that turn)
    assert by_flow == {"transfer_money": (2, 0, 1.0), "-": (0, 2, -1.0),
                       "(unknown)": (1, 0, 1.0)}
    # most ratings first, ties by name
    assert [r.name for r in insights.feedback_by_flow] == ["-", "transfer_money", "(unknown)"]


def test_live_figures_per_model_version() -> None:
    live = {v.version: v for v in analyse(events()).versions}
    assert list(live) == ["v1", "v2"]
    v1, v2 = live["v1"], live["v2"]
    assert (v1.user_messages, v1.fallbacks, v1.feedback_up, v1.feedback_down) == (4, 2, 2, 1)
    assert v1.fallback_rate == pytest.approx(0.5)
    assert v1.feedback_score == pytest.approx(1 / 3)
    assert (v1.first_at_ms, v1.last_at_ms) == (T0, T0 + 11 * 60_000)
    assert (v2.user_messages, v2.fallbacks, v2.feedback_score) == (1, 1, -1.0)


def store() -> StoreState:
    metrics = {"heldout": {"n": 70, "intent_accuracy": 0.9, "entity_micro_f1": None},
               "test": {"n": 30, "intent_accuracy": 0.8}}
    return StoreState(
        versions=[VersionInfo("v0", 10, "2023-11-13T00:00:00+00:00", "2023-11-13T00:00:00+00:00",
                              "nlu", {}),
                  VersionInfo("v1", 10, "", "2023-11-14T09:30:00+00:00", "nlu", metrics)],
        history=[Activation("v0", "", "cli:a", "activate", T0 - DAY_MS),
                 Activation("v1", "v0", "cli:a", "activate", T0 - HOUR_MS),
                 Activation("v0", "v1", "cli:a", "rollback", T0 - 30 * 60_000),
                 Activation("v1", "v0", "cli:a", "activate", T0 - 60_000)],
        active="v1")


def test_scores_flatten_numeric_metrics() -> None:
    assert scores({"heldout": {"n": 3, "intent_accuracy": 1, "entity_micro_f1": None},
                   "test": None}) == {"heldout.intent_accuracy": 1.0}


def test_timeline_joins_store_history_and_live_figures() -> None:
    rows = timeline(store(), analyse(events()).versions)
    assert [(r.version, r.active, r.in_store) for r in rows] == [
        ("v0", False, True), ("v1", True, True), ("v2", False, False)]
    assert [a.reason for a in rows[1].activations] == ["activate", "activate"]
    assert rows[1].scores == {"heldout.intent_accuracy": 0.9, "test.intent_accuracy": 0.8}
    assert rows[0].live is None
    assert rows[1].live is not None and rows[1].live.user_messages == 4
    assert [r.version for r in timeline(None, analyse(events()).versions)] == ["v1", "v2"]


def test_html_shows_trends_models_unrecognised_and_feedback_sections() -> None:
    found = events()
    insights = analyse(found)
    review = {insights.unrecognised[0].item_id: "decided"}
    page = render(aggregate("banking", found), insights=insights,
                  models=timeline(store(), insights.versions), review=review,
                  generated_at=datetime(2024, 1, 1, tzinfo=UTC))
    assert "<h2>Fallback and containment per hour</h2>" in page
    assert "<td>2023-11-15 00:00</td><td class=\"num\">4</td><td class=\"num\">2</td>" \
           "<td class=\"num\">50.0%</td><td class=\"num\">2</td><td class=\"num\">100.0%</td>" \
        in page
    assert "<td>v1 (active)</td><td>2023-11-14 09:30 UTC</td>" in page
    assert "rollback" in page and "90.0%" in page and "80.0%" in page
    assert "<td>v2 (not in store)</td>" in page
    assert "<td>My card [CARD] is weird!</td><td class=\"num\">2</td>" in page
    assert "decided" in page and "not queued" in page
    assert CARD not in page
    assert "<h3>Feedback by intent</h3>" in page and "<h3>Feedback by flow</h3>" in page
    assert page.count("data:image/png;base64,") == 3


def test_html_notes_an_unreadable_model_store() -> None:
    insights = analyse(events())
    page = render(aggregate("banking", events()), insights=insights,
                  models=timeline(None, insights.versions),
                  models_note="model store not read: not found")
    assert "model store not read: not found" in page
    assert "<td>v1 (not in store)</td>" in page
    assert page.count("<td class=\"num\">\u2013</td>") >= 1  # no review status known
