"""The gateway's server-push WebSockets (a conversation's, an agent desk's): the handshake,
a live stream subscribed before the handshake completes (so nothing sent meanwhile is
missed), a pusher task, and a close that runs even when the client went away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, web

from services.common.logging import get_logger
from services.common.pb.botfactory.v1.conversation_pb2 import BotMessage
from services.gateway.http.problems import RequestInvalid
from services.gateway.http.state import state_of

log = get_logger(__name__)
WS_PROTOCOL = "botfactory.v1"

Stream = AsyncIterator[BotMessage]
Frame = Callable[[BotMessage], dict[str, Any]]
Receive = Callable[[web.WebSocketResponse], Awaitable[None]]


async def serve_socket(request: web.Request, open_stream: Callable[[], Stream], frame: Frame,
                       receive: Receive, *, max_msg_size: int = 4 * 1024 * 1024,
                       ) -> web.WebSocketResponse:
    """Upgrade `request`, push `frame(message)` for each message of `open_stream()` and run
    `receive(ws)` until it returns (the client closed, or `receive` ended the session)."""
    state = state_of(request)
    ws = web.WebSocketResponse(protocols=(WS_PROTOCOL,), heartbeat=state.config.ws_heartbeat_s,
                               max_msg_size=max_msg_size)
    if not ws.can_prepare(request).ok:
        raise RequestInvalid.one("Upgrade", "a WebSocket handshake is required")
    stream = open_stream()  # before the handshake: nothing is missed
    open_ = asyncio.Event()
    pusher = asyncio.create_task(_push(ws, stream, frame, open_))
    try:
        await ws.prepare(request)
        open_.set()
        state.sockets.add(ws)
        await receive(ws)
    finally:
        pusher.cancel()
        # Shielded: the server cancels the handler when the client goes away.
        await asyncio.shield(_close(ws, pusher, stream))
    return ws


async def _push(ws: web.WebSocketResponse, stream: Stream, frame: Frame,
                open_: asyncio.Event) -> None:
    try:
        async for message in stream:
            await open_.wait()
            if ws.closed:
                break
            await ws.send_json(frame(message))
    except ConnectionError:
        pass
    except Exception:
        log.exception("ws_push_failed")
        await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")


async def _close(ws: web.WebSocketResponse, pusher: asyncio.Task[None], stream: Stream) -> None:
    await asyncio.gather(pusher, return_exceptions=True)
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        await closer()
    if ws.prepared:
        await ws.close()
