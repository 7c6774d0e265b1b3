"""Per-channel metrics (docs/observability.md, "Channels")."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass(frozen=True)
class ChannelMetrics:
    received: Counter
    refused: Counter
    sent: Counter
    retried: Counter
    dead_lettered: Counter
    send_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ChannelMetrics:
        return cls(
            received=Counter("botfactory_channel_received_total",
                             "Webhook requests from a platform, verified and taken",
                             ["channel", "bot"], registry=registry),
            refused=Counter("botfactory_channel_refused_total",
                            "Webhook requests refused (verification failed, channel not set)",
                            ["channel", "reason"], registry=registry),
            sent=Counter("botfactory_channel_sent_total",
                         "Bot messages the platform took", ["channel"], registry=registry),
            retried=Counter("botfactory_channel_retried_total",
                            "Sends tried again (the platform's 429 / 5xx, network errors)",
                            ["channel"], registry=registry),
            dead_lettered=Counter("botfactory_channel_dead_lettered_total",
                                  "Bot messages given up on (reason: rejected, attempts)",
                                  ["channel", "reason"], registry=registry),
            send_seconds=Histogram("botfactory_channel_send_seconds",
                                   "Time to send one bot message to the platform",
                                   ["channel"], registry=registry,
                                   buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)),
        )
