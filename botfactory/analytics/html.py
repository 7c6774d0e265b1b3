"""The analytics report as ONE self-contained HTML file: inline CSS, charts as inline base64 PNG
(matplotlib on an Agg canvas, no pyplot global state), no external assets. The page is the
autoescaped Jinja template botfactory/templates/report.html: every text that comes from users
or bot definitions is escaped there."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from botfactory.analytics.aggregate import Figures
from botfactory.analytics.models import ModelRow
from botfactory.analytics.trends import FeedbackRow, Insights
from botfactory.pages import render_page

DPI = 100
CHART_INTENTS = 15
BAR_LIMIT = 200
"""More hours than this are drawn as a line rather than bars."""
MAX_TICKS = 12
SCORE_COLUMNS = (("heldout.intent_accuracy", "held-out intent acc."),
                 ("heldout.entity_micro_f1", "held-out entity F1"),
                 ("test.intent_accuracy", "test intent acc."))
DASH = "\u2013"


def percent(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}%"


def score(value: float | None) -> str:
    return DASH if value is None else f"{value:+.2f}"


def when(unix_ms: int | None) -> str:
    if unix_ms is None:
        return DASH
    return datetime.fromtimestamp(unix_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- charts -----------------------------------------------------------------------------------


def png_data_uri(figure: Figure) -> str:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def messages_chart(per_hour: Sequence[tuple[int, int]]) -> Figure:
    figure = Figure(figsize=(9, 3))
    axes = figure.add_subplot()
    positions = list(range(len(per_hour)))
    counts = [c for _, c in per_hour]
    if len(per_hour) > BAR_LIMIT:
        axes.plot(positions, counts, color="#2680c2", linewidth=1)
    else:
        axes.bar(positions, counts, width=0.9, color="#2680c2")
    step = max(1, len(per_hour) // MAX_TICKS + (len(per_hour) % MAX_TICKS > 0))
    ticks = positions[::step]
    axes.set_xticks(ticks, [hour_label(per_hour[i][0]) for i in ticks], rotation=30,
                    ha="right", fontsize=8)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("user messages")
    axes.set_title("Messages per hour (UTC)")
    axes.grid(axis="y", alpha=0.3)
    return figure


def hour_label(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, UTC).strftime("%m-%d %H:00")


def intents_chart(intents: Sequence[tuple[str, int]]) -> Figure:
    shown = list(intents[:CHART_INTENTS])[::-1]
    figure = Figure(figsize=(8, max(2.0, 0.35 * len(shown) + 1)))
    axes = figure.add_subplot()
    axes.barh([name for name, _ in shown], [count for _, count in shown], color="#3ebd93")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("user messages")
    axes.set_title(f"Intent distribution (top {len(shown)})")
    axes.grid(axis="x", alpha=0.3)
    return figure


def funnel_chart(figures: Figures) -> Figure:
    names = list(figures.flows)[::-1]
    figure = Figure(figsize=(8, max(2.0, 0.6 * len(names) + 1)))
    axes = figure.add_subplot()
    height = 0.27
    rows = range(len(names))
    series = (("started", "#9fb3c8", 1), ("completed", "#3ebd93", 0), ("cancelled", "#ef4e4e", -1))
    for label, colour, offset in series:
        values = [getattr(figures.flows[name], label) for name in names]
        axes.barh([r + offset * height for r in rows], values, height=height, color=colour,
                  label=label)
    axes.set_yticks(list(rows), names)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("flows")
    axes.set_title("Flow funnel")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes.grid(axis="x", alpha=0.3)
    return figure


# --- page ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """A table of the page: cells from column `numeric_from` on are right-aligned numbers."""

    headers: Sequence[str]
    rows: Sequence[Sequence[object]]
    numeric_from: int = 1


def _image(figure: Figure | None) -> str | None:
    return None if figure is None else png_data_uri(figure)


def _when_text(value: str) -> str:
    """An ISO 8601 time as `YYYY-MM-DD HH:MM UTC` (as given when it does not parse)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value or DASH
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _bucket_label(unix_ms: int, bucket: str) -> str:
    fmt = "%Y-%m-%d %H:00" if bucket == "hour" else "%Y-%m-%d"
    return datetime.fromtimestamp(unix_ms / 1000, UTC).strftime(fmt)


def trend_table(insights: Insights) -> Table:
    return Table((f"{insights.bucket} (UTC)", "user messages", "fallbacks", "fallback rate",
                  "sessions started", "containment"),
                 [(_bucket_label(p.start_ms, insights.bucket), p.user_messages, p.fallbacks,
                   percent(p.fallback_rate), p.sessions, percent(p.containment_rate))
                  for p in insights.trend])


def sentiment_table(insights: Insights) -> Table | None:
    """User messages per bucket by the NLU's sentiment (None: no message carried one)."""
    if not any(p.with_sentiment for p in insights.trend):
        return None
    return Table((f"{insights.bucket} (UTC)", "messages with a sentiment", "negative",
                  "neutral", "positive", "negative share"),
                 [(_bucket_label(p.start_ms, insights.bucket), p.with_sentiment, p.negative,
                   p.neutral, p.positive, percent(p.negative_rate)) for p in insights.trend])


def _activations(row: ModelRow) -> str:
    return ", ".join(f"{when(a.at_unix_ms)} ({a.reason})" for a in row.activations) or DASH


def _score_cell(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}%"


def models_table(rows: Sequence[ModelRow] | None) -> Table:
    """Versions over time with their scores."""
    return Table(
        ("version", "created", "activated", *(label for _, label in SCORE_COLUMNS),
         "live messages", "live fallback rate", "live feedback"),
        [(row.version + (" (active)" if row.active else "")
          + ("" if row.in_store else " (not in store)"),
          _when_text(row.created_at) if row.created_at else DASH, _activations(row),
          *(_score_cell(row.scores.get(key)) for key, _ in SCORE_COLUMNS),
          row.live.user_messages if row.live else 0,
          percent(row.live.fallback_rate) if row.live else DASH,
          score(row.live.feedback_score) if row.live else DASH)
         for row in rows or ()], numeric_from=3)


def unrecognised_table(insights: Insights, review: dict[str, str] | None) -> Table:
    return Table(("user text (redacted)", "messages", "why", "review queue"),
                 [(p.text, p.count, ", ".join(p.reasons),
                   (review or {}).get(p.item_id, "not queued") if review is not None else DASH)
                  for p in insights.top_unrecognised])


def _feedback_table(label: str, rows: Sequence[FeedbackRow]) -> Table:
    return Table((label, "thumbs up", "thumbs down", "score"),
                 [(r.name, r.up, r.down, score(r.score)) for r in rows])


def insight_tables(insights: Insights, models: Sequence[ModelRow] | None, models_note: str,
                   review: dict[str, str] | None) -> dict[str, Any]:
    """The page's parts from `insights`: trends, sentiment, model versions, feedback by intent
    and flow, unrecognised phrasings."""
    return {"bucket": insights.bucket, "trend": trend_table(insights),
            "sentiment": sentiment_table(insights), "models": models_table(models),
            "models_note": models_note, "unrecognised": unrecognised_table(insights, review),
            "feedback_by_intent": _feedback_table("intent", insights.feedback_by_intent),
            "feedback_by_flow": _feedback_table("flow", insights.feedback_by_flow)}


def _cards(figures: Figures) -> list[tuple[str, str]]:
    return [("conversations", str(figures.conversations)),
            ("user messages", str(figures.user_messages)),
            ("bot messages", str(figures.bot_messages)),
            ("containment", percent(figures.containment_rate)),
            ("fallback rate", percent(figures.fallback_rate)),
            ("handoff rate", percent(figures.handoff_rate)),
            ("flow completion", percent(figures.flow_completion_rate)),
            ("feedback score", score(figures.feedback_score))]


def _totals(figures: Figures) -> Table:
    return Table(("figure", "value"), [
        ("conversations (sessions)", figures.conversations),
        ("distinct conversation ids", figures.conversation_ids),
        ("user messages", figures.user_messages),
        ("bot messages", figures.bot_messages),
        ("fallbacks", figures.fallbacks),
        ("handoffs", figures.handoffs),
        ("sessions handed off", figures.handed_off_sessions),
        ("containment rate", percent(figures.containment_rate)),
        ("fallback rate", percent(figures.fallback_rate)),
        ("handoff rate", percent(figures.handoff_rate)),
        ("events", figures.events),
    ])


def _charts(figures: Figures) -> dict[str, str | None]:
    return {"messages": _image(messages_chart(figures.messages_per_hour)
                               if figures.messages_per_hour else None),
            "intents": _image(intents_chart(figures.intents) if figures.intents else None),
            "funnel": _image(funnel_chart(figures) if figures.flows else None)}


def render(figures: Figures, *, insights: Insights | None = None,
           models: Sequence[ModelRow] | None = None, models_note: str = "",
           review: dict[str, str] | None = None,
           generated_at: datetime | None = None) -> str:
    """The report page. `insights` adds trends, unrecognised phrasings and feedback by intent
    and flow; `models` the model versions (`models_note` says why there are none); `review`
    maps review item ids to their status in the review queue."""
    flows = Table(("flow", "started", "completed", "cancelled", "completion"), [
        (name, f.started, f.completed, f.cancelled, percent(f.completion_rate))
        for name, f in figures.flows.items()])
    feedback = Table(("feedback", "value"), [
        ("thumbs up", figures.feedback_up),
        ("thumbs down", figures.feedback_down),
        ("mean score (-1..+1)", score(figures.feedback_score)),
    ])
    return render_page(
        "report.html", title=f"botfactory report: {figures.bot}", dash=DASH,
        first=when(figures.first_at_ms), last=when(figures.last_at_ms),
        generated=(generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC"),
        cards=_cards(figures), totals=_totals(figures), flows=flows, feedback=feedback,
        intents=Table(("intent", "messages"), figures.top_intents),
        fallback_texts=Table(("user text", "fallbacks"), figures.top_fallback_texts),
        charts=_charts(figures),
        insights=None if insights is None else insight_tables(insights, models, models_note,
                                                              review))
