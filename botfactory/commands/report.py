"""`botfactory report BOT`: write an HTML analytics report of a bot's conversations.

Reads the bot's events (`conv.event.<bot>.*`) from the JetStream stream CONV with an ephemeral
ordered consumer, from the start of the stream or from `--since` (a duration such as 90m, 24h,
7d, or an ISO 8601 time), and writes ONE self-contained HTML file: totals, containment,
fallback and handoff rates, flow completion, feedback (also by intent and by flow), top
intents, fallback, containment and sentiment trends per hour or day (`--bucket`), the top
unrecognised phrasings (redacted, with their review-queue status), the model versions over time
with their scores (model store and activation history; left out with a note when unreadable),
and charts (messages per hour, intent distribution, flow funnel).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from botfactory.analytics.models import StoreState

DEFAULT_NATS = "nats://127.0.0.1:4222"
DEFAULT_OUT = "report.html"
STREAM = "CONV"
CONNECT_TIMEOUT_S = 3.0
READ_IDLE_TIMEOUT_S = 10.0
EXTRAS_TIMEOUT_S = 5.0
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ReportError(Exception):
    """The events could not be read; the message says why (exit code 2)."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("report", help="write an HTML analytics report of a bot",
                                   description=__doc__)
    parser.add_argument("bot", help="bot id")
    parser.add_argument("--nats", default=os.environ.get("BOTFACTORY_NATS_URL", DEFAULT_NATS),
                        help="NATS URL (default: $BOTFACTORY_NATS_URL or %(default)s)")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                        help="HTML file to write (default: %(default)s)")
    parser.add_argument("--since", default=None,
                        help="only events stored since then: a duration back from now (90m, "
                             "24h, 7d) or an ISO 8601 time (default: every event in the stream)")
    parser.add_argument("--bucket", choices=("auto", "hour", "day"), default="auto",
                        help="trend buckets (default: per hour when the events span at most "
                             "48 hours, else per day)")
    parser.set_defaults(func=run_report)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`24h` → now minus 24 hours; an ISO 8601 time (UTC when it has no zone) as is."""
    now = now or datetime.now(UTC)
    match = DURATION_RE.match(text)
    if match:
        return now - timedelta(seconds=float(match.group(1)) * UNITS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since: expected a duration like 24h or an ISO 8601 time, "
                         f"got {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def run_report(args: argparse.Namespace) -> int:
    from botfactory.analytics.aggregate import aggregate
    from botfactory.analytics.html import render
    from botfactory.analytics.models import timeline
    from botfactory.analytics.trends import analyse
    from services.common.errors import InvalidArgument
    from services.common.subjects import check_id

    try:
        check_id(args.bot, "bot")
        since = parse_since(args.since) if args.since else None
    except (InvalidArgument, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        found = asyncio.run(read_events(args.nats, args.bot, since))
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not found.events:
        window = f" since {since.isoformat()}" if since else ""
        print(f"error: no events for bot {args.bot!r}{window} in stream {STREAM} on "
              f"{args.nats}", file=sys.stderr)
        return 2
    figures = aggregate(args.bot, found.events, earlier=found.earlier)
    insights = analyse(found.events, earlier=found.earlier, bucket=args.bucket)
    page = render(figures, insights=insights, models=timeline(found.store, insights.versions),
                  models_note=found.store_note, review=found.review)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page, encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {figures.conversations} conversations, "
          f"{figures.user_messages} user messages, {len(found.events)} events")
    return 0


@dataclass
class Found:
    events: list[dict[str, Any]]
    earlier: set[str]
    """Conversations of the window with events before it (their sessions started earlier)."""
    store: StoreState | None = None
    store_note: str = ""
    """Why `store` is None (no store, unreadable)."""
    review: dict[str, str] | None = None
    """Review item id → status; None when the review queue could not be read."""


def decode(subject: str, payload: bytes, seq: int,
           headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The events of one message (one `ConversationEvent`, or a turn's `ConversationEvents`)
    as the dicts `aggregate` takes; none when undecodable."""
    from services.common.events import decode_events

    parts = subject.split(".")
    try:
        return [{"type": event.type, "seq": seq,
                 "conversation_id": event.conversation_id or (parts[3] if len(parts) > 3
                                                              else ""),
                 "at_unix_ms": event.at_unix_ms, "data": _object(event.data_json)}
                for event in decode_events(payload, headers)]
    except Exception:
        return []


def _object(data_json: str) -> dict[str, Any]:
    data = json.loads(data_json) if data_json else {}
    return data if isinstance(data, dict) else {}


async def _quiet(*_: Any) -> None:
    """NATS client callbacks: the command reports errors itself, without tracebacks."""


async def read_events(url: str, bot: str, since: datetime | None, *,
                      idle_timeout: float = READ_IDLE_TIMEOUT_S) -> Found:
    import nats
    import nats.errors
    from nats.js.api import ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    try:
        nc = await nats.connect(servers=[u.strip() for u in url.split(",")],
                                name="botfactory-report", connect_timeout=CONNECT_TIMEOUT_S,
                                # (0 would mean "no limit" while selecting a server)
                                allow_reconnect=False, max_reconnect_attempts=1,
                                reconnect_time_wait=0.2,
                                error_cb=_quiet, disconnected_cb=_quiet, closed_cb=_quiet)
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise ReportError(f"cannot reach NATS at {url}: {exc or type(exc).__name__}") from None
    try:
        js = nc.jetstream(timeout=idle_timeout)
        try:
            info = await js.stream_info(STREAM)
            last_seq = info.state.last_seq
            config = None
            policy = DeliverPolicy.ALL
            if since is not None:
                config = ConsumerConfig(opt_start_time=since)
                policy = DeliverPolicy.BY_START_TIME
            sub = await js.subscribe(f"conv.event.{bot}.>", stream=STREAM, ordered_consumer=True,
                                     deliver_policy=policy, config=config)
            events = await _read(sub, last_seq, idle_timeout)
            await sub.unsubscribe()
            earlier = await _earlier(js, bot, events) if since is not None else set()
            found = Found(events, earlier)
            if events:
                await _read_extras(nc, bot, found)
        except NotFoundError:
            raise ReportError(f"stream {STREAM} not found on {url}: no conversation has been "
                              f"recorded there") from None
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise ReportError(f"reading {STREAM} from {url} failed: "
                              f"{exc or type(exc).__name__}") from None
        return found
    finally:
        await nc.close()


async def _read(sub: Any, last_seq: int, idle_timeout: float) -> list[dict[str, Any]]:
    """The subscription's messages up to stream sequence `last_seq` (the stream's end when the
    read began), so that a live system's new events do not keep it reading."""
    info = await sub.consumer_info()
    if info.num_pending == 0 and (info.delivered.consumer_seq or 0) == 0:
        return []  # nothing to deliver, nothing delivered yet
    events: list[dict[str, Any]] = []
    while True:
        msg = await sub.next_msg(timeout=idle_timeout)
        meta = msg.metadata
        events.extend(decode(msg.subject, msg.data, meta.sequence.stream, msg.headers))
        if meta.num_pending == 0 or meta.sequence.stream >= last_seq:
            return events


async def _earlier(js: Any, bot: str, events: list[dict[str, Any]]) -> set[str]:
    """Conversations whose first event in the stream precedes their first one read."""
    first: dict[str, int] = {}
    for event in events:
        first.setdefault(event["conversation_id"], event["seq"])
    earlier = set()
    for conversation, seq in first.items():
        found = await js.get_msg(STREAM, seq=1, subject=f"conv.event.{bot}.{conversation}",
                                 next=True)
        if found.seq is not None and found.seq < seq:
            earlier.add(conversation)
    return earlier


async def _read_extras(nc: Any, bot: str, found: Found) -> None:
    """The model store's state and the review queue's statuses, into `found`; whatever cannot
    be read is left out (with a note for the store): the report does not need them."""
    from services.common.nats import KV_REVIEW, Bus
    from services.common.reviewqueue import ReviewQueue

    bus = Bus(nc=nc, js=nc.jetstream(timeout=EXTRAS_TIMEOUT_S))
    try:
        found.store = await asyncio.wait_for(_store_state(bus, bot), EXTRAS_TIMEOUT_S)
    except Exception as exc:  # no bucket, no permission, old server: report without it
        found.store_note = f"model store not read: {_reason(exc)}"
    try:
        items = await asyncio.wait_for(
            ReviewQueue(await bus.kv(KV_REVIEW)).items(bot), EXTRAS_TIMEOUT_S)
        found.review = {item.id: item.status for item in items}
    except Exception:
        found.review = None


async def _store_state(bus: Any, bot: str) -> StoreState:
    from botfactory.analytics.models import StoreState
    from services.common import modelstore

    return StoreState(versions=await modelstore.list_versions(bus, bot),
                      history=await modelstore.history(bus, bot),
                      active=await modelstore.active_version(bus, bot))


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return "not found" if "not found" in text.lower() else text
