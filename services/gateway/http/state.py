"""What the handlers share, kept on the application (no module-level clients)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from services.gateway.auth import Authenticator, Principal
from services.gateway.config import GatewayConfig
from services.gateway.http.metrics import GatewayMetrics
from services.gateway.oidc import BrowserSessions
from services.gateway.ports import (
    AuditLog,
    ConversationHub,
    DefinitionStore,
    ModelAdmin,
    WebhookStore,
)
from services.gateway.ratelimit import RateLimiter
from services.gateway.runs import RunsApi


@dataclass
class GatewayState:
    hub: ConversationHub
    auth: Authenticator
    limiter: RateLimiter
    config: GatewayConfig
    metrics: GatewayMetrics
    models: ModelAdmin | None
    definitions: DefinitionStore | None
    ready: Callable[[], bool]
    webhooks: WebhookStore | None = None
    audit: AuditLog | None = None
    runs: RunsApi | None = None  # the RPA runner's API (None: the run routes answer 503)
    # People's browser sessions (OIDC sign-in, services/gateway/oidc.py); None: OIDC is off.
    sessions: BrowserSessions | None = None
    stopping: bool = False
    sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)


STATE = web.AppKey("gateway_state", GatewayState)
PRINCIPAL = web.RequestKey("principal", Principal)
TOKEN = web.RequestKey("token", str)
# The tenant the path's bot belongs to (set by the guard; services/gateway/access.py).
BOT_TENANT = web.RequestKey("bot_tenant", str)
# The path's bot does not exist yet and a `creates` route makes it BOT_TENANT's (the guard).
CREATING = web.RequestKey("creating_bot", bool)
CORRELATION = web.RequestKey("correlation_id", str)
# Set by a send whose sync wait went on for the workflow results of its turn (docs/chat-api.md):
# its latency is the workflows', labelled wait="workflow" (middlewares.wait_label).
WAITED_WORKFLOWS = web.RequestKey("waited_workflows", bool)


def state_of(request: web.Request) -> GatewayState:
    return request.app[STATE]


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]
