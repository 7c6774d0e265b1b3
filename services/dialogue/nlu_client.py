"""NLU over gRPC with a deadline; maps ParseResponse to the engine's NluResult.

Parse calls of concurrent turns are coalesced: while `max_in_flight` calls are on their way,
further texts wait and then go together as one ParseBatch (per bot, with each text's
conversation id, so sticky canaries still hold). An idle client sends a text at once as a plain
Parse, so coalescing adds no wait; under load it saves a gRPC round trip per message on both
sides and lets the NLU infer bigger batches. A call that has not answered within `stall_s`
stops holding the others back (a stuck NLU replica delays the texts it holds, not every turn).
Each text keeps its own deadline, counted from when it was asked for, and its own outcome: a
batch the NLU rejects as a whole (INVALID_ARGUMENT) is asked again text by text.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from services.common.grpc_server import open_channel
from services.common.logging import CORRELATION_METADATA
from services.common.pb.botfactory.v1 import nlu_pb2, nlu_pb2_grpc
from services.dialogue.engine import Button, EntityValue, KnowledgeHit, NluResult


class NluUnavailable(Exception):
    """NLU did not answer in time or failed; the user gets a 'try again' reply."""


@dataclass
class _Asked:
    """One text waiting for its parse."""

    bot_id: str
    text: str
    conversation_id: str
    correlation_id: str
    deadline: float  # event-loop time
    future: asyncio.Future[nlu_pb2.ParseResponse]
    model_version: str = ""  # a conversation pinned to a bot version: its model


class NluClient:
    def __init__(self, address: str, timeout_s: float, *, max_in_flight: int = 1,
                 max_batch: int = 32, stall_s: float = 0.1,
                 on_call: Callable[[int], None] | None = None) -> None:
        """`on_call(n)` is told the number of texts of each Parse/ParseBatch call sent."""
        options = [("grpc.lb_policy_name", "round_robin"), ("grpc.enable_retries", 1)]
        self._channel = open_channel(address, options=options)  # TLS: BOTFACTORY_GRPC_TLS_CA
        self._stub = nlu_pb2_grpc.NluServiceStub(self._channel)
        self._timeout = timeout_s
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._stall_s = stall_s
        self._on_call = on_call
        self._waiting: deque[_Asked] = deque()
        self._in_flight = 0
        self._last_sent = float("-inf")
        self._wake: asyncio.TimerHandle | None = None
        self._calls: set[asyncio.Task[None]] = set()

    async def parse(self, bot_id: str, text: str, correlation_id: str,
                    conversation_id: str = "", model_version: str = "") -> NluResult:
        """`conversation_id` keys the sticky canary choice during a rollout; `model_version`
        (a conversation pinned to a bot version) names the model instead."""
        loop = asyncio.get_running_loop()
        asked = _Asked(bot_id, text, conversation_id, correlation_id,
                       loop.time() + self._timeout, loop.create_future(), model_version)
        self._waiting.append(asked)
        self._dispatch()
        return to_result(await asked.future)

    def _dispatch(self) -> None:
        """Send what waits while fewer than `max_in_flight` calls are on their way, or the
        latest of them has been out `stall_s` already; else look again when it will have."""
        loop = asyncio.get_running_loop()
        while self._waiting and (self._in_flight < self._max_in_flight
                                 or loop.time() - self._last_sent >= self._stall_s):
            batch = self._next_batch()
            if not batch:
                continue
            self._in_flight += 1
            self._last_sent = loop.time()
            task = loop.create_task(self._send(batch))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        if self._waiting and self._wake is None:
            self._wake = loop.call_at(self._last_sent + self._stall_s, self._woken)

    def _woken(self) -> None:
        self._wake = None
        self._dispatch()

    def _next_batch(self) -> list[_Asked]:
        """The oldest waiting text with the others of its bot (up to `max_batch`), in order;
        texts whose caller gave up are dropped and those past their deadline fail."""
        now = asyncio.get_running_loop().time()
        batch: list[_Asked] = []
        rest: deque[_Asked] = deque()
        while self._waiting:
            asked = self._waiting.popleft()
            if asked.future.done():
                continue
            if asked.deadline <= now:
                asked.future.set_exception(NluUnavailable("DEADLINE_EXCEEDED: no NLU call "
                                                          "free before the deadline"))
            elif len(batch) < self._max_batch and (not batch or (
                    asked.bot_id, asked.model_version) == (batch[0].bot_id,
                                                           batch[0].model_version)):
                batch.append(asked)
            else:
                rest.append(asked)
        self._waiting = rest
        return batch

    async def _send(self, batch: list[_Asked]) -> None:
        try:
            if self._on_call is not None:
                self._on_call(len(batch))
            try:
                replies = await self._call(batch)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.INVALID_ARGUMENT or len(batch) == 1:
                    raise
                await asyncio.gather(*(self._send_alone(asked) for asked in batch))
                return
            for asked, reply in zip(batch, replies, strict=True):
                _settle(asked, reply)
        except Exception as exc:  # every waiting caller learns why, whatever it was
            for asked in batch:
                _settle(asked, _unavailable(exc))
        finally:
            self._in_flight -= 1
            self._dispatch()

    async def _send_alone(self, asked: _Asked) -> None:
        try:
            reply = (await self._call([asked]))[0]
        except Exception as exc:
            _settle(asked, _unavailable(exc))
        else:
            _settle(asked, reply)

    async def _call(self, batch: list[_Asked]) -> list[nlu_pb2.ParseResponse]:
        first = batch[0]
        timeout = max(0.001, min(a.deadline for a in batch) - asyncio.get_running_loop().time())
        if len(batch) == 1:
            return [await self._stub.Parse(
                nlu_pb2.ParseRequest(bot_id=first.bot_id, text=first.text,
                                     conversation_id=first.conversation_id,
                                     model_version=first.model_version),
                timeout=timeout, metadata=((CORRELATION_METADATA, first.correlation_id),))]
        reply = await self._stub.ParseBatch(
            nlu_pb2.ParseBatchRequest(bot_id=first.bot_id, texts=[a.text for a in batch],
                                      conversation_ids=[a.conversation_id for a in batch],
                                      model_version=first.model_version),
            timeout=timeout)
        if len(reply.results) != len(batch):
            raise NluUnavailable(f"INTERNAL: {len(reply.results)} results for {len(batch)} texts")
        return list(reply.results)

    async def search(self, bot_id: str, query: str, k: int, correlation_id: str,
                     kb_version: str = "") -> tuple[KnowledgeHit, ...]:
        """The bot's knowledge-base hits for `query`, best first (none for a bot without a
        knowledge base), in its index version `kb_version` ("": the active one; the active
        one answers too when that version cannot be loaded); NluUnavailable when Search
        fails or misses the deadline."""
        request = nlu_pb2.SearchRequest(bot_id=bot_id, query=query, k=k, kb_version=kb_version)
        try:
            reply = await self._stub.Search(
                request, timeout=self._timeout,
                metadata=((CORRELATION_METADATA, correlation_id),))
        except grpc.aio.AioRpcError as exc:
            raise _unavailable(exc) from exc
        return to_hits(reply)

    async def close(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        while self._waiting:
            _settle(self._waiting.popleft(), NluUnavailable("CANCELLED: the NLU client closed"))
        await self._channel.close()
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)


def _unavailable(exc: Exception) -> NluUnavailable:
    if isinstance(exc, grpc.aio.AioRpcError):
        return NluUnavailable(f"{exc.code().name}: {exc.details()}")
    return NluUnavailable(str(exc) if isinstance(exc, NluUnavailable) else repr(exc))


def _settle(asked: _Asked, outcome: nlu_pb2.ParseResponse | NluUnavailable) -> None:
    """Hand `outcome` to the caller, unless it stopped waiting."""
    if asked.future.done():
        return
    if isinstance(outcome, NluUnavailable):
        asked.future.set_exception(outcome)
    else:
        asked.future.set_result(outcome)


def to_result(reply: nlu_pb2.ParseResponse) -> NluResult:
    return NluResult(
        intent=reply.intent.name,
        confidence=reply.intent.confidence,
        ranking=[(r.name, r.confidence) for r in reply.ranking],
        entities=[EntityValue(entity=e.entity, value=e.value, raw=e.raw, start=e.start, end=e.end)
                  for e in reply.entities],
        out_of_scope=reply.out_of_scope,
        sentiment=reply.sentiment.label,
        sentiment_score=reply.sentiment.score,
        model_version=reply.model_version,
        variant=reply.variant,
    )


def to_hits(reply: nlu_pb2.SearchResponse) -> tuple[KnowledgeHit, ...]:
    return tuple(to_hit(hit) for hit in reply.hits)


def to_hit(hit: nlu_pb2.SearchHit) -> KnowledgeHit:
    return KnowledgeHit(kind=hit.kind, id=hit.id, score=hit.score, document=hit.document,
                        title=hit.title, heading_path=tuple(hit.heading_path), text=hit.text,
                        snippet=hit.snippet, url=hit.url,
                        buttons=tuple(Button(title=b.title, payload=b.payload)
                                      for b in hit.buttons))
