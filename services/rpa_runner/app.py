"""Wires the RPA runner from its config: bus, workflows, engine, job consumer, gRPC API,
metrics."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path

import aiohttp

from services.common.grpc_server import GrpcServer
from services.common.lifecycle import Components
from services.common.logging import get_logger
from services.common.metrics import MetricsServer
from services.common.nats import KV_RPA_RUNS, Bus
from services.common.partitions import agreed_partitions
from services.common.pb.botfactory.v1 import rpa_pb2, rpa_pb2_grpc
from services.rpa_runner.api import RpaRunnerServicer
from services.rpa_runner.bots import WorkflowRegistry
from services.rpa_runner.browser import BrowserPool
from services.rpa_runner.config import RunnerConfig
from services.rpa_runner.engine import Engine
from services.rpa_runner.http_step import HttpStep
from services.rpa_runner.jobs import Publisher
from services.rpa_runner.metrics import RunnerMetrics
from services.rpa_runner.state import RunStore
from services.rpa_runner.worker import RunnerWorker

log = get_logger(__name__)
SERVICE_NAME = rpa_pb2.DESCRIPTOR.services_by_name["RpaRunner"].full_name


class RunnerServer:
    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.owner = f"runner-{uuid.uuid4().hex[:12]}"
        self.metrics = RunnerMetrics.create()
        self.registry = WorkflowRegistry(config.setting_overrides())
        self.grpc = GrpcServer([SERVICE_NAME], config.grpc_host, config.grpc_port)
        self.browser = BrowserPool(config.chromium_path, config.browser_concurrency,
                                   config.screenshots_dir)
        self.bus: Bus | None = None
        self.session: aiohttp.ClientSession | None = None
        self.engine: Engine | None = None
        self.worker: RunnerWorker | None = None
        self.metrics_server: MetricsServer | None = None
        self.parts = Components()

    @property
    def port(self) -> int:
        return self.grpc.port

    async def start(self) -> None:
        """Start every part; `stop()` stops what started in the reverse order: the worker
        first, then gRPC, the browsers, the HTTP session, the bus and the metrics server."""
        for folder in self.config.bots:
            self.registry.load_folder(Path(folder))
        self.metrics_server = self.parts.serve_metrics(
            self.metrics.registry, self.config.metrics_host, self.config.metrics_port)
        self.bus = bus = await self.parts.bus(self.config.nats_url, "rpa-runner")
        await self.registry.follow(bus)
        partitions = await agreed_partitions(bus, self.config.partitions)
        store = RunStore(await bus.kv(KV_RPA_RUNS))
        publisher = Publisher(bus, partitions)
        self.session = session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(100, self.config.concurrency * 2)),
            timeout=aiohttp.ClientTimeout(total=None))
        self.parts.on_stop(session.close)
        self.parts.on_stop(self.browser.close)
        self.parts.on_stop(self.registry.stop)
        self.engine = Engine(self.config, store, self.registry, publisher, self.metrics,
                             HttpStep(session), self.browser, self.owner)
        rpa_pb2_grpc.add_RpaRunnerServicer_to_server(
            RpaRunnerServicer(store, self.registry, publisher), self.grpc.server)
        self.parts.on_stop(functools.partial(self.grpc.stop, self.config.shutdown_grace_s))
        self.worker = await self.parts.start(RunnerWorker(
            bus, self.engine, publisher, self.metrics, concurrency=self.config.concurrency,
            ack_wait_s=self.config.ack_wait_s))
        await self.grpc.start()
        log.info("rpa_runner_started", grpc_port=self.port, metrics_port=self.metrics_server.port,
                 bots=self.registry.names(), owner=self.owner, partitions=partitions)

    async def stop(self) -> None:
        """Stop taking jobs, let the runs in progress reach their next stop, drain NATS."""
        await self.parts.stop()
        log.info("rpa_runner_stopped")
