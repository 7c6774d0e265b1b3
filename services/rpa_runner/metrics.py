"""Prometheus metrics of the RPA runner (one registry per process; sum over replicas)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0, 60.0)


@dataclass
class RunnerMetrics:
    registry: CollectorRegistry
    runs_started: Counter
    runs_finished: Counter
    step_duration: Histogram
    retries: Counter
    waiting_approval: Gauge
    dead_letters: Counter
    resumes: Counter

    @classmethod
    def create(cls) -> RunnerMetrics:
        registry = CollectorRegistry()
        run = ["bot", "workflow"]
        return cls(
            registry=registry,
            runs_started=Counter("botfactory_rpa_runs_started", "Workflow runs started.", run,
                                 registry=registry),
            runs_finished=Counter(
                "botfactory_rpa_runs_finished",
                "Workflow runs finished, by status (succeeded, failed, compensated, cancelled, "
                "needs_attention).", [*run, "status"], registry=registry),
            step_duration=Histogram("botfactory_rpa_step_duration_seconds",
                                    "Duration of one step attempt, by step kind and outcome.",
                                    ["kind", "outcome"], buckets=STEP_BUCKETS,
                                    registry=registry),
            retries=Counter("botfactory_rpa_step_retries", "Step attempts retried.",
                            [*run, "kind"], registry=registry),
            waiting_approval=Gauge(
                "botfactory_rpa_runs_waiting_approval",
                "Runs waiting for an approval (entered minus left through this process: sum "
                "over replicas).", registry=registry),
            dead_letters=Counter("botfactory_rpa_dead_letters",
                                 "Jobs moved to events.deadletter.rpa.", registry=registry),
            resumes=Counter("botfactory_rpa_runs_resumed",
                            "Runs taken over from a runner that stopped mid-run.",
                            registry=registry),
        )
