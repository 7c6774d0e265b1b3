"""Gateway configuration, from `BOTFACTORY_GATEWAY_*` environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.config import load_config, require
from services.common.subjects import DEFAULT_PARTITIONS

SECTION = "gateway"
PREFIX = "BOTFACTORY_GATEWAY_"
MIN_SECRET_CHARS = 16


@dataclass(frozen=True)
class GatewayConfig:
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9102
    nats_url: str = "nats://127.0.0.1:4222"
    # Public gRPC API (ChatService).
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50071
    # Inbound conversation partitions (see services/common/partitions.py).
    partitions: int = DEFAULT_PARTITIONS
    # Server-side secret mixed into every API key hash (HMAC-SHA256 key). Required.
    api_key_pepper: str = ""
    # A key that acts as an admin of every tenant, so the first admin can create keys.
    # Empty: disabled.
    admin_bootstrap_key: str = ""
    # How long a verified key is trusted before the store is asked again (revocations made
    # on another replica take effect within this time; on this replica at once).
    key_cache_s: float = 5.0
    # How long POST .../messages waits for the bot's replies before answering 202.
    sync_wait_s: float = 5.0
    body_limit_bytes: int = 64 * 1024
    definition_body_limit_bytes: int = 1024 * 1024
    max_text_chars: int = 2000
    max_comment_chars: int = 1000
    transcript_max_limit: int = 1000
    # Token bucket per API key: sustained requests per second and burst size.
    rate_limit_rps: float = 20.0
    rate_limit_burst: int = 40
    # Failed authentications per client address (key guessing): a token bucket; an address
    # whose bucket is empty is refused (429) until it refills (docs/security.md).
    auth_failures_per_s: float = 0.2
    auth_failures_burst: int = 20
    # Where the client address comes from: "" = the TCP peer; behind a trusted proxy or load
    # balancer, the header it sets (e.g. X-Forwarded-For: its last entry is used).
    client_ip_header: str = ""
    ws_heartbeat_s: float = 30.0
    webhook_timeout_s: float = 5.0
    webhook_max_attempts: int = 5
    webhook_backoff_s: float = 0.5
    webhook_backoff_max_s: float = 30.0
    webhook_concurrency: int = 8
    # The RPA runner's gRPC API (host:port), behind the workflow run routes; "" disables them
    # (503). Each call to it waits at most rpa_timeout_s.
    rpa_address: str = "127.0.0.1:50081"
    rpa_timeout_s: float = 10.0
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"

    def validate(self) -> None:
        self._validate_ports()
        self._validate_secrets()
        self._validate_limits()
        self._validate_webhooks()

    def _validate_ports(self) -> None:
        require(0 <= self.http_port <= 65535, f"{PREFIX}HTTP_PORT", "must be 0..65535")
        require(0 <= self.metrics_port <= 65535, f"{PREFIX}METRICS_PORT", "must be 0..65535")
        require(0 <= self.grpc_port <= 65535, f"{PREFIX}GRPC_PORT", "must be 0..65535")
        require(1 <= self.partitions <= 1024, f"{PREFIX}PARTITIONS", "must be 1..1024")

    def _validate_secrets(self) -> None:
        require(len(self.api_key_pepper) >= MIN_SECRET_CHARS, f"{PREFIX}API_KEY_PEPPER",
                f"must be set to a random string of at least {MIN_SECRET_CHARS} characters")
        require(not self.admin_bootstrap_key or
                len(self.admin_bootstrap_key) >= MIN_SECRET_CHARS,
                f"{PREFIX}ADMIN_BOOTSTRAP_KEY",
                f"must be empty (disabled) or at least {MIN_SECRET_CHARS} characters")
        require(self.key_cache_s >= 0, f"{PREFIX}KEY_CACHE_S", "must be >= 0")

    def _validate_limits(self) -> None:
        require(self.sync_wait_s >= 0, f"{PREFIX}SYNC_WAIT_S", "must be >= 0")
        require(self.body_limit_bytes >= 1024, f"{PREFIX}BODY_LIMIT_BYTES", "must be >= 1024")
        require(self.definition_body_limit_bytes >= self.body_limit_bytes,
                f"{PREFIX}DEFINITION_BODY_LIMIT_BYTES", "must be >= BODY_LIMIT_BYTES")
        require(self.max_text_chars >= 1, f"{PREFIX}MAX_TEXT_CHARS", "must be >= 1")
        require(self.max_comment_chars >= 0, f"{PREFIX}MAX_COMMENT_CHARS", "must be >= 0")
        require(self.transcript_max_limit >= 1, f"{PREFIX}TRANSCRIPT_MAX_LIMIT", "must be >= 1")
        require(self.rate_limit_rps > 0, f"{PREFIX}RATE_LIMIT_RPS", "must be > 0")
        require(self.rate_limit_burst >= 1, f"{PREFIX}RATE_LIMIT_BURST", "must be >= 1")
        require(self.auth_failures_per_s > 0, f"{PREFIX}AUTH_FAILURES_PER_S", "must be > 0")
        require(self.auth_failures_burst >= 1, f"{PREFIX}AUTH_FAILURES_BURST", "must be >= 1")
        require(self.ws_heartbeat_s > 0, f"{PREFIX}WS_HEARTBEAT_S", "must be > 0")
        require(self.rpa_timeout_s > 0, f"{PREFIX}RPA_TIMEOUT_S", "must be > 0")

    def _validate_webhooks(self) -> None:
        require(self.webhook_timeout_s > 0, f"{PREFIX}WEBHOOK_TIMEOUT_S", "must be > 0")
        require(1 <= self.webhook_max_attempts <= 20, f"{PREFIX}WEBHOOK_MAX_ATTEMPTS",
                "must be 1..20")
        require(self.webhook_backoff_s >= 0, f"{PREFIX}WEBHOOK_BACKOFF_S", "must be >= 0")
        require(self.webhook_backoff_max_s >= self.webhook_backoff_s,
                f"{PREFIX}WEBHOOK_BACKOFF_MAX_S", "must be >= WEBHOOK_BACKOFF_S")
        require(self.webhook_concurrency >= 1, f"{PREFIX}WEBHOOK_CONCURRENCY", "must be >= 1")


def load(environ: Mapping[str, str] | None = None) -> GatewayConfig:
    return load_config(GatewayConfig, SECTION, environ)
