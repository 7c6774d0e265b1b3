"""The analytics report as ONE self-contained HTML file: inline CSS, charts as inline base64 PNG
(matplotlib on an Agg canvas, no pyplot global state), no external assets. Every text that
comes from users or bot definitions is escaped with `html.escape`."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from datetime import UTC, datetime

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from botfactory.analytics.aggregate import Figures
from botfactory.analytics.models import ModelRow
from botfactory.analytics.trends import FeedbackRow, Insights

DPI = 100
CHART_INTENTS = 15
BAR_LIMIT = 200
"""More hours than this are drawn as a line rather than bars."""
MAX_TICKS = 12
SCORE_COLUMNS = (("heldout.intent_accuracy", "held-out intent acc."),
                 ("heldout.entity_micro_f1", "held-out entity F1"),
                 ("test.intent_accuracy", "test intent acc."))
DASH = "\u2013"
NUM = ' class="num"'

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 60rem; color: #1f2933; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; }
.period { color: #616e7c; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8rem; margin: 1.2rem 0; }
.card { border: 1px solid #d9e2ec; border-radius: 6px; padding: 0.6rem 0.9rem; min-width: 8rem; }
.card .value { font-size: 1.5rem; font-weight: 600; }
.card .label { color: #616e7c; font-size: 0.85rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border-bottom: 1px solid #e4e7eb; padding: 0.3rem 0.8rem; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0 1.5rem; }
.empty { color: #9aa5b1; }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


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


def _card(label: str, value: str) -> str:
    return (f'<div class="card"><div class="value">{esc(value)}</div>'
            f'<div class="label">{esc(label)}</div></div>')


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], numeric_from: int = 1) -> str:
    if not rows:
        return '<p class="empty">none</p>'

    def cells(tag: str, values: Sequence[object]) -> str:
        return "".join(f'<{tag}{NUM if i >= numeric_from else ""}>{esc(v)}</{tag}>'
                       for i, v in enumerate(values))

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table><thead><tr>{cells('th', headers)}</tr></thead><tbody>{body}</tbody></table>"


def _image(alt: str, figure: Figure | None) -> str:
    if figure is None:
        return '<p class="empty">no data</p>'
    return f'<img alt="{esc(alt)}" src="{png_data_uri(figure)}">'


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


def trends_section(insights: Insights) -> str:
    rows = [(_bucket_label(p.start_ms, insights.bucket), p.user_messages, p.fallbacks,
             percent(p.fallback_rate), p.sessions, percent(p.containment_rate))
            for p in insights.trend]
    table = _table((f"{insights.bucket} (UTC)", "user messages", "fallbacks", "fallback rate",
                    "sessions started", "containment"), rows)
    return (f"<h2>Fallback and containment per {esc(insights.bucket)}</h2>\n{table}\n"
            f"{sentiment_section(insights)}")


def sentiment_section(insights: Insights) -> str:
    """User messages per bucket by the NLU's sentiment (negative / neutral / positive)."""
    heading = f"<h2>Sentiment per {esc(insights.bucket)}</h2>"
    if not any(p.with_sentiment for p in insights.trend):
        return (f"{heading}\n<p>No message carried a sentiment: no sentiment model was served "
                "(README: make run trains one).</p>")
    rows = [(_bucket_label(p.start_ms, insights.bucket), p.with_sentiment, p.negative,
             p.neutral, p.positive, percent(p.negative_rate)) for p in insights.trend]
    table = _table((f"{insights.bucket} (UTC)", "messages with a sentiment", "negative",
                    "neutral", "positive", "negative share"), rows)
    return f"{heading}\n{table}"


def _activations(row: ModelRow) -> str:
    return ", ".join(f"{when(a.at_unix_ms)} ({a.reason})" for a in row.activations) or DASH


def _score_cell(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}%"


def models_section(rows: Sequence[ModelRow] | None, note: str = "") -> str:
    """Versions over time with their scores; `note` says why the store was not read."""
    body = _table(
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
    remark = f'<p class="empty">{esc(note)}</p>' if note else ""
    return f"<h2>Model versions</h2>\n{remark}{body}"


def unrecognised_section(insights: Insights, review: dict[str, str] | None) -> str:
    rows = [(p.text, p.count, ", ".join(p.reasons),
             (review or {}).get(p.item_id, "not queued") if review is not None else DASH)
            for p in insights.top_unrecognised]
    table = _table(("user text (redacted)", "messages", "why", "review queue"), rows,
                   numeric_from=1)
    return f"<h2>Top unrecognised phrasings</h2>\n{table}"


def _feedback_table(label: str, rows: Sequence[FeedbackRow]) -> str:
    return _table((label, "thumbs up", "thumbs down", "score"),
                  [(r.name, r.up, r.down, score(r.score)) for r in rows])


def feedback_section(insights: Insights) -> str:
    return (f"<h3>Feedback by intent</h3>\n{_feedback_table('intent', insights.feedback_by_intent)}"
            f"\n<h3>Feedback by flow</h3>\n{_feedback_table('flow', insights.feedback_by_flow)}")


def render(figures: Figures, *, insights: Insights | None = None,
           models: Sequence[ModelRow] | None = None, models_note: str = "",
           review: dict[str, str] | None = None,
           generated_at: datetime | None = None) -> str:
    """The report page. `insights` adds trends, unrecognised phrasings and feedback by intent
    and flow; `models` the model versions (`models_note` says why there are none); `review`
    maps review item ids to their status in the review queue."""
    generated = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    cards = "".join((
        _card("conversations", str(figures.conversations)),
        _card("user messages", str(figures.user_messages)),
        _card("bot messages", str(figures.bot_messages)),
        _card("containment", percent(figures.containment_rate)),
        _card("fallback rate", percent(figures.fallback_rate)),
        _card("handoff rate", percent(figures.handoff_rate)),
        _card("flow completion", percent(figures.flow_completion_rate)),
        _card("feedback score", score(figures.feedback_score)),
    ))
    totals = _table(("figure", "value"), [
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
    flows = _table(("flow", "started", "completed", "cancelled", "completion"), [
        (name, f.started, f.completed, f.cancelled, percent(f.completion_rate))
        for name, f in figures.flows.items()])
    feedback = _table(("feedback", "value"), [
        ("thumbs up", figures.feedback_up),
        ("thumbs down", figures.feedback_down),
        ("mean score (-1..+1)", score(figures.feedback_score)),
    ])
    intents = _table(("intent", "messages"), figures.top_intents)
    if insights is None:
        fallback_texts = ("<h2>Top fallback-triggering user texts</h2>\n"
                          + _table(("user text", "fallbacks"), figures.top_fallback_texts))
        extra = {"trends": "", "models": "", "feedback": ""}
    else:
        fallback_texts = unrecognised_section(insights, review)
        extra = {"trends": trends_section(insights),
                 "models": models_section(models, models_note),
                 "feedback": feedback_section(insights)}
    charts = {
        "messages": _image("messages per hour", messages_chart(figures.messages_per_hour)
                           if figures.messages_per_hour else None),
        "intents": _image("intent distribution",
                          intents_chart(figures.intents) if figures.intents else None),
        "funnel": _image("flow funnel", funnel_chart(figures) if figures.flows else None),
    }
    title = f"botfactory report: {figures.bot}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{esc(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p class="period">{esc(when(figures.first_at_ms))} {DASH} {esc(when(figures.last_at_ms))}
 &middot; generated {esc(generated)}</p>
<div class="cards">{cards}</div>
<h2>Totals</h2>
{totals}
<h2>Messages per hour</h2>
{charts["messages"]}
{extra["trends"]}
{extra["models"]}
<h2>Flows</h2>
{flows}
{charts["funnel"]}
<h2>Feedback</h2>
{feedback}
{extra["feedback"]}
<h2>Top intents</h2>
{intents}
{charts["intents"]}
{fallback_texts}
<p class="period">Conversations are sessions: a session starts at the first user message of a
conversation and again after the idle timeout. Containment = sessions without a handoff /
sessions; fallback rate = fallbacks / user messages; handoff rate = sessions handed off /
sessions; flow completion = completed / started; feedback score = mean rating (+1 up, -1 down).
Unrecognised phrasings: user messages that fell back or were out of scope, PII-redacted,
grouped by normalised text. Feedback counts for the intent of the rated turn and the flow it
ran in. Model scores come from each version's metadata (held-out / test split at training).
</p>
</body>
</html>
"""
