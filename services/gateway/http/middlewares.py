"""Middlewares, outermost first: `observe` (correlation id, metrics, a log line, security
headers), `cors` (OPTIONS and CORS headers: the configured origins, and a bot's widget origins
on the routes a widget page calls), `problems` (the one place errors become RFC 9457
responses), `guard` (API key or visitor token, rate limit, path ids, role, bot and
conversation scope, as the route table says; then a JSON body's Content-Type)."""

from __future__ import annotations

import asyncio
import re
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from services.common.errors import DomainError, PermissionDenied
from services.common.logging import bind_correlation_id, get_logger
from services.gateway.access import ALL_TENANTS, TENANT_NAME, BotNotFound, Permission
from services.gateway.auth import Principal
from services.gateway.channels.widget import allowed_origins
from services.gateway.http.bodies import PATH_IDS, check_path_id
from services.gateway.http.conversations import socket_token
from services.gateway.http.problems import (
    INTERNAL_DETAIL,
    UnsupportedMediaType,
    from_domain_error,
    from_http_exception,
    problem,
)
from services.gateway.http.routes import SPEC, WAIT, RouteSpec, spec_of
from services.gateway.http.state import (
    BOT_TENANT,
    CORRELATION,
    CREATING,
    PRINCIPAL,
    TOKEN,
    WAITED_WORKFLOWS,
    GatewayState,
    state_of,
)
from services.gateway.http.widget import widget_settings
from services.gateway.ports import BotNotServed, Role
from services.gateway.ratelimit import RateLimited

log = get_logger(__name__)

CORRELATION_HEADER = "X-Correlation-Id"
CORRELATION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
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


def wait_label(request: web.Request, status: int) -> str:
    """How a request that may wait for the bot's turn ended: "complete" (200: the turn ended
    within the sync wait), "workflow" (the wait went on for the results of the workflows the
    turn started: their time, not the platform's), "incomplete" (202 after waiting: the wait
    ran out or was cut short, e.g. a long workflow), "none" (no wait asked). The latency SLI
    leaves "incomplete" and "workflow" out: that time is the configured wait or the
    workflows', by design."""
    spec = spec_of(request)
    if spec is None or WAIT not in spec.query:
        return "none"
    if request.query.get("wait", "true").lower() not in ("true", "1"):
        return "none"
    if request.get(WAITED_WORKFLOWS) and status in (200, 202):
        return "workflow"
    return {200: "complete", 202: "incomplete"}.get(status, "none")


PROBE_ROUTES = frozenset({"/healthz", "/readyz"})


def record(state: GatewayState, request: web.Request, status: int, seconds: float) -> None:
    """Metrics and one log line per request (INFO; probes at DEBUG)."""
    route = route_label(request)
    state.metrics.requests.labels(route=route, method=request.method, status=str(status)).inc()
    write = log.debug if route in PROBE_ROUTES else log.info
    write("http_request", method=request.method, route=route, status=status,
          bot=request.match_info.get("bot"), duration_ms=round(seconds * 1000, 1))
    if status != 101:  # a WebSocket's time is the session's length, not a latency
        state.metrics.latency.labels(route=route, method=request.method,
                                     wait=wait_label(request, status)).observe(seconds)


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
    elif spec is not None:  # a public route (a platform's channel webhook): ids only
        check_path_ids(request)
    if spec is not None and spec.request is not None:
        check_content_type(request)
    return await handler(request)


def check_content_type(request: web.Request) -> None:
    """415 for a body that is not JSON (`application/json` or `application/<x>+json`); a
    request without a body is left to the handler (some bodies are optional)."""
    if not request.body_exists:
        return
    kind = request.content_type.lower()
    if kind != "application/json" and not (kind.startswith("application/")
                                           and kind.endswith("+json")):
        raise UnsupportedMediaType(request.headers.get("Content-Type", ""))


# --- CORS -------------------------------------------------------------------------------------

CORS_HEADERS = "Authorization, Content-Type, X-Correlation-Id"
CORS_EXPOSED = "X-Correlation-Id, Retry-After"
CORS_MAX_AGE_S = "600"


Target = tuple[RouteSpec, str]  # a route and the bot in its path


async def allowed_origin(request: web.Request, target: Target | None) -> str | None:
    """The request's Origin when the configuration allows it, or, on a route a widget page
    calls (`target`), when it is on the bot's widget allow-list; None otherwise."""
    origin = request.headers.get("Origin")
    if not origin:
        return None
    allowed = state_of(request).config.cors_allowed_origins
    if origin in allowed or "*" in allowed:
        return origin
    if target is not None and await on_widget_list(request, target, origin):
        return origin
    return None


def widget_target(spec: RouteSpec | None, bot: str | None) -> Target | None:
    """(spec, bot) for the routes a widget page calls: the widget's own (least role
    publishable) and those a visitor token may (send, follow, transcript, feedback)."""
    if spec is None or bot is None or PATH_IDS["bot"].match(bot) is None:
        return None
    return (spec, bot) if spec.role is Role.PUBLISHABLE or spec.visitor else None


async def on_widget_list(request: web.Request, target: Target, origin: str) -> bool:
    try:
        settings = await widget_settings(request, target[1])
    except Exception:  # a CORS answer must not fail on the settings store
        log.warning("widget_settings_unavailable", bot=target[1], exc_info=True)
        return False
    return settings is not None and origin in allowed_origins(settings)


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """OPTIONS (CORS preflight or not) answered here, without an API key; the answers to
    allowed origins carry Access-Control-Allow-Origin (BOTFACTORY_GATEWAY_CORS_ALLOWED_ORIGINS,
    none by default; and a bot's widget origins on the routes its widget calls)."""
    if request.method == "OPTIONS":
        return await options(request)
    response = await handler(request)
    if response.prepared or "Origin" not in request.headers:
        return response
    target = widget_target(spec_of(request), request.match_info.get("bot"))
    origin = await allowed_origin(request, target)
    if origin is not None:
        response.headers.update({"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                                 "Access-Control-Expose-Headers": CORS_EXPOSED})
    return response


async def options(request: web.Request) -> web.Response:
    """204 with the path's methods in Allow (and, for an allowed origin's preflight, the
    Access-Control-Allow-* headers); 404 for an unknown path; 403 for a preflight from an
    origin that is not allowed (counted when it is for a widget route)."""
    methods = path_methods(request)
    if methods is None:
        return problem(404, "Not Found")
    allow = ", ".join(sorted({*methods, "OPTIONS"}))
    if "Access-Control-Request-Method" not in request.headers:
        return web.Response(status=204, headers={"Allow": allow})
    target = await preflight_target(request, methods)
    origin = await allowed_origin(request, target)
    if origin is None:
        if target is not None and target[0].role is Role.PUBLISHABLE:
            state_of(request).metrics.widget_refused.labels("preflight").inc()
        return problem(403, "this origin may not call the API from a browser (CORS)")
    return web.Response(status=204, headers={
        "Allow": allow, "Access-Control-Allow-Origin": origin, "Vary": "Origin",
        "Access-Control-Allow-Methods": allow, "Access-Control-Allow-Headers": CORS_HEADERS,
        "Access-Control-Max-Age": CORS_MAX_AGE_S})


async def preflight_target(request: web.Request, methods: set[str]) -> Target | None:
    """The widget target of the request a preflight asks about (its method on this path)."""
    method = request.headers.get("Access-Control-Request-Method", "").upper()
    if method not in methods:
        return None
    match = await request.app.router.resolve(request.clone(method=method))
    spec = request.app[SPEC].get(match.route.name or "")
    return widget_target(spec if isinstance(spec, RouteSpec) else None, match.get("bot"))


def path_methods(request: web.Request) -> set[str] | None:
    """The methods the request's path has routes for (None: no such path)."""
    error = request.match_info.http_exception
    if isinstance(error, web.HTTPMethodNotAllowed):
        return set(error.allowed_methods)
    if error is not None:
        return None
    return {request.method}


async def admit(request: web.Request, spec: RouteSpec) -> None:
    """401 → 429 → 400 (path ids) → 403 (permission) → 404 (a bot out of reach) → 403 (the
    permission in the bot's tenant), in that order (services/gateway/auth.py authorize)."""
    assert spec.needs is not None
    state = state_of(request)
    token = bearer_token(request) or (socket_token(request) if spec.websocket else None)
    client = client_address(request, state.config.client_ip_header)
    if token is None and state.sessions is not None and state.sessions.present(request):
        principal = await state.sessions.principal(request, client)  # a person's browser
    else:
        principal = await state.auth.authenticate(token, client)
    request[PRINCIPAL] = principal
    request[TOKEN] = token or ""
    try:
        state.limiter.check(principal.rate_bucket(client))
    except RateLimited:
        state.metrics.rate_limited.inc()
        raise
    check_path_ids(request)
    bot = request.match_info.get("bot")
    conversation = request.match_info.get("conversation") if spec.visitor else None
    try:
        try:
            tenant = await state.auth.admit(principal, spec.needs, bot,
                                            conversation=conversation)
        except BotNotFound:
            if not spec.creates or bot is None:
                raise
            tenant = await new_bot_tenant(request, principal, spec.needs, bot)
            request[CREATING] = True
    except (PermissionDenied, BotNotFound):
        if principal.is_publishable:  # a page's key used elsewhere: worth watching
            state.metrics.widget_refused.labels("scope").inc()
        raise
    if tenant is not None:
        request[BOT_TENANT] = tenant


async def new_bot_tenant(request: web.Request, principal: Principal, need: Permission,
                         bot: str) -> str:
    """The tenant a bot out of the caller's reach becomes when a `creates` route makes it: a
    bot that does not exist (no owner record, no deployed definition, served by no replica),
    for the caller's tenant (`?tenant=` with several) where it has `need`; else the same 404
    as any bot out of reach (a taken bot id is taken, whoever has it)."""
    state = state_of(request)
    if await state.auth.owners.owner(bot) is not None or await bot_exists(state, bot):
        raise BotNotFound(bot)
    wanted = request.query.get("tenant")
    tenants = [t for t in principal.tenants_with(need) if t != ALL_TENANTS]
    if wanted is not None:
        tenants = [wanted] if TENANT_NAME.match(wanted) and need in principal.permissions(
            wanted) else []
    if len(tenants) != 1 or not principal.allows_bot(bot) or principal.is_visitor:
        raise BotNotFound(bot)
    return tenants[0]


async def bot_exists(state: GatewayState, bot: str) -> bool:
    """Whether a bot has a deployed definition or is served by a dialogue replica."""
    try:
        state.hub.check_served(bot)
        return True
    except BotNotServed:
        pass
    return state.definitions is not None and await state.definitions.exists(bot)


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
        if name in PATH_IDS:
            check_path_id(value, name)
