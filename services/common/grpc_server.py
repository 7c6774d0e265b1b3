"""gRPC aio server bootstrap: health service, reflection, correlation ids, graceful stop; and
optional TLS for servers and the channels of the internal hops.

TLS of the internal gRPC hops comes from `BOTFACTORY_GRPC_TLS_*` (GrpcTlsConfig), shared by the
services of a host or pod: CERT + KEY make every server listen with TLS, CA makes every client
verify servers against it (docs/security.md, "TLS"). Unset: plaintext (the local default).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.config import load_config, require
from services.common.logging import CORRELATION_METADATA, bind_correlation_id

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
TLS_SECTION = "grpc"


@dataclass(frozen=True)
class GrpcTlsConfig:
    """`BOTFACTORY_GRPC_TLS_CERT` / `_KEY`: the servers' certificate and key (PEM);
    `_CLIENT_CA`: servers require client certificates signed by it; `_CA`: clients verify
    servers against it; `_CLIENT_CERT` / `_CLIENT_KEY`: the clients' own certificate."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_ca: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None

    def validate(self) -> None:
        for name in ("tls_cert", "tls_key", "tls_client_ca", "tls_ca", "tls_client_cert",
                     "tls_client_key"):
            path = getattr(self, name)
            require(path is None or path.is_file(), f"BOTFACTORY_GRPC_{name.upper()}",
                    f"no such file: {path}")
        require((self.tls_cert is None) == (self.tls_key is None), "BOTFACTORY_GRPC_TLS_CERT",
                "and BOTFACTORY_GRPC_TLS_KEY must be set together")
        require((self.tls_client_cert is None) == (self.tls_client_key is None),
                "BOTFACTORY_GRPC_TLS_CLIENT_CERT", "and _CLIENT_KEY must be set together")

    def server(self) -> ServerTls | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        return ServerTls(self.tls_cert, self.tls_key, self.tls_client_ca)


@dataclass(frozen=True)
class ServerTls:
    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        pair = [(self.key.read_bytes(), self.cert.read_bytes())]
        if self.client_ca is None:
            return grpc.ssl_server_credentials(pair)
        return grpc.ssl_server_credentials(pair, root_certificates=self.client_ca.read_bytes(),
                                           require_client_auth=True)


def open_channel(target: str, *, options: Sequence[tuple[str, Any]] = (),
                 tls: GrpcTlsConfig | None = None) -> grpc.aio.Channel:
    """A client channel: TLS when `tls` (default: BOTFACTORY_GRPC_TLS_*) has a CA, else
    plaintext."""
    tls = tls if tls is not None else load_config(GrpcTlsConfig, TLS_SECTION)
    if tls.tls_ca is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    cert = tls.tls_client_cert.read_bytes() if tls.tls_client_cert else None
    key = tls.tls_client_key.read_bytes() if tls.tls_client_key else None
    credentials = grpc.ssl_channel_credentials(tls.tls_ca.read_bytes(), key, cert)
    return grpc.aio.secure_channel(target, credentials, options=list(options))


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

    def __init__(self, service_names: Iterable[str], host: str, port: int, *,
                 tls: ServerTls | None = None) -> None:
        """`tls`: listen with TLS (default: BOTFACTORY_GRPC_TLS_CERT / _KEY when set)."""
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
        tls = tls if tls is not None else load_config(GrpcTlsConfig, TLS_SECTION).server()
        self.tls = tls is not None
        address = f"{host}:{port}"
        self.port: int = (self._server.add_secure_port(address, tls.credentials())
                          if tls is not None else self._server.add_insecure_port(address))
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
