"""Prometheus metrics of the trainer (one registry per process; sum over replicas)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass
class TrainerMetrics:
    registry: CollectorRegistry
    running: Gauge
    finished: Counter

    @classmethod
    def create(cls) -> TrainerMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            running=Gauge("botfactory_trainer_running", "Trainings running on this trainer.",
                          registry=registry),
            finished=Counter("botfactory_trainer_trainings_finished",
                             "Trainings ended, by status (succeeded, failed, cancelled; queued: "
                             "given back on shutdown).", ["status"], registry=registry))
