"""What the handlers share, kept on the application (no module-level clients)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from services.gateway.auth import Authenticator, Principal
from services.gateway.config import GatewayConfig
from services.gateway.http.metrics import GatewayMetrics
from services.gateway.ports import ConversationHub, DefinitionStore, ModelAdmin, WebhookStore
from services.gateway.ratelimit import RateLimiter


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
    stopping: bool = False
    sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)


STATE = web.AppKey("gateway_state", GatewayState)
PRINCIPAL = web.RequestKey("principal", Principal)
TOKEN = web.RequestKey("token", str)


def state_of(request: web.Request) -> GatewayState:
    return request.app[STATE]


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]
