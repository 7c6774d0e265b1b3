"""Loaded models per bot, each behind its own micro-batcher; atomic hot swap.

A swap loads and validates the new model off the event loop first; only a model that loads
and runs replaces the old one. Requests already queued on the old model finish on it.

During a rollout (docs/rollout.md) a bot has a second, candidate model beside its active one:
loaded only while the rollout lasts, promoted in place (no second load) when it becomes the
active version, closed when the rollout ends otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from services.nlu.batcher import BatcherClosed, MicroBatcher
from services.nlu.engine import NluModel, Prediction
from services.nlu.metrics import NluMetrics

SENTIMENT = "platform-sentiment"
ACTIVE = "active"
CANARY = "canary"
PINNED = "pinned"  # a model version a request names (a conversation pinned to a bot version)
PINNED_PER_BOT = 4  # versions beside the active and candidate kept loaded per bot


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
        self._candidates: dict[str, LoadedModel] = {}
        self._pinned: dict[tuple[str, str], LoadedModel] = {}  # least recently used first
        self._lock = asyncio.Lock()

    def get(self, bot: str) -> LoadedModel | None:
        return self._models.get(bot)

    def candidate(self, bot: str) -> LoadedModel | None:
        return self._candidates.get(bot)

    def loaded(self) -> list[LoadedModel]:
        return [*self._models.values(), *self._candidates.values(), *self._pinned.values()]

    def version(self, bot: str, version: str) -> tuple[LoadedModel, str] | None:
        """The loaded model of `bot` that is `version` and its variant (None: not loaded)."""
        for entry, variant in ((self._models.get(bot), ACTIVE),
                               (self._candidates.get(bot), CANARY)):
            if entry is not None and entry.model.version == version:
                return entry, variant
        pinned = self._pinned.pop((bot, version), None)
        if pinned is None:
            return None
        self._pinned[(bot, version)] = pinned  # most recently used
        return pinned, PINNED

    async def load_pinned(self, directory: Path, source: str) -> LoadedModel:
        """Load `directory` as a pinned version of its bot (kept beside the active and
        candidate models; the least recently used beyond PINNED_PER_BOT is closed)."""
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(self._executor, self._loader, directory)
        entry = LoadedModel(model, MicroBatcher[Prediction](
            model.predict, self._executor, max_batch_size=self._settings.max_batch_size,
            max_wait=self._settings.max_wait, max_in_flight=self._settings.max_in_flight,
            on_batch=self._metrics.batch_size.labels(bot=model.bot).observe),
            source, time.time())
        async with self._lock:
            old = self._pinned.pop((model.bot, model.version), None)
            self._pinned[(model.bot, model.version)] = entry
            mine = [key for key in self._pinned if key[0] == model.bot]
            evicted = [self._pinned.pop(key) for key in mine[:-PINNED_PER_BOT]]
        for gone in [e for e in (old, *evicted) if e is not None]:
            await gone.batcher.close()
        return entry

    async def load(self, directory: Path, source: str, *, candidate: bool = False) -> LoadedModel:
        """Load `directory` off the event loop and make it its bot's active model (or its
        rollout candidate)."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(self._executor, self._loader, directory)
        except Exception:
            self._metrics.load_failed(source)
            raise
        bot = SENTIMENT if model.kind == "sentiment" else model.bot
        self._metrics.load_seconds.labels(bot=bot).observe(time.perf_counter() - started)
        return await self._install(bot, model, source,
                                   self._candidates if candidate else self._models)

    async def _install(self, bot: str, model: NluModel, source: str,
                       slot: dict[str, LoadedModel]) -> LoadedModel:
        batcher = MicroBatcher[Prediction](
            model.predict, self._executor,
            max_batch_size=self._settings.max_batch_size, max_wait=self._settings.max_wait,
            max_in_flight=self._settings.max_in_flight,
            on_batch=self._metrics.batch_size.labels(bot=bot).observe,
        )
        entry = LoadedModel(model, batcher, source, time.time())
        async with self._lock:
            old = slot.get(bot)
            slot[bot] = entry
        await self._retire(bot, old)
        self._metrics.model_info.labels(bot, model.version, model.kind).set(1)
        return entry

    async def _retire(self, bot: str, old: LoadedModel | None) -> None:
        if old is None:
            return
        if all(e.model.version != old.model.version for e in
               (self._models.get(bot), self._candidates.get(bot)) if e is not None):
            with contextlib.suppress(KeyError):
                self._metrics.model_info.remove(bot, old.model.version, old.model.kind)
        await old.batcher.close()

    async def promote_candidate(self, bot: str, version: str) -> bool:
        """Make the loaded candidate `version` the active model (False: no such candidate)."""
        async with self._lock:
            entry = self._candidates.get(bot)
            if entry is None or entry.model.version != version:
                return False
            old = self._models.get(bot)
            self._models[bot] = self._candidates.pop(bot)
        await self._retire(bot, old)
        return True

    async def drop_candidate(self, bot: str) -> None:
        """Close the bot's candidate (requests already queued on it finish on it)."""
        async with self._lock:
            old = self._candidates.pop(bot, None)
        await self._retire(bot, old)

    async def predict_variant(self, bot: str, texts: Sequence[str],
                              variant: str) -> tuple[LoadedModel, list[Prediction], str]:
        """Predictions of the bot's `variant` (ACTIVE, CANARY or `pinned:<version>`) and the
        variant that made them: the active model when the candidate or the pinned version is
        gone (a rollout just ended, a version was unloaded)."""
        entry, used = (self._candidates.get(bot), CANARY) if variant == CANARY else (None, ACTIVE)
        if variant.startswith(f"{PINNED}:"):
            found = self.version(bot, variant[len(PINNED) + 1:])
            entry, used = found if found is not None else (None, ACTIVE)
        if entry is not None and used != ACTIVE:
            try:
                return entry, await entry.batcher.submit(texts), used
            except BatcherClosed:
                pass
        active, predictions = await self.predict(bot, texts)
        return active, predictions, ACTIVE

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
            entries = self.loaded()
            self._models, self._candidates, self._pinned = {}, {}, {}
        for entry in entries:
            await entry.batcher.close()
