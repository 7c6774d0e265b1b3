"""Process lifecycle for services: run until SIGTERM/SIGINT, then stop gracefully."""

from __future__ import annotations

import asyncio
import functools
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry

from services.common.logging import configure_logging, get_logger
from services.common.metrics import MetricsServer, start_metrics_server
from services.common.nats import Bus, connect, provision

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


S = TypeVar("S", bound=Service)


class Components:
    """A service's start/stop bookkeeping: what `start()` brought up is stopped in the reverse
    order, each part once, also when `start()` failed half-way (one AsyncExitStack)."""

    def __init__(self) -> None:
        self._stack = AsyncExitStack()

    async def start(self, component: S) -> S:
        """Start `component` and stop it with the others."""
        await component.start()
        self.on_stop(component.stop)
        return component

    def serve_metrics(self, registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
        """`/metrics` for `registry` (port 0: a free one), stopped with the others."""
        server = start_metrics_server(registry, host, port)
        self.on_stop_sync(server.stop)
        return server

    async def bus(self, url: str, name: str) -> Bus:
        """A connection to NATS with every stream and bucket provisioned, drained on stop."""
        bus = await connect(url, name=name)
        self.on_stop(bus.drain)
        await provision(bus)
        return bus

    def on_stop(self, stop: Callable[[], Awaitable[object]]) -> None:
        self._stack.push_async_callback(stop)

    def on_stop_sync(self, stop: Callable[[], object]) -> None:
        self._stack.callback(stop)

    async def stop(self) -> None:
        """Stop everything started so far, last first (a second call does nothing)."""
        await self._stack.aclose()


async def run_service(factory: Callable[[], Service]) -> None:
    """Build the service inside the running event loop (gRPC aio servers bind to the loop
    they are created in), then serve it until SIGTERM/SIGINT."""
    service = factory()
    await serve_until_signal(service.start, service.stop)


def service_main(name: str, load: Callable[[], Any], factory: Callable[[Any], Service],
                 fatal: tuple[type[Exception], ...] = ()) -> int:
    """The body of every service's `__main__`: read the config (exit 2 on a bad value), log
    as JSON, serve until SIGTERM. `fatal` start-up errors (a bad model or bot definition) and
    an unreachable bus exit 1 with one line of explanation, never a traceback."""
    try:
        config = load()
        configure_logging(name, config.log_level)
    except ValueError as exc:  # ConfigError is a ValueError
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    startup_errors: tuple[type[Exception], ...] = (*fatal, ConnectionError)
    try:
        asyncio.run(run_service(functools.partial(factory, config)))
    except startup_errors as exc:
        print(f"{name}: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
