"""Prometheus metrics of the NLU service (one registry per process)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
DELTA_BUCKETS = (-0.5, -0.25, -0.1, -0.05, -0.01, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
# Where a rejected model came from: the `source` of a load is "<kind>:<detail>" (dir:<path>,
# store:<version>, kb-store:<version>); only the kind is a label, and every kind's series
# exists from the start at 0, so `increase()` sees the first failure (a series born at 1 has
# no increase). The detail is in the `model_rejected` / `kb_rejected` logs.
LOAD_SOURCES = ("dir", "store", "kb-store")


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
    rollout: RolloutMetrics
    search: SearchMetrics

    @classmethod
    def create(cls) -> NluMetrics:
        registry = CollectorRegistry()
        metrics = cls._create(registry)
        for source in LOAD_SOURCES:
            metrics.load_failures.labels(source=source)
        return metrics

    def load_failed(self, source: str) -> None:
        """Count a rejected load from `source` ("<kind>:<detail>") under its kind."""
        self.load_failures.labels(source=source.partition(":")[0]).inc()

    @classmethod
    def _create(cls, registry: CollectorRegistry) -> NluMetrics:
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
                                  "Models rejected at load (corrupt or incompatible), "
                                  "by source kind (dir, store, kb-store).",
                                  ["source"], registry=registry),
            model_info=Gauge("botfactory_nlu_model_loaded", "Loaded model versions (1 = serving).",
                             ["bot", "version", "kind"], registry=registry),
            confidence=Histogram("botfactory_nlu_intent_confidence",
                                 "Top intent confidence of each parsed text.", ["bot"],
                                 buckets=CONFIDENCE_BUCKETS, registry=registry),
            rollout=RolloutMetrics.create(registry),
            search=SearchMetrics.create(registry),
        )


@dataclass
class RolloutMetrics:
    """Canary and shadow rollouts (docs/rollout.md)."""

    parses: Counter
    rollout: Gauge
    shadow_comparisons: Counter
    shadow_confidence_delta: Histogram
    shadow_dropped: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RolloutMetrics:
        return cls(
            parses=Counter("botfactory_nlu_variant_parses",
                           "Texts parsed by each model variant (active or canary).",
                           ["bot", "variant"], registry=registry),
            rollout=Gauge("botfactory_nlu_rollout",
                          "Rollout in effect: the canary share (0 in shadow mode).",
                          ["bot", "candidate", "mode"], registry=registry),
            shadow_comparisons=Counter(
                "botfactory_nlu_shadow_comparisons",
                "Shadow parses by whether the candidate's top intent agrees with the active's.",
                ["bot", "agree"], registry=registry),
            shadow_confidence_delta=Histogram(
                "botfactory_nlu_shadow_confidence_delta",
                "Candidate minus active top-intent confidence of shadow parses.", ["bot"],
                buckets=DELTA_BUCKETS, registry=registry),
            shadow_dropped=Counter("botfactory_nlu_shadow_dropped",
                                   "Shadow parses dropped because the shadow queue was full.",
                                   ["bot"], registry=registry),
        )


@dataclass
class SearchMetrics:
    """Knowledge-base Search requests and loaded indexes (docs/knowledge.md)."""

    requests: Counter
    latency: Histogram
    hits: Histogram
    index_info: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> SearchMetrics:
        return cls(
            requests=Counter("botfactory_nlu_search_requests",
                             "Search requests by bot and status.", ["bot", "status"],
                             registry=registry),
            latency=Histogram("botfactory_nlu_search_duration_seconds",
                              "Search request latency (query encoding included).",
                              buckets=LATENCY_BUCKETS, registry=registry),
            hits=Histogram("botfactory_nlu_search_top_score",
                           "Top hit score of each search that found something.", ["bot"],
                           buckets=CONFIDENCE_BUCKETS, registry=registry),
            index_info=Gauge("botfactory_nlu_kb_loaded",
                             "Loaded knowledge index versions (1 = serving).",
                             ["bot", "version", "mode"], registry=registry),
        )
