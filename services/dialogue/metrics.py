"""Prometheus metrics of the dialogue service (one registry per process)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.metrics import LATENCY_BUCKETS


@dataclass
class AnalyticsMetrics:
    """Conversation analytics by bot, counted from the `conv.event.>` events by the shared
    `analytics` consumer (services/dialogue/analytics.py): each event counted once across the
    dialogue replicas, so sum them over replicas. Rates are PromQL (docs/observability.md)."""

    conversations: Counter
    user_messages: Counter
    fallbacks: Counter
    handoffs: Counter
    flows_started: Counter
    flows_completed: Counter
    flows_cancelled: Counter
    feedback: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> AnalyticsMetrics:
        def counter(name: str, help_: str, labels: tuple[str, ...] = ("bot",)) -> Counter:
            return Counter(name, help_, list(labels), registry=registry)

        flow = ("bot", "flow")
        return cls(
            conversations=counter("botfactory_conversations",
                                  "Conversation sessions started (first user message of a "
                                  "conversation, or of a session after the idle timeout)."),
            user_messages=counter("botfactory_user_messages", "User messages."),
            fallbacks=counter("botfactory_fallbacks", "Fallbacks (the bot did not understand)."),
            handoffs=counter("botfactory_handoffs", "Conversations handed to a human."),
            flows_started=counter("botfactory_flows_started", "Flows started.", flow),
            flows_completed=counter("botfactory_flows_completed", "Flows completed.", flow),
            flows_cancelled=counter("botfactory_flows_cancelled", "Flows cancelled.", flow),
            feedback=counter("botfactory_feedback_events",
                             "User ratings of bot messages (rating: up or down).",
                             ("bot", "rating")),
        )


@dataclass
class DialogueMetrics:
    registry: CollectorRegistry
    messages: Counter
    latency: Histogram
    nlu_failures: Counter
    cas_conflicts: Counter
    dead_letters: Counter
    analytics: AnalyticsMetrics

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
            analytics=AnalyticsMetrics.create(registry),
        )
