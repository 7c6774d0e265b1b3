"""Prometheus metrics of the dialogue service (one registry per process)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.metrics import LATENCY_BUCKETS


@dataclass
class DialogueMetrics:
    registry: CollectorRegistry
    messages: Counter
    latency: Histogram
    nlu_failures: Counter
    cas_conflicts: Counter
    dead_letters: Counter

    @classmethod
    def create(cls) -> DialogueMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            messages=Counter("botfactory_dialogue_messages", "Inbound messages handled.",
                             ["bot", "kind", "outcome"], registry=registry),
            latency=Histogram("botfactory_dialogue_turn_duration_seconds",
                              "Time from fetch to ack of one message.", buckets=LATENCY_BUCKETS,
                              registry=registry),
            nlu_failures=Counter("botfactory_dialogue_nlu_failures",
                                 "NLU calls that failed or timed out.", registry=registry),
            cas_conflicts=Counter("botfactory_dialogue_tracker_conflicts",
                                  "Tracker writes retried after a concurrent update.",
                                  registry=registry),
            dead_letters=Counter("botfactory_dialogue_dead_letters",
                                 "Messages moved to events.deadletter after repeated failure.",
                                 registry=registry),
        )
