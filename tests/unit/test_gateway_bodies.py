"""The gateway validates one way (services/gateway/http/bodies.py): for a table of good and bad
bodies and ids, the HTTP API (400), the gRPC API (INVALID_ARGUMENT) and the OpenAPI document
the app serves agree on what is invalid, with the same field-level messages, and the limits
the config sets (max text and comment characters) are those all three apply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import jsonschema
import pytest

from services.common.pb.botfactory.v1 import conversation_pb2, gateway_pb2
from services.gateway.config import GatewayConfig
from services.gateway.http.bodies import MESSAGE, check_path_id, grpc_fields
from services.gateway.http.problems import RequestInvalid
from services.gateway.ports import Role
from tests.support.gateway import Gateway, auth, make_config, start_gateway
from tests.support.grpc_gateway import Served, serve

# Limits below the defaults: a body within the defaults but over these tells them apart.
CONFIG = make_config(max_text_chars=10, max_comment_chars=5, transcript_max_limit=7)
BOT, CONVERSATION = "alpha", "c1"
MESSAGES: list[tuple[dict[str, Any], bool]] = [
    ({"text": "hi"}, True),
    ({"text": "x" * 10, "message_id": "m-1", "sender": "ann", "metadata": {"k": "v"}}, True),
    ({"text": "hi", "sender": "   "}, True),
    ({}, False),
    ({"text": "x" * 11}, False),  # within the default limit (2000), over the configured one
    ({"text": "   "}, False),
    ({"text": "a\x01b"}, False),
    ({"text": "hi", "message_id": "a.b"}, False),
    ({"text": "hi", "message_id": "m1:0"}, False),  # a bot message's id, not a user message's
    ({"text": "hi", "message_id": "m" * 129}, False),
    ({"text": "hi", "sender": "s" * 257}, False),
    ({"text": "hi", "metadata": {str(i): "v" for i in range(33)}}, False),
    ({"text": "hi", "metadata": {"k": "v" * 513}}, False),
    ({"text": "hi", "metadata": {"k": "a\x07"}}, False),
    ({"text": "x" * 11, "message_id": "a.b", "sender": "s" * 257}, False),  # every field named
]
FEEDBACKS: list[tuple[dict[str, Any], bool]] = [
    ({"rating": 1}, True),
    ({"rating": -1, "comment": "x" * 5}, True),
    ({"rating": 2}, False),
    ({"rating": 1, "comment": "x" * 6}, False),  # over the configured limit (default: 1000)
    ({"rating": -1, "comment": "a\x00"}, False),
]
# (path parameter, value, valid?): ids of the path (HTTP) or the request (gRPC).
IDS = [("bot", "b" * 64, True), ("bot", "b" * 65, False), ("bot", "a.b", False),
       ("conversation", "c" * 128, True), ("conversation", "c" * 129, False),
       ("conversation", "a b", False), ("message_id", "r-m1", True),
       ("message_id", "m1:0", True), ("message_id", "m1:x", False), ("message_id", "m.1", False)]


@dataclass
class Both:
    http: Gateway
    grpc: Served
    key: str
    document: dict[str, Any]

    def schema(self, name: str) -> dict[str, Any]:
        schema: dict[str, Any] = self.document["components"]["schemas"][name]
        return schema

    def path_pattern(self, operation_id: str, name: str) -> str:
        for methods in self.document["paths"].values():
            for op in methods.values():
                if op["operationId"] == operation_id:
                    param = next(p for p in op["parameters"] if p["name"] == name)
                    pattern: str = param["schema"]["pattern"]
                    return pattern
        raise AssertionError(f"no operation {operation_id}")


@pytest.fixture
async def both() -> AsyncIterator[Both]:
    http = await start_gateway(CONFIG)
    try:
        async for served in serve(CONFIG):
            key = await http.key()
            document = await (await http.client.get("/openapi.json")).json()
            yield Both(http, served, key, document)
    finally:
        await http.client.close()


def documented(schema: dict[str, Any], body: Any) -> bool:
    return bool(jsonschema.Draft202012Validator(schema).is_valid(body))


async def http_errors(both: Both, path: str, body: dict[str, Any]) -> str | None:
    """The 400's field errors, worded; None: not a 400."""
    response = await both.http.client.post(path, headers=auth(both.key), json=body)
    if response.status != 400:
        return None
    return worded(await response.json())


def worded(problem: dict[str, Any]) -> str:
    """A 400 problem's field errors as gRPC words them (`field: message; ...`)."""
    return "; ".join(f"{e['field']}: {e['message']}" for e in problem["errors"])


async def grpc_error(call: Any, request: Any, both: Both, key: str | None = None) -> str | None:
    """The INVALID_ARGUMENT detail of the call (None: any other outcome)."""
    try:
        await call(request, metadata=both.grpc.metadata(key))
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return str(exc.details())
    return None


@pytest.mark.parametrize(("body", "valid"), MESSAGES)
async def test_message_bodies_agree(both: Both, body: dict[str, Any], valid: bool) -> None:
    path = f"/v1/bots/{BOT}/conversations/{CONVERSATION}/messages?wait=false"
    from_http = await http_errors(both, path, body)
    request = gateway_pb2.SendMessageRequest(bot_id=BOT, conversation_id=CONVERSATION, **body)
    from_grpc = await grpc_error(both.grpc.stub.SendMessage, request, both)
    assert documented(both.schema("UserMessageRequest"), body) is valid
    assert (from_http is None) is valid
    assert from_grpc == from_http  # the same field-level messages


@pytest.mark.parametrize(("body", "valid"), FEEDBACKS)
async def test_feedback_bodies_agree(both: Both, body: dict[str, Any], valid: bool) -> None:
    path = f"/v1/bots/{BOT}/conversations/{CONVERSATION}/messages/r-m1/feedback"
    from_http = await http_errors(both, path, body)
    request = gateway_pb2.SendFeedbackRequest(feedback=conversation_pb2.Feedback(
        bot_id=BOT, conversation_id=CONVERSATION, message_id="r-m1", **body))
    from_grpc = await grpc_error(both.grpc.stub.SendFeedback, request, both)
    assert documented(both.schema("FeedbackRequest"), body) is valid
    assert (from_http is None) is valid
    assert from_grpc == from_http


@pytest.mark.parametrize(("name", "value", "valid"), IDS)
async def test_ids_agree(both: Both, name: str, value: str, valid: bool) -> None:
    ids = {"bot": BOT, "conversation": CONVERSATION, "message_id": "r-m1", name: value}
    path = (f"/v1/bots/{ids['bot']}/conversations/{ids['conversation']}/messages/"
            f"{ids['message_id']}/feedback")
    from_http = await http_errors(both, path, {"rating": 1})
    request = gateway_pb2.SendFeedbackRequest(feedback=conversation_pb2.Feedback(
        bot_id=ids["bot"], conversation_id=ids["conversation"], message_id=ids["message_id"],
        rating=1))
    from_grpc = await grpc_error(both.grpc.stub.SendFeedback, request, both)
    pattern = both.path_pattern("post_feedback", name)
    assert documented({"type": "string", "pattern": pattern}, value) is valid
    assert (from_http is None) is valid
    assert from_grpc == from_http


@pytest.mark.parametrize(("limit", "valid"), [(1, True), (7, True), (8, False)])
async def test_transcript_limits_agree(both: Both, limit: int, valid: bool) -> None:
    http_key = await both.http.key(Role.AGENT)
    response = await both.http.client.get(
        f"/v1/bots/{BOT}/conversations/{CONVERSATION}/transcript?limit={limit}",
        headers=auth(http_key))
    grpc_key = (await both.grpc.auth.issue("t1", (BOT,), Role.AGENT)).secret
    request = gateway_pb2.GetTranscriptRequest(bot_id=BOT, conversation_id=CONVERSATION,
                                               limit=limit)
    from_grpc = await grpc_error(both.grpc.stub.GetTranscript, request, both, grpc_key)
    assert (response.status == 200) is valid
    assert from_grpc == (None if valid else worded(await response.json()))


async def test_the_document_takes_its_limits_from_the_config(both: Both) -> None:
    properties = both.schema("UserMessageRequest")["properties"]
    assert properties["text"]["maxLength"] == 10
    for name, field in (("FeedbackRequest", "comment"), ("CancelRunRequest", "reason"),
                        ("ApprovalDecisionRequest", "comment")):
        assert both.schema(name)["properties"][field]["anyOf"][0]["maxLength"] == 5
    assert MESSAGE.schema(GatewayConfig())["properties"]["text"]["maxLength"] == \
        GatewayConfig.max_text_chars


async def test_a_grpc_request_is_the_body_of_its_set_fields() -> None:
    request = gateway_pb2.SendMessageRequest(bot_id=BOT, text="hi", metadata={"k": "v"})
    assert grpc_fields(request, MESSAGE) == {"text": "hi", "metadata": {"k": "v"}}
    with pytest.raises(RequestInvalid) as refused:
        check_path_id("a.b", "conversation")
    assert refused.value.errors[0].field == "conversation"
