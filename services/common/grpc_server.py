"""gRPC aio server bootstrap: health service, reflection, correlation ids, graceful stop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.logging import CORRELATION_METADATA, bind_correlation_id

MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class CorrelationInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Binds the request's `x-correlation-id` (or a new id) to the logging context."""

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        metadata = dict(handler_call_details.invocation_metadata or ())
        bind_correlation_id(metadata.get(CORRELATION_METADATA))
        return await continuation(handler_call_details)


class GrpcServer:
    """A grpc.aio server with health and reflection; `stop` drains in-flight calls."""

    def __init__(self, service_names: Iterable[str], host: str, port: int) -> None:
        self._server = grpc.aio.server(
            interceptors=[CorrelationInterceptor()],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                # Clients re-resolve and rebalance when a connection ages out, so new replicas
                # behind a Kubernetes Service get traffic.
                ("grpc.max_connection_age_ms", 300_000),
                ("grpc.max_connection_age_grace_ms", 30_000),
            ],
        )
        self._names = list(service_names)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [*self._names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server)
        self.port: int = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {host}:{port}")

    @property
    def server(self) -> grpc.aio.Server:
        return self._server

    async def start(self) -> None:
        await self._server.start()
        await self._set_status(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_seconds: float) -> None:
        """Report NOT_SERVING, refuse new calls and wait up to `grace_seconds` for the rest."""
        await self._set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.stop(grace_seconds)

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def _set_status(self, status: int) -> None:
        for name in ("", *self._names):
            await self._health.set(name, status)
