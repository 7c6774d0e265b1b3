"""The annotation inbox: user messages worth a reviewer's look, one item per bot and text.

Written by the dialogue's review collector (services/dialogue/review.py) from conversation and
shadow events; read and decided through the gateway's admin API; turned into training data by
`botfactory review` (docs/improvement-loop.md).

An item lives in the KV bucket `review` under `<bot>.<hash of the normalised text>`: texts that
differ only in case, punctuation or spacing are one item. Its text is PII-redacted. `count` is
the number of distinct messages seen with that text (a message seen again, e.g. redelivered or
reported by two events, is counted once); `min_confidence` the lowest intent confidence the live
model gave it; `reasons` why it was queued. Writers update items with compare-and-set on the KV
revision, so any number of collectors can run.

Priority (the review order, highest first): `uncertainty × ln(1 + count)`, where uncertainty is
`1 − min_confidence`, floored at 0.05 so that a frequent text stays visible even when the model
was (wrongly) sure of it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import grpc
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.common.errors import DomainError, NotFound
from services.common.pii import redact

REASONS = ("fallback", "out_of_scope", "low_confidence", "negative_feedback", "disagreement")
PENDING, DECIDED, SKIPPED, APPLIED = "pending", "decided", "skipped", "applied"
STATUSES = (PENDING, DECIDED, SKIPPED, APPLIED)
MAX_TEXT_CHARS = 500
MAX_MESSAGE_IDS = 32
"""Message ids remembered per item to count each message once (the most recent ones)."""
MIN_UNCERTAINTY = 0.05
CAS_ATTEMPTS = 20
_WORD = re.compile(r"\w+")


class ReviewConflict(DomainError):
    """An item kept changing under a compare-and-set update, or its status does not allow
    the change."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


class ItemNotFound(NotFound):
    """No review item with that id for that bot."""


def normalize_text(text: str) -> str:
    """Lower-case words joined by single spaces (punctuation and spacing dropped)."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


def item_id(text: str) -> str:
    """The id of a text's item: a hash of its normalised, redacted form."""
    normal = normalize_text(redact(text))
    return hashlib.sha256(normal.encode("utf-8")).hexdigest()[:24]


def item_key(bot: str, identifier: str) -> str:
    return f"{bot}.{identifier}"


@dataclass(frozen=True)
class EntityGuess:
    """An entity the model found: `start`/`end` locate it in the item's text when known."""

    entity: str
    value: str
    start: int | None = None
    end: int | None = None


@dataclass(frozen=True)
class Observation:
    """One reason to queue one user message."""

    bot: str
    text: str
    reason: str
    message_id: str
    confidence: float
    intent: str = ""
    entities: tuple[EntityGuess, ...] = ()
    at_ms: int = 0
    candidate: dict[str, Any] | None = None


@dataclass(frozen=True)
class Decision:
    """A reviewer's answer: an intent (with entity spans over the item's text) or
    out-of-scope."""

    intent: str | None
    out_of_scope: bool
    entities: tuple[dict[str, Any], ...] = ()
    reviewer: str = ""
    at_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"intent": self.intent, "out_of_scope": self.out_of_scope,
                "entities": [dict(e) for e in self.entities], "reviewer": self.reviewer,
                "at_unix_ms": self.at_ms}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Decision:
        return cls(intent=raw.get("intent"), out_of_scope=bool(raw.get("out_of_scope")),
                   entities=tuple(raw.get("entities") or ()), reviewer=str(raw.get("reviewer", "")),
                   at_ms=int(raw.get("at_unix_ms", 0)))


@dataclass(frozen=True)
class ReviewItem:
    id: str
    bot: str
    text: str
    count: int
    min_confidence: float
    reasons: tuple[str, ...]
    predicted_intent: str
    predicted_entities: tuple[EntityGuess, ...]
    first_seen_ms: int
    last_seen_ms: int
    status: str = PENDING
    decision: Decision | None = None
    candidate: dict[str, Any] | None = None
    message_ids: tuple[str, ...] = field(default=())

    @property
    def priority(self) -> float:
        uncertainty = max(MIN_UNCERTAINTY, 1.0 - self.min_confidence)
        return round(uncertainty * math.log1p(self.count), 6)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "bot_id": self.bot, "text": self.text, "count": self.count,
            "min_confidence": self.min_confidence, "reasons": list(self.reasons),
            "predicted": {"intent": self.predicted_intent,
                          "entities": [asdict(e) for e in self.predicted_entities]},
            "candidate": self.candidate, "first_seen_unix_ms": self.first_seen_ms,
            "last_seen_unix_ms": self.last_seen_ms, "status": self.status,
            "decision": None if self.decision is None else self.decision.to_json(),
            "priority": self.priority, "message_ids": list(self.message_ids),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ReviewItem:
        predicted = raw.get("predicted") or {}
        decision = raw.get("decision")
        return cls(
            id=str(raw["id"]), bot=str(raw["bot_id"]), text=str(raw["text"]),
            count=int(raw["count"]), min_confidence=float(raw["min_confidence"]),
            reasons=tuple(raw.get("reasons") or ()),
            predicted_intent=str(predicted.get("intent", "")),
            predicted_entities=tuple(EntityGuess(**e) for e in predicted.get("entities") or ()),
            first_seen_ms=int(raw["first_seen_unix_ms"]),
            last_seen_ms=int(raw["last_seen_unix_ms"]), status=str(raw.get("status", PENDING)),
            decision=None if not decision else Decision.from_json(decision),
            candidate=raw.get("candidate"), message_ids=tuple(raw.get("message_ids") or ()),
        )


def locate(text: str, entities: Iterable[EntityGuess]) -> tuple[EntityGuess, ...]:
    """The entities whose value occurs in `text` (case-blind), with that span. Others are
    dropped: a value missing from the redacted text may be a piece of redacted PII."""
    lowered = text.casefold()
    found = []
    for guess in entities:
        start = lowered.find(guess.value.casefold()) if guess.value else -1
        if start >= 0 and len(lowered) == len(text):
            found.append(replace(guess, start=start, end=start + len(guess.value)))
    return tuple(found)


def merge(item: ReviewItem | None, obs: Observation) -> ReviewItem:
    """`item` updated with one observation (a new item when None)."""
    now = obs.at_ms or int(time.time() * 1000)
    if item is None:
        text = redact(obs.text.strip())[:MAX_TEXT_CHARS]
        return ReviewItem(
            id=item_id(obs.text), bot=obs.bot, text=text, count=1,
            min_confidence=round(obs.confidence, 4), reasons=(obs.reason,),
            predicted_intent=obs.intent, predicted_entities=locate(text, obs.entities),
            first_seen_ms=now, last_seen_ms=now, candidate=obs.candidate,
            message_ids=(obs.message_id,) if obs.message_id else ())
    seen = bool(obs.message_id) and obs.message_id in item.message_ids
    ids = item.message_ids if seen or not obs.message_id else (
        *item.message_ids, obs.message_id)[-MAX_MESSAGE_IDS:]
    lower = obs.confidence < item.min_confidence
    return replace(
        item, count=item.count + (0 if seen else 1),
        min_confidence=round(min(item.min_confidence, obs.confidence), 4),
        reasons=item.reasons if obs.reason in item.reasons else (*item.reasons, obs.reason),
        predicted_intent=obs.intent if lower and obs.intent else item.predicted_intent,
        predicted_entities=locate(item.text, obs.entities) if lower and obs.entities
        else item.predicted_entities,
        last_seen_ms=max(item.last_seen_ms, now), candidate=obs.candidate or item.candidate,
        message_ids=ids)


def ordered(items: Iterable[ReviewItem], *, status: str | None = None,
            reason: str | None = None) -> list[ReviewItem]:
    """Items filtered by status and reason, highest priority first (then most recent)."""
    chosen = [i for i in items if (status is None or i.status == status)
              and (reason is None or reason in i.reasons)]
    return sorted(chosen, key=lambda i: (-i.priority, -i.last_seen_ms, i.id))


class ReviewQueue:
    """The `review` KV bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self, bot: str, identifier: str) -> tuple[ReviewItem, int] | None:
        try:
            entry = await self.kv.get(item_key(bot, identifier))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return ReviewItem.from_json(json.loads(entry.value)), int(entry.revision or 0)

    async def record(self, obs: Observation) -> ReviewItem:
        """Add one observation (compare-and-set; retried on conflict)."""
        return await self._change(obs.bot, item_id(obs.text), lambda item: merge(item, obs),
                                  create=True)

    async def decide(self, bot: str, identifier: str, decision: Decision) -> ReviewItem:
        return await self._change(bot, identifier,
                                  lambda item: replace(_must(item), status=DECIDED,
                                                       decision=decision))

    async def skip(self, bot: str, identifier: str) -> ReviewItem:
        return await self._change(bot, identifier,
                                  lambda item: replace(_must(item), status=SKIPPED))

    async def mark_applied(self, bot: str, identifier: str) -> ReviewItem:
        def applied(item: ReviewItem | None) -> ReviewItem:
            found = _must(item)
            if found.status not in (DECIDED, APPLIED):
                raise ReviewConflict(f"item {found.id} is {found.status}, not decided")
            return replace(found, status=APPLIED)
        return await self._change(bot, identifier, applied)

    async def items(self, bot: str) -> list[ReviewItem]:
        """Every item of `bot` (any status)."""
        found: list[ReviewItem] = []
        watcher = await self.kv.watch(f"{bot}.*", ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:
                    break
                if entry.value:
                    found.append(ReviewItem.from_json(json.loads(entry.value)))
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return found

    async def _change(self, bot: str, identifier: str,
                      change: Callable[[ReviewItem | None], ReviewItem], *,
                      create: bool = False) -> ReviewItem:
        key = item_key(bot, identifier)
        for _ in range(CAS_ATTEMPTS):
            current = await self.get(bot, identifier)
            if current is None and not create:
                raise ItemNotFound(f"no review item {identifier!r} for bot {bot!r}")
            updated = change(None if current is None else current[0])
            body = json.dumps(updated.to_json(), separators=(",", ":")).encode()
            try:
                if current is None:
                    await self.kv.create(key, body)
                else:
                    await self.kv.update(key, body, last=current[1])
            except KeyWrongLastSequenceError:
                continue
            return updated
        raise ReviewConflict(f"review item {key} kept changing; try again")


def _must(item: ReviewItem | None) -> ReviewItem:
    if item is None:
        raise ItemNotFound("no such review item")
    return item
