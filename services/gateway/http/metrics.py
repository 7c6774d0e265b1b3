"""Prometheus metrics of the gateway (one registry per process, passed in)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.metrics import LATENCY_BUCKETS

HTTP_BUCKETS = (*LATENCY_BUCKETS, 10.0)


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    rate_limited: Counter
    feedback: Counter
    webhook_deliveries: Counter
    webhook_attempts: Counter
    widget_refused: Counter
    widget_sessions: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> GatewayMetrics:
        registry = registry if registry is not None else CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter("botfactory_gateway_http_requests",
                             "HTTP requests by route template, method and status.",
                             ["route", "method", "status"], registry=registry),
            latency=Histogram("botfactory_gateway_http_request_duration_seconds",
                              "HTTP request latency (until the response is ready); wait: "
                              "none, complete, workflow (a send that waited for the workflow "
                              "results of its turn) or incomplete (a send whose sync wait for "
                              "the bot's turn ran out or was cut short).",
                              ["route", "method", "wait"], buckets=HTTP_BUCKETS,
                              registry=registry),
            rate_limited=Counter("botfactory_gateway_rate_limited",
                                 "Requests refused by the per-key rate limit.",
                                 registry=registry),
            feedback=Counter("botfactory_feedback", "User ratings of bot messages.",
                             ["bot", "rating"], registry=registry),
            webhook_deliveries=Counter("botfactory_gateway_webhook_deliveries",
                                       "Webhook deliveries by final outcome "
                                       "(delivered, failed, dropped).",
                                       ["outcome"], registry=registry),
            webhook_attempts=Counter("botfactory_gateway_webhook_attempts",
                                     "Webhook HTTP attempts, retries included.",
                                     registry=registry),
            widget_refused=Counter("botfactory_widget_refused",
                                   "Web widget requests refused (docs/channels.md): origin "
                                   "(not on the bot's allow-list, or none), preflight (a CORS "
                                   "preflight from such an origin), not_configured (the bot "
                                   "has no widget), scope (a publishable key on a route it "
                                   "may not call, or for another bot).",
                                   ["reason"], registry=registry),
            widget_sessions=Counter("botfactory_widget_sessions",
                                    "Web widget sessions started: new, resumed (the "
                                    "conversation of a valid visitor token), restarted (the "
                                    "token presented had expired or was not valid).",
                                    ["bot", "outcome"], registry=registry),
        )
