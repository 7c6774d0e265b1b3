"""Process lifecycle for services: run until SIGTERM/SIGINT, then stop gracefully."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Protocol

from services.common.logging import get_logger

log = get_logger(__name__)


async def serve_until_signal(start: Callable[[], Awaitable[None]],
                             stop: Callable[[], Awaitable[None]]) -> None:
    """Start, wait for SIGTERM or SIGINT, then stop (stop accepting, drain, exit)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await start()
        await stopping.wait()
        log.info("shutdown_requested")
    finally:
        await stop()


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def run_service(factory: Callable[[], Service]) -> None:
    """Build the service inside the running event loop (gRPC aio servers bind to the loop
    they are created in), then serve it until SIGTERM/SIGINT."""
    service = factory()
    await serve_until_signal(service.start, service.stop)
