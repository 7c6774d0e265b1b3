"""The client's correlation id (HTTP `X-Correlation-Id`, gRPC `x-correlation-id`), bound to the
gateway's logging context, travels with the message on the bus: the dialogue logs the same id,
not the message id (issue 17 item 16). Against a real nats-server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import structlog

from botfactory.local.nats_server import NatsServer
from services.common.logging import bind_correlation_id, configure_logging
from services.common.nats import STREAM_CONV_IN, connect, provision
from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.subjects import inbound
from services.dialogue.worker import decode
from services.gateway.hub import BusHub
from tests.support.stack import running_stack

PARTITIONS = 4


async def test_the_clients_correlation_id_reaches_the_dialogue(nats_server: NatsServer) -> None:
    bus = await connect(nats_server.url, name="test")
    try:
        await provision(bus)
        hub = BusHub(bus, partitions=PARTITIONS)
        bind_correlation_id("client-corr-17")
        message = conversation_pb2.UserMessage(bot_id="banking", conversation_id="c1",
                                               message_id="m-1", text="hello")
        await hub.send(message, wait_s=0.0)
        structlog.contextvars.clear_contextvars()
        await hub.send(conversation_pb2.UserMessage(bot_id="banking", conversation_id="c1",
                                                    message_id="m-2", text="again"), wait_s=0.0)
        subject = inbound("banking", "c1", PARTITIONS)
        first = await bus.js.get_msg(STREAM_CONV_IN, seq=1)
        second = await bus.js.get_msg(STREAM_CONV_IN, seq=2)
        assert first.subject == second.subject == subject
        assert decode(first).correlation_id == "client-corr-17"  # type: ignore[arg-type]
        # no correlation id bound (e.g. an internal caller): the message id, as before
        assert decode(second).correlation_id == "m-2"  # type: ignore[arg-type]
    finally:
        structlog.contextvars.clear_contextvars()
        await bus.drain()


def log_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


async def test_one_info_line_per_request_and_per_turn_with_the_clients_id(
        nats_server: NatsServer, tiny_banking_model: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("test", "INFO")
    try:
        async with running_stack(nats_server.url, tiny_banking_model) as stack:
            assert stack.session is not None
            url = f"{stack.base_url}/v1/bots/banking/conversations/corr-1/messages"
            headers = {"Authorization": f"Bearer {stack.client_key}",
                       "X-Correlation-Id": "client-corr-42"}
            async with stack.session.post(url, json={"text": "/greet"}, headers=headers) as resp:
                assert resp.status == 200
                assert resp.headers["X-Correlation-Id"] == "client-corr-42"
        lines = [line for line in log_lines(capsys.readouterr().out)
                 if line.get("correlation_id") == "client-corr-42"]
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
    requests = [line for line in lines if line["event"] == "http_request"]
    turns = [line for line in lines if line["event"] == "turn"]
    assert len(requests) == 1 and requests[0]["level"] == "info"
    assert requests[0]["status"] == 200 and requests[0]["method"] == "POST"
    assert requests[0]["route"] == "/v1/bots/{bot}/conversations/{conversation}/messages"
    assert len(turns) == 1 and turns[0]["level"] == "info"
    assert turns[0]["bot"] == "banking" and turns[0]["outcome"] == "ok"
    assert turns[0]["kind"] == "message"
