"""NLU service configuration, from `BOTFACTORY_NLU_*` environment variables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.config import load_config, require

SECTION = "nlu"


@dataclass(frozen=True)
class NluConfig:
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9101
    # Local model directories to serve (comma list); the bot id comes from metadata.json.
    models: tuple[str, ...] = ()
    # The platform sentiment model directory (optional).
    sentiment_model: Path | None = None
    # NATS URL(s); when set, active models are loaded from the `models` object store and
    # swapped when a new version is activated. Empty: local directories only.
    nats_url: str = ""
    model_cache_dir: Path = Path(".botfactory/model-cache")
    quantized: bool = True
    max_batch_size: int = 32
    # Extra wait for more requests once an inference thread is free (0: take what is queued).
    max_batch_wait_ms: float = 0.0
    max_text_chars: int = 2000
    max_batch_texts: int = 256
    # Intents listed in a response's ranking when the request does not say (0: all of them).
    ranking_length: int = 10
    # 1: requests queue while a batch runs and go as the next batch (cheapest per text).
    inference_threads: int = 1
    intra_op_threads: int = 1
    shutdown_grace_s: float = 10.0
    # Shadow rollouts (docs/rollout.md): texts waiting for the candidate (more are dropped and
    # counted) and how many the candidate parses per batch.
    shadow_queue_size: int = 1000
    shadow_batch_size: int = 32
    # Knowledge indexes (docs/knowledge.md): local index directories to serve (comma list;
    # the store's active `kb.<bot>` versions are followed when NATS_URL is set), the vector
    # count from which search goes through the HNSW graph, and its search breadth.
    knowledge: tuple[str, ...] = ()
    kb_approx_min_vectors: int = 20_000
    kb_expansion_search: int = 256
    log_level: str = "INFO"

    def validate(self) -> None:
        prefix = "BOTFACTORY_NLU_"
        require(0 <= self.grpc_port <= 65535, f"{prefix}GRPC_PORT", "must be 0..65535")
        require(0 <= self.metrics_port <= 65535, f"{prefix}METRICS_PORT", "must be 0..65535")
        require(1 <= self.max_batch_size <= 1024, f"{prefix}MAX_BATCH_SIZE", "must be 1..1024")
        require(0 <= self.max_batch_wait_ms <= 1000, f"{prefix}MAX_BATCH_WAIT_MS",
                "must be 0..1000")
        require(self.max_text_chars >= 1, f"{prefix}MAX_TEXT_CHARS", "must be >= 1")
        require(self.max_batch_texts >= 1, f"{prefix}MAX_BATCH_TEXTS", "must be >= 1")
        require(self.ranking_length >= 0, f"{prefix}RANKING_LENGTH",
                "must be >= 0 (0: every intent)")
        require(self.inference_threads >= 1, f"{prefix}INFERENCE_THREADS", "must be >= 1")
        require(self.intra_op_threads >= 1, f"{prefix}INTRA_OP_THREADS", "must be >= 1")
        require(self.shadow_queue_size >= 1, f"{prefix}SHADOW_QUEUE_SIZE", "must be >= 1")
        require(1 <= self.shadow_batch_size <= 1024, f"{prefix}SHADOW_BATCH_SIZE",
                "must be 1..1024")
        require(self.kb_approx_min_vectors >= 1, f"{prefix}KB_APPROX_MIN_VECTORS", "must be >= 1")
        require(16 <= self.kb_expansion_search <= 4096, f"{prefix}KB_EXPANSION_SEARCH",
                "must be 16..4096")
        require(bool(self.models or self.nats_url or self.knowledge), f"{prefix}MODELS",
                f"give model directories or {prefix}NATS_URL (or both)")


def load() -> NluConfig:
    return load_config(NluConfig, SECTION)
