"""Knowledge-base searches for the dialogue worker.

The engine asks for a search by returning `TurnResult.search` (it does no I/O); `complete`
runs the searches it asks for through the NLU service's `Search` and repeats the call with
their hits, all within the handling of one message: the tracker is written, the replies are
published and the message is acked exactly as for any other turn. A search that fails or
misses the deadline counts as "no answer" (the normal fallback): the message is never lost.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from services.common.logging import get_logger
from services.dialogue.engine import Knowledge, KnowledgeHit, KnowledgeQuery, TurnResult
from services.dialogue.metrics import DialogueMetrics
from services.dialogue.nlu_client import NluClient, NluUnavailable

log = get_logger(__name__)

MAX_SEARCHES_PER_MESSAGE = 4
"""Searches one message may run (flows have no loops; this bounds a chain of `search`
steps). Past it, a further query has no answer."""

Hits = tuple[KnowledgeHit, ...]


class KnowledgeSearcher:
    """Runs one search; a failure is logged, counted and answered with no hits."""

    def __init__(self, nlu: NluClient, metrics: DialogueMetrics) -> None:
        self._nlu = nlu
        self._metrics = metrics

    async def search(self, bot_id: str, query: KnowledgeQuery, correlation_id: str,
                     kb_version: str = "") -> Hits:
        """`kb_version`: the index version of the conversation's bot version ("": active)."""
        started = time.perf_counter()
        try:
            hits = await self._nlu.search(bot_id, query.query, query.k, correlation_id,
                                          kb_version)
        except NluUnavailable as exc:
            self._count(bot_id, "failed", started)
            log.warning("knowledge_search_failed", bot=bot_id, error=str(exc))
            return ()
        self._count(bot_id, "hits" if hits else "empty", started)
        return hits

    def _count(self, bot_id: str, outcome: str, started: float) -> None:
        self._metrics.knowledge_searches.labels(bot=bot_id, outcome=outcome).inc()
        self._metrics.knowledge_search_latency.observe(time.perf_counter() - started)


async def complete(call: Callable[[Knowledge], TurnResult],
                   search: Callable[[KnowledgeQuery], Awaitable[Hits]],
                   found: dict[str, Hits]) -> TurnResult:
    """The result of the engine call `call`, after running the searches it asks for and
    calling it again with their hits. `found` (query -> hits) is kept by the caller across
    attempts of the same message (a retried tracker write does not search again)."""
    while True:
        knowledge = Knowledge(dict(found), final=len(found) >= MAX_SEARCHES_PER_MESSAGE)
        result = call(knowledge)
        if result.search is None:
            return result
        found[result.search.query] = await search(result.search)
