"""Answering from the knowledge base: the policy's and the `search` step's shared part.

The engine does no I/O: a query whose results the call was not given raises `SearchNeeded`,
which `DialogueEngine` turns into `TurnResult.search`; the caller runs the search and makes the
same call again with the hits (the call is deterministic, so it takes the same path up to the
search and then uses them). Knowledge-base text is never rendered as a template.
"""

from __future__ import annotations

import math
import re

from services.botdef import KnowledgeSettings, Search
from services.dialogue.engine.api import Citation, KnowledgeHit, KnowledgeQuery, Reply
from services.dialogue.engine.turn import Turn

MAX_QUERY_CHARS = 1000
"""A longer query is cut (the NLU service refuses over-long text)."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


class SearchNeeded(Exception):
    """The call needs the results of `query` (not given to it): see the module doc."""

    def __init__(self, query: KnowledgeQuery) -> None:
        super().__init__(query.query)
        self.query = query


def query_text(text: str) -> str:
    """What is searched for `text`: trimmed, spaces collapsed, at most MAX_QUERY_CHARS; empty
    for a button payload (`/intent...`)."""
    words = " ".join(text.split())
    return "" if words.startswith("/") else words[:MAX_QUERY_CHARS]


def best_hit(turn: Turn, text: str) -> KnowledgeHit | None:
    """The best hit for `text` scoring at least the answer threshold; None when there is none,
    the knowledge base is not consulted in this call, or `text` is no query. Raises
    SearchNeeded when the call was not given the results of this query."""
    query = query_text(text)
    knowledge = turn.knowledge
    if not query or knowledge is None:
        return None
    hits = knowledge.hits.get(query)
    if hits is None:
        if knowledge.final:
            return None
        raise SearchNeeded(KnowledgeQuery(query, turn.bot.knowledge.k))
    best = max(hits, key=lambda hit: hit.score, default=None)
    if best is None or best.score < turn.bot.knowledge.answer_threshold:
        return None
    return best


def answer(turn: Turn, hit: KnowledgeHit, source: str, **context: object) -> None:
    """Say the hit (an FAQ answer with its buttons, or a passage's best sentences) with its
    citation; record a `knowledge_answer` event (with `context`). The bot answered, so the
    fallback streak ends. `source`: what asked ("out_of_scope", "low_confidence",
    "faq_intent", "answer_intent" or "flow")."""
    turn.streak = 0
    text = hit.snippet or hit.text
    if hit.kind != "faq":
        text = first_sentences(text, turn.bot.knowledge.max_sentences)
    citation = Citation(title=hit.title or hit.document, document=hit.document,
                        heading_path=hit.heading_path, url=hit.url)
    turn.replies.append(Reply(text=text, buttons=list(hit.buttons), citations=[citation]))
    turn.event("knowledge_answer", hit_id=hit.id, hit_kind=hit.kind, score=round(hit.score, 4),
               document=hit.document, source=source, **context)


def try_answer(turn: Turn, text: str, source: str) -> bool:
    """Answer `text` from the knowledge base when a hit is good enough; False otherwise."""
    hit = best_hit(turn, text)
    if hit is None:
        return False
    answer(turn, hit, source)
    return True


def answer_instead(turn: Turn, intent: str, confidence: float) -> bool:
    """Arbitrate between an understood answer intent (`knowledge.answer_intents`) and the
    knowledge base, both as probabilities of being right: the best hit answers instead when
    it reaches the answer threshold and its calibrated score plus `intent_margin` reaches the
    intent's (temperature-scaled) confidence. False (and no search) for other intents and
    button payloads."""
    settings = turn.bot.knowledge
    if not turn.bot.knowledge_policy or intent not in turn.bot.answer_intents:
        return False
    hit = best_hit(turn, turn.text)
    if hit is None:
        return False
    probability = calibrated_score(settings, hit.score)
    if probability + settings.intent_margin < confidence:
        return False
    answer(turn, hit, "answer_intent", intent=intent, confidence=round(confidence, 4),
           probability=round(probability, 4))
    return True


def calibrated_score(settings: KnowledgeSettings, score: float) -> float:
    """The probability that a hit of `score` answers the question (`score_calibration`,
    Platt scaling); the score itself without a calibration."""
    if settings.score_calibration is None:
        return score
    slope, intercept = settings.score_calibration
    return 1 / (1 + math.exp(-max(-60.0, min(60.0, slope * score + intercept))))


def run_search(turn: Turn, step: Search) -> None:
    """A flow's `search` step: answer, else say `not_found` (if given); `save` the outcome;
    go on with the next step either way."""
    text = turn.text if step.query is None else turn.render_text(step.query)
    hit = best_hit(turn, text)
    turn.advance()
    if hit is not None:
        answer(turn, hit, "flow")
    elif step.not_found is not None:
        turn.say(step.not_found)
    if step.save is not None:
        turn.set_slot(step.save, hit is not None)


def first_sentences(text: str, count: int) -> str:
    """The first `count` sentences of `text` (all of it when it has no more)."""
    sentences = _SENTENCE_END.split(text.strip())
    return " ".join(sentences[:count]).strip()
