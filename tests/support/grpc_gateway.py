"""The gateway's gRPC ChatService served on a local port against an in-memory hub, for the
unit tests of the gRPC API and of the one request definition (tests/unit/test_gateway_grpc.py,
test_gateway_bodies.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import grpc
from prometheus_client import CollectorRegistry

from services.common.pb.botfactory.v1 import gateway_pb2_grpc
from services.gateway.auth import Authenticator
from services.gateway.config import GatewayConfig
from services.gateway.grpc_api import ChatServicer, add_chat_service
from services.gateway.http import GatewayMetrics
from services.gateway.http.app import build_authenticator, build_limiter
from services.gateway.ports import Role
from tests.support.gateway import FakeClock, FakeHub
from tests.support.memstores import InMemoryKeyStore


@dataclass
class Served:
    stub: Any  # gateway_pb2_grpc.ChatServiceAsyncStub
    hub: FakeHub
    auth: Authenticator
    servicer: ChatServicer
    clock: FakeClock
    metrics: GatewayMetrics
    key: str

    def metadata(self, key: str | None = None) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {key or self.key}"),)


async def serve(config: GatewayConfig) -> AsyncIterator[Served]:
    hub, clock = FakeHub(), FakeClock()
    metrics = GatewayMetrics.create(CollectorRegistry())
    auth = build_authenticator(InMemoryKeyStore(), config, clock)
    limiter = build_limiter(config, clock)
    server = grpc.aio.server()
    servicer = add_chat_service(server, hub, auth, limiter, config, metrics)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    key = (await auth.issue("t1", ("alpha",), Role.CLIENT)).secret
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = cast(Any, gateway_pb2_grpc.ChatServiceStub(channel))
            yield Served(stub, hub, auth, servicer, clock, metrics, key)
    finally:
        servicer.close()
        await server.stop(0.5)
