"""The Teams channel on its own (services/gateway/channels/teams.py): the Bot Connector's JWT
checked against keys served by a local fake of Microsoft's login service, activities parsed,
replies (hero cards, split texts) posted to a fake connector with a cached app token."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import make_mocked_request

from services.common.errors import Unavailable
from services.gateway.channels.base import (
    Button,
    ChannelRefused,
    Outgoing,
    SendRejected,
    SendRetry,
    SettingsInvalid,
)
from services.gateway.channels.teams import (
    AppTokens,
    ConnectorKeys,
    Teams,
    hero_card,
    split_bytes,
    strip_mentions,
)
from tests.support.bot_connector import (
    ACCESS_TOKEN,
    APP_ID,
    KEYS_PATH,
    METADATA_PATH,
    TOKEN_PATH,
    Microsoft,
    Signer,
    activity,
)
from tests.support.fake_platform import FakePlatform


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture
def microsoft(signer: Signer) -> Microsoft:
    return Microsoft(signer)


@pytest.fixture
async def fake(microsoft: Microsoft) -> AsyncIterator[FakePlatform]:
    platform = FakePlatform(microsoft)
    microsoft.base = await platform.start()
    yield platform
    await platform.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def teams(clock: Clock) -> Teams:
    return Teams(ConnectorKeys(clock=clock), AppTokens(clock=clock))


async def verify(teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft,
                 token: str | None, body: dict[str, Any]) -> None:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = make_mocked_request("POST", "/v1/channels/teams/banking", headers=headers)
    await teams.verify(request, json.dumps(body).encode(), microsoft.settings(), session)


async def refused(teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft,
                  token: str | None, body: dict[str, Any]) -> str:
    with pytest.raises(ChannelRefused) as caught:
        await verify(teams, session, microsoft, token, body)
    return caught.value.reason


# --- verify ------------------------------------------------------------------------------------


async def test_a_valid_token_is_accepted_and_the_keys_are_fetched_once(
        teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft, signer: Signer,
        fake: FakePlatform) -> None:
    url = f"{microsoft.base}/"
    for n in range(3):
        await verify(teams, session, microsoft, signer.token(url), activity(f"a{n}", "hi", url))
    assert [c.path for c in fake.calls] == [METADATA_PATH, KEYS_PATH]


async def test_the_token_must_be_for_this_bot_from_the_connector_and_current(
        teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft, signer: Signer,
        fake: FakePlatform) -> None:
    url = f"{microsoft.base}/"
    body = activity("a1", "hi", url)
    other_app = "00000000-0000-4000-8000-000000000000"
    assert await refused(teams, session, microsoft, signer.token(url, audience=other_app),
                         body) == "audience"
    assert await refused(teams, session, microsoft,
                         signer.token(url, issuer="https://sts.windows.net/x/"), body) == "issuer"
    assert await refused(teams, session, microsoft, signer.token(url, expires_in=-400),
                         body) == "jwt"  # past the 5 minutes of leeway
    await verify(teams, session, microsoft, signer.token(url, expires_in=-200), body)
    assert await refused(teams, session, microsoft, signer.token(url, nbf=10**10), body) == "jwt"


async def test_a_forged_or_malformed_token_is_refused(
        teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft, signer: Signer,
        fake: FakePlatform) -> None:
    url = f"{microsoft.base}/"
    body = activity("a1", "hi", url)
    forger = Signer(kid=signer.kid)  # the right key id, another key
    assert await refused(teams, session, microsoft, forger.token(url), body) == "jwt"
    hs256 = jwt.encode({"iss": "https://api.botframework.com", "aud": APP_ID, "serviceUrl": url},
                       "shared-secret-0123456789abcdef0123456789", algorithm="HS256",
                       headers={"kid": signer.kid})
    assert await refused(teams, session, microsoft, hs256, body) == "jwt"
    assert await refused(teams, session, microsoft, None, body) == "jwt"
    assert await refused(teams, session, microsoft, "not.a.jwt", body) == "jwt"
    good = signer.token(url)
    assert await refused(teams, session, microsoft, good + "x", body) == "jwt"


async def test_the_service_url_must_be_the_one_the_token_names(
        teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft, signer: Signer,
        fake: FakePlatform) -> None:
    url = f"{microsoft.base}/"
    token = signer.token(url)
    assert await refused(teams, session, microsoft, token,
                         activity("a1", "hi", "https://evil.example.com/")) == "service_url"
    assert await refused(teams, session, microsoft, token,
                         {"type": "message", "channelId": "msteams"}) == "service_url"
    no_claim = jwt.encode({"iss": "https://api.botframework.com", "aud": APP_ID,
                           "exp": 10**10}, signer.private, algorithm="RS256",
                          headers={"kid": signer.kid})
    assert await refused(teams, session, microsoft, no_claim,
                         activity("a1", "hi", url)) == "service_url"


async def test_the_key_must_be_endorsed_for_the_activity_s_channel(
        teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft, signer: Signer,
        fake: FakePlatform) -> None:
    url = f"{microsoft.base}/"
    body = {**activity("a1", "hi", url), "channelId": "skype"}
    assert await refused(teams, session, microsoft, signer.token(url), body) == "endorsement"


async def test_a_single_tenant_bot_refuses_other_tenants_activities(
        teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft, signer: Signer,
        fake: FakePlatform) -> None:
    url = f"{microsoft.base}/"
    ours = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    other = "11111111-2222-4333-8444-555555555555"

    def from_tenant(tenant: str | None) -> dict[str, Any]:
        body = activity("a1", "hi", url)
        body["conversation"] = {**body["conversation"], "tenantId": tenant}
        if tenant is None:
            del body["conversation"]["tenantId"]
        else:
            body["channelData"] = {"tenant": {"id": tenant}}
        return body

    async def check(tenant_id: str | None, body: dict[str, Any]) -> str | None:
        settings = microsoft.settings() | ({} if tenant_id is None else {"tenant_id": tenant_id})
        request = make_mocked_request("POST", "/v1/channels/teams/banking",
                                      headers={"Authorization": f"Bearer {signer.token(url)}"})
        try:
            await teams.verify(request, json.dumps(body).encode(), settings, session)
        except ChannelRefused as exc:
            return exc.reason
        return None

    assert await check(ours, from_tenant(ours)) is None
    assert await check(ours.upper(), from_tenant(ours)) is None
    assert await check(ours, from_tenant(other)) == "tenant"
    assert await check(ours, from_tenant(None)) == "tenant"  # no tenant named: not ours
    mixed = {**from_tenant(ours), "channelData": {"tenant": {"id": other}}}
    assert await check(ours, mixed) == "tenant"
    assert await check(None, from_tenant(other)) is None  # a multi-tenant bot
    assert await check("contoso.onmicrosoft.com", from_tenant(other)) is None  # a domain


async def test_an_unknown_key_refetches_the_keys_at_most_every_few_minutes(
        teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft, signer: Signer,
        fake: FakePlatform, clock: Clock) -> None:
    url = f"{microsoft.base}/"
    body = activity("a1", "hi", url)
    await verify(teams, session, microsoft, signer.token(url), body)
    rolled = Signer(kid="key-2")
    assert await refused(teams, session, microsoft, rolled.token(url), body) == "jwt"
    assert await refused(teams, session, microsoft, signer.token(url, kid="made-up"),
                         body) == "jwt"
    assert len(fake.to(KEYS_PATH)) == 1  # unknown key ids do not reach Microsoft each time
    microsoft.signers.append(rolled)  # Microsoft rolls its keys
    clock.now += 301
    await verify(teams, session, microsoft, rolled.token(url), body)
    assert len(fake.to(KEYS_PATH)) == 2
    await verify(teams, session, microsoft, signer.token(url), body)
    assert len(fake.to(KEYS_PATH)) == 2


async def test_the_keys_are_refetched_after_a_day_and_kept_when_that_fails(
        teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft, signer: Signer,
        fake: FakePlatform, clock: Clock) -> None:
    url = f"{microsoft.base}/"
    body = activity("a1", "hi", url)
    await verify(teams, session, microsoft, signer.token(url), body)
    clock.now += 24 * 3600
    fake.fail_next(503)
    await verify(teams, session, microsoft, signer.token(url), body)  # the old keys serve
    await verify(teams, session, microsoft, signer.token(url), body)  # no retry at once
    assert len(fake.failed) == 1
    clock.now += 301
    await verify(teams, session, microsoft, signer.token(url), body)
    assert len(fake.to(METADATA_PATH)) == 2


async def test_keys_that_cannot_be_fetched_at_all_are_a_503(
        teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft, signer: Signer,
        fake: FakePlatform) -> None:
    url = f"{microsoft.base}/"
    fake.fail_next(500)
    with pytest.raises(Unavailable):
        await verify(teams, session, microsoft, signer.token(url), activity("a1", "hi", url))


# --- parse -------------------------------------------------------------------------------------


async def parse(teams: Teams, session: aiohttp.ClientSession,
                body: dict[str, Any]) -> list[tuple[str, str, str, dict[str, str], str]]:
    request = make_mocked_request("POST", "/v1/channels/teams/banking")
    parsed = await teams.parse(request, json.dumps(body).encode(), {}, session)
    return [(m.native_id, m.conversation, m.text, m.address, m.sender) for m in parsed.messages]


async def test_a_message_becomes_an_incoming_with_its_address(
        teams: Teams, session: aiohttp.ClientSession) -> None:
    url = "https://smba.trafficmanager.net/emea/"
    assert await parse(teams, session, activity("1:abc", "hello", url)) == [(
        "1:abc", "a:1personal-chat", "hello",
        {"service_url": url, "conversation_id": "a:1personal-chat", "activity_id": "1:abc"},
        "29:user-ana")]


async def test_the_bot_s_mention_is_taken_out_of_a_channel_message(
        teams: Teams, session: aiohttp.ClientSession) -> None:
    url = "https://smba.trafficmanager.net/emea/"
    body = activity("1", "<at>Banking</at> what is my <at>Ana Lopez</at> balance?", url,
                    conversation="19:team@thread.tacv2;messageid=1", entities=[
                        {"type": "mention", "text": "<at>Banking</at>",
                         "mentioned": {"id": f"28:{APP_ID}", "name": "Banking"}},
                        {"type": "mention", "text": "<at>Ana Lopez</at>",
                         "mentioned": {"id": "29:user-ana", "name": "Ana Lopez"}},
                        {"type": "clientInfo", "locale": "en-US"}])
    assert (await parse(teams, session, body))[0][2] == "what is my Ana Lopez balance?"
    assert strip_mentions("<at>Banking</at>\n/greet", {}) == "Banking\n/greet"


async def test_a_button_press_comes_back_as_its_payload(
        teams: Teams, session: aiohttp.ClientSession) -> None:
    url = "https://smba.trafficmanager.net/emea/"
    im_back = activity("2", "/transfer_money", url)  # imBack: the value is the text
    message_back = {**activity("3", "Transfer money", url),
                    "value": {"payload": "/transfer_money"}}
    submit = {**activity("4", "", url), "value": {"payload": "/check_balance"}}
    texts = [(await parse(teams, session, body))[0][2]
             for body in (im_back, message_back, submit)]
    assert texts == ["/transfer_money", "/transfer_money", "/check_balance"]


async def test_other_activities_are_ignored(teams: Teams,
                                            session: aiohttp.ClientSession) -> None:
    url = "https://smba.trafficmanager.net/emea/"
    update = {**activity("5", "", url), "type": "conversationUpdate",
              "membersAdded": [{"id": f"28:{APP_ID}"}]}
    typing = {**activity("6", "", url), "type": "typing"}
    no_id = {**activity("7", "hi", url), "id": None}
    for body in (update, typing, no_id):
        assert await parse(teams, session, body) == []


# --- send --------------------------------------------------------------------------------------


def address(base: str, conversation: str = "a:1personal-chat",
            activity_id: str = "1:abc") -> dict[str, str]:
    return {"service_url": f"{base}/", "conversation_id": conversation,
            "activity_id": activity_id}


async def test_a_reply_goes_to_the_activity_with_the_buttons_as_a_hero_card(
        teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft,
        fake: FakePlatform) -> None:
    buttons = (Button("Transfer money", "/transfer_money"), Button("Balance", "/check_balance"))
    await teams.send(session, microsoft.settings(),
                     address(microsoft.base, "19:team@thread.tacv2;messageid=1"),
                     Outgoing("How can I help?", buttons, "m1"))
    token_call, reply = fake.calls
    assert token_call.path == TOKEN_PATH and token_call.body == {
        "grant_type": "client_credentials", "client_id": APP_ID,
        "client_secret": "app-password-for-tests",
        "scope": "https://api.botframework.com/.default"}
    assert reply.path == "/v3/conversations/19:team@thread.tacv2;messageid=1/activities/1:abc"
    assert reply.headers["Authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert reply.body == {"type": "message", "text": "How can I help?", "textFormat": "plain",
                          "replyToId": "1:abc", "attachments": [hero_card(buttons)]}
    assert hero_card(buttons) == {"contentType": "application/vnd.microsoft.card.hero",
                                  "content": {"buttons": [
                                      {"type": "imBack", "title": "Transfer money",
                                       "value": "/transfer_money"},
                                      {"type": "imBack", "title": "Balance",
                                       "value": "/check_balance"}]}}


async def test_a_long_text_is_split_with_the_card_under_the_last_piece(
        teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft,
        fake: FakePlatform) -> None:
    text = ("word " * 7000).strip()  # 34999 characters
    await teams.send(session, microsoft.settings(), address(microsoft.base),
                     Outgoing(text, (Button("Ok", "/affirm"),), "m1"))
    replies = [c.body for c in fake.calls if c.path.startswith("/v3/")]
    assert len(replies) == 2 and "attachments" not in replies[0]
    assert replies[1]["attachments"][0]["content"]["buttons"][0]["value"] == "/affirm"
    assert " ".join(r["text"] for r in replies) == text
    wide = "€" * 20_000  # 3 bytes each: Teams' limit is on bytes
    assert all(len(p.encode()) <= 28_000 for p in split_bytes(wide, 28_000))
    assert "".join(split_bytes(wide, 28_000)) == wide


async def test_the_app_token_is_cached_and_dropped_when_the_connector_refuses_it(
        teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft,
        fake: FakePlatform, clock: Clock) -> None:
    settings, to = microsoft.settings(), address(microsoft.base)
    for n in range(3):
        await teams.send(session, settings, to, Outgoing(f"reply {n}", (), f"m{n}"))
    assert len(fake.to(TOKEN_PATH)) == 1
    fake.fail_next(401, {"error": {"code": "Unauthorized"}})
    with pytest.raises(SendRetry):
        await teams.send(session, settings, to, Outgoing("again", (), "m4"))
    await teams.send(session, settings, to, Outgoing("again", (), "m4"))
    assert len(fake.to(TOKEN_PATH)) == 2
    clock.now += 3599 - 300  # the token's life, less the margin
    await teams.send(session, settings, to, Outgoing("later", (), "m5"))
    assert len(fake.to(TOKEN_PATH)) == 3


async def test_connector_failures_are_retried_or_refused(
        teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft,
        fake: FakePlatform) -> None:
    settings, to = microsoft.settings(), address(microsoft.base)
    await teams.send(session, settings, to, Outgoing("warm", (), "m0"))  # token cached
    fake.fail_next(429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "7"})
    with pytest.raises(SendRetry) as retry:
        await teams.send(session, settings, to, Outgoing("hi", (), "m1"))
    assert retry.value.retry_after_s == 7.0
    fake.fail_next(502)
    with pytest.raises(SendRetry):
        await teams.send(session, settings, to, Outgoing("hi", (), "m1"))
    fake.fail_next(403, {"error": {"code": "BotNotInConversationRoster"}})
    with pytest.raises(SendRejected):
        await teams.send(session, settings, to, Outgoing("hi", (), "m1"))


async def test_a_refused_app_password_is_a_rejection(
        teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft,
        fake: FakePlatform) -> None:
    fake.fail_next(401, {"error": "invalid_client"})
    with pytest.raises(SendRejected, match="invalid_client"):
        await teams.send(session, microsoft.settings(), address(microsoft.base),
                         Outgoing("hi", (), "m1"))


async def test_replies_go_only_to_an_https_service_url(
        teams: Teams, session: aiohttp.ClientSession, microsoft: Microsoft,
        fake: FakePlatform) -> None:
    for service_url in ("http://bots.example.com/", "ftp://127.0.0.1/", ""):
        with pytest.raises(SendRejected):
            await teams.send(session, microsoft.settings(),
                             {"service_url": service_url, "conversation_id": "a:1"},
                             Outgoing("hi", (), "m1"))
    assert not fake.calls  # not even a token was asked for


def test_settings_are_checked() -> None:
    teams = Teams()
    teams.check_settings({"app_id": APP_ID, "app_password": "x", "tenant_id": "contoso.com"})
    for bad in ({"app_id": "my-bot"},
                {"app_id": APP_ID, "tenant_id": "../evil"},
                {"app_id": APP_ID, "token_url": "http://login.example.com/token"},
                {"app_id": APP_ID, "openid_metadata_url": "file:///etc/passwd"}):
        with pytest.raises(SettingsInvalid):
            teams.check_settings({"app_password": "x", **bad})
