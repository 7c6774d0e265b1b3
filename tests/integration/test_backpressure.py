"""Backpressure and outages at the gateway, on a real nats-server with the real services:
load is shed with 503 + Retry-After before anything is published, an outage gives retriable
errors (HTTP 503, gRPC UNAVAILABLE + `retry-after`), and no accepted message is lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from botfactory.local.nats_server import NatsServer
from services.common.nats import connect
from services.common.pb.botfactory.v1 import gateway_pb2, gateway_pb2_grpc
from tests.support.stack import Stack, running_stack

OVERLOADED = "urn:botfactory:problem:overloaded"


async def post(stack: Stack, conversation: str, message_id: str, *,
               wait: bool = False) -> tuple[int, dict[str, Any], dict[str, str]]:
    assert stack.session is not None
    url = f"{stack.base_url}/v1/bots/banking/conversations/{conversation}/messages"
    url += "" if wait else "?wait=false"
    headers = {"Authorization": f"Bearer {stack.client_key}"}
    body = {"text": "/greet", "message_id": message_id}
    async with stack.session.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None), dict(resp.headers)


async def inbound_messages(nats_url: str) -> int:
    """The user messages stored in CONV_IN: not handled yet (a work queue drops acked ones)."""
    bus = await connect(nats_url, name="probe")
    try:
        info = await bus.js.stream_info("CONV_IN", subjects_filter="conv.in.>")
        return sum((info.state.subjects or {}).values())
    finally:
        await bus.drain()


async def replied(stack: Stack, conversations: list[str]) -> set[str]:
    """The message ids that have a bot reply in their conversation's transcript (within 30 s)."""
    deadline = time.monotonic() + 30.0
    found: set[str] = set()
    while time.monotonic() < deadline:
        found = set()
        for conversation in conversations:
            found |= {e["in_reply_to"] for e in await stack.transcript(conversation)
                      if e["type"] == "bot"}
        if len(found) >= len(conversations):
            return found
        await asyncio.sleep(0.3)
    return found


def shed_count(stack: Stack, reason: str) -> float:
    value = stack.gateway.metrics.registry.get_sample_value(
        "botfactory_gateway_shed_total", {"reason": reason})
    return value or 0.0


async def test_sheds_above_max_pending_and_answers_every_accepted_message(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model, dialogues=0,
                             max_pending=4, max_pending_per_bot=4) as stack:
        await stack.announce("banking")  # served, but its dialogue is not running
        results = [await post(stack, f"bp{i}", f"bp{i}-m") for i in range(10)]
        accepted = [f"bp{i}" for i, (status, _, _) in enumerate(results) if status == 202]
        shed = [r for r in results if r[0] == 503]
        assert len(accepted) == 4 and len(shed) == 6, [r[0] for r in results]
        for _, problem, headers in shed:
            assert problem["type"] == OVERLOADED and int(headers["Retry-After"]) >= 1
            assert problem["retry_after"] >= 1
        assert await inbound_messages(nats_server.url) == 4  # nothing shed was published
        assert shed_count(stack, "pending") == 6

        await stack.add_dialogue()  # the dialogue catches up: every accepted message answered
        assert await replied(stack, accepted) == {f"{c}-m" for c in accepted}
        assert stack.gateway.backpressure is not None
        assert stack.gateway.backpressure.pending == 0
        status, body, _ = await post(stack, "bp-after", "bp-after-m", wait=True)
        assert status == 200 and body["complete"]


async def test_sheds_when_the_dialogue_backlog_is_over_its_bound(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model, dialogues=1,
                             max_backlog=3, backlog_check_s=0.1,
                             pending_expiry_s=0.1) as stack:
        await stack.dialogues.pop().stop()  # its durable consumers stay, nobody consumes
        for i in range(3):
            assert (await post(stack, f"bl{i}", f"bl{i}-m"))[0] == 202
        await asyncio.sleep(0.5)  # the background check sees the backlog
        status, problem, headers = await post(stack, "bl-x", "bl-x-m")
        assert status == 503 and problem["type"] == OVERLOADED and "Retry-After" in headers
        assert shed_count(stack, "backlog") == 1
        assert await inbound_messages(nats_server.url) == 3

        await stack.add_dialogue()
        assert await replied(stack, [f"bl{i}" for i in range(3)]) == \
            {f"bl{i}-m" for i in range(3)}


async def test_nats_outage_gives_retriable_errors_then_recovers(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model, key_cache_s=300.0) as stack:
        assert (await post(stack, "out1", "out1-a", wait=True))[0] == 200
        port = nats_server.port
        nats_server.stop()
        status, problem, headers = await post(stack, "out1", "out1-b", wait=True)
        assert status == 503 and int(headers["Retry-After"]) >= 1, problem
        assert problem["message_id"] == "out1-b"
        assert stack.session is not None
        async with stack.session.get(f"{stack.base_url}/readyz") as resp:
            assert resp.status == 503
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.gateway.grpc_port}") as channel:
            stub = gateway_pb2_grpc.ChatServiceStub(channel)
            call = stub.SendMessage(gateway_pb2.SendMessageRequest(
                bot_id="banking", conversation_id="out1", text="/greet", message_id="out1-g"),
                metadata=(("authorization", f"Bearer {stack.client_key}"),), timeout=10)
            try:
                await call
                raise AssertionError("SendMessage succeeded with NATS down")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                trailers = dict(exc.trailing_metadata() or ())
                assert int(trailers["retry-after"]) >= 1

        nats_server.start(port=port)
        deadline = time.monotonic() + 20
        status = 0
        while time.monotonic() < deadline and status != 200:
            await asyncio.sleep(0.2)
            async with stack.session.get(f"{stack.base_url}/readyz") as resp:
                status = resp.status
        assert status == 200
        status, body, _ = await post(stack, "out1", "out1-b", wait=True)  # the retry
        assert status == 200 and body["complete"] and body["replies"]


async def test_retry_after_the_dedupe_window_gets_the_replies_not_a_second_turn(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    bus = await connect(nats_server.url, name="setup")  # CONV_IN with a 1 s dedupe window
    await bus.js.add_stream(StreamConfig(
        name="CONV_IN", subjects=["conv.in.>"], retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE, duplicate_window=1.0))
    await bus.drain()
    async with running_stack(nats_server.url, tiny_banking_model, sync_wait_s=2.0) as stack:
        status, first, _ = await post(stack, "dd1", "dd1-a", wait=True)
        assert status == 200 and first["replies"]
        assert (await post(stack, "dd1", "dd1-b", wait=True))[0] == 200
        await asyncio.sleep(1.5)  # past the window: JetStream stores the retry again
        status, again, _ = await post(stack, "dd1", "dd1-a", wait=True)
        assert status == 200 and again["duplicate"] and again["complete"]
        assert [r["text"] for r in again["replies"]] == [r["text"] for r in first["replies"]]
        bot_entries = [e for e in await stack.transcript("dd1") if e["type"] == "bot"]
        assert sorted(e["in_reply_to"] for e in bot_entries) == ["dd1-a", "dd1-b"]
