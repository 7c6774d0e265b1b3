"""The Search RPC and the knowledge indexes it reads, per bot: loaded from local directories
or from the model store, and hot-swapped when KV `bots` key `kb.<bot>` names a new version.
A request may name another index version of the bot (a conversation pinned to a bot version:
docs/versions.md); it is loaded from the store beside the active one (PINNED_PER_BOT kept per
bot, least recently used dropped first) and the active index answers when it cannot be.

A swap loads and checks the new index off the event loop first; only an index that loads
replaces the old one (searches in flight finish on the old one). An index that cannot be
fetched or loaded is rejected and logged; the bot keeps its current index.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from nats.js.errors import KeyNotFoundError

from services.common.errors import InvalidArgument, Unavailable, grpc_errors
from services.common.logging import get_logger
from services.common.modelartifacts import BOT_ID, VERSION_ID
from services.common.modelstore import ModelRef
from services.common.nats import KV_BOTS, Bus
from services.common.pb.botfactory.v1 import conversation_pb2, nlu_pb2
from services.common.pull import kv_keys
from services.knowledge.search import Hit, Searcher, SearchOptions
from services.knowledge.store import KB_PREFIX, fetch_kb
from services.nlu.metrics import NluMetrics

log = get_logger(__name__)
MAX_SEARCH_K = 50
DEFAULT_SEARCH_K = 5
PINNED_PER_BOT = 4  # index versions beside the active one kept loaded per bot

# Loads a bot's index version from the store beside the active one (False: it cannot be).
KbVersionLoader = Callable[[str, str], Awaitable[bool]]


@dataclass(frozen=True)
class LoadedKnowledge:
    searcher: Searcher
    source: str
    loaded_at: float

    @property
    def version(self) -> str:
        return self.searcher.version


class KnowledgeRegistry:
    def __init__(self, executor: Executor, options: SearchOptions, metrics: NluMetrics) -> None:
        self._executor = executor
        self._options = options
        self._metrics = metrics
        self._indexes: dict[str, LoadedKnowledge] = {}
        # versions requests name, beside the active ones: least recently used first
        self._pinned: OrderedDict[tuple[str, str], LoadedKnowledge] = OrderedDict()
        self._load_version: KbVersionLoader | None = None
        self._loading: dict[tuple[str, str], asyncio.Future[bool]] = {}

    def attach_version_loader(self, loader: KbVersionLoader) -> None:
        self._load_version = loader

    def get(self, bot: str) -> LoadedKnowledge | None:
        return self._indexes.get(bot)

    def loaded(self) -> list[LoadedKnowledge]:
        return [*self._indexes.values(), *self._pinned.values()]

    def version(self, bot: str, version: str) -> LoadedKnowledge | None:
        """The loaded index of `bot` that is `version` (None: not loaded)."""
        active = self._indexes.get(bot)
        if active is not None and active.version == version:
            return active
        pinned = self._pinned.get((bot, version))
        if pinned is not None:
            self._pinned.move_to_end((bot, version))  # most recently used
        return pinned

    async def load_version(self, bot: str, version: str) -> bool:
        """Load `version` of the bot beside its active index unless loaded (one load however
        many ask at once); False when it cannot be loaded."""
        if self.version(bot, version) is not None:
            return True
        if self._load_version is None:
            return False
        key = (bot, version)
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load_version(bot, version))
            self._loading[key] = pending
            pending.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(pending) and self.version(bot, version) is not None

    async def load_pinned(self, directory: Path, ref: ModelRef, source: str) -> LoadedKnowledge:
        """Load `directory` (which must hold `ref`) as a version of its bot kept beside the
        active index (the least recently used beyond PINNED_PER_BOT is dropped)."""
        loop = asyncio.get_running_loop()
        searcher = await loop.run_in_executor(self._executor, Searcher.load, directory,
                                              self._options)
        if (searcher.data.bot, searcher.version) != (ref.bot, ref.version):
            raise ValueError(f"{directory} holds {searcher.data.bot}@{searcher.version}, "
                             f"not {ref.bot}@{ref.version}")
        entry = LoadedKnowledge(searcher, source, time.time())
        bot = ref.bot
        self._pinned.pop((bot, entry.version), None)
        self._pinned[(bot, entry.version)] = entry
        mine = [key for key in self._pinned if key[0] == bot]
        for key in mine[:-PINNED_PER_BOT]:
            del self._pinned[key]
        log.info("kb_pinned_loaded", bot=bot, version=entry.version, source=source)
        return entry

    async def load(self, directory: Path, source: str) -> LoadedKnowledge:
        """Load `directory` off the event loop and make it its bot's knowledge index."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            searcher = await loop.run_in_executor(self._executor, Searcher.load, directory,
                                                  self._options)
        except Exception:
            self._metrics.load_failed(source)
            raise
        bot = searcher.data.bot
        self._metrics.load_seconds.labels(bot=bot).observe(time.perf_counter() - started)
        entry = LoadedKnowledge(searcher, source, time.time())
        old = self._indexes.get(bot)
        self._indexes[bot] = entry
        self._pinned.pop((bot, entry.version), None)  # now the active one
        if old is not None:
            self._metrics.search.index_info.remove(bot, old.version, old.searcher.mode)
        self._metrics.search.index_info.labels(bot, entry.version, searcher.mode).set(1)
        log.info("kb_loaded", bot=bot, version=entry.version, source=source,
                 mode=searcher.mode, vectors=searcher.rows)
        return entry

    async def search(self, bot: str, query: str, k: int,
                     version: str = "") -> tuple[LoadedKnowledge | None, list[Hit]]:
        """The index that answers (`version` of the bot when named and loadable, else the
        active one; None when there is neither) and its best `k` hits for `query`."""
        entry = self._indexes.get(bot)
        if version and (entry is None or entry.version != version) \
                and await self.load_version(bot, version):
            entry = self.version(bot, version)
        if entry is None:
            return None, []
        loop = asyncio.get_running_loop()
        hits = await loop.run_in_executor(self._executor, entry.searcher.search, query, k)
        return entry, hits


class KnowledgeWatcher:
    """Follows every `kb.<bot>` key (initial values first, then updates)."""

    def __init__(self, bus: Bus, registry: KnowledgeRegistry, cache_dir: Path) -> None:
        self._bus = bus
        self._registry = registry
        self._cache_dir = cache_dir
        self._task: asyncio.Task[None] | None = None
        self.initial_load_done = asyncio.Event()

    async def start(self) -> None:
        """Load the indexes published so far (listed exactly: the watcher's "no more keys"
        marker can come before a key delivered at the same time), then follow updates."""
        kv = await self._bus.kv(KV_BOTS)
        for key in await kv_keys(kv, KB_PREFIX):
            with contextlib.suppress(KeyNotFoundError):
                entry = await kv.get(key)
                if entry.value:
                    await self.apply(ModelRef(bot=key[len(KB_PREFIX):],
                                              version=entry.value.decode()))
        watcher = await kv.watch(f"{KB_PREFIX}*")
        self._task = asyncio.get_running_loop().create_task(self._follow(watcher))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None:
                self.initial_load_done.set()
                continue
            if entry.operation is not None or not entry.value:
                continue
            ref = ModelRef(bot=entry.key[len(KB_PREFIX):], version=entry.value.decode())
            await self.apply(ref)

    async def apply(self, ref: ModelRef) -> bool:
        """Fetch and load `ref` unless it is already served; False when rejected."""
        current = self._registry.get(ref.bot)
        if current is not None and current.version == ref.version:
            return True
        try:
            directory = await fetch_kb(self._bus, ref, self._cache_dir)
            await self._registry.load(directory, source=f"kb-store:{ref.version}")
        except Exception as exc:  # any failure keeps the old index serving
            log.error("kb_rejected", bot=ref.bot, version=ref.version, error=str(exc))
            return False
        log.info("kb_swapped", bot=ref.bot, version=ref.version)
        return True

    async def load_version(self, bot: str, version: str) -> bool:
        """Fetch and load an index version a request names (a conversation pinned to a bot
        version) beside the active one; False when it cannot be fetched or loaded."""
        ref = ModelRef(bot, version)
        try:
            directory = await fetch_kb(self._bus, ref, self._cache_dir)
            await self._registry.load_pinned(directory, ref, source=f"kb-store:{version}")
        except Exception as exc:  # the active index answers instead
            log.error("kb_rejected", bot=bot, version=version, error=str(exc), pinned=True)
            return False
        return True


class SearchRpc:
    """`NluService.Search`, mixed into the NLU servicer: validation, the bot's index (none:
    an empty result), metrics and the response mapping."""

    _knowledge: KnowledgeRegistry | None = None
    _metrics: NluMetrics
    _max_text_chars: int
    accepting: bool

    def attach_knowledge(self, knowledge: KnowledgeRegistry) -> None:
        self._knowledge = knowledge

    @grpc_errors
    async def Search(self, request: nlu_pb2.SearchRequest,
                     context: grpc.aio.ServicerContext) -> nlu_pb2.SearchResponse:
        started = time.perf_counter()
        status = "OK"
        try:
            return await self._search(request)
        except Exception as exc:
            status = getattr(exc, "grpc_code", grpc.StatusCode.INTERNAL).name
            raise
        finally:
            known = self._knowledge is not None and self._knowledge.get(request.bot_id)
            label = request.bot_id if known else "_unknown"
            self._metrics.search.requests.labels(bot=label, status=status).inc()
            self._metrics.search.latency.observe(time.perf_counter() - started)

    async def _search(self, request: nlu_pb2.SearchRequest) -> nlu_pb2.SearchResponse:
        if not self.accepting:
            raise Unavailable("server is shutting down")
        k = self._validate_search(request)
        if self._knowledge is None:
            return nlu_pb2.SearchResponse(bot_id=request.bot_id)
        entry, hits = await self._knowledge.search(request.bot_id, request.query, k,
                                                   request.kb_version)
        if entry is None:
            return nlu_pb2.SearchResponse(bot_id=request.bot_id)
        if hits:
            self._metrics.search.hits.labels(bot=request.bot_id).observe(hits[0].score)
        return nlu_pb2.SearchResponse(bot_id=request.bot_id, index_version=entry.version,
                                      hits=[_search_hit(h) for h in hits])

    def _validate_search(self, request: nlu_pb2.SearchRequest) -> int:
        if not request.bot_id:
            raise InvalidArgument("bot_id is required")
        if request.kb_version and not VERSION_ID.match(request.kb_version):
            raise InvalidArgument(f"kb_version {request.kb_version!r} is not a version id")
        if request.kb_version and not BOT_ID.match(request.bot_id):
            raise InvalidArgument(f"bot_id {request.bot_id!r} is not a bot id")
        if not request.query.strip():
            raise InvalidArgument("query is empty")
        if len(request.query) > self._max_text_chars:
            raise InvalidArgument(f"query has {len(request.query)} characters; the limit is "
                                  f"{self._max_text_chars}")
        if not 0 <= request.k <= MAX_SEARCH_K:
            raise InvalidArgument(f"k must be 1..{MAX_SEARCH_K} (0: {DEFAULT_SEARCH_K}), "
                                  f"got {request.k}")
        return request.k or DEFAULT_SEARCH_K


def _search_hit(hit: Hit) -> nlu_pb2.SearchHit:
    buttons = [conversation_pb2.Button(title=b.title, payload=b.payload) for b in hit.buttons]
    return nlu_pb2.SearchHit(
        kind=hit.kind, id=hit.id, score=hit.score, document=hit.document,
        heading_path=list(hit.heading_path), position=hit.position, text=hit.text,
        snippet=hit.snippet, title=hit.title, url=hit.url or "", buttons=buttons)
