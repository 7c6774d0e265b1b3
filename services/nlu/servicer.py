"""gRPC NluService: validation, the NLU and sentiment models, and the response mapping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc

from services.common.errors import InvalidArgument, NotFound, Unavailable, grpc_errors
from services.common.modelartifacts import BOT_ID, VERSION_ID
from services.common.pb.botfactory.v1 import nlu_pb2, nlu_pb2_grpc
from services.nlu.batcher import BatcherClosed
from services.nlu.engine import Prediction
from services.nlu.knowledge import SearchRpc
from services.nlu.metrics import NluMetrics
from services.nlu.registry import ACTIVE, PINNED, SENTIMENT, LoadedModel, ModelRegistry
from services.nlu.rollout import Rollouts, ShadowItem, ShadowRunner

# Loads a bot's model version from the store into the registry (False: it cannot be loaded).
VersionLoader = Callable[[str, str], Awaitable[bool]]


class NluServicer(SearchRpc, nlu_pb2_grpc.NluServiceServicer):
    def __init__(self, registry: ModelRegistry, metrics: NluMetrics, *, max_text_chars: int,
                 max_batch_texts: int, ranking_length: int, rollouts: Rollouts | None = None,
                 shadow: ShadowRunner | None = None) -> None:
        self._registry = registry
        self._rollouts = rollouts
        self._shadow = shadow
        self._metrics = metrics
        self._max_text_chars = max_text_chars
        self._max_batch_texts = max_batch_texts
        self._ranking_length = ranking_length  # 0: every intent
        self._load_version: VersionLoader | None = None
        self._loading: dict[tuple[str, str], asyncio.Future[bool]] = {}
        self.accepting = True

    def attach_version_loader(self, loader: VersionLoader) -> None:
        """How a model version a request names is loaded (set once there is a bus)."""
        self._load_version = loader

    def attach_shadow(self, shadow: ShadowRunner) -> None:
        """Where shadow-mode texts go (set once the service has a bus to publish on)."""
        self._shadow = shadow

    @grpc_errors
    async def Parse(self, request: nlu_pb2.ParseRequest,
                    context: grpc.aio.ServicerContext) -> nlu_pb2.ParseResponse:
        results = await self._observe("Parse", request.bot_id, [request.text],
                                      [request.conversation_id], request.ranking_length,
                                      request.model_version)
        return results[0]

    @grpc_errors
    async def ParseBatch(self, request: nlu_pb2.ParseBatchRequest,
                         context: grpc.aio.ServicerContext) -> nlu_pb2.ParseBatchResponse:
        texts, conversations = list(request.texts), list(request.conversation_ids)
        if len(texts) > self._max_batch_texts:
            raise InvalidArgument(f"at most {self._max_batch_texts} texts per batch")
        if conversations and len(conversations) != len(texts):
            raise InvalidArgument(f"conversation_ids has {len(conversations)} entries for "
                                  f"{len(texts)} texts: give none or one per text")
        results = await self._observe("ParseBatch", request.bot_id, texts,
                                      conversations or [""] * len(texts), request.ranking_length,
                                      request.model_version)
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

    async def _observe(self, method: str, bot: str, texts: list[str], conversations: list[str],
                       ranking_length: int, model_version: str = "",
                       ) -> list[nlu_pb2.ParseResponse]:
        started = time.perf_counter()
        status = "OK"
        try:
            return await self._parse(bot, texts, conversations,
                                     self._ranking_limit(ranking_length), model_version)
        except Exception as exc:
            status = getattr(exc, "grpc_code", grpc.StatusCode.INTERNAL).name
            raise
        finally:
            label = bot if self._registry.get(bot) is not None else "_unknown"
            self._metrics.requests.labels(bot=label, method=method, status=status).inc()
            self._metrics.latency.labels(method=method).observe(time.perf_counter() - started)

    def _ranking_limit(self, requested: int) -> int | None:
        """How many intents a response ranks (None: all), from the request's ranking_length."""
        if requested < 0:
            raise InvalidArgument(f"ranking_length is {requested}; give 0 (the server's "
                                  "default) or a positive number of intents")
        return (requested or self._ranking_length) or None

    async def _parse(self, bot: str, texts: list[str], conversations: list[str],
                     ranking_limit: int | None,
                     model_version: str = "") -> list[nlu_pb2.ParseResponse]:
        """Each text parsed by its conversation's variant (one group per variant in use), or
        all by the model version the request names."""
        if not self.accepting:
            raise Unavailable("server is shutting down")
        self._validate(bot, texts, model_version)
        if model_version:
            await self._ensure_version(bot, model_version)
            groups = {f"{PINNED}:{model_version}": list(range(len(texts)))}
        else:
            groups = self._variant_groups(bot, conversations)
        try:
            if self._registry.get(SENTIMENT) is None:  # one model to run: no tasks to spawn
                parsed = await self._predict_groups(bot, texts, groups)
                sentiments: Sequence[Prediction | None] = [None] * len(texts)
            else:
                parsed, sentiments = await asyncio.gather(
                    self._predict_groups(bot, texts, groups), self._sentiments(texts))
        except KeyError:
            raise NotFound(f"unknown bot {bot!r}") from None
        except BatcherClosed as exc:
            raise Unavailable(str(exc)) from exc
        responses: dict[int, nlu_pb2.ParseResponse] = {}
        for group, (entry, predictions, used) in zip(groups.values(), parsed, strict=True):
            self._note(bot, [texts[i] for i in group], [conversations[i] for i in group],
                       entry, predictions, used)
            for i, prediction in zip(group, predictions, strict=True):
                responses[i] = _response(bot, texts[i], entry, prediction, sentiments[i], used,
                                         ranking_limit)
        return [responses[i] for i in range(len(texts))]

    async def _predict_groups(self, bot: str, texts: list[str], groups: dict[str, list[int]],
                              ) -> list[tuple[LoadedModel, list[Prediction], str]]:
        """Each variant group's predictions, in the order of `groups`."""
        if len(groups) == 1:
            (variant, group), = groups.items()
            return [await self._registry.predict_variant(bot, [texts[i] for i in group],
                                                         variant)]
        return list(await asyncio.gather(*(
            self._registry.predict_variant(bot, [texts[i] for i in group], variant)
            for variant, group in groups.items())))

    def _variant_groups(self, bot: str, conversations: list[str]) -> dict[str, list[int]]:
        """Text positions by the model variant their conversation is parsed with."""
        groups: dict[str, list[int]] = {}
        for index, conversation in enumerate(conversations):
            variant = (self._rollouts.variant_for(bot, conversation)
                       if self._rollouts is not None else ACTIVE)
            groups.setdefault(variant, []).append(index)
        return groups

    def _note(self, bot: str, texts: list[str], conversations: list[str], entry: LoadedModel,
              predictions: list[Prediction], used: str) -> None:
        """Metrics of one variant's predictions, and the shadow comparisons they call for."""
        observe = self._metrics.confidence.labels(bot=bot).observe
        for prediction in predictions:
            observe(prediction.confidence)
        self._metrics.rollout.parses.labels(bot=bot, variant=used).inc(len(texts))
        self._offer_shadow(bot, texts, conversations, entry, predictions, used)

    def _offer_shadow(self, bot: str, texts: list[str], conversations: list[str],
                      entry: LoadedModel, predictions: list[Prediction], used: str) -> None:
        """In shadow mode, queue what the active model answered for the candidate."""
        if (self._shadow is None or self._rollouts is None or used != ACTIVE
                or not self._rollouts.shadowing(bot)):
            return
        for text, conversation, prediction in zip(texts, conversations, predictions,
                                                  strict=True):
            self._shadow.offer(ShadowItem(bot, text, conversation, entry.model.version,
                                          prediction))

    async def load_version(self, bot: str, version: str) -> bool:
        """Load `version` of the bot (shared with the requests asking for it meanwhile)."""
        await self._ensure_version(bot, version)
        return self._registry.version(bot, version) is not None

    async def _ensure_version(self, bot: str, version: str) -> None:
        """Load `version` of the bot unless loaded (one load however many ask at once)."""
        if self._registry.version(bot, version) is not None or self._load_version is None:
            return
        key = (bot, version)
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load_version(bot, version))
            self._loading[key] = pending
            pending.add_done_callback(lambda _: self._loading.pop(key, None))
        await asyncio.shield(pending)

    def _validate(self, bot: str, texts: Sequence[str], model_version: str = "") -> None:
        if not bot:
            raise InvalidArgument("bot_id is required")
        if model_version and not VERSION_ID.match(model_version):
            raise InvalidArgument(f"model_version {model_version!r} is not a version id")
        if model_version and not BOT_ID.match(bot):
            raise NotFound(f"unknown bot {bot!r}")
        if bot == SENTIMENT or (self._registry.get(bot) is None and not model_version):
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
              sentiment: Prediction | None, variant: str = ACTIVE,
              ranking_limit: int | None = None) -> nlu_pb2.ParseResponse:
    ranking = [nlu_pb2.IntentScore(name=n, confidence=c)
               for n, c in prediction.ranking[:ranking_limit]]
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


