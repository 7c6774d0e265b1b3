"""Optional TLS: NATS (the client verifies the server against a CA file) and the gateway's public
gRPC API, with a self-signed certificate made for the test by the `openssl` CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest

from botfactory.local.nats_server import NatsServer
from botfactory.local.natsconf import TlsFiles
from services.common.grpc_server import GrpcTlsConfig, open_channel
from services.common.nats import NatsTlsConfig, connect, provision
from services.common.pb.botfactory.v1 import gateway_pb2, gateway_pb2_grpc
from tests.support.stack import running_stack


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1 / localhost (its own CA)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return TlsFiles(cert=cert, key=key)


async def test_nats_over_tls_with_a_ca_file(tmp_path: Path, certificate: TlsFiles) -> None:
    server = NatsServer(tmp_path / "nats", tls=certificate)
    server.start()
    try:
        assert server.url.startswith("tls://admin:")
        bus = await connect(server.url, name="tls-test",
                            tls=NatsTlsConfig(tls_ca=certificate.cert))
        try:
            await provision(bus)
            ack = await bus.js.publish("events.tls.check", b"over tls")
            assert ack.stream == "EVENTS"
        finally:
            await bus.drain()
        with pytest.raises(Exception):  # noqa: B017 - the system roots do not trust it
            await connect(server.url, name="untrusting", connect_timeout=1.0,
                          tls=NatsTlsConfig())
    finally:
        server.stop()


async def test_gateway_grpc_over_tls(nats_server: NatsServer, tiny_banking_model: Path,
                                     certificate: TlsFiles) -> None:
    async with running_stack(nats_server.url, tiny_banking_model,
                             grpc_tls_cert=certificate.cert,
                             grpc_tls_key=certificate.key) as stack:
        target = f"127.0.0.1:{stack.gateway.grpc_port}"
        request = gateway_pb2.SendMessageRequest(bot_id="banking", conversation_id="tls1",
                                                 text="/greet", message_id="tls1-a")
        auth = (("authorization", f"Bearer {stack.client_key}"),)
        async with open_channel(target, tls=GrpcTlsConfig(tls_ca=certificate.cert)) as channel:
            reply = await gateway_pb2_grpc.ChatServiceStub(channel).SendMessage(
                request, metadata=auth, timeout=10)
            assert reply.complete and reply.replies
        async with grpc.aio.insecure_channel(target) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await gateway_pb2_grpc.ChatServiceStub(plain).SendMessage(
                    request, metadata=auth, timeout=3)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
