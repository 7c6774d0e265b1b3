"""NLU over gRPC with a deadline; maps ParseResponse to the engine's NluResult."""

from __future__ import annotations

import grpc

from services.common.grpc_server import open_channel
from services.common.logging import CORRELATION_METADATA
from services.common.pb.botfactory.v1 import nlu_pb2, nlu_pb2_grpc
from services.dialogue.engine import Button, EntityValue, KnowledgeHit, NluResult


class NluUnavailable(Exception):
    """NLU did not answer in time or failed; the user gets a 'try again' reply."""


class NluClient:
    def __init__(self, address: str, timeout_s: float) -> None:
        options = [("grpc.lb_policy_name", "round_robin"), ("grpc.enable_retries", 1)]
        self._channel = open_channel(address, options=options)  # TLS: BOTFACTORY_GRPC_TLS_CA
        self._stub = nlu_pb2_grpc.NluServiceStub(self._channel)
        self._timeout = timeout_s

    async def parse(self, bot_id: str, text: str, correlation_id: str,
                    conversation_id: str = "") -> NluResult:
        """`conversation_id` keys the sticky canary choice during a rollout."""
        try:
            reply = await self._stub.Parse(
                nlu_pb2.ParseRequest(bot_id=bot_id, text=text, conversation_id=conversation_id),
                timeout=self._timeout,
                metadata=((CORRELATION_METADATA, correlation_id),))
        except grpc.aio.AioRpcError as exc:
            raise NluUnavailable(f"{exc.code().name}: {exc.details()}") from exc
        return to_result(reply)

    async def search(self, bot_id: str, query: str, k: int,
                     correlation_id: str) -> tuple[KnowledgeHit, ...]:
        """The bot's knowledge-base hits for `query`, best first (none for a bot without a
        knowledge base); NluUnavailable when Search fails or misses the deadline."""
        try:
            reply = await self._stub.Search(
                nlu_pb2.SearchRequest(bot_id=bot_id, query=query, k=k), timeout=self._timeout,
                metadata=((CORRELATION_METADATA, correlation_id),))
        except grpc.aio.AioRpcError as exc:
            raise NluUnavailable(f"{exc.code().name}: {exc.details()}") from exc
        return to_hits(reply)

    async def close(self) -> None:
        await self._channel.close()


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
