"""Wires the trainer from its config: bus, job consumer, lost-job sweep, metrics."""

from __future__ import annotations

import socket
import uuid

from services.common.lifecycle import Components
from services.common.logging import get_logger
from services.common.metrics import MetricsServer
from services.common.nats import Bus
from services.trainer.config import TrainerConfig
from services.trainer.metrics import TrainerMetrics
from services.trainer.worker import TrainerWorker

log = get_logger(__name__)


class TrainerServer:
    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        # recorded on the jobs it runs: the pod (host) name and a per-process suffix
        self.worker_id = f"{socket.gethostname()[:40]}-{uuid.uuid4().hex[:6]}"
        self.metrics = TrainerMetrics.create()
        self.bus: Bus | None = None
        self.worker: TrainerWorker | None = None
        self.metrics_server: MetricsServer | None = None
        self.parts = Components()

    async def start(self) -> None:
        """Start every part; `stop()` stops them in the reverse order (the worker first)."""
        self.config.work_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_server = self.parts.serve_metrics(
            self.metrics.registry, self.config.metrics_host, self.config.metrics_port)
        self.bus = bus = await self.parts.bus(self.config.nats_url, "trainer")
        self.worker = await self.parts.start(
            TrainerWorker(bus, self.config, self.worker_id, self.metrics))
        log.info("trainer_started", worker=self.worker_id, concurrency=self.config.concurrency,
                 metrics_port=self.metrics_server.port)

    async def stop(self) -> None:
        """Stop taking jobs, give the running ones back to the queue, drain NATS."""
        await self.parts.stop()
        log.info("trainer_stopped", worker=self.worker_id)
