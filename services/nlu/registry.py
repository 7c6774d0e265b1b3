"""Loaded models per bot, each behind its own micro-batcher; atomic hot swap.

A swap loads and validates the new model off the event loop first; only a model that loads
and runs replaces the old one. Requests already queued on the old model finish on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from services.nlu.batcher import BatcherClosed, MicroBatcher
from services.nlu.engine import NluModel, Prediction
from services.nlu.metrics import NluMetrics

SENTIMENT = "platform-sentiment"


@dataclass
class LoadedModel:
    model: NluModel
    batcher: MicroBatcher[Prediction]
    source: str
    loaded_at: float


@dataclass(frozen=True)
class BatchSettings:
    max_batch_size: int
    max_wait: float
    max_in_flight: int


class ModelRegistry:
    def __init__(self, executor: Executor, settings: BatchSettings, metrics: NluMetrics, *,
                 loader: Callable[[Path], NluModel]) -> None:
        self._executor = executor
        self._settings = settings
        self._metrics = metrics
        self._loader = loader
        self._models: dict[str, LoadedModel] = {}
        self._lock = asyncio.Lock()

    def get(self, bot: str) -> LoadedModel | None:
        return self._models.get(bot)

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    async def load(self, directory: Path, source: str) -> LoadedModel:
        """Load `directory` off the event loop and make it its bot's active model."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(self._executor, self._loader, directory)
        except Exception:
            self._metrics.load_failures.labels(source=source).inc()
            raise
        bot = SENTIMENT if model.kind == "sentiment" else model.bot
        self._metrics.load_seconds.labels(bot=bot).observe(time.perf_counter() - started)
        return await self._install(bot, model, source)

    async def _install(self, bot: str, model: NluModel, source: str) -> LoadedModel:
        batcher = MicroBatcher[Prediction](
            model.predict, self._executor,
            max_batch_size=self._settings.max_batch_size, max_wait=self._settings.max_wait,
            max_in_flight=self._settings.max_in_flight,
            on_batch=self._metrics.batch_size.labels(bot=bot).observe,
        )
        entry = LoadedModel(model, batcher, source, time.time())
        async with self._lock:
            old = self._models.get(bot)
            self._models[bot] = entry
        if old is not None:
            self._metrics.model_info.remove(bot, old.model.version, old.model.kind)
            await old.batcher.close()
        self._metrics.model_info.labels(bot, model.version, model.kind).set(1)
        return entry

    async def predict(self, bot: str, texts: Sequence[str]) -> tuple[LoadedModel, list[Prediction]]:
        """Predictions from the bot's current model; retried once if it was swapped meanwhile."""
        for _ in range(3):
            entry = self._models.get(bot)
            if entry is None:
                raise KeyError(bot)
            try:
                return entry, await entry.batcher.submit(texts)
            except BatcherClosed:
                continue
        raise BatcherClosed(f"model for {bot} keeps changing")

    async def close(self) -> None:
        async with self._lock:
            entries, self._models = list(self._models.values()), {}
        for entry in entries:
            await entry.batcher.close()
