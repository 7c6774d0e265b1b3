"""The Teams channel end to end: the gateway's webhook route, the real dialogue, Bot Connector
JWTs checked against keys from a local fake of Microsoft's login service, and the replies
posted to a fake connector at the activities' serviceUrl (tests/support/bot_connector.py,
one FakePlatform serving all of it), with the activity shapes of
https://learn.microsoft.com/microsoftteams/platform/bots/how-to/conversations/conversation-messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from botfactory.local.nats_server import NatsServer
from services.common.nats import connect
from services.gateway.channels.store import conversation_id
from tests.support.bot_connector import KEYS_PATH, TOKEN_PATH, Microsoft, Signer, activity
from tests.support.fake_platform import Call, FakePlatform
from tests.support.polling import eventually
from tests.support.stack import BOOTSTRAP, Stack, channel_stack

ADMIN = {"Authorization": f"Bearer {BOOTSTRAP}"}
CHAT = "a:1personal-chat"


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
async def microsoft(signer: Signer) -> AsyncIterator[tuple[Microsoft, FakePlatform]]:
    answers = Microsoft(signer)
    fake = FakePlatform(answers)
    answers.base = await fake.start()
    yield answers, fake
    await fake.stop()


@pytest.fixture
def connector(microsoft: tuple[Microsoft, FakePlatform]) -> FakePlatform:
    return microsoft[1]


@pytest.fixture
async def stack(nats_server: NatsServer, tiny_banking_model: Path,
                microsoft: tuple[Microsoft, FakePlatform]) -> AsyncIterator[Stack]:
    settings = microsoft[0].settings()
    async with channel_stack(nats_server.url, tiny_banking_model, "teams",
                             settings) as (running, shown):
        assert shown["secrets"] == ["app_password"]
        assert settings["app_password"] not in json.dumps(shown)
        assert shown["webhook_path"] == "/v1/channels/teams/banking"
        yield running


class Teams:
    """Posts activities to the gateway as the Bot Connector does: signed, at its serviceUrl."""

    def __init__(self, stack: Stack, microsoft: Microsoft, signer: Signer) -> None:
        self.stack = stack
        self.service_url = f"{microsoft.base}/"
        self.signer = signer

    async def post(self, body: dict[str, Any], token: str | None = None) -> int:
        assert self.stack.session is not None
        bearer = token if token is not None else self.signer.token(self.service_url)
        async with self.stack.session.post(
                f"{self.stack.base_url}/v1/channels/teams/banking", json=body,
                headers={"Authorization": f"Bearer {bearer}"}) as resp:
            return resp.status

    def message(self, activity_id: str, text: str, chat: str = CHAT,
                **extra: Any) -> dict[str, Any]:
        return activity(activity_id, text, self.service_url, conversation=chat, **extra)


@pytest.fixture
def teams(stack: Stack, microsoft: tuple[Microsoft, FakePlatform], signer: Signer) -> Teams:
    return Teams(stack, microsoft[0], signer)


def replies(connector: FakePlatform, chat: str = CHAT) -> list[Call]:
    return [c for c in connector.calls if c.path.startswith(f"/v3/conversations/{chat}/")]


async def wait_replies(connector: FakePlatform, count: int, chat: str = CHAT) -> list[Call]:
    def enough() -> list[Call] | None:
        found = replies(connector, chat)
        return found if len(found) >= count else None

    return await eventually(enough, f"{count} replies in {chat}")


def metric(stack: Stack, name: str, **labels: str) -> float:
    return stack.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_conversation_with_buttons_end_to_end(stack: Stack, teams: Teams,
                                                      connector: FakePlatform) -> None:
    assert await teams.post(teams.message("1:greet", "/greet")) == 200
    reply = (await wait_replies(connector, 1))[0]
    assert reply.path == f"/v3/conversations/{CHAT}/activities/1:greet"
    assert reply.headers["Authorization"] == "Bearer connector-access-token"
    assert "banking assistant" in reply.body["text"] or "Hi there" in reply.body["text"]
    assert reply.body["replyToId"] == "1:greet"
    card = reply.body["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.hero"
    buttons = card["content"]["buttons"]
    assert {b["type"] for b in buttons} == {"imBack"}
    assert "/transfer_money" in [b["value"] for b in buttons]
    # the press: Teams posts the imBack's value as the user's text
    assert await teams.post(teams.message("1:press", "/transfer_money")) == 200
    second = (await wait_replies(connector, 2))[1]
    assert second.path == f"/v3/conversations/{CHAT}/activities/1:press"
    transcript = await stack.transcript(conversation_id("teams", CHAT))
    assert [e["text"] for e in transcript if e["type"] == "user"] == ["/greet",
                                                                      "/transfer_money"]
    assert metric(stack, "botfactory_channel_received_total", channel="teams",
                  bot="banking") == 2
    assert metric(stack, "botfactory_channel_sent_total", channel="teams") == 2
    # the keys and the app token were fetched once, not per activity or reply
    assert len(connector.to(KEYS_PATH)) == 1 and len(connector.to(TOKEN_PATH)) == 1


async def test_a_channel_message_mentioning_the_bot(stack: Stack, teams: Teams,
                                                    connector: FakePlatform) -> None:
    chat = "19:team-general@thread.tacv2;messageid=1714557600000"
    body = teams.message("1714557600000", "<at>Banking</at> /greet", chat=chat, entities=[
        {"type": "mention", "text": "<at>Banking</at>",
         "mentioned": {"id": "28:3f2a9c4e-1b7d-4e8a-9c65-0d2f4b8e7a13", "name": "Banking"}}])
    body["conversation"]["conversationType"] = "channel"
    assert await teams.post(body) == 200
    await wait_replies(connector, 1, chat)
    transcript = await stack.transcript(conversation_id("teams", chat))
    assert [e["text"] for e in transcript if e["type"] == "user"] == ["/greet"]


async def test_a_redelivered_activity_is_answered_once(stack: Stack, teams: Teams,
                                                       connector: FakePlatform) -> None:
    body = teams.message("1:again", "/greet", chat="a:1redelivery")
    assert await teams.post(body) == 200
    assert await teams.post(body) == 200  # the connector retries
    await wait_replies(connector, 1, "a:1redelivery")
    await asyncio.sleep(1.0)  # time for a second reply, if there were one
    transcript = await stack.transcript(conversation_id("teams", "a:1redelivery"))
    assert [e["type"] for e in transcript] == ["user", "bot"]
    assert len(replies(connector, "a:1redelivery")) == 1


async def test_a_bad_jwt_is_refused_and_counted(stack: Stack, teams: Teams, signer: Signer,
                                                connector: FakePlatform) -> None:
    body = teams.message("1:forged", "/greet", chat="a:1forged")
    forged = Signer(kid=signer.kid).token(teams.service_url)
    assert await teams.post(body, token=forged) == 401
    assert await teams.post(body, token="") == 401
    assert await teams.post(body, token=signer.token(teams.service_url,
                                                     audience="someone-else")) == 401
    # a genuine token for another service URL: the reply would go where Microsoft never said
    elsewhere = teams.message("1:forged", "/greet", chat="a:1forged")
    elsewhere["serviceUrl"] = "https://attacker.example.com/"
    assert await teams.post(elsewhere) == 401
    assert metric(stack, "botfactory_channel_refused_total", channel="teams",
                  reason="jwt") == 2
    assert metric(stack, "botfactory_channel_refused_total", channel="teams",
                  reason="audience") == 1
    assert metric(stack, "botfactory_channel_refused_total", channel="teams",
                  reason="service_url") == 1
    assert not [c for c in connector.calls if c.path.startswith("/v3/")]
    assert await stack.transcript(conversation_id("teams", "a:1forged")) == []


async def test_a_429_is_honoured_and_a_failing_connector_ends_in_a_dead_letter(
        stack: Stack, teams: Teams, connector: FakePlatform) -> None:
    assert await teams.post(teams.message("1:warm", "/greet")) == 200
    await wait_replies(connector, 1)  # keys and token cached: the connector is called next
    connector.fail_next(429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "1"})
    assert await teams.post(teams.message("1:busy", "/greet", chat="a:1busy")) == 200
    sent = await wait_replies(connector, 1, "a:1busy")
    assert sent[0].at - connector.failed[0].at >= 0.9  # waited as asked
    assert metric(stack, "botfactory_channel_retried_total", channel="teams") == 1

    bus = await connect(stack.nats_url, name="dead-letters")
    try:
        sub = await bus.nc.subscribe("events.deadletter.channel")
        connector.fail_next(500, {"error": {"code": "ServiceError"}}, times=3)
        assert await teams.post(teams.message("1:down", "/greet", chat="a:1down")) == 200
        dead = json.loads((await sub.next_msg(timeout=20)).data)
    finally:
        await bus.drain()
    assert dead["conversation_id"] == conversation_id("teams", "a:1down")
    assert dead["channel"] == "teams" and "out of attempts" in dead["reason"]
    assert metric(stack, "botfactory_channel_dead_lettered_total", channel="teams",
                  reason="attempts") == 1
