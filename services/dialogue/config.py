"""Dialogue service configuration, from `BOTFACTORY_DIALOGUE_*` environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import load_config, require
from services.common.subjects import DEFAULT_PARTITIONS

SECTION = "dialogue"
PREFIX = "BOTFACTORY_DIALOGUE_"


@dataclass(frozen=True)
class DialogueConfig:
    nats_url: str = "nats://127.0.0.1:4222"
    # NLU gRPC target, e.g. 127.0.0.1:50051 or dns:///nlu:50051 (round robin).
    nlu_address: str = "127.0.0.1:50051"
    nlu_timeout_s: float = 2.0
    # Parse calls on their way to NLU at once; texts of further turns wait and go together as
    # one ParseBatch (up to NLU_MAX_BATCH texts; services/dialogue/nlu_client.py). Raise it
    # when NLU replicas outnumber dialogue replicas.
    nlu_max_in_flight: int = 1
    nlu_max_batch: int = 32
    # Bot folders served from disk (comma list); bots deployed through the admin API are read
    # from KV `bots` as well.
    bots: tuple[str, ...] = ()
    # Inbound partitions (must match the gateway's; the first service to start records the
    # value in KV `bots` and the others use it).
    partitions: int = DEFAULT_PARTITIONS
    # Seconds a worker may hold a message before JetStream redelivers it to another worker.
    ack_wait_s: float = 30.0
    session_idle_s: float = 1800.0
    # Trackers this worker wrote last, kept in memory and used while no other worker can have
    # written them (services/dialogue/store.py RecentRecords); 0 reads every one from KV.
    tracker_memory: int = 10_000
    # Abort a canary rollout that falls back or is rated down more than the active model
    # (docs/rollout.md), judged over this many seconds of conversation events.
    rollout_guard: bool = True
    rollout_window_s: float = 3600.0
    # Count conversation events into the analytics metrics (botfactory_conversations_total,
    # ...; docs/observability.md) through the `analytics` consumer shared by all replicas.
    analytics: bool = True
    # Queue uncertain, fallen-back, badly rated and shadow-disputed messages for review (KV
    # `review`, docs/improvement-loop.md); below this confidence a message counts as uncertain.
    review: bool = True
    review_low_confidence: float = 0.6
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50061
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9103
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"

    def validate(self) -> None:
        require(bool(self.nats_url), f"{PREFIX}NATS_URL", "is required")
        require(self.nlu_timeout_s > 0, f"{PREFIX}NLU_TIMEOUT_S", "must be > 0")
        require(self.nlu_max_in_flight >= 1, f"{PREFIX}NLU_MAX_IN_FLIGHT", "must be >= 1")
        require(1 <= self.nlu_max_batch <= 256, f"{PREFIX}NLU_MAX_BATCH", "must be 1..256")
        require(1 <= self.partitions <= 1024, f"{PREFIX}PARTITIONS", "must be 1..1024")
        require(self.ack_wait_s >= 1, f"{PREFIX}ACK_WAIT_S", "must be >= 1")
        require(0 <= self.review_low_confidence <= 1, f"{PREFIX}REVIEW_LOW_CONFIDENCE",
                "must be 0..1")
        require(self.tracker_memory >= 0, f"{PREFIX}TRACKER_MEMORY", "must be >= 0")
        require(self.session_idle_s > 0, f"{PREFIX}SESSION_IDLE_S", "must be > 0")
        require(self.rollout_window_s >= 1, f"{PREFIX}ROLLOUT_WINDOW_S", "must be >= 1")
        require(0 <= self.grpc_port <= 65535, f"{PREFIX}GRPC_PORT", "must be 0..65535")
        require(0 <= self.metrics_port <= 65535, f"{PREFIX}METRICS_PORT", "must be 0..65535")


def load() -> DialogueConfig:
    return load_config(DialogueConfig, SECTION)
