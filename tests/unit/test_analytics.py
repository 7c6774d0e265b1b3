"""Conversation analytics: the pure aggregation of events, the HTML report, the report
command's argument handling, and the dialogue's event counting (with fakes for the bus)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from botfactory.analytics.aggregate import HOUR_MS, aggregate, message_intent
from botfactory.analytics.html import render
from botfactory.cli import main
from botfactory.commands.report import parse_since
from services.common.nats import Bus
from services.common.pb.botfactory.v1 import conversation_pb2
from services.dialogue.analytics import AnalyticsConsumer, record
from services.dialogue.metrics import AnalyticsMetrics

T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS  # an hour boundary
EVIL = "<script>alert('x')</script> & co"


def ev(kind: str, conversation: str, minute: float = 0, **data: Any) -> dict[str, Any]:
    return {"type": kind, "conversation_id": conversation,
            "at_unix_ms": T0 + int(minute * 60_000), "data": data}


def user(conversation: str, text: str, minute: float = 0, intent: str | None = None,
         ) -> dict[str, Any]:
    nlu = None if intent is None else {"intent": intent, "confidence": 0.9, "entities": [],
                                       "out_of_scope": False, "sentiment": ""}
    return ev("user_message", conversation, minute, message_id=f"{conversation}-{minute}",
              text=text, nlu=nlu)


def sample_events() -> list[dict[str, Any]]:
    return [
        # c1: greet, then a transfer that completes
        user("c1", "/greet", 0),
        ev("bot_message", "c1", 0, text="Hi!", role="bot"),
        user("c1", '/transfer_money{"amount": "50"}', 1),
        ev("flow_started", "c1", 1, flow="transfer_money", entry="trigger"),
        ev("slot_set", "c1", 1, slot="amount", value=50),
        ev("bot_message", "c1", 1, text="To whom?", role="bot"),
        user("c1", "to anna", 2, intent="inform"),
        ev("flow_completed", "c1", 2, flow="transfer_money"),
        ev("bot_message", "c1", 2, text="Done", role="bot"),
        ev("feedback", "c1", 3, message_id="c1-2:0", rating=1, comment="great"),
        # c2: a fallback on an evil text, a block_card flow cancelled, then a handoff
        user("c2", EVIL, 70, intent="nlu_fallback"),
        ev("fallback", "c2", 70, reason="low_confidence", intent="nlu_fallback"),
        ev("bot_message", "c2", 70, text="Sorry?", role="bot"),
        user("c2", "/block_card", 71),
        ev("flow_started", "c2", 71, flow="block_card", entry="trigger"),
        user("c2", "/human_handoff", 72),
        ev("flow_cancelled", "c2", 72, flow="block_card", reason="handoff"),
        ev("handoff", "c2", 72, reason="requested"),
        ev("feedback", "c2", 73, message_id="c2-70:0", rating=-1, comment=EVIL),
        # c1 again after the idle timeout: a second session, same fallback text as c2
        user("c1", EVIL, 200),
        ev("session_expired", "c1", 200, session_started=0),
        ev("fallback", "c1", 200, reason="no_handler", intent="x"),
        ev("feedback", "c1", 201, message_id="c1-200:0", rating=1, comment=""),
    ]


def test_aggregate_counts_sessions_rates_flows_feedback_and_intents() -> None:
    figures = aggregate("banking", sample_events())
    assert figures.conversations == 3  # c1, c2, and c1's second session
    assert figures.conversation_ids == 2
    assert figures.user_messages == 7 and figures.bot_messages == 4
    assert figures.fallbacks == 2 and figures.handoffs == 1
    assert figures.handed_off_sessions == 1
    assert figures.containment_rate == pytest.approx(2 / 3)
    assert figures.handoff_rate == pytest.approx(1 / 3)
    assert figures.fallback_rate == pytest.approx(2 / 7)
    flows = figures.flows
    assert (flows["transfer_money"].started, flows["transfer_money"].completed) == (1, 1)
    assert (flows["block_card"].started, flows["block_card"].cancelled) == (1, 1)
    assert flows["block_card"].completion_rate == 0.0
    assert figures.flow_completion_rate == pytest.approx(0.5)
    assert (figures.feedback_up, figures.feedback_down) == (2, 1)
    assert figures.feedback_score == pytest.approx(1 / 3)
    assert figures.intents[0] == ("block_card", 1)
    assert dict(figures.intents) == {"greet": 1, "transfer_money": 1, "inform": 1,
                                     "nlu_fallback": 1, "block_card": 1, "human_handoff": 1}
    assert figures.top_fallback_texts == [(EVIL, 2)]
    assert figures.first_at_ms == T0 and figures.last_at_ms == T0 + 201 * 60_000


def test_messages_per_hour_has_every_hour_from_first_to_last() -> None:
    figures = aggregate("banking", sample_events())
    assert figures.messages_per_hour == [(T0, 3), (T0 + HOUR_MS, 3), (T0 + 2 * HOUR_MS, 0),
                                         (T0 + 3 * HOUR_MS, 1)]


def test_earlier_conversations_start_no_session_at_their_first_message() -> None:
    events = [user("old", "/greet", 0), ev("handoff", "old", 0, reason="requested"),
              user("new", "/greet", 1)]
    figures = aggregate("banking", events, earlier={"old"})
    assert figures.conversations == 1
    assert figures.handoffs == 1
    assert figures.handed_off_sessions == 0  # the handoff's session began before the window
    assert figures.containment_rate == 1.0


def test_no_events_gives_empty_rates() -> None:
    figures = aggregate("banking", [])
    assert figures.conversations == 0
    assert figures.containment_rate is None and figures.fallback_rate is None
    assert figures.feedback_score is None and figures.flow_completion_rate is None
    assert figures.messages_per_hour == []


def test_message_intent_from_nlu_or_payload() -> None:
    assert message_intent({"text": "hi", "nlu": {"intent": "greet"}}) == "greet"
    assert message_intent({"text": '/transfer_money{"amount": "5"}', "nlu": None}) == \
        "transfer_money"
    assert message_intent({"text": "hello", "nlu": None}) is None


def test_html_is_self_contained_escapes_user_text_and_shows_the_figures() -> None:
    page = render(aggregate("banking", sample_events()),
                  generated_at=datetime(2024, 1, 1, tzinfo=UTC))
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co" in page
    assert page.count("data:image/png;base64,") == 3
    assert "http://" not in page and "https://" not in page and "<link" not in page
    for figure in ("66.7%", "28.6%", "33.3%", "50.0%", "+0.33", "transfer_money",
                   "block_card"):
        assert figure in page, figure
    assert ">3</div><div class=\"label\">conversations" in page
    assert ">7</div><div class=\"label\">user messages" in page


def test_html_without_flows_or_feedback_has_no_charts_for_them() -> None:
    page = render(aggregate("banking", [user("c", "hello", 0)]))
    assert page.count("data:image/png;base64,") == 1  # messages per hour only
    assert "\u2013" in page  # rates without a denominator


def test_parse_since() -> None:
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_since("24h", now) == now - timedelta(hours=24)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2024-04-30T10:00:00", now) == datetime(2024, 4, 30, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="duration"):
        parse_since("yesterday", now)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_report_exits_2_when_nats_is_unreachable(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    code = main(["report", "banking", "--nats", f"nats://127.0.0.1:{_closed_port()}",
                 "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot reach NATS" in err and "Traceback" not in err
    assert not out.exists()


def test_report_rejects_a_bad_bot_id_and_since(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "bank.*", "--nats", "nats://127.0.0.1:1"]) == 2
    assert main(["report", "banking", "--since", "soon", "--nats", "nats://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "bot must be" in err and "--since" in err


# --- the dialogue's analytics consumer ----------------------------------------------------------


def sample(metrics: AnalyticsMetrics, name: str, **labels: str) -> float:
    counter = getattr(metrics, name)
    value: float = counter.labels(**labels)._value.get()
    return value


def test_record_counts_by_bot_and_flow() -> None:
    metrics = AnalyticsMetrics.create(CollectorRegistry())
    for event in sample_events():
        record(metrics, event["type"], "banking", event["data"])
    assert sample(metrics, "user_messages", bot="banking") == 7
    assert sample(metrics, "conversations", bot="banking") == 1  # session_expired only
    assert sample(metrics, "fallbacks", bot="banking") == 2
    assert sample(metrics, "handoffs", bot="banking") == 1
    assert sample(metrics, "flows_started", bot="banking", flow="transfer_money") == 1
    assert sample(metrics, "flows_completed", bot="banking", flow="transfer_money") == 1
    assert sample(metrics, "flows_cancelled", bot="banking", flow="block_card") == 1
    assert sample(metrics, "feedback", bot="banking", rating="up") == 2
    assert sample(metrics, "feedback", bot="banking", rating="down") == 1


def test_record_counts_user_messages_by_sentiment() -> None:
    metrics = AnalyticsMetrics.create(CollectorRegistry())
    for sentiment in ("negative", "negative", "positive", "", "bogus"):
        record(metrics, "user_message", "banking",
               {"text": "x", "nlu": {"intent": "greet", "sentiment": sentiment}})
    record(metrics, "user_message", "banking", {"text": "no nlu"})
    assert sample(metrics, "user_messages", bot="banking") == 6
    assert sample(metrics, "sentiments", bot="banking", sentiment="negative") == 2
    assert sample(metrics, "sentiments", bot="banking", sentiment="positive") == 1
    assert sample(metrics, "sentiments", bot="banking", sentiment="neutral") == 0


@dataclass
class FakeMsg:
    subject: str
    data: bytes
    seq: int
    acked: list[str] = field(default_factory=list)
    headers: dict[str, str] | None = None

    @property
    def metadata(self) -> Any:
        return SimpleNamespace(sequence=SimpleNamespace(stream=self.seq))

    async def ack(self) -> None:
        self.acked.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.acked.append("nak")

    async def term(self) -> None:
        self.acked.append("term")


class FakeJs:
    """The first event per subject, as the stream would answer `next_by_subj` from seq 1."""

    def __init__(self, first: dict[str, tuple[int, str]]) -> None:
        self.first = first
        self.lookups = 0

    async def get_msg(self, stream: str, seq: int, subject: str, next: bool) -> Any:
        self.lookups += 1
        first_seq, msg_id = self.first[subject]
        return SimpleNamespace(seq=first_seq, headers={"Nats-Msg-Id": msg_id})


def event_msg(kind: str, conversation: str, seq: int, **data: Any) -> FakeMsg:
    event = conversation_pb2.ConversationEvent(bot_id="banking", conversation_id=conversation,
                                               type=kind, data_json=json.dumps(data))
    return FakeMsg(f"conv.event.banking.{conversation}", event.SerializeToString(), seq)


def consumer_on(js: FakeJs, metrics: AnalyticsMetrics) -> AnalyticsConsumer:
    return AnalyticsConsumer(cast(Bus, SimpleNamespace(js=js)), metrics, ack_wait_s=5)


async def test_consumer_counts_a_conversation_at_its_first_turn_only() -> None:
    metrics = AnalyticsMetrics.create(CollectorRegistry())
    js = FakeJs({"conv.event.banking.a": (10, "m1:e0"), "conv.event.banking.b": (5, "x:e0"),
                 "conv.event.banking.c": (20, "m9:e1")})
    consumer = consumer_on(js, metrics)
    messages = [
        event_msg("user_message", "a", 10, message_id="m1", text="hi"),  # first event: opens
        event_msg("user_message", "a", 12, message_id="m2", text="again"),  # known: no lookup
        event_msg("user_message", "b", 30, message_id="m7", text="hi"),  # b began earlier
        event_msg("user_message", "c", 21, message_id="m9", text="hi"),  # same turn as first
        event_msg("flow_started", "c", 22, flow="check_balance"),
    ]
    for msg in messages:
        await consumer.handle(msg)  # type: ignore[arg-type]
    assert sample(metrics, "conversations", bot="banking") == 2
    assert sample(metrics, "user_messages", bot="banking") == 4
    assert sample(metrics, "flows_started", bot="banking", flow="check_balance") == 1
    assert js.lookups == 3
    assert all(msg.acked == ["ack"] for msg in messages)


async def test_consumer_terminates_undecodable_events() -> None:
    metrics = AnalyticsMetrics.create(CollectorRegistry())
    consumer = consumer_on(FakeJs({}), metrics)
    msg = FakeMsg("conv.event.banking.a", b"\xff\xff not a protobuf", 1)
    await consumer.handle(msg)  # type: ignore[arg-type]
    assert msg.acked == ["term"]


async def test_consumer_counts_every_event_of_a_turn_message_once() -> None:
    """The dialogue writes a turn's events as one message (services/common/events.py)."""
    from services.common.events import encode_events
    from services.common.subjects import HEADER_KIND, KIND_EVENTS

    metrics = AnalyticsMetrics.create(CollectorRegistry())
    js = FakeJs({"conv.event.banking.t": (40, "m1:e")})
    consumer = consumer_on(js, metrics)
    turn = [conversation_pb2.ConversationEvent(bot_id="banking", conversation_id="t", type=kind,
                                               data_json=json.dumps(data))
            for kind, data in (("user_message", {"message_id": "m1", "text": "hm"}),
                               ("fallback", {"reason": "low_confidence"}),
                               ("bot_message", {"text": "Sorry?"}))]
    msg = FakeMsg("conv.event.banking.t", encode_events(turn), 40,
                  headers={HEADER_KIND: KIND_EVENTS})
    await consumer.handle(msg)  # type: ignore[arg-type]
    assert sample(metrics, "conversations", bot="banking") == 1
    assert sample(metrics, "user_messages", bot="banking") == 1
    assert sample(metrics, "fallbacks", bot="banking") == 1
    assert msg.acked == ["ack"]
