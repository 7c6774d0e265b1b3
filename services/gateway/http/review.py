"""Review routes (role admin): the annotation inbox of a bot (services/common/reviewqueue.py).

List items by priority (filter by status and reason), decide one (an intent with entity spans
over the item's text, or out-of-scope), skip one, and mark decided items applied once
`botfactory review` wrote them into the bot's data files. Every change is audited.
"""

from __future__ import annotations

import re
import time
from itertools import pairwise
from typing import Any

from aiohttp import web

from services.botdef.annotation import ENTITY_NAME_RE
from services.botdef.schema import INTENT_NAME_PATTERN
from services.common.errors import Unavailable
from services.common.reviewqueue import (
    PENDING,
    REASONS,
    STATUSES,
    Decision,
    ItemNotFound,
    ReviewItem,
    ReviewQueue,
    ordered,
)
from services.gateway.http.admin import audited
from services.gateway.http.problems import RequestInvalid
from services.gateway.http.state import principal_of, state_of
from services.gateway.http.wire import Fields, json_response, read_json

REVIEW = web.AppKey("review_queue", ReviewQueue)
ITEM_ID = re.compile(r"^[0-9a-f]{1,64}$")
INTENT = re.compile(INTENT_NAME_PATTERN)
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
MAX_ENTITIES = 20
MAX_APPLIED = 500
REVIEW_DECIDED = "review.decided"
REVIEW_SKIPPED = "review.skipped"
REVIEW_APPLIED = "review.applied"

_STR = {"type": "string"}
SCHEMAS: dict[str, Any] = {
    "ReviewItem": {"type": "object", "required": ["id", "text", "count", "status", "priority"],
                   "properties": {
                       "id": _STR, "bot_id": _STR, "text": _STR, "count": {"type": "integer"},
                       "min_confidence": {"type": "number"}, "priority": {"type": "number"},
                       "reasons": {"type": "array", "items": {"enum": list(REASONS)}},
                       "predicted": {"type": "object"}, "candidate": {"type": ["object", "null"]},
                       "status": {"enum": list(STATUSES)},
                       "decision": {"type": ["object", "null"]},
                       "first_seen_unix_ms": {"type": "integer"},
                       "last_seen_unix_ms": {"type": "integer"}}},
    "ReviewItems": {"type": "object", "required": ["bot_id", "items"],
                    "properties": {"bot_id": _STR, "items": {
                        "type": "array", "items": {"$ref": "#/components/schemas/ReviewItem"}}}},
    "ReviewApplied": {"type": "object", "required": ["bot_id", "applied"],
                      "properties": {"bot_id": _STR,
                                     "applied": {"type": "array", "items": _STR}}},
}


def queue_of(request: web.Request) -> ReviewQueue:
    queue = request.app.get(REVIEW)
    if queue is None:
        raise Unavailable("the review queue is not available on this gateway")
    return queue


def _query_choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query.get(name)
    if value is not None and value not in allowed:
        raise RequestInvalid.one(name, f"must be one of {', '.join(allowed)}")
    return value


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise RequestInvalid.one("limit", f"must be an integer 1..{MAX_LIMIT}")
    return int(raw)


async def list_review(request: web.Request) -> web.Response:
    bot = request.match_info["bot"]
    status = _query_choice(request, "status", STATUSES)
    reason = _query_choice(request, "reason", REASONS)
    limit = _limit(request)
    items = ordered(await queue_of(request).items(bot),
                    status=status if "status" in request.query else PENDING, reason=reason)
    return json_response({"bot_id": bot, "items": [_public(i) for i in items[:limit]]})


def _public(item: ReviewItem) -> dict[str, Any]:
    data = item.to_json()
    data.pop("message_ids", None)
    return data


def _spans(fields: Fields, raw: Any, text: str) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_ENTITIES:
        fields.fail("entities", f"must be a list of at most {MAX_ENTITIES} spans")
        return ()
    spans: list[dict[str, Any]] = []
    for index, span in enumerate(raw):
        problem = _span_problem(span, text)
        if problem is not None:
            fields.fail(f"entities[{index}]", problem)
            continue
        spans.append({"entity": span["entity"], "start": span["start"], "end": span["end"],
                      **({"value": span["value"]} if span.get("value") else {})})
    spans.sort(key=lambda s: s["start"])
    if any(after["start"] < before["end"] for before, after in pairwise(spans)):
        fields.fail("entities", "spans must not overlap")
    return tuple(spans)


def _span_problem(span: Any, text: str) -> str | None:
    if not isinstance(span, dict) or set(span) - {"entity", "start", "end", "value"}:
        return "must be an object {entity, start, end, value?}"
    entity, start, end = span.get("entity"), span.get("start"), span.get("end")
    if not isinstance(entity, str) or not ENTITY_NAME_RE.fullmatch(entity):
        return "entity must be an entity name"
    if type(start) is not int or type(end) is not int or not 0 <= start < end <= len(text):
        return f"start and end must be integers with 0 <= start < end <= {len(text)}"
    if not text[start:end].strip():
        return "the span must cover some text"
    value = span.get("value")
    if value is not None and (not isinstance(value, str) or len(value) > 200):
        return "value must be a string of at most 200 characters"
    return None


async def _item_of(request: web.Request, fields: Fields) -> ReviewItem:
    identifier = fields.identifier("item", ITEM_ID)
    if identifier is None:
        fields.done()  # raises the field error
    assert identifier is not None
    found = await queue_of(request).get(request.match_info["bot"], identifier)
    if found is None:
        raise ItemNotFound(f"no review item {identifier!r} for bot "
                           f"{request.match_info['bot']!r}")
    return found[0]


def _decision(request: web.Request, fields: Fields, extra: dict[str, Any],
              item: ReviewItem) -> Decision:
    intent = fields.identifier("intent", INTENT, required=False)
    oos = extra.get("out_of_scope", False)
    if not isinstance(oos, bool):
        fields.fail("out_of_scope", "must be a boolean")
    elif (intent is None) == (not oos):
        fields.fail("intent", "give exactly one of intent and out_of_scope: true")
    spans = _spans(fields, extra.get("entities"), item.text)
    if oos and spans:
        fields.fail("entities", "an out-of-scope item has no entities")
    fields.done()
    return Decision(intent=intent, out_of_scope=bool(oos), entities=spans,
                    reviewer=principal_of(request).key_id, at_ms=int(time.time() * 1000))


def _split(body: Any, *names: str) -> tuple[Fields, dict[str, Any]]:
    """Fields of the body without `names`, which are returned apart (read by hand)."""
    extra = {n: body.pop(n) for n in names if n in body} if isinstance(body, dict) else {}
    return Fields(body), extra


async def decide_review(request: web.Request) -> web.Response:
    bot = request.match_info["bot"]
    fields, extra = _split(await read_json(request, state_of(request).config.body_limit_bytes),
                           "entities", "out_of_scope")
    item = await _item_of(request, fields)
    decision = _decision(request, fields, extra, item)
    updated = await queue_of(request).decide(bot, item.id, decision)
    await audited(request, REVIEW_DECIDED, {"bot_id": bot, "item": item.id,
                                            "intent": decision.intent,
                                            "out_of_scope": decision.out_of_scope})
    return json_response(_public(updated))


async def skip_review(request: web.Request) -> web.Response:
    bot = request.match_info["bot"]
    fields = Fields(await read_json(request, state_of(request).config.body_limit_bytes))
    item = await _item_of(request, fields)
    fields.done()
    updated = await queue_of(request).skip(bot, item.id)
    await audited(request, REVIEW_SKIPPED, {"bot_id": bot, "item": item.id})
    return json_response(_public(updated))


async def applied_review(request: web.Request) -> web.Response:
    bot = request.match_info["bot"]
    fields = Fields(await read_json(request, state_of(request).config.body_limit_bytes))
    items = fields.string_list("items", ITEM_ID, max_items=MAX_APPLIED)
    fields.done()
    assert items is not None
    queue = queue_of(request)
    applied = [(await queue.mark_applied(bot, identifier)).id for identifier in items]
    await audited(request, REVIEW_APPLIED, {"bot_id": bot, "items": applied})
    return json_response({"bot_id": bot, "applied": applied})
