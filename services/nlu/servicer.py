"""gRPC NluService: validation, the NLU and sentiment models, and the response mapping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc

from services.common.errors import InvalidArgument, NotFound, Unavailable, grpc_errors
from services.common.pb.botfactory.v1 import nlu_pb2, nlu_pb2_grpc
from services.nlu.batcher import BatcherClosed
from services.nlu.engine import Prediction
from services.nlu.knowledge import SearchRpc
from services.nlu.metrics import NluMetrics
from services.nlu.registry import ACTIVE, SENTIMENT, LoadedModel, ModelRegistry
from services.nlu.rollout import Rollouts, ShadowItem, ShadowRunner


class NluServicer(SearchRpc, nlu_pb2_grpc.NluServiceServicer):
    def __init__(self, registry: ModelRegistry, metrics: NluMetrics, *, max_text_chars: int,
                 max_batch_texts: int, rollouts: Rollouts | None = None,
                 shadow: ShadowRunner | None = None) -> None:
        self._registry = registry
        self._rollouts = rollouts
        self._shadow = shadow
        self._metrics = metrics
        self._max_text_chars = max_text_chars
        self._max_batch_texts = max_batch_texts
        self.accepting = True

    def attach_shadow(self, shadow: ShadowRunner) -> None:
        """Where shadow-mode texts go (set once the service has a bus to publish on)."""
        self._shadow = shadow

    @grpc_errors
    async def Parse(self, request: nlu_pb2.ParseRequest,
                    context: grpc.aio.ServicerContext) -> nlu_pb2.ParseResponse:
        variant = (self._rollouts.variant_for(request.bot_id, request.conversation_id)
                   if self._rollouts is not None else ACTIVE)
        results = await self._observe("Parse", request.bot_id, [request.text], variant=variant,
                                      conversation_id=request.conversation_id)
        return results[0]

    @grpc_errors
    async def ParseBatch(self, request: nlu_pb2.ParseBatchRequest,
                         context: grpc.aio.ServicerContext) -> nlu_pb2.ParseBatchResponse:
        if len(request.texts) > self._max_batch_texts:
            raise InvalidArgument(f"at most {self._max_batch_texts} texts per batch")
        results = await self._observe("ParseBatch", request.bot_id, list(request.texts))
        return nlu_pb2.ParseBatchResponse(results=results)

    @grpc_errors
    async def ListModels(self, request: nlu_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> nlu_pb2.ListModelsResponse:
        models = [
            nlu_pb2.LoadedModel(bot_id=SENTIMENT if e.model.kind == "sentiment" else e.model.bot,
                                version=e.model.version, kind=e.model.kind, source=e.source,
                                loaded_at_unix_ms=int(e.loaded_at * 1000))
            for e in self._registry.loaded()
        ]
        return nlu_pb2.ListModelsResponse(models=models)

    async def _observe(self, method: str, bot: str, texts: list[str], *, variant: str = ACTIVE,
                       conversation_id: str = "") -> list[nlu_pb2.ParseResponse]:
        started = time.perf_counter()
        status = "OK"
        try:
            return await self._parse(bot, texts, variant, conversation_id)
        except Exception as exc:
            status = getattr(exc, "grpc_code", grpc.StatusCode.INTERNAL).name
            raise
        finally:
            label = bot if self._registry.get(bot) is not None else "_unknown"
            self._metrics.requests.labels(bot=label, method=method, status=status).inc()
            self._metrics.latency.labels(method=method).observe(time.perf_counter() - started)

    async def _parse(self, bot: str, texts: list[str], variant: str = ACTIVE,
                     conversation_id: str = "") -> list[nlu_pb2.ParseResponse]:
        if not self.accepting:
            raise Unavailable("server is shutting down")
        self._validate(bot, texts)
        try:
            (entry, predictions, used), sentiments = await asyncio.gather(
                self._registry.predict_variant(bot, texts, variant), self._sentiments(texts))
        except KeyError:
            raise NotFound(f"unknown bot {bot!r}") from None
        except BatcherClosed as exc:
            raise Unavailable(str(exc)) from exc
        observe = self._metrics.confidence.labels(bot=bot).observe
        for prediction in predictions:
            observe(prediction.confidence)
        self._metrics.rollout.parses.labels(bot=bot, variant=used).inc(len(texts))
        self._offer_shadow(bot, texts, conversation_id, entry, predictions, used)
        return [_response(bot, text, entry, p, s, used) for text, p, s in
                zip(texts, predictions, sentiments, strict=False)]

    def _offer_shadow(self, bot: str, texts: list[str], conversation_id: str,
                      entry: LoadedModel, predictions: list[Prediction], used: str) -> None:
        """In shadow mode, queue what the active model answered for the candidate."""
        if (self._shadow is None or self._rollouts is None or used != ACTIVE
                or not self._rollouts.shadowing(bot)):
            return
        for text, prediction in zip(texts, predictions, strict=False):
            self._shadow.offer(ShadowItem(bot, text, conversation_id, entry.model.version,
                                          prediction))

    def _validate(self, bot: str, texts: Sequence[str]) -> None:
        if not bot:
            raise InvalidArgument("bot_id is required")
        if bot == SENTIMENT or self._registry.get(bot) is None:
            raise NotFound(f"unknown bot {bot!r}")
        if not texts:
            raise InvalidArgument("no texts given")
        for index, text in enumerate(texts):
            where = "text" if len(texts) == 1 else f"texts[{index}]"
            if not text.strip():
                raise InvalidArgument(f"{where} is empty")
            if len(text) > self._max_text_chars:
                raise InvalidArgument(f"{where} has {len(text)} characters; the limit is "
                                      f"{self._max_text_chars}")

    async def _sentiments(self, texts: list[str]) -> Sequence[Prediction | None]:
        if self._registry.get(SENTIMENT) is None:
            return [None] * len(texts)
        try:
            _, results = await self._registry.predict(SENTIMENT, texts)
        except (KeyError, BatcherClosed):
            return [None] * len(texts)
        return results


def _response(bot: str, text: str, entry: LoadedModel, prediction: Prediction,
              sentiment: Prediction | None, variant: str = ACTIVE) -> nlu_pb2.ParseResponse:
    ranking = [nlu_pb2.IntentScore(name=n, confidence=c) for n, c in prediction.ranking]
    entities = [
        nlu_pb2.Entity(entity=e.entity, value=e.value, raw=e.text, start=e.start, end=e.end,
                       extractor=e.extractor, confidence=e.confidence)
        for e in prediction.entities
    ]
    mood = (nlu_pb2.Sentiment(label=sentiment.intent, score=sentiment.confidence)
            if sentiment is not None else nlu_pb2.Sentiment())
    return nlu_pb2.ParseResponse(
        bot_id=bot, text=text, intent=ranking[0], ranking=ranking, entities=entities,
        sentiment=mood, out_of_scope=prediction.out_of_scope, model_version=entry.model.version,
        variant=variant,
    )


