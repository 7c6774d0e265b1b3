"""Wires the NLU service from its config: registry, gRPC server, metrics, model watcher."""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from services.common.grpc_server import GrpcServer
from services.common.logging import get_logger
from services.common.metrics import MetricsServer, start_metrics_server
from services.common.nats import Bus, connect, provision
from services.common.pb.botfactory.v1 import nlu_pb2, nlu_pb2_grpc
from services.knowledge.search import SearchOptions
from services.nlu.config import NluConfig
from services.nlu.engine import NluModel
from services.nlu.knowledge import KnowledgeRegistry, KnowledgeWatcher
from services.nlu.metrics import NluMetrics
from services.nlu.prewarm import VersionPrewarmer
from services.nlu.registry import BatchSettings, ModelRegistry
from services.nlu.rollout import Rollouts, ShadowRunner
from services.nlu.servicer import NluServicer
from services.nlu.watcher import ModelWatcher

log = get_logger(__name__)
SERVICE_NAME = nlu_pb2.DESCRIPTOR.services_by_name["NluService"].full_name


class NluServer:
    def __init__(self, config: NluConfig) -> None:
        self.config = config
        self.metrics = NluMetrics.create()
        self._executor = ThreadPoolExecutor(config.inference_threads, thread_name_prefix="nlu")
        loader = functools.partial(NluModel.load, quantized=config.quantized,
                                   intra_op_threads=config.intra_op_threads)
        settings = BatchSettings(config.max_batch_size, config.max_batch_wait_ms / 1000,
                                 config.inference_threads)
        self.registry = ModelRegistry(self._executor, settings, self.metrics, loader=loader)
        self.rollouts = Rollouts(self.metrics.rollout)
        self.shadow: ShadowRunner | None = None
        self.servicer = NluServicer(self.registry, self.metrics,
                                    max_text_chars=config.max_text_chars,
                                    max_batch_texts=config.max_batch_texts,
                                    ranking_length=config.ranking_length,
                                    rollouts=self.rollouts)
        self.knowledge = KnowledgeRegistry(self._executor, SearchOptions(
            approx_min_vectors=config.kb_approx_min_vectors,
            expansion_search=config.kb_expansion_search,
            threads=config.intra_op_threads), self.metrics)
        self.servicer.attach_knowledge(self.knowledge)
        self.kb_watcher: KnowledgeWatcher | None = None
        self.grpc = GrpcServer([SERVICE_NAME], config.grpc_host, config.grpc_port)
        nlu_pb2_grpc.add_NluServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self.servicer, self.grpc.server)
        self.bus: Bus | None = None
        self.watcher: ModelWatcher | None = None
        self.prewarmer: VersionPrewarmer | None = None
        self.metrics_server: MetricsServer | None = None

    @property
    def port(self) -> int:
        return self.grpc.port

    async def start(self) -> None:
        """Load local models, follow the store (if configured), then start serving."""
        for directory in self.config.models:
            await self.registry.load(Path(directory), source=f"dir:{directory}")
        if self.config.sentiment_model is not None:
            await self.registry.load(self.config.sentiment_model, source="dir:sentiment")
        for directory in self.config.knowledge:
            await self.knowledge.load(Path(directory), source=f"dir:{directory}")
        if self.config.nats_url:
            self.bus = await connect(self.config.nats_url, name="nlu")
            await provision(self.bus)
            self._start_shadow(self.bus)
            self.watcher = ModelWatcher(self.bus, self.registry, self.config.model_cache_dir,
                                        self.rollouts)
            await self.watcher.start()
            self.servicer.attach_version_loader(self.watcher.load_version)
            await self.watcher.initial_load_done.wait()
            await self._follow_knowledge(self.bus)
            # the models and indexes of the bot versions environments serve (docs/versions.md)
            self.prewarmer = VersionPrewarmer(self.bus, self.registry, self.servicer.load_version,
                                              self.knowledge.load_version)
            await self.prewarmer.start()
        self.metrics_server = start_metrics_server(self.metrics.registry,
                                                   self.config.metrics_host,
                                                   self.config.metrics_port)
        await self.grpc.start()
        log.info("nlu_started", grpc_port=self.port, metrics_port=self.metrics_server.port,
                 models=[m.model.version for m in self.registry.loaded()])

    def _start_shadow(self, bus: Bus) -> None:
        """Shadow parses (rollouts are followed only with a bus: they live in KV)."""
        self.shadow = ShadowRunner(self.registry, self.metrics.rollout, bus.js.publish,
                                   queue_size=self.config.shadow_queue_size,
                                   batch_size=self.config.shadow_batch_size)
        self.shadow.start()
        self.servicer.attach_shadow(self.shadow)

    async def _follow_knowledge(self, bus: Bus) -> None:
        """Knowledge indexes published to the store (`kb.<bot>`), then their updates."""
        self.kb_watcher = KnowledgeWatcher(bus, self.knowledge,
                                           self.config.model_cache_dir / "knowledge")
        await self.kb_watcher.start()
        self.knowledge.attach_version_loader(self.kb_watcher.load_version)
        await self.kb_watcher.initial_load_done.wait()

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests, drain NATS."""
        self.servicer.accepting = False
        await self.grpc.stop(self.config.shutdown_grace_s)
        if self.watcher is not None:
            await self.watcher.stop()
        if self.prewarmer is not None:
            await self.prewarmer.stop()
        if self.kb_watcher is not None:
            await self.kb_watcher.stop()
        if self.shadow is not None:
            await self.shadow.stop()
        await self.registry.close()
        if self.bus is not None:
            await self.bus.drain()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self._executor.shutdown(wait=True)
        log.info("nlu_stopped")
