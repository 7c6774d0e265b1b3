"""Prometheus metrics of the dialogue service (one registry per process)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
    knowledge_answers: Counter
    sentiments: Counter

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
            knowledge_answers=counter("botfactory_knowledge_answers",
                                      "Messages answered from the knowledge base."),
            sentiments=counter("botfactory_user_message_sentiments",
                               "User messages by the sentiment the NLU gave them (none "
                               "without a sentiment model).", ("bot", "sentiment")),
        )


@dataclass
class DialogueMetrics:
    registry: CollectorRegistry
    messages: Counter
    latency: Histogram
    nlu_failures: Counter
    cas_conflicts: Counter
    tracker_reads: Counter
    nlu_call_texts: Histogram
    dead_letters: Counter
    knowledge_searches: Counter
    knowledge_search_latency: Histogram
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
            tracker_reads=Counter(
                "botfactory_dialogue_tracker_reads",
                "Trackers a turn started from (source: memory = the record this worker wrote "
                "last, still current; kv = read from KV `trackers`).", ["source"],
                registry=registry),
            nlu_call_texts=Histogram(
                "botfactory_dialogue_nlu_call_texts",
                "Texts per NLU parse call: the Parse calls of concurrent turns go together as "
                "one ParseBatch (BOTFACTORY_DIALOGUE_NLU_MAX_IN_FLIGHT).",
                buckets=(1, 2, 4, 8, 16, 32, 64), registry=registry),
            dead_letters=Counter("botfactory_dialogue_dead_letters",
                                 "Messages moved to events.deadletter after repeated failure.",
                                 registry=registry),
            knowledge_searches=Counter(
                "botfactory_dialogue_knowledge_searches",
                "Knowledge-base searches (outcome: hits, empty, or failed = no answer).",
                ["bot", "outcome"], registry=registry),
            knowledge_search_latency=Histogram(
                "botfactory_dialogue_knowledge_search_seconds",
                "Time of one knowledge-base search (NLU Search call).",
                buckets=LATENCY_BUCKETS, registry=registry),
            analytics=AnalyticsMetrics.create(registry),
        )


@dataclass
class RolloutGuardMetrics:
    """The canary guard (services/dialogue/rollout_guard.py): what each replica sees in its
    window (every replica reads all of a canary bot's events: take max, not sum) and the
    aborts (counted once, by the replica that aborted)."""

    turns: Gauge
    rate: Gauge
    aborts: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> RolloutGuardMetrics:
        return cls(
            turns=Gauge("botfactory_rollout_window_turns",
                        "NLU-parsed turns per variant in the guard's window.",
                        ["bot", "variant"], registry=registry),
            rate=Gauge("botfactory_rollout_window_rate",
                       "Fallback or negative-feedback rate per turn in the guard's window.",
                       ["bot", "variant", "rate"], registry=registry),
            aborts=Counter("botfactory_rollout_aborts",
                           "Canary rollouts aborted automatically.", ["bot"],
                           registry=registry),
        )
