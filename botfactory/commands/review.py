"""`botfactory review BOT` (terminal review of the annotation inbox) and `botfactory review
apply BOT` (write decided items into the bot's data files without asking).

Both talk to the gateway's admin API (`/v1/admin/bots/BOT/review...`, an admin key) and write
accepted items into `BOT_DIR/data/nlu/reviewed.yml` (botfactory/evaluation/reviewed.py), then
mark them applied. Items are shown highest priority first (docs/improvement-loop.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
TIMEOUT_S = 15.0
EXIT_USAGE = 2
HELP = ("[enter] confirm the suggestion  [i] another intent  [o] out of scope  [s] skip  "
        "[q] quit")


class ReviewError(Exception):
    """The gateway refused or could not be reached; the message says why."""


class ReviewApi:
    """The gateway's review routes, over plain HTTP (JSON)."""

    def __init__(self, gateway: str, api_key: str, bot: str) -> None:
        self.base = f"{gateway.rstrip('/')}/v1/admin/bots/{urllib.parse.quote(bot)}/review"
        self.key = api_key

    def call(self, method: str, path: str = "", body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise ReviewError(_problem(exc)) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise ReviewError(f"cannot reach the gateway at {self.base}: {exc}") from None

    def items(self, status: str = "pending", reason: str | None = None,
              limit: int = 500) -> list[dict[str, Any]]:
        query = {"status": status, "limit": str(limit), **({"reason": reason} if reason else {})}
        found: list[dict[str, Any]] = self.call("GET", "?" + urllib.parse.urlencode(query))["items"]
        return found

    def decide(self, item: str, **decision: Any) -> None:
        self.call("POST", "/decisions", {"item": item, **decision})

    def skip(self, item: str) -> None:
        self.call("POST", "/skips", {"item": item})

    def applied(self, items: list[str]) -> None:
        if items:
            self.call("POST", "/applied", {"items": items})


def _problem(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        errors = "; ".join(f"{e['field']}: {e['message']}" for e in body.get("errors", []))
        return f"gateway answered {exc.code}: {errors or body.get('detail', exc.reason)}"
    except (ValueError, AttributeError, KeyError, TypeError):
        return f"gateway answered {exc.code}: {exc.reason}"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "review", help="review the annotation inbox of a bot (or `review apply BOT`)",
        description=__doc__)
    parser.add_argument("words", nargs="+", metavar="[apply] BOT",
                        help="the bot id; `apply BOT` writes decided items without asking")
    parser.add_argument("--gateway", default=os.environ.get("BOTFACTORY_GATEWAY",
                                                            DEFAULT_GATEWAY),
                        help="gateway URL (default: $BOTFACTORY_GATEWAY or %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("BOTFACTORY_API_KEY"),
                        help="an admin API key (default: $BOTFACTORY_API_KEY)")
    parser.add_argument("--bot-dir", type=Path, required=True,
                        help="the bot folder to write accepted examples into")
    parser.add_argument("--reason", default=None,
                        help="only items queued for this reason (fallback, out_of_scope, "
                             "low_confidence, negative_feedback, disagreement)")
    parser.add_argument("--limit", type=int, default=100, help="items to review (default 100)")
    parser.set_defaults(func=run_review)


def run_review(args: argparse.Namespace) -> int:
    words: list[str] = args.words
    apply_only = words[0] == "apply" and len(words) == 2
    if len(words) != (2 if apply_only else 1):
        return _usage("expected `review BOT` or `review apply BOT`")
    if not args.api_key:
        return _usage("an admin API key is needed (--api-key or $BOTFACTORY_API_KEY)")
    if not (args.bot_dir / "bot.yml").is_file():
        return _usage(f"--bot-dir {args.bot_dir}: not a bot folder (no bot.yml)")
    api = ReviewApi(args.gateway, args.api_key, words[-1])
    from botfactory.evaluation.reviewed import ApplyError

    try:
        if not apply_only:
            interactive(api, args.bot_dir, input, sys.stdout, reason=args.reason,
                        limit=args.limit)
        return apply_decided(api, args.bot_dir, sys.stdout)
    except (ReviewError, ApplyError) as exc:
        return _usage(str(exc))


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def apply_decided(api: ReviewApi, bot_dir: Path, out: TextIO) -> int:
    """Write every decided item into the bot folder and mark the settled ones applied. The
    gateway lists at most a page of items at a time: pages are applied until none is left
    (items that cannot be written stay decided and are listed once)."""
    from botfactory.evaluation.reviewed import REVIEWED_FILE, Outcome, apply_items

    total, seen = Outcome(), set[str]()
    while True:
        page = [i for i in api.items(status="decided") if str(i["id"]) not in seen]
        if not page:
            break
        seen.update(str(i["id"]) for i in page)
        outcome = apply_items(bot_dir, page)
        api.applied(outcome.done)
        total.written += outcome.written
        total.duplicates += outcome.duplicates
        total.rejected.update(outcome.rejected)
    print(f"{len(total.written)} written to {bot_dir / REVIEWED_FILE}, "
          f"{len(total.duplicates)} already present, {len(total.rejected)} not written",
          file=out)
    for identifier, why in total.rejected.items():
        print(f"  {identifier}: {why}", file=out)
    return 1 if total.rejected else 0


def interactive(api: ReviewApi, bot_dir: Path, ask: Callable[[str], str], out: TextIO, *,
                reason: str | None, limit: int) -> None:
    """Show pending items one by one and send each answer to the gateway."""
    from services.botdef import load_bot

    bot = load_bot(bot_dir)
    intents = bot.intent_names()
    items = api.items(reason=reason, limit=limit)
    print(f"{len(items)} items to review. {HELP}", file=out)
    for index, item in enumerate(items, 1):
        print(f"\n[{index}/{len(items)}] {item['text']!r}", file=out)
        print(f"  seen {item['count']}x, confidence {item['min_confidence']:.2f}, "
              f"reasons: {', '.join(item['reasons'])}", file=out)
        print(f"  suggested: {_suggestion(item)}", file=out)
        if not _answer(api, item, intents, ask, out):
            return


def _suggestion(item: dict[str, Any]) -> str:
    predicted = item["predicted"]
    spans = [f"{e['entity']}={e['value']!r}" for e in predicted["entities"]]
    return " ".join([predicted["intent"] or "(none)", *spans])


def _answer(api: ReviewApi, item: dict[str, Any], intents: list[str],
            ask: Callable[[str], str], out: TextIO) -> bool:
    """Ask until the item is settled; False when the reviewer quits."""
    while True:
        key = ask("> ").strip().lower()
        try:
            if key == "q":
                return False
            if key == "s":
                api.skip(item["id"])
            elif key == "o":
                api.decide(item["id"], out_of_scope=True)
            elif key == "":
                api.decide(item["id"], intent=item["predicted"]["intent"],
                           entities=_located(item["predicted"]["entities"]))
            elif key == "i":
                intent = _ask_intent(intents, ask, out)
                spans = _ask_entities(item["text"], ask, out)
                api.decide(item["id"], intent=intent, entities=spans)
            else:
                print(HELP, file=out)
                continue
        except ReviewError as exc:
            print(f"  not saved: {exc}", file=out)
            continue
        return True


def _located(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"entity": e["entity"], "start": e["start"], "end": e["end"]}
            for e in entities if e.get("start") is not None]


def _ask_intent(intents: list[str], ask: Callable[[str], str], out: TextIO) -> str:
    while True:
        intent = ask("  intent (? lists them): ").strip()
        if intent in intents:
            return intent
        print(f"  intents: {', '.join(intents)}", file=out)


def _ask_entities(text: str, ask: Callable[[str], str], out: TextIO) -> list[dict[str, Any]]:
    """Entities typed as `entity=words` pairs separated by `;` (empty: none)."""
    while True:
        answer = ask("  entities as entity=text; entity=text (empty: none): ").strip()
        spans, problem = parse_entities(text, answer)
        if problem is None:
            return spans
        print(f"  {problem}", file=out)


def parse_entities(text: str, answer: str) -> tuple[list[dict[str, Any]], str | None]:
    """`amount=50; recipient=anna` → spans over `text` (first occurrence, case-blind)."""
    spans: list[dict[str, Any]] = []
    for part in filter(None, (p.strip() for p in answer.split(";"))):
        entity, sep, words = (s.strip() for s in part.partition("="))
        start = text.casefold().find(words.casefold()) if sep and words else -1
        if not entity or start < 0:
            return [], f"{part!r}: expected entity=text with text from the message"
        spans.append({"entity": entity, "start": start, "end": start + len(words)})
    return spans, None
