"""The web widget's server side against the gateway app in process (docs/channels.md, "The web
widget"; docs/security.md, publishable keys): what a publishable key may do (only the widget
routes, only from the bot's origins), CORS preflights, resuming a conversation, the settings'
validation, the script's cache headers. The widget itself runs in Chromium in
tests/integration/test_widget_browser.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.common.pb.botfactory.v1 import gateway_pb2
from services.gateway.auth import hash_secret
from services.gateway.channels.widget import WIDGET_SETTINGS, WidgetSettingsInvalid
from services.gateway.http.routes import ROUTES
from services.gateway.http.state import STATE
from services.gateway.ports import Role
from tests.support.gateway import (
    BOOTSTRAP,
    FakeClock,
    auth,
    conv,
    make_config,
    problem_of,
    start_gateway,
)
from tests.support.grpc_gateway import serve as serve_grpc
from tests.support.widget import (
    BOT,
    GREETING,
    WidgetApp,
    publishable_key,
    refused,
    sessions,
    set_widget,
    widget_app,
)

SHOP = "https://shop.example.com"
WWW = "https://www.example.com"
OTHER = "https://evil.example.net"
SESSIONS = f"/v1/bots/{BOT}/widget/sessions"
CONFIG = f"/v1/bots/{BOT}/widget/config"
SETTINGS = f"/v1/admin/bots/{BOT}/channels/widget"


@dataclass
class Widget:
    client: TestClient[Any, Any]
    built: WidgetApp
    key: str


@pytest.fixture
async def widget() -> AsyncIterator[Widget]:
    async with aiohttp.ClientSession() as session:
        built = widget_app(session, clock=FakeClock())
        await set_widget(built.app, allowed_origins=f"{SHOP}, {WWW}", title="Alpha Bank",
                         color="#0b5fff", greeting=GREETING)
        key = await publishable_key(built.app)
        client: TestClient[Any, Any] = TestClient(TestServer(built.app))
        await client.start_server()
        try:
            yield Widget(client, built, key)
        finally:
            await client.close()


def page(credential: str, origin: str | None = SHOP) -> dict[str, str]:
    """The headers of a request a widget page sends (a browser sets Origin)."""
    return {**auth(credential), **({"Origin": origin} if origin else {})}


async def start(w: Widget, body: dict[str, Any] | None = None, *,
                origin: str = SHOP) -> dict[str, Any]:
    response = await w.client.post(SESSIONS, headers=page(w.key, origin), json=body)
    assert response.status == 201, await response.text()
    started: dict[str, Any] = await response.json()
    return started


# --- what a publishable key may do ------------------------------------------------------------


async def test_a_publishable_key_starts_sessions_from_the_bots_origins(widget: Widget) -> None:
    config = await widget.client.get(CONFIG, headers=page(widget.key))
    assert config.status == 200
    assert await config.json() == {"bot_id": BOT, "title": "Alpha Bank", "color": "#0b5fff",
                                   "avatar_url": "", "greeting": GREETING}
    assert config.headers["Access-Control-Allow-Origin"] == SHOP

    first = await start(widget)
    assert first["token"].startswith("bfv_") and first["bot_id"] == BOT
    assert re.fullmatch(r"widget-[A-Za-z0-9_-]{24}", first["conversation_id"])
    assert first["resumed"] is False and "restarted" not in first
    second = await start(widget, origin=WWW)  # every origin on the list
    assert second["conversation_id"] != first["conversation_id"]
    assert sessions(widget.built.metrics, "new") == 2

    # the token chats in its own conversation, from the page, and nowhere else
    mine = conv(BOT, first["conversation_id"])
    sent = await widget.client.post(f"{mine}/messages", headers=page(first["token"]),
                                    json={"text": "hi"})
    assert sent.status == 200
    assert sent.headers["Access-Control-Allow-Origin"] == SHOP
    await problem_of(await widget.client.post(
        f"{conv(BOT, second['conversation_id'])}/messages", headers=page(first["token"]),
        json={"text": "hi"}), 403)
    await problem_of(await widget.client.post(SESSIONS, headers=page(first["token"])), 403)


async def test_a_publishable_key_may_do_nothing_else(widget: Widget) -> None:
    ids = {"bot": BOT, "conversation": "c1", "message_id": "m1", "key_id": "0123abcd",
           "run_id": "run-1", "channel": "widget", "training_id": "tr-18f3a2b4c5d-0a1b2c",
           "version": "v0123456789abcdef", "environment": "prod"}
    tried = 0
    for spec in ROUTES:
        if spec.role is None or spec.role is Role.PUBLISHABLE:
            continue
        path = re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], spec.path)
        if spec.websocket:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await widget.client.ws_connect(path, protocols=("botfactory.v1",
                                                                f"bearer.{widget.key}"))
            assert caught.value.status == 403, spec.name
        else:
            response = await widget.client.request(spec.method, path, headers=page(widget.key))
            body = await problem_of(response, 403)
            assert "publishable key" in body["detail"], spec.name
        tried += 1
    assert tried > 30
    # nor the widget of another bot (out of its reach: 404, as any bot of another tenant)
    await problem_of(await widget.client.post("/v1/bots/beta/widget/sessions",
                                              headers=page(widget.key)), 404)
    assert refused(widget.built.metrics, "scope") == tried + 1


async def test_the_page_must_be_on_the_bots_allow_list(widget: Widget) -> None:
    for origin in (None, OTHER, f"{SHOP}/", "http://shop.example.com", "null"):
        for method, path in (("POST", SESSIONS), ("GET", CONFIG)):
            response = await widget.client.request(method, path,
                                                   headers=page(widget.key, origin))
            body = await problem_of(response, 403)
            assert "allow-list" in body["detail"]
            assert "Access-Control-Allow-Origin" not in response.headers
    assert refused(widget.built.metrics, "origin") == 10
    # a bot without a widget
    beta = await publishable_key(widget.built.app, "beta")
    body = await problem_of(await widget.client.post("/v1/bots/beta/widget/sessions",
                                                     headers=page(beta)), 403)
    assert "no web widget" in body["detail"]
    assert refused(widget.built.metrics, "not_configured") == 1
    assert sessions(widget.built.metrics, "new") == 0


async def test_preflights_are_answered_for_the_bots_origins_only(widget: Widget) -> None:
    def preflight(path: str, origin: str, method: str = "POST") -> Any:
        return widget.client.options(path, headers={
            "Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,content-type"})

    allowed = await preflight(SESSIONS, SHOP)
    assert allowed.status == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == SHOP
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in allowed.headers["Access-Control-Allow-Headers"]
    assert (await preflight(CONFIG, WWW, "GET")).status == 204
    # what the widget then does with its visitor token: send, read the transcript
    assert (await preflight(f"{conv(BOT, 'widget-x')}/messages", SHOP)).status == 204
    assert (await preflight(f"{conv(BOT, 'widget-x')}/transcript", SHOP, "GET")).status == 204
    # not from another origin, not another bot's routes, not the rest of the API
    for path, origin in ((SESSIONS, OTHER), ("/v1/bots/beta/widget/sessions", SHOP),
                         ("/v1/admin/keys", SHOP), (f"{conv(BOT, 'c1')}/tokens", SHOP)):
        refusal = await preflight(path, origin)
        await problem_of(refusal, 403)
        assert "Access-Control-Allow-Origin" not in refusal.headers
    assert refused(widget.built.metrics, "preflight") == 2  # the widget routes' refusals

    # a change of the list applies at once on this replica
    changed = await widget.client.put(SETTINGS, headers=auth(BOOTSTRAP),
                                      json={"allowed_origins": WWW})
    assert changed.status == 200
    await problem_of(await preflight(SESSIONS, SHOP), 403)
    assert (await preflight(SESSIONS, WWW)).status == 204


# --- resuming ---------------------------------------------------------------------------------


async def test_a_valid_token_resumes_its_conversation(widget: Widget) -> None:
    first = await start(widget)
    mine = conv(BOT, first["conversation_id"])
    assert (await widget.client.post(f"{mine}/messages", headers=page(first["token"]),
                                     json={"text": "hi"})).status == 200
    again = await start(widget, {"visitor_token": first["token"],
                                 "conversation_id": first["conversation_id"]})
    assert again["conversation_id"] == first["conversation_id"] and again["resumed"] is True
    assert "restarted" not in again
    transcript = await widget.client.get(f"{mine}/transcript", headers=page(again["token"]))
    assert transcript.status == 200
    assert [e["type"] for e in (await transcript.json())["entries"]] == ["user", "bot"]
    # the conversation id alone is not enough (the token proves the visitor owns it)
    assert (await start(widget, {"visitor_token": first["token"]}))["resumed"] is True
    body = await problem_of(await widget.client.post(
        SESSIONS, headers=page(widget.key),
        json={"conversation_id": first["conversation_id"]}), 400)
    assert [e["field"] for e in body["errors"]] == ["visitor_token"]
    assert sessions(widget.built.metrics, "resumed") == 2


async def test_an_expired_or_foreign_token_starts_a_new_conversation(widget: Widget) -> None:
    first = await start(widget)
    tokens = widget.built.app[STATE].auth.tokens
    now = tokens.clock()
    tokens.clock = lambda: now + tokens.ttl_s + 1
    expired = await start(widget, {"visitor_token": first["token"],
                                   "conversation_id": first["conversation_id"]})
    assert expired["resumed"] is False and expired["restarted"] == "expired"
    assert expired["conversation_id"] != first["conversation_id"]

    current = await start(widget)
    client = await widget.built.app[STATE].auth.issue("t1", [BOT], Role.CLIENT)
    server_token, _ = widget.built.app[STATE].auth.mint(
        (await widget.built.app[STATE].auth.authenticate(client.secret)), BOT, "c-server")
    foreign = [
        {"visitor_token": "bfv_e30.forged"},  # not signed by the gateway
        {"visitor_token": server_token},  # another key's token (an integrator's server)
        {"visitor_token": current["token"], "conversation_id": "widget-other"},  # not its own
    ]
    for body in foreign:
        started = await start(widget, body)
        assert started["restarted"] == "invalid" and started["resumed"] is False, body
        assert started["conversation_id"] not in ("c-server", "widget-other")
    assert sessions(widget.built.metrics, "restarted") == 4


async def test_a_revoked_publishable_key_ends_its_visitors_tokens(widget: Widget) -> None:
    first = await start(widget)
    record = await widget.built.app[STATE].auth.store.get_by_hash(
        hash_secret(make_config().api_key_pepper, widget.key))
    assert record is not None and record.role is Role.PUBLISHABLE
    await widget.built.app[STATE].auth.revoke(record.key_id)
    mine = conv(BOT, first["conversation_id"])
    await problem_of(await widget.client.post(f"{mine}/messages", headers=page(first["token"]),
                                              json={"text": "hi"}), 401)
    await problem_of(await widget.client.post(SESSIONS, headers=page(widget.key)), 401)


async def test_a_publishable_keys_rate_limit_is_per_client_address() -> None:
    """The key is public: one client draining its bucket must not stop the site's widget."""
    config = make_config(rate_limit_rps=0.001, rate_limit_burst=2,
                         client_ip_header="X-Forwarded-For")
    async with aiohttp.ClientSession() as session:
        built = widget_app(session, config=config, clock=FakeClock())
        await set_widget(built.app, allowed_origins=SHOP)
        key = await publishable_key(built.app)
        async with TestClient(TestServer(built.app)) as client:
            def get(address: str) -> Any:
                return client.get(CONFIG, headers={**page(key), "X-Forwarded-For": address})

            assert [(await get("198.51.100.7")).status for _ in range(3)] == [200, 200, 429]
            assert (await get("203.0.113.9")).status == 200


# --- admin: keys and settings -----------------------------------------------------------------


async def test_publishable_keys_are_made_for_one_bot(widget: Widget) -> None:
    def create(bots: list[str]) -> Any:
        return widget.client.post("/v1/admin/keys", headers=auth(BOOTSTRAP), json={
            "tenant": "t1", "bots": bots, "role": "publishable", "description": "shop"})

    created = await create([BOT])
    assert created.status == 201
    body = await created.json()
    assert body["secret"].startswith(f"pk_{body['key_id']}_") and body["role"] == "publishable"
    assert (await widget.client.get(CONFIG, headers=page(body["secret"]))).status == 200
    for bots in ([BOT, "beta"], ["*"]):
        problem = await problem_of(await create(bots), 400)
        assert [e["field"] for e in problem["errors"]] == ["bots"]
    # other roles keep their prefix
    client = await widget.client.post("/v1/admin/keys", headers=auth(BOOTSTRAP), json={
        "tenant": "t1", "bots": [BOT], "role": "client"})
    assert (await client.json())["secret"].startswith("bfk_")


async def test_widget_settings_are_validated_shown_and_removed(widget: Widget) -> None:
    bad = {"allowed_origins": f"{SHOP}, *", "color": "red; background: url(x)",
           "avatar_url": "javascript:alert(1)", "title": "a\nb", "api_base": "https://x.io"}
    problem = await problem_of(await widget.client.put(SETTINGS, headers=auth(BOOTSTRAP),
                                                       json=bad), 400)
    assert {e["field"] for e in problem["errors"]} == {"api_base"}  # unknown: first
    del bad["api_base"]
    problem = await problem_of(await widget.client.put(SETTINGS, headers=auth(BOOTSTRAP),
                                                       json=bad), 400)
    assert {e["field"] for e in problem["errors"]} == {"allowed_origins", "color",
                                                       "avatar_url", "title"}
    await problem_of(await widget.client.put(SETTINGS, headers=auth(BOOTSTRAP),
                                             json={"title": "No origins"}), 400)

    good = {"allowed_origins": SHOP, "title": "Alpha", "color": "#123",
            "avatar_url": "https://cdn.example.com/a.png", "greeting": "Hello!"}
    put = await widget.client.put(SETTINGS, headers=auth(BOOTSTRAP), json=good)
    assert put.status == 200
    shown = await put.json()
    assert shown == {"bot_id": BOT, "channel": "widget", "settings": good, "secrets": []}
    assert await (await widget.client.get(SETTINGS, headers=auth(BOOTSTRAP))).json() == shown
    theme = await (await widget.client.get(CONFIG, headers=page(widget.key))).json()
    assert theme["avatar_url"] == good["avatar_url"] and theme["color"] == "#123"
    # admin only
    await problem_of(await widget.client.get(SETTINGS, headers=page(widget.key)), 403)
    deleted = await widget.client.delete(SETTINGS, headers=auth(BOOTSTRAP))
    assert deleted.status == 200
    await problem_of(await widget.client.get(CONFIG, headers=page(widget.key)), 403)


@pytest.mark.parametrize(("name", "value", "valid"), [
    ("allowed_origins", "https://shop.example.com", True),
    ("allowed_origins", "https://shop.example.com,https://a.b.example:8443", True),
    ("allowed_origins", "http://localhost:3000, http://127.0.0.1:8080", True),
    ("allowed_origins", "https://xn--bcher-kva.example", True),
    ("allowed_origins", "*", False),
    ("allowed_origins", "https://shop.example.com/", False),
    ("allowed_origins", "https://shop.example.com/path", False),
    ("allowed_origins", "https://Shop.example.com", False),
    ("allowed_origins", "http://shop.example.com", False),
    ("allowed_origins", "https://shop.example.com:443", False),
    ("allowed_origins", "https://shop.example.com:70000", False),
    ("allowed_origins", "shop.example.com", False),
    ("allowed_origins", "https://user@shop.example.com", False),
    ("allowed_origins", "https://shop.example.com,,https://www.example.com", False),
    ("allowed_origins", ",".join(f"https://s{i}.example.com" for i in range(21)), False),
    ("color", "#0b5fff", True), ("color", "#FFF", True), ("color", "red", False),
    ("color", "#12345", False), ("color", "#0b5fff;background:url(x)", False),
    ("avatar_url", "https://cdn.example.com/bot.png", True),
    ("avatar_url", "http://localhost:8080/bot.png", True),
    ("avatar_url", "data:image/png;base64,iVBORw0KGgo=", True),
    ("avatar_url", "http://cdn.example.com/bot.png", False),
    ("avatar_url", "https://u:p@cdn.example.com/bot.png", False),
    ("avatar_url", 'https://cdn.example.com/a.png" onerror="alert(1)', False),
    ("avatar_url", "data:text/html;base64,PHNjcmlwdD4=", False),
    ("avatar_url", "javascript:alert(1)", False),
    ("title", "Alpha Bank", True), ("title", " ", False), ("title", "x" * 61, False),
    ("title", "bell\x07", False), ("greeting", "Hello!\nHow can I help?", True),
    ("greeting", "x" * 501, False),
])
def test_widget_setting_values(name: str, value: str, valid: bool) -> None:
    settings = {"allowed_origins": SHOP, name: value}
    if valid:
        WIDGET_SETTINGS.check_settings(settings)
    else:
        with pytest.raises(WidgetSettingsInvalid) as caught:
            WIDGET_SETTINGS.check_settings(settings)
        assert [field for field, _ in caught.value.problems] == [name]


# --- the script -------------------------------------------------------------------------------


async def test_the_script_is_public_and_cacheable(widget: Widget) -> None:
    script = await widget.client.get("/widget.js")
    assert script.status == 200 and script.content_type == "text/javascript"
    assert script.headers["Cache-Control"] == "public, max-age=300"
    assert script.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    text = await script.text()
    assert "attachShadow" in text and "/widget/sessions" in text
    assert not re.search(r"https?://(?!GATEWAY)[a-z]", text.split('"use strict";', 1)[1]), \
        "the widget requests nothing but its gateway"
    again = await widget.client.get("/widget.js",
                                    headers={"If-None-Match": script.headers["ETag"]})
    assert again.status == 304


async def test_without_channels_no_bot_has_a_widget() -> None:
    gw = await start_gateway()
    try:
        key = (await gw.app[STATE].auth.issue("t1", [BOT], Role.PUBLISHABLE)).secret
        body = await problem_of(await gw.client.get(CONFIG, headers=page(key)), 403)
        assert "widgets are off" in body["detail"]
    finally:
        await gw.client.close()


async def test_a_publishable_key_gets_nothing_over_grpc() -> None:
    async for served in serve_grpc(make_config()):
        key = (await served.auth.issue("t1", (BOT,), Role.PUBLISHABLE)).secret
        calls = [
            served.stub.SendMessage(gateway_pb2.SendMessageRequest(
                bot_id=BOT, conversation_id="c1", text="hi"), metadata=served.metadata(key)),
            served.stub.GetTranscript(gateway_pb2.GetTranscriptRequest(
                bot_id=BOT, conversation_id="c1"), metadata=served.metadata(key)),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert served.hub.sent == []
