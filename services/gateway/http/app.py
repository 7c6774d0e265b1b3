"""The application factory: routes, middlewares and the shared state, from the ports."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from aiohttp import WSCloseCode, web

from services.gateway.auth import Authenticator
from services.gateway.channels.widget import WIDGET_CACHE, WidgetSettingsCache
from services.gateway.config import GatewayConfig
from services.gateway.http import middlewares, routes
from services.gateway.http.metrics import GatewayMetrics
from services.gateway.http.openapi import build_document
from services.gateway.http.state import STATE, GatewayState
from services.gateway.http.system import OPENAPI
from services.gateway.oidc import BrowserSessions, OidcSettings, OidcVerifier
from services.gateway.ports import (
    AuditLog,
    BotOwners,
    ConversationHub,
    DefinitionStore,
    KeyStore,
    ModelAdmin,
    WebhookStore,
)
from services.gateway.ratelimit import RateLimiter
from services.gateway.runs import RunsApi
from services.gateway.visitor import VisitorTokens


def create_app(hub: ConversationHub, keys: KeyStore, config: GatewayConfig,
               metrics: GatewayMetrics, *, models: ModelAdmin | None = None,
               definitions: DefinitionStore | None = None,
               webhooks: WebhookStore | None = None,
               ready: Callable[[], bool] | None = None,
               clock: Callable[[], float] | None = None,
               auth: Authenticator | None = None,
               limiter: RateLimiter | None = None,
               audit: AuditLog | None = None,
               runs: RunsApi | None = None,
               owners: BotOwners | None = None,
               people: OidcVerifier | None = None) -> web.Application:
    """The gateway's aiohttp application.

    `ready` answers /readyz (pass e.g. `lambda: bus.nc.is_connected`; default: always ready).
    Without `models` / `definitions` / `webhooks` the admin routes for them answer 503.
    `clock` (monotonic seconds) drives the key cache and rate limits; tests pass a fake one.
    `auth` / `limiter`: objects shared with the gRPC API (default: built here from `keys` and
    `config`). `audit`: where admin actions are recorded (default: the log only).
    `runs`: the RPA runner's API (without it the workflow run routes answer 503).
    `owners`: which tenant owns each bot (default: none recorded, all the default tenant's).
    `people`: the OIDC verifier (default: built from `config` when OIDC is on; with it come
    the sign-in routes /auth/* and the session cookie).
    """
    app = web.Application(
        client_max_size=config.definition_body_limit_bytes,
        middlewares=[middlewares.observe, middlewares.cors, middlewares.problems,
                     middlewares.guard],
    )
    if people is None and config.oidc_enabled:
        people = OidcVerifier(OidcSettings.of(config))
    app[STATE] = build_state(hub, keys, config, metrics, models, definitions, ready, clock,
                             auth=auth, limiter=limiter, webhooks=webhooks, owners=owners,
                             people=people)
    app[STATE].audit = audit
    app[STATE].runs = runs
    if people is not None:
        sessions = BrowserSessions(people, session_secret(config))
        sessions.register(app)
        app[STATE].sessions = sessions
        app.on_cleanup.append(lambda _: people.close())
    app[WIDGET_CACHE] = WidgetSettingsCache(config.key_cache_s,
                                            **({} if clock is None else {"clock": clock}))
    routes.register(app)
    app[OPENAPI] = build_document(routes.ROUTES, config=config)
    app.on_shutdown.append(close_sockets)
    return app


def build_state(hub: ConversationHub, keys: KeyStore, config: GatewayConfig,
                metrics: GatewayMetrics, models: ModelAdmin | None,
                definitions: DefinitionStore | None, ready: Callable[[], bool] | None,
                clock: Callable[[], float] | None, *, auth: Authenticator | None = None,
                limiter: RateLimiter | None = None,
                webhooks: WebhookStore | None = None, owners: BotOwners | None = None,
                people: OidcVerifier | None = None) -> GatewayState:
    auth = auth if auth is not None else build_authenticator(keys, config, clock,
                                                             owners=owners, people=people)
    limiter = limiter if limiter is not None else build_limiter(config, clock)
    return GatewayState(hub=hub, auth=auth, limiter=limiter, config=config, metrics=metrics,
                        models=models, definitions=definitions, webhooks=webhooks,
                        ready=ready if ready is not None else (lambda: True))


def build_authenticator(keys: KeyStore, config: GatewayConfig,
                        clock: Callable[[], float] | None = None, *,
                        owners: BotOwners | None = None,
                        people: OidcVerifier | None = None) -> Authenticator:
    timing = {} if clock is None else {"clock": clock}
    failures = RateLimiter(config.auth_failures_per_s, config.auth_failures_burst, **timing)
    tokens = VisitorTokens(config.visitor_token_secret, config.visitor_token_ttl_s)
    return Authenticator(keys, config.api_key_pepper, bootstrap_key=config.admin_bootstrap_key,
                         cache_s=config.key_cache_s, failures=failures, tokens=tokens,
                         owners=owners, default_tenant=config.default_tenant, people=people,
                         **timing)


def session_secret(config: GatewayConfig) -> str:
    """The browser sessions' key: OIDC_SESSION_SECRET, else derived from the visitor token
    secret (the same on every replica already)."""
    if config.oidc_session_secret:
        return config.oidc_session_secret
    return hmac.new(config.visitor_token_secret.encode(), b"botfactory oidc sessions",
                    hashlib.sha256).hexdigest()


def build_limiter(config: GatewayConfig,
                  clock: Callable[[], float] | None = None) -> RateLimiter:
    timing = {} if clock is None else {"clock": clock}
    return RateLimiter(config.rate_limit_rps, config.rate_limit_burst, **timing)


async def close_sockets(app: web.Application) -> None:
    """On shutdown: /readyz turns 503 and open WebSockets are closed (clients reconnect)."""
    state = app[STATE]
    state.stopping = True
    for ws in list(state.sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
