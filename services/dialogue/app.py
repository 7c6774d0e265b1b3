"""Wires the dialogue service from its config: bus, bots, NLU client, worker, admin gRPC."""

from __future__ import annotations

import functools
from pathlib import Path

from services.common.grpc_server import GrpcServer
from services.common.lifecycle import Components
from services.common.logging import get_logger
from services.common.metrics import MetricsServer
from services.common.nats import KV_TRACKERS, Bus
from services.common.partitions import agreed_partitions
from services.common.pb.botfactory.v1 import dialogue_pb2, dialogue_pb2_grpc
from services.common.served import ServedAnnouncer
from services.dialogue.admin import DialogueAdminServicer
from services.dialogue.analytics import AnalyticsConsumer
from services.dialogue.bots import BotRegistry
from services.dialogue.config import DialogueConfig
from services.dialogue.metrics import DialogueMetrics, RolloutGuardMetrics
from services.dialogue.nlu_client import NluClient
from services.dialogue.review import ReviewCollector
from services.dialogue.rollout_guard import RolloutGuard
from services.dialogue.store import TrackerStore
from services.dialogue.versions import VersionedBots
from services.dialogue.worker import DialogueWorker

log = get_logger(__name__)
SERVICE_NAME = dialogue_pb2.DESCRIPTOR.services_by_name["DialogueAdmin"].full_name


class DialogueServer:
    def __init__(self, config: DialogueConfig) -> None:
        self.config = config
        self.metrics = DialogueMetrics.create()
        self.registry = BotRegistry()
        self.nlu = NluClient(config.nlu_address, config.nlu_timeout_s,
                             max_in_flight=config.nlu_max_in_flight,
                             max_batch=config.nlu_max_batch,
                             on_call=self.metrics.nlu_call_texts.observe)
        self.grpc = GrpcServer([SERVICE_NAME], config.grpc_host, config.grpc_port)
        self.bus: Bus | None = None
        self.worker: DialogueWorker | None = None
        self.analytics: AnalyticsConsumer | None = None
        self.rollout_guard: RolloutGuard | None = None
        self.review: ReviewCollector | None = None
        self.versions: VersionedBots | None = None
        self.metrics_server: MetricsServer | None = None
        self.parts = Components()

    @property
    def port(self) -> int:
        return self.grpc.port

    async def start(self) -> None:
        """Start every part; `stop()` stops what started in the reverse order: the worker
        first, then the consumers beside it, gRPC, the bus and the metrics server last."""
        for folder in self.config.bots:
            self.registry.load_folder(Path(folder))
        self.metrics_server = self.parts.serve_metrics(
            self.metrics.registry, self.config.metrics_host, self.config.metrics_port)
        self.bus = bus = await self.parts.bus(self.config.nats_url, "dialogue")
        self.parts.on_stop(self.nlu.close)
        await self.registry.follow(bus)
        self.parts.on_stop(self.registry.stop)
        partitions = await agreed_partitions(bus, self.config.partitions)
        store = TrackerStore(await bus.kv(KV_TRACKERS))
        dialogue_pb2_grpc.add_DialogueAdminServicer_to_server(
            DialogueAdminServicer(store), self.grpc.server)
        self.parts.on_stop(functools.partial(self.grpc.stop, self.config.shutdown_grace_s))
        await self._start_consumers(bus)
        # bot versions and environments (docs/versions.md)
        self.versions = await self.parts.start(VersionedBots(bus, self.registry))
        self.worker = await self.parts.start(DialogueWorker(
            bus, self.registry, self.nlu, store, self.metrics, partitions=partitions,
            ack_wait_s=self.config.ack_wait_s, session_idle_s=self.config.session_idle_s,
            tracker_memory=self.config.tracker_memory, versions=self.versions))
        # Announce the bots once the worker answers them (the gateway 404s the others).
        versions = self.versions
        announcer = await self.parts.start(ServedAnnouncer(
            bus, lambda: sorted({*self.registry.names(), *versions.bots()})))
        self.registry.on_change(announcer.changed)
        versions.on_change(announcer.changed)
        await self.grpc.start()
        log.info("dialogue_started", grpc_port=self.port, metrics_port=self.metrics_server.port,
                 bots=self.registry.names(), partitions=partitions)

    async def _start_consumers(self, bus: Bus) -> None:
        """The optional consumers beside the worker: analytics, review queue, rollout guard."""
        config = self.config
        if config.analytics:
            self.analytics = await self.parts.start(AnalyticsConsumer(
                bus, self.metrics.analytics, ack_wait_s=config.ack_wait_s))
        if config.review:
            self.review = await self.parts.start(ReviewCollector(
                bus, ack_wait_s=config.ack_wait_s, low_confidence=config.review_low_confidence))
        if config.rollout_guard:
            self.rollout_guard = await self.parts.start(RolloutGuard(
                bus, RolloutGuardMetrics.create(self.metrics.registry),
                window_s=config.rollout_window_s))

    async def stop(self) -> None:
        """Stop fetching, finish in-flight messages, drain NATS."""
        await self.parts.stop()
        log.info("dialogue_stopped")
