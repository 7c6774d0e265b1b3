"""Gateway configuration, from `BOTFACTORY_GATEWAY_*` environment variables."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.config import load_config, require
from services.common.openid import safe_url as secure_url
from services.common.subjects import DEFAULT_PARTITIONS
from services.gateway.channels.secrets import SecretsKeyInvalid, parse_keys

SECTION = "gateway"
PREFIX = "BOTFACTORY_GATEWAY_"
MIN_SECRET_CHARS = 16
ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ROLES_CLAIM = re.compile(r"^[A-Za-z0-9_:/.#-]{1,200}$")
MIN_VISITOR_SECRET_CHARS = 32
MAX_VISITOR_TOKEN_TTL_S = 7 * 24 * 3600


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
    # HMAC-SHA256 key that signs visitor tokens (per-conversation end-user credentials,
    # docs/security.md). Required: the same on every replica; changing it ends every token.
    visitor_token_secret: str = ""
    # How long a visitor token is valid (seconds); the chat page asks for a new one after.
    visitor_token_ttl_s: float = 3600.0
    # How long a verified key is trusted before the store is asked again (revocations made
    # on another replica take effect within this time; on this replica at once).
    key_cache_s: float = 5.0
    # How long POST .../messages waits for the bot's replies before answering 202.
    sync_wait_s: float = 5.0
    # After the turn's own replies, how much longer a synchronous send waits for the results
    # of the workflows the turn started (0: not at all; docs/chat-api.md, "complete").
    workflow_wait_s: float = 10.0
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
    # Browser origins allowed to call the API from their pages (CORS), e.g.
    # "https://shop.example.com"; "*": any origin. Empty: none (the web chat is served from
    # the gateway itself, same origin).
    cors_allowed_origins: tuple[str, ...] = ()
    ws_heartbeat_s: float = 30.0
    webhook_timeout_s: float = 5.0
    webhook_max_attempts: int = 5
    webhook_backoff_s: float = 0.5
    webhook_backoff_max_s: float = 30.0
    webhook_concurrency: int = 8
    # Messaging channels (docs/channels.md): the Fernet key(s) sealing their secrets at rest,
    # comma-separated (the first seals, each opens: rotation). Empty: channels are off (503).
    channel_secrets_key: str = ""
    # Sending a reply to a platform: tries (429 / 5xx / network), exponential backoff between
    # them, and the longest Retry-After obeyed; then the reply is dead-lettered.
    channel_send_attempts: int = 6
    channel_backoff_s: float = 0.5
    channel_backoff_max_s: float = 30.0
    channel_max_retry_after_s: float = 60.0
    # The RPA runner's gRPC API (host:port), behind the workflow run routes; "" disables them
    # (503). Each call to it waits at most rpa_timeout_s.
    rpa_address: str = "127.0.0.1:50081"
    rpa_timeout_s: float = 10.0
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    # Tenancy (docs/security.md, "Tenants"): the tenant of the bots that have no owner record
    # (bot folders loaded by the dialogue service, bots deployed before tenancy).
    default_tenant: str = "default"
    # Single sign-on for people (docs/security.md, "Single sign-on"); off while oidc_issuer
    # is empty. The issuer's URL (its discovery document is <issuer>/.well-known/
    # openid-configuration; https, or http to this machine), this gateway's client id there
    # (the audience of its tokens), and the client secret when the client is confidential.
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    # The audience bearer tokens must name (default: the client id).
    oidc_audience: str = ""
    # The claim with the person's roles per tenant: {"acme": ["editor"]} or ["acme:editor"]
    # (a dotted path reaches a nested claim: resource_access.botfactory.roles).
    oidc_roles_claim: str = "botfactory_roles"
    # Clock skew allowed on exp / nbf / iat (seconds).
    oidc_clock_skew_s: float = 60.0
    oidc_scopes: str = "openid email profile"
    # Where the issuer sends the browser back: this gateway's /auth/callback as browsers
    # reach it (default: from the request; set it behind a proxy that terminates TLS).
    oidc_redirect_url: str = ""
    # How long a browser session lasts (the signed, encrypted cookie), seconds.
    oidc_session_ttl_s: float = 3600.0
    # The key of the session cookies (at least 32 characters; default: derived from the
    # visitor token secret). The same on every replica.
    oidc_session_secret: str = ""
    # A token naming a signing key not seen yet refetches the issuer's keys at most this
    # often (key rotation; seconds).
    oidc_keys_refetch_s: float = 30.0
    # Backpressure (docs/gateway.md): messages accepted by this replica whose replies are not
    # complete, in all and per bot; the dialogue's backlog (checked every backlog_check_s).
    # Above a bound new messages get 503 + Retry-After (overload_retry_after_s).
    max_pending: int = 1000
    max_pending_per_bot: int = 1000
    max_backlog: int = 5000
    backlog_check_s: float = 1.0
    pending_expiry_s: float = 60.0
    overload_retry_after_s: float = 2.0
    # How long publishing one message waits for JetStream's ack before answering 503.
    publish_timeout_s: float = 5.0
    # TLS of the public gRPC API (PEM paths; both or neither; unset: the internal setting
    # BOTFACTORY_GRPC_TLS_*, services/common/grpc_server.py). grpc_tls_client_ca: require
    # client certificates signed by it.
    grpc_tls_cert: Path | None = None
    grpc_tls_key: Path | None = None
    grpc_tls_client_ca: Path | None = None

    def validate(self) -> None:
        self._validate_ports()
        self._validate_secrets()
        self._validate_limits()
        self._validate_webhooks()
        self._validate_channels()
        self._validate_backpressure()
        self._validate_tls()
        self._validate_tenancy()
        self._validate_oidc()

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer)

    def _validate_tenancy(self) -> None:
        require(TENANT.match(self.default_tenant) is not None, f"{PREFIX}DEFAULT_TENANT",
                "must be a tenant name: 1-64 letters, digits, '_' or '-'")

    def _validate_oidc(self) -> None:
        if not self.oidc_issuer:
            return
        require(secure_url(self.oidc_issuer) and "?" not in self.oidc_issuer
                and "#" not in self.oidc_issuer, f"{PREFIX}OIDC_ISSUER",
                "must be an https:// URL (http:// only to localhost), without query or "
                "fragment, e.g. https://keycloak.example.com/realms/botfactory")
        require(bool(self.oidc_client_id.strip()), f"{PREFIX}OIDC_CLIENT_ID",
                "must be set when OIDC_ISSUER is (the gateway's client id at the issuer)")
        require(ROLES_CLAIM.match(self.oidc_roles_claim) is not None,
                f"{PREFIX}OIDC_ROLES_CLAIM", "must be a claim name or a dotted path of them")
        require(0 <= self.oidc_clock_skew_s <= 300, f"{PREFIX}OIDC_CLOCK_SKEW_S",
                "must be 0..300 seconds")
        require("openid" in self.oidc_scopes.split(), f"{PREFIX}OIDC_SCOPES",
                "must include openid (space-separated scopes)")
        require(not self.oidc_redirect_url or (secure_url(self.oidc_redirect_url)
                                               and self.oidc_redirect_url.endswith(
                                                   "/auth/callback")),
                f"{PREFIX}OIDC_REDIRECT_URL", "must be this gateway's https://.../auth/callback "
                "(http:// only to localhost)")
        require(60 <= self.oidc_session_ttl_s <= 7 * 24 * 3600, f"{PREFIX}OIDC_SESSION_TTL_S",
                "must be 60..604800 seconds")
        require(not self.oidc_session_secret or len(self.oidc_session_secret) >= 32,
                f"{PREFIX}OIDC_SESSION_SECRET", "must be empty or at least 32 characters")
        require(1 <= self.oidc_keys_refetch_s <= 3600, f"{PREFIX}OIDC_KEYS_REFETCH_S",
                "must be 1..3600 seconds")

    def _validate_backpressure(self) -> None:
        require(all(o == "*" or ORIGIN.match(o) for o in self.cors_allowed_origins),
                f"{PREFIX}CORS_ALLOWED_ORIGINS",
                "must be origins like https://app.example.com[:port] (comma-separated), or *")
        require(self.max_pending >= 1, f"{PREFIX}MAX_PENDING", "must be >= 1")
        require(1 <= self.max_pending_per_bot <= self.max_pending,
                f"{PREFIX}MAX_PENDING_PER_BOT", "must be 1..MAX_PENDING")
        require(self.max_backlog >= 1, f"{PREFIX}MAX_BACKLOG", "must be >= 1")
        require(self.backlog_check_s > 0, f"{PREFIX}BACKLOG_CHECK_S", "must be > 0")
        require(self.pending_expiry_s > 0, f"{PREFIX}PENDING_EXPIRY_S", "must be > 0")
        require(self.overload_retry_after_s > 0, f"{PREFIX}OVERLOAD_RETRY_AFTER_S",
                "must be > 0")
        require(self.publish_timeout_s > 0, f"{PREFIX}PUBLISH_TIMEOUT_S", "must be > 0")

    def _validate_tls(self) -> None:
        require((self.grpc_tls_cert is None) == (self.grpc_tls_key is None),
                f"{PREFIX}GRPC_TLS_CERT", "and GRPC_TLS_KEY must be set together")
        require(self.grpc_tls_client_ca is None or self.grpc_tls_cert is not None,
                f"{PREFIX}GRPC_TLS_CLIENT_CA", "needs GRPC_TLS_CERT and GRPC_TLS_KEY")
        for name in ("grpc_tls_cert", "grpc_tls_key", "grpc_tls_client_ca"):
            path = getattr(self, name)
            require(path is None or path.is_file(), f"{PREFIX}{name.upper()}",
                    f"no such file: {path}")

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
        require(len(self.visitor_token_secret) >= MIN_VISITOR_SECRET_CHARS,
                f"{PREFIX}VISITOR_TOKEN_SECRET",
                f"must be set to a random string of at least {MIN_VISITOR_SECRET_CHARS} "
                "characters (e.g. openssl rand -hex 32)")
        require(1 <= self.visitor_token_ttl_s <= MAX_VISITOR_TOKEN_TTL_S,
                f"{PREFIX}VISITOR_TOKEN_TTL_S", f"must be 1..{MAX_VISITOR_TOKEN_TTL_S}")

    def _validate_limits(self) -> None:
        require(self.sync_wait_s >= 0, f"{PREFIX}SYNC_WAIT_S", "must be >= 0")
        require(self.workflow_wait_s >= 0, f"{PREFIX}WORKFLOW_WAIT_S", "must be >= 0")
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

    def _validate_channels(self) -> None:
        if self.channel_secrets_key:
            try:
                parse_keys(self.channel_secrets_key)
            except SecretsKeyInvalid as exc:
                require(False, f"{PREFIX}CHANNEL_SECRETS_KEY", str(exc))
        require(1 <= self.channel_send_attempts <= 20, f"{PREFIX}CHANNEL_SEND_ATTEMPTS",
                "must be 1..20")
        require(self.channel_backoff_s >= 0, f"{PREFIX}CHANNEL_BACKOFF_S", "must be >= 0")
        require(self.channel_backoff_max_s >= self.channel_backoff_s,
                f"{PREFIX}CHANNEL_BACKOFF_MAX_S", "must be >= CHANNEL_BACKOFF_S")
        require(self.channel_max_retry_after_s >= 0, f"{PREFIX}CHANNEL_MAX_RETRY_AFTER_S",
                "must be >= 0")

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
