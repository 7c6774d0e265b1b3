"""Prometheus metrics of the NLU service (one registry per process)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass
class NluMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    batch_size: Histogram
    load_seconds: Histogram
    load_failures: Counter
    model_info: Gauge
    confidence: Histogram

    @classmethod
    def create(cls) -> NluMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter("botfactory_nlu_requests", "Parse requests by bot, method, status.",
                             ["bot", "method", "status"], registry=registry),
            latency=Histogram("botfactory_nlu_request_duration_seconds",
                              "Parse request latency.", ["method"], buckets=LATENCY_BUCKETS,
                              registry=registry),
            batch_size=Histogram("botfactory_nlu_batch_size", "Texts per inference batch.",
                                 ["bot"], buckets=BATCH_BUCKETS, registry=registry),
            load_seconds=Histogram("botfactory_nlu_model_load_duration_seconds",
                                   "Time to load and validate a model.", ["bot"],
                                   buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=registry),
            load_failures=Counter("botfactory_nlu_model_load_failures",
                                  "Models rejected at load (corrupt or incompatible).",
                                  ["source"], registry=registry),
            model_info=Gauge("botfactory_nlu_model_loaded", "Loaded model versions (1 = serving).",
                             ["bot", "version", "kind"], registry=registry),
            confidence=Histogram("botfactory_nlu_intent_confidence",
                                 "Top intent confidence of each parsed text.", ["bot"],
                                 buckets=CONFIDENCE_BUCKETS, registry=registry),
        )
