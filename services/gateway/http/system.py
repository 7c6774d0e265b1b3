"""Unauthenticated routes: liveness, readiness, the OpenAPI document, the web chat page."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.common.errors import NotFound, Unavailable
from services.gateway.http.state import state_of
from services.gateway.http.wire import json_response

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                ".svg": "image/svg+xml", ".ico": "image/x-icon"}
OPENAPI = web.AppKey("openapi_document", dict)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = state_of(request)
    if state.stopping or not state.ready():
        raise Unavailable("not ready: the message bus is not connected")
    return json_response({"status": "ready"})


async def openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])


def static_path(name: str) -> Path:
    path = (STATIC_DIR / name).resolve()
    if path.parent != STATIC_DIR or path.suffix not in STATIC_TYPES or not path.is_file():
        raise NotFound(f"no static file {name!r}")
    return path


def file_response(path: Path) -> web.FileResponse:
    headers = {"Content-Type": f"{STATIC_TYPES[path.suffix]}; charset=utf-8", **PAGE_HEADERS}
    return web.FileResponse(path, headers=headers)


async def index(request: web.Request) -> web.FileResponse:
    return file_response(static_path("index.html"))


async def static_file(request: web.Request) -> web.FileResponse:
    return file_response(static_path(request.match_info["name"]))
