"""A small NluService gRPC server (real grpc.aio, port 0) with scripted Parse and Search
answers, for testing the dialogue side without a model or a knowledge-base index."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc

from services.common.pb.botfactory.v1 import nlu_pb2, nlu_pb2_grpc


@dataclass
class FakeNlu(nlu_pb2_grpc.NluServiceServicer):
    """Parse: `intents[text]` (default out of scope); Search: `hits[query]` (default none),
    or `indexes[kb_version][query]` when `indexes` names the request's index version ("": the
    active index; a version it does not name is answered by the active one, as the NLU does).
    `search_error` makes Search fail with that code; `search_delay_s` delays it. Every Search
    request is kept in `searches`. Parse and ParseBatch calls are kept in `parses` as (method,
    texts, conversation ids); `parse_delay_s[text]` delays a call holding that text and a text
    in `rejected` fails its call with INVALID_ARGUMENT."""

    intents: dict[str, tuple[str, float]] = field(default_factory=dict)
    parse_delay_s: dict[str, float] = field(default_factory=dict)
    rejected: set[str] = field(default_factory=set)
    parses: list[tuple[str, list[str], list[str]]] = field(default_factory=list)
    hits: dict[str, list[nlu_pb2.SearchHit]] = field(default_factory=dict)
    indexes: dict[str, dict[str, list[nlu_pb2.SearchHit]]] = field(default_factory=dict)
    search_error: grpc.StatusCode | None = None
    search_delay_s: float = 0.0
    searches: list[nlu_pb2.SearchRequest] = field(default_factory=list)

    async def Parse(self, request: nlu_pb2.ParseRequest,
                    context: grpc.aio.ServicerContext) -> nlu_pb2.ParseResponse:
        self.parses.append(("Parse", [request.text], [request.conversation_id]))
        await self._scripted([request.text], context)
        return self._answer(request)

    async def ParseBatch(self, request: nlu_pb2.ParseBatchRequest,
                         context: grpc.aio.ServicerContext) -> nlu_pb2.ParseBatchResponse:
        texts, conversations = list(request.texts), list(request.conversation_ids)
        self.parses.append(("ParseBatch", texts, conversations))
        await self._scripted(texts, context)
        return nlu_pb2.ParseBatchResponse(results=[
            self._answer(nlu_pb2.ParseRequest(bot_id=request.bot_id, text=text))
            for text in texts])

    async def _scripted(self, texts: list[str], context: grpc.aio.ServicerContext) -> None:
        delay = max((self.parse_delay_s.get(t, 0.0) for t in texts), default=0.0)
        if delay:
            await asyncio.sleep(delay)
        if self.rejected.intersection(texts):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "scripted rejection")

    def _answer(self, request: nlu_pb2.ParseRequest) -> nlu_pb2.ParseResponse:
        intent, confidence = self.intents.get(request.text, ("out_of_scope", 0.9))
        score = nlu_pb2.IntentScore(name=intent, confidence=confidence)
        return nlu_pb2.ParseResponse(bot_id=request.bot_id, text=request.text, intent=score,
                                     ranking=[score], out_of_scope=intent == "out_of_scope",
                                     model_version="fake")

    async def ListModels(self, request: nlu_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> nlu_pb2.ListModelsResponse:
        return nlu_pb2.ListModelsResponse()

    async def Search(self, request: nlu_pb2.SearchRequest,
                     context: grpc.aio.ServicerContext) -> nlu_pb2.SearchResponse:
        self.searches.append(request)
        if self.search_delay_s:
            await asyncio.sleep(self.search_delay_s)
        if self.search_error is not None:
            await context.abort(self.search_error, "scripted failure")
        index = request.kb_version if request.kb_version in self.indexes else ""
        table = self.indexes.get(index, self.hits)
        hits = table.get(request.query, [])[: request.k or 5]
        name = (index or "active") if self.indexes else "fake"
        return nlu_pb2.SearchResponse(bot_id=request.bot_id, index_version=name if hits else "",
                                      hits=hits)


async def start_fake_nlu(fake: FakeNlu) -> tuple[grpc.aio.Server, str]:
    """Serve `fake` on 127.0.0.1 (port 0); returns the server and its address."""
    server = grpc.aio.server()
    nlu_pb2_grpc.add_NluServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"
