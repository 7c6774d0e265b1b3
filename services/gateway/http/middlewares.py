"""Middlewares, outermost first: `observe` (correlation id, metrics, security headers),
`problems` (the one place errors become RFC 9457 responses), `guard` (API key, rate limit,
path ids, role and bot scope, as the route table says)."""

from __future__ import annotations

import asyncio
import re
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from services.common.errors import DomainError
from services.common.logging import bind_correlation_id, get_logger
from services.gateway.auth import authorize
from services.gateway.http.conversations import socket_token
from services.gateway.http.problems import (
    INTERNAL_DETAIL,
    RequestInvalid,
    from_domain_error,
    from_http_exception,
    problem,
)
from services.gateway.http.routes import RouteSpec, spec_of
from services.gateway.http.runs import RUN_ID
from services.gateway.http.state import CORRELATION, PRINCIPAL, TOKEN, GatewayState, state_of
from services.gateway.http.wire import BOT_ID, CONVERSATION_ID, RATED_MESSAGE_ID
from services.gateway.ratelimit import RateLimited

log = get_logger(__name__)

CORRELATION_HEADER = "X-Correlation-Id"
CORRELATION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
PATH_IDS = {"bot": BOT_ID, "conversation": CONVERSATION_ID, "message_id": RATED_MESSAGE_ID,
            "key_id": re.compile(r"^[0-9a-f]{1,64}$"), "run_id": RUN_ID}
API_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    offered = request.headers.get(CORRELATION_HEADER, "")
    correlation_id = bind_correlation_id(offered if CORRELATION_ID.match(offered) else None)
    request[CORRELATION] = correlation_id
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers[CORRELATION_HEADER] = correlation_id
            for name, value in API_HEADERS.items():
                response.headers.setdefault(name, value)
        return response
    finally:
        record(state_of(request), request, status, time.perf_counter() - started)


def route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def record(state: GatewayState, request: web.Request, status: int, seconds: float) -> None:
    route = route_label(request)
    state.metrics.requests.labels(route=route, method=request.method, status=str(status)).inc()
    if status != 101:  # a WebSocket's time is the session's length, not a latency
        state.metrics.latency.labels(route=route, method=request.method).observe(seconds)


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RateLimited as exc:
        return from_domain_error(exc, headers={"Retry-After": exc.retry_after_header})
    except DomainError as exc:
        if exc.http_status >= 500:
            log.warning("request_failed", error=str(exc), status=exc.http_status,
                        path=request.path)
        return from_domain_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return from_http_exception(exc)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path)
        return problem(500, INTERNAL_DETAIL)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    spec = spec_of(request)
    if spec is not None and spec.role is not None:
        await admit(request, spec)
    return await handler(request)


async def admit(request: web.Request, spec: RouteSpec) -> None:
    """401 → 429 → 400 (path ids) → 403, in that order."""
    assert spec.role is not None
    state = state_of(request)
    token = bearer_token(request) or (socket_token(request) if spec.websocket else None)
    principal = await state.auth.authenticate(
        token, client_address(request, state.config.client_ip_header))
    request[PRINCIPAL] = principal
    request[TOKEN] = token or ""
    try:
        state.limiter.check(principal.key_id)
    except RateLimited:
        state.metrics.rate_limited.inc()
        raise
    check_path_ids(request)
    authorize(principal, spec.role, request.match_info.get("bot"))


def client_address(request: web.Request, header: str) -> str:
    """The caller's address: the TCP peer, or the last entry of `header` when the gateway
    sits behind a proxy that sets it (GatewayConfig.client_ip_header)."""
    if header:
        forwarded = request.headers.get(header, "").split(",")[-1].strip()
        if forwarded:
            return forwarded[:64]
    return request.remote or "unknown"


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def check_path_ids(request: web.Request) -> None:
    for name, value in request.match_info.items():
        pattern = PATH_IDS.get(name)
        if pattern is not None and not pattern.match(value):
            raise RequestInvalid.one(name, f"must match {pattern.pattern}")
