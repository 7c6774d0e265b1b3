"""The gateway's public gRPC API (ChatService) end to end: gateway → JetStream → dialogue →
replies, on a real nats-server, with the HTTP API's keys. Intents are forced with `/intent`
payloads (the tiny test model's predictions are meaningless)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from botfactory.local.nats_server import NatsServer
from services.common.pb.botfactory.v1 import conversation_pb2, gateway_pb2, gateway_pb2_grpc
from tests.support.stack import Stack, issue_key, running_stack

Metadata = tuple[tuple[str, str], ...]


def bearer(key: str) -> Metadata:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture
async def stack(nats_server: NatsServer, tiny_banking_model: Path) -> AsyncIterator[Stack]:
    async with running_stack(nats_server.url, tiny_banking_model) as running:
        yield running


@pytest.fixture
async def stub(stack: Stack) -> AsyncIterator[gateway_pb2_grpc.ChatServiceAsyncStub]:
    assert stack.gateway.grpc_port > 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.gateway.grpc_port}") as channel:
        yield cast("gateway_pb2_grpc.ChatServiceAsyncStub",
                   gateway_pb2_grpc.ChatServiceStub(channel))


async def read_event(call: Any) -> gateway_pb2.ConverseResponse:
    event = await asyncio.wait_for(call.read(), 5)
    assert isinstance(event, gateway_pb2.ConverseResponse), event
    return event


def is_greeting(reply: conversation_pb2.BotMessage) -> bool:
    return "banking assistant" in reply.text or "Hi there" in reply.text


async def test_send_message_transcript_and_feedback(
        stack: Stack, stub: gateway_pb2_grpc.ChatServiceAsyncStub) -> None:
    auth = bearer(stack.client_key)
    request = gateway_pb2.SendMessageRequest(bot_id="banking", conversation_id="g1",
                                             text="/greet", message_id="g1-m1")
    response = await stub.SendMessage(request, metadata=auth, timeout=10)
    assert response.message_id == "g1-m1"
    assert response.complete and not response.duplicate
    assert len(response.replies) == 1 and is_greeting(response.replies[0])
    assert response.replies[0].in_reply_to == "g1-m1" and response.replies[0].last
    assert "/transfer_money" in [b.payload for b in response.replies[0].buttons]

    again = await stub.SendMessage(request, metadata=auth, timeout=10)
    assert again.duplicate
    assert [r.text for r in again.replies] == [r.text for r in response.replies]

    # a client key only sends; reading is for the conversation's visitor token or an agent
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetTranscript(gateway_pb2.GetTranscriptRequest(
            bot_id="banking", conversation_id="g1"), metadata=auth, timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    transcript = await stub.GetTranscript(
        gateway_pb2.GetTranscriptRequest(bot_id="banking", conversation_id="g1"),
        metadata=bearer(stack.agent_key), timeout=10)
    assert [(e.type, e.message_id) for e in transcript.entries] == \
        [("user", "g1-m1"), ("bot", response.replies[0].message_id)]
    assert transcript.entries[1].in_reply_to == "g1-m1"
    assert transcript.entries[1].buttons[0].title == "Check my balance"

    rated = await stub.SendFeedback(gateway_pb2.SendFeedbackRequest(
        feedback=conversation_pb2.Feedback(bot_id="banking", conversation_id="g1",
                                           message_id=response.replies[0].message_id,
                                           rating=1, comment="great")),
        metadata=auth, timeout=10)
    assert rated.rating == 1 and rated.message_id == response.replies[0].message_id

    # HTTP and gRPC are one API: the HTTP transcript shows the gRPC message.
    entries = await stack.transcript("g1")
    assert entries[0]["text"] == "/greet"


async def test_converse_streams_the_replies_in_order(
        stack: Stack, stub: gateway_pb2_grpc.ChatServiceAsyncStub) -> None:
    call = stub.Converse(metadata=bearer(stack.client_key), timeout=20)
    await call.write(gateway_pb2.ConverseRequest(bot_id="banking", conversation_id="g2",
                                                 text="/greet", message_id="g2-m1"))
    await call.write(gateway_pb2.ConverseRequest(text="/transfer_money", message_id="g2-m2"))
    await call.done_writing()
    events = [event async for event in call]
    assert await call.code() == grpc.StatusCode.OK

    acks = [e.ack for e in events if e.WhichOneof("event") == "ack"]
    assert [(a.message_id, a.duplicate) for a in acks] == [("g2-m1", False), ("g2-m2", False)]
    messages = [e.message for e in events if e.WhichOneof("event") == "message"]
    assert [m.in_reply_to for m in messages] == ["g2-m1", "g2-m2"]
    assert is_greeting(messages[0])
    assert "how much" in messages[1].text.lower() or "what amount" in messages[1].text.lower()
    assert all(m.last for m in messages)


async def test_converse_delivers_messages_from_other_channels_and_reports_bad_ones(
        stack: Stack, stub: gateway_pb2_grpc.ChatServiceAsyncStub) -> None:
    call = stub.Converse(metadata=bearer(stack.client_key), timeout=20)
    # a first request without text only opens the stream (no ack)
    await call.write(gateway_pb2.ConverseRequest(bot_id="banking", conversation_id="g3"))
    await call.write(gateway_pb2.ConverseRequest(text="/greet", message_id="g3-m1"))
    first = [await read_event(call), await read_event(call)]
    assert sorted(e.WhichOneof("event") or "" for e in first) == ["ack", "message"]
    # the subscription is live (the reply above came on it): a message sent over HTTP to the
    # same conversation gets its reply here too
    status, body = await stack.post("g3", "/greet", message_id="http-1")
    assert status == 200 and body["replies"]
    event = await read_event(call)
    assert event.message.in_reply_to == "http-1" and is_greeting(event.message)

    await call.write(gateway_pb2.ConverseRequest(text="   ", message_id="bad-1"))
    event = await read_event(call)
    assert event.error.message_id == "bad-1"
    assert event.error.status == "INVALID_ARGUMENT"
    assert event.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]

    # the stream goes on after a bad message
    await call.write(gateway_pb2.ConverseRequest(text="x" * 2001))
    event = await read_event(call)
    assert event.error.status == "INVALID_ARGUMENT" and "2000" in event.error.detail

    # another conversation ends the call
    await call.write(gateway_pb2.ConverseRequest(conversation_id="other", text="/greet"))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        while True:
            await read_event(call)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_auth_failures_and_bad_input(
        stack: Stack, stub: gateway_pb2_grpc.ChatServiceAsyncStub) -> None:
    assert stack.session is not None
    other_bot_key = await issue_key(stack.session, stack.base_url, bots=("insurance",))
    good = gateway_pb2.SendMessageRequest(bot_id="banking", conversation_id="g4", text="/greet")

    async def code_of(request: gateway_pb2.SendMessageRequest,
                      metadata: Metadata) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.SendMessage(request, metadata=metadata, timeout=10)
        details = failed.value.details() or ""
        assert "Traceback" not in details
        code: grpc.StatusCode = failed.value.code()
        return code

    assert await code_of(good, ()) == grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(good, bearer("bfk_nope_nope")) == grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(good, (("authorization", stack.client_key),)) == \
        grpc.StatusCode.UNAUTHENTICATED
    # a bot out of the key's reach: NOT_FOUND, as HTTP's 404 (docs/security.md, "Tenants")
    assert await code_of(good, bearer(other_bot_key)) == grpc.StatusCode.NOT_FOUND

    auth = bearer(stack.client_key)
    bad = [
        gateway_pb2.SendMessageRequest(bot_id="banking", conversation_id="g4", text=""),
        gateway_pb2.SendMessageRequest(bot_id="banking", conversation_id="g4", text=" \n "),
        gateway_pb2.SendMessageRequest(bot_id="banking", conversation_id="g4", text="x" * 2001),
        gateway_pb2.SendMessageRequest(bot_id="banking", conversation_id="a.b", text="hi"),
        gateway_pb2.SendMessageRequest(bot_id="", conversation_id="g4", text="hi"),
        gateway_pb2.SendMessageRequest(bot_id="banking", conversation_id="g4", text="hi",
                                       message_id="no spaces"),
    ]
    for request in bad:
        assert await code_of(request, auth) == grpc.StatusCode.INVALID_ARGUMENT, request

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.GetTranscript(gateway_pb2.GetTranscriptRequest(
            bot_id="banking", conversation_id="g4", limit=100_000),
            metadata=bearer(stack.agent_key), timeout=10)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.SendFeedback(gateway_pb2.SendFeedbackRequest(
            feedback=conversation_pb2.Feedback(bot_id="banking", conversation_id="g4",
                                               message_id="m", rating=5)),
            metadata=auth, timeout=10)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.GetTranscript(gateway_pb2.GetTranscriptRequest(
            bot_id="banking", conversation_id="g4"), metadata=bearer(other_bot_key), timeout=10)
    assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED

    for metadata, expected in (((), grpc.StatusCode.UNAUTHENTICATED),
                               (bearer(other_bot_key), grpc.StatusCode.NOT_FOUND)):
        call = stub.Converse(metadata=metadata, timeout=10)
        await call.write(gateway_pb2.ConverseRequest(bot_id="banking", conversation_id="g4",
                                                     text="/greet"))
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call.read()
        assert failed.value.code() == expected
