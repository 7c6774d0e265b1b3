"""The gateway's gRPC ChatService against an in-memory hub: rate limits with `retry-after`,
revoked keys, errors that never leak, the deadline-bounded wait, and shutdown of open
Converse streams. (End to end over NATS: tests/integration/test_gateway_grpc.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.common.errors import Unavailable
from services.common.pb.botfactory.v1 import conversation_pb2, gateway_pb2
from tests.support.gateway import make_config
from tests.support.grpc_gateway import Served, serve


@pytest.fixture
async def gw() -> AsyncIterator[Served]:
    async for served in serve(make_config(sync_wait_s=2.0)):
        yield served


@pytest.fixture
async def limited() -> AsyncIterator[Served]:
    async for served in serve(make_config(rate_limit_rps=0.5, rate_limit_burst=2)):
        yield served


async def kinds_of(call: Any, count: int) -> list[str]:
    """The kinds of the next `count` events, sorted (a reply may come before its ack)."""
    return sorted([(await read(call)).WhichOneof("event") or "" for _ in range(count)])


def send(text: str = "hi", conversation: str = "c1", **fields: Any
         ) -> gateway_pb2.SendMessageRequest:
    return gateway_pb2.SendMessageRequest(bot_id="alpha", conversation_id=conversation,
                                          text=text, **fields)


async def read(call: Any) -> gateway_pb2.ConverseResponse:
    event = await asyncio.wait_for(call.read(), 5)
    assert isinstance(event, gateway_pb2.ConverseResponse), event
    return event


async def test_send_message_answers_like_http(gw: Served) -> None:
    response = await gw.stub.SendMessage(send("menu", message_id="m1"), metadata=gw.metadata())
    assert response.message_id == "m1" and response.complete
    assert [(r.text, [b.title for b in r.buttons]) for r in response.replies] == \
        [("echo: menu", ["Yes", "No"])]
    assert gw.hub.sent[0].channel == "grpc"
    quick = await gw.stub.SendMessage(send(no_wait=True), metadata=gw.metadata())
    assert not quick.complete and gw.hub.waits[-1] == 0.0


async def test_the_wait_ends_before_the_callers_deadline(gw: Served) -> None:
    await gw.stub.SendMessage(send(), metadata=gw.metadata(), timeout=1.0)
    assert 0 < gw.hub.waits[-1] < 1.0
    await gw.stub.SendMessage(send(), metadata=gw.metadata())
    assert gw.hub.waits[-1] == 2.0
    assert gw.hub.workflow_waits[-1] == make_config().workflow_wait_s
    await gw.stub.SendMessage(send(), metadata=gw.metadata(), timeout=3.0)
    assert gw.hub.waits[-1] + gw.hub.workflow_waits[-1] < 3.0  # both waits fit the deadline


async def test_send_message_reports_handoff_and_nlu_on_request(gw: Served) -> None:
    gw.hub.result_extra = {"handoff": True,
                           "nlu": conversation_pb2.TurnNlu(intent="greet", confidence=0.5)}
    plain = await gw.stub.SendMessage(send(), metadata=gw.metadata())
    assert plain.handoff and not plain.HasField("nlu")
    asked = await gw.stub.SendMessage(send(include_nlu=True), metadata=gw.metadata())
    assert asked.nlu.intent == "greet" and asked.nlu.confidence == 0.5


async def test_feedback_on_a_message_the_conversation_does_not_have_is_not_found(
        gw: Served) -> None:
    """As over HTTP (404): only a bot or agent message of the conversation can be rated."""
    sent = await gw.stub.SendMessage(send(message_id="m1"), metadata=gw.metadata())
    reply_id = sent.replies[0].message_id

    def feedback(message_id: str, conversation: str = "c1") -> gateway_pb2.SendFeedbackRequest:
        return gateway_pb2.SendFeedbackRequest(feedback=conversation_pb2.Feedback(
            bot_id="alpha", conversation_id=conversation, message_id=message_id, rating=1))

    rated = await gw.stub.SendFeedback(feedback(reply_id), metadata=gw.metadata())
    assert rated.message_id == reply_id
    for unknown in (feedback("nope"), feedback("m1"), feedback(reply_id, "c2")):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await gw.stub.SendFeedback(unknown, metadata=gw.metadata())
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert [f.message_id for f in gw.hub.feedbacks] == [reply_id]


async def test_rate_limit_gives_resource_exhausted_with_retry_after(limited: Served) -> None:
    for _ in range(2):
        await limited.stub.SendMessage(send(), metadata=limited.metadata())
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await limited.stub.SendMessage(send(), metadata=limited.metadata())
    assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(failed.value.trailing_metadata() or ())
    assert trailing.get("retry-after") == "2"
    assert limited.metrics.rate_limited._value.get() == 1

    limited.clock.now += 10  # refilled: the stream opens, then its messages use up the burst
    call = limited.stub.Converse(metadata=limited.metadata())
    await call.write(gateway_pb2.ConverseRequest(bot_id="alpha", conversation_id="c1"))
    await call.write(gateway_pb2.ConverseRequest(text="one", message_id="s1"))
    await call.write(gateway_pb2.ConverseRequest(text="two", message_id="s2"))
    events = [await read(call) for _ in range(3)]
    kinds = [e.WhichOneof("event") for e in events]
    assert sorted(k or "" for k in kinds) == ["ack", "error", "message"]
    error = next(e.error for e in events if e.WhichOneof("event") == "error")
    assert (error.message_id, error.status, error.retry_after_s) == \
        ("s2", "RESOURCE_EXHAUSTED", 2)
    limited.clock.now += 10  # the stream went on
    await call.write(gateway_pb2.ConverseRequest(text="three", message_id="s3"))
    assert await kinds_of(call, 2) == ["ack", "message"]
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


async def test_hub_failures_never_leak(gw: Served) -> None:
    gw.hub.fail = RuntimeError("secret internals /srv/app.py line 42")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await gw.stub.SendMessage(send(), metadata=gw.metadata())
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert failed.value.details() == "internal error"

    gw.hub.fail = Unavailable("the message bus is unavailable; please retry")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await gw.stub.SendMessage(send(), metadata=gw.metadata())
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE

    call = gw.stub.Converse(metadata=gw.metadata())
    await call.write(gateway_pb2.ConverseRequest(bot_id="alpha", conversation_id="c1",
                                                 text="hi", message_id="f1"))
    error = (await read(call)).error
    assert (error.message_id, error.status) == ("f1", "UNAVAILABLE")
    gw.hub.fail = RuntimeError("secret internals")
    await call.write(gateway_pb2.ConverseRequest(text="hi", message_id="f2"))
    error = (await read(call)).error
    assert (error.status, error.detail) == ("INTERNAL", "internal error")
    gw.hub.fail = None
    await call.write(gateway_pb2.ConverseRequest(text="hi", message_id="f3"))
    assert await kinds_of(call, 2) == ["ack", "message"]
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


async def test_converse_pushes_async_messages_and_ends_on_revocation(gw: Served) -> None:
    call = gw.stub.Converse(metadata=gw.metadata())
    await call.write(gateway_pb2.ConverseRequest(bot_id="alpha", conversation_id="c9",
                                                 text="hi", message_id="a1"))
    assert await kinds_of(call, 2) == ["ack", "message"]
    gw.hub.push("alpha", "c9", "your transfer is done")
    assert (await read(call)).message.text == "your transfer is done"

    record = (await gw.auth.store.list_keys())[0]
    await gw.auth.revoke(record.key_id)
    await call.write(gateway_pb2.ConverseRequest(text="still there?"))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await read(call)
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_shutdown_ends_open_streams_with_unavailable(gw: Served) -> None:
    call = gw.stub.Converse(metadata=gw.metadata())
    await call.write(gateway_pb2.ConverseRequest(bot_id="alpha", conversation_id="c1",
                                                 text="hi"))
    assert await kinds_of(call, 2) == ["ack", "message"]
    gw.servicer.close()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await read(call)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert gw.hub.subscribers[("alpha", "c1")] == []  # the subscription was closed


async def test_shutdown_ends_a_stream_that_sent_nothing(gw: Served) -> None:
    call = gw.stub.Converse(metadata=gw.metadata())
    await asyncio.sleep(0.1)  # the call is open on the server, waiting for a first request
    gw.servicer.close()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await read(call)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
