"""The abuse suite (docs/security.md): the whole stack on a real nats-server, attacked the way a
hostile client or tenant would.

- cross-tenant reads and writes with valid keys of another tenant, on every guarded route
  (HTTP, WebSocket, gRPC): refused, and nothing changes;
- revoked and malformed keys: one and the same 401 everywhere;
- key brute force: failed attempts throttled per client address (429 with Retry-After), while
  the valid keys of that address go on working; logged without the guesses;
- transcripts: only with the conversation's visitor token or an agent/admin key (HTTP, gRPC);
- oversized bodies (413), deep JSON, invalid UTF-8, lone surrogates, control characters (400,
  over HTTP, WebSocket and gRPC), huge slot values (bounded by the text limit);
- template injection through user text (`{{ 7*7 }}` stays text) and through bot files
  (sandboxed at run time, runaway templates refused at deploy);
- regexes that would backtrack catastrophically: refused at deploy; long hostile text is
  answered quickly;
- workflow URLs pointing at link-local, loopback or cluster addresses: refused by the RPA
  runner unless allow-listed.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import structlog
from aiohttp import web

from botfactory.local.nats_server import NatsServer
from services.common.logging import configure_logging
from services.common.nats import KV_TRACKERS, connect
from services.common.pb.botfactory.v1 import conversation_pb2, gateway_pb2, gateway_pb2_grpc
from services.gateway.access import ROLE_PERMISSIONS
from services.gateway.http.routes import ROUTES, SPEC, RouteSpec
from services.gateway.http.state import STATE
from tests.support.rpa import harness, write_test_bot
from tests.support.stack import BOOTSTRAP, Stack, running_stack

ROOT = Path(__file__).resolve().parents[2]
INVALID = {"type": "urn:botfactory:problem:unauthenticated", "title": "Unauthorized",
           "status": 401, "detail": "missing or invalid API key"}
GUARDED = [spec for spec in ROUTES if spec.role is not None]


# --- helpers ----------------------------------------------------------------------------------


@dataclass
class Tenant:
    admin: str
    admin_id: str
    agent: str
    client: str
    client_id: str


async def request(stack: Stack, method: str, path: str, key: str | None = None, *,
                  body: Any = None, data: Any = None, headers: dict[str, str] | None = None
                  ) -> tuple[int, Any]:
    assert stack.session is not None
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    async with stack.session.request(method, f"{stack.base_url}{path}", json=body, data=data,
                                     headers=sent) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


async def create_key(stack: Stack, admin: str, tenant: str, bots: list[str],
                     role: str) -> tuple[str, str]:
    status, body = await request(stack, "POST", "/v1/admin/keys", admin,
                                 body={"tenant": tenant, "bots": bots, "role": role})
    assert status == 201, body
    return body["key_id"], body["secret"]


async def tenant(stack: Stack, name: str, bot: str) -> Tenant:
    admin_id, admin = await create_key(stack, BOOTSTRAP, name, [bot], "admin")
    _, agent = await create_key(stack, admin, name, [bot], "agent")
    client_id, client = await create_key(stack, admin, name, [bot], "client")
    return Tenant(admin, admin_id, agent, client, client_id)


def banking_files(name: str = "banking", extra: str = "") -> dict[str, str]:
    folder = ROOT / "bots" / "banking"
    files = {}
    for path in sorted(folder.rglob("*.yml")):
        relative = path.relative_to(folder).as_posix()
        if relative.split("/")[0] in ("data", "domain", "workflows"):
            files[relative] = path.read_text(encoding="utf-8")
    files["bot.yml"] = (folder / "bot.yml").read_text(encoding="utf-8").replace(
        "name: banking", f"name: {name}") + extra
    return files


VERSION_ID = "v0123456789abcdef"  # a bot version id (docs/versions.md)


def route_call(spec: RouteSpec, *, bot: str, conversation: str, message_id: str,
               key_id: str, tenant_name: str) -> tuple[str, Any]:
    """The path and a valid body of a call of `spec` (so that only the key can refuse it)."""
    ids = {"bot": bot, "conversation": conversation, "message_id": message_id,
           "key_id": key_id, "run_id": "run-1", "channel": "telegram",
           "training_id": "tr-18f3a2b4c5d-0a1b2c", "version": VERSION_ID, "environment": "prod"}
    path = re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "id-1"), spec.path)
    bodies: dict[str, Any] = {
        "post_message": {"text": "hi"}, "post_feedback": {"rating": 1},
        "post_agent_message": {"text": "hello from an agent"},
        "create_key": {"tenant": tenant_name, "bots": [bot], "role": "client"},
        "put_model": {"version": "v1"}, "put_definition": {"files": banking_files()},
        "put_webhook": {"url": "https://evil.example.com/steal", "secret": "s" * 32},
        "put_channel": {"bot_token": "123456:" + "a" * 30, "secret_token": "evil-secret"},
        "create_bot_version": {"files": banking_files(), "model": "m1"},
        "record_bot_version_check": {"name": "conversation_tests", "passed": True},
        "configure_environments": {"environments": [{"name": "prod"}]},
        "promote_environment": {"version": VERSION_ID},
        "put_environment_canary": {"version": VERSION_ID, "share": 0.5},
    }
    if spec.name in ("list_keys", "list_bots"):
        path += f"?tenant={tenant_name}"
    return path, bodies.get(spec.name)


async def socket_status(stack: Stack, path: str, key: str) -> int:
    assert stack.session is not None
    try:
        async with stack.session.ws_connect(f"{stack.base_url}{path}", protocols=(
                "botfactory.v1", f"bearer.{key}")):
            return 101
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status


def bearer(key: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"), *extra.items())


@pytest.fixture
async def stack(nats_server: NatsServer, tiny_banking_model: Path) -> AsyncIterator[Stack]:
    # failed authentications are counted per client address: here all are 127.0.0.1
    async with running_stack(nats_server.url, tiny_banking_model,
                             auth_failures_burst=10_000) as running:
        yield running


# --- tenants ----------------------------------------------------------------------------------


async def test_keys_of_another_tenant_reach_nothing(stack: Stack) -> None:
    acme = await tenant(stack, "acme", "banking")
    evil = await tenant(stack, "evil", "evilbot")
    _, sent = await stack.post("c1", "/greet", key=acme.client)
    reply_id = sent["replies"][0]["message_id"]
    hook = {"url": "https://acme.example.com/hook", "secret": "a" * 32}
    assert (await request(stack, "PUT", "/v1/admin/bots/banking/webhook", acme.admin,
                          body=hook))[0] == 200
    before = await stack.transcript("c1")
    keys_before = (await request(stack, "GET", "/v1/admin/keys", acme.admin))[1]

    tried = set()
    for spec in GUARDED:
        path, body = route_call(spec, bot="banking", conversation="c1", message_id=reply_id,
                                key_id=acme.client_id, tenant_name="acme")
        for role, key in (("client", evil.client), ("agent", evil.agent),
                          ("admin", evil.admin)):
            if spec.websocket:
                status = await socket_status(stack, path, key)
            else:
                status, _ = await request(stack, spec.method, path, key, body=body)
            # a bot of another tenant, or a key id, is "not found" when the role may do
            # the thing (it is not told they exist); the rest is refused by the role
            allowed = spec.needs in ROLE_PERMISSIONS[role]
            expected = 404 if allowed and ("{bot}" in spec.path or "{key_id}" in spec.path) \
                else 403
            assert status == expected, (spec.name, role, status)
        tried.add(spec.name)
    assert tried == {spec.name for spec in GUARDED}

    # an admin cannot widen its own scope: no key for another tenant's bot, no `*`
    for bots in (["banking"], ["*"], ["evilbot", "banking"]):
        status, _ = await request(stack, "POST", "/v1/admin/keys", evil.admin,
                                  body={"tenant": "evil", "bots": bots, "role": "client"})
        assert status == 403
    # listing shows only its own tenant
    status, listed = await request(stack, "GET", "/v1/admin/keys", evil.admin)
    assert status == 200 and {k["tenant"] for k in listed["keys"]} == {"evil"}

    # gRPC: the same refusals
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.gateway.grpc_port}") as channel:
        stub = gateway_pb2_grpc.ChatServiceStub(channel)
        calls = [
            stub.SendMessage(gateway_pb2.SendMessageRequest(
                bot_id="banking", conversation_id="c1", text="hi"),
                metadata=bearer(evil.client), timeout=10),
            stub.GetTranscript(gateway_pb2.GetTranscriptRequest(
                bot_id="banking", conversation_id="c1"), metadata=bearer(evil.client),
                timeout=10),
            stub.SendFeedback(gateway_pb2.SendFeedbackRequest(feedback=conversation_pb2.Feedback(
                bot_id="banking", conversation_id="c1", message_id=reply_id, rating=1)),
                metadata=bearer(evil.client), timeout=10),
        ]
        # sending and rating: a client may, not to this bot (NOT_FOUND); the transcript: a
        # client may not read any (PERMISSION_DENIED)
        expected = [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.NOT_FOUND]
        for call, code in zip(calls, expected, strict=True):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == code

    # nothing changed for acme
    assert await stack.transcript("c1") == before
    assert (await request(stack, "GET", "/v1/admin/keys", acme.admin))[1] == keys_before
    status, kept = await request(stack, "GET", "/v1/admin/bots/banking/webhook", acme.admin)
    assert status == 200 and kept["url"] == hook["url"]
    assert (await stack.post("c1", "/greet", key=acme.client))[0] == 200


# --- tenants own bots: the whole matrix -------------------------------------------------------


@dataclass
class Owned:
    """Tenant B ("bravo") and its bot with data: a conversation, a webhook, keys."""

    admin: str
    admin_id: str
    agent: str
    client: str
    client_id: str
    reply_id: str
    secrets: tuple[str, ...]  # what must never show in an answer to another tenant


async def bravo_owns_banking(stack: Stack) -> Owned:
    status, _ = await request(stack, "PUT", "/v1/admin/bots/banking/owner", BOOTSTRAP,
                              body={"tenant": "bravo"})
    assert status == 200
    admin_id, admin = await create_key(stack, BOOTSTRAP, "bravo", ["*"], "admin")
    _, agent = await create_key(stack, admin, "bravo", ["*"], "agent")
    client_id, client = await create_key(stack, admin, "bravo", ["*"], "client")
    text = "bravo private words 4821"
    status, sent = await stack.post("bc1", text, key=client)
    assert status == 200, sent
    hook = {"url": "https://bravo-hooks.example.com/in", "secret": "b" * 32}
    assert (await request(stack, "PUT", "/v1/admin/bots/banking/webhook", admin,
                          body=hook))[0] == 200
    reply_id = sent["replies"][0]["message_id"]
    return Owned(admin, admin_id, agent, client, client_id, reply_id,
                 (text, "bravo", "bravo-hooks", admin_id, client_id, reply_id,
                  sent["message_id"]))


async def bravo_state(stack: Stack, bravo: Owned) -> list[Any]:
    """Everything of bravo's the matrix must leave as it was."""
    path = "/v1/bots/banking/conversations/bc1/transcript"
    return [await request(stack, "GET", path, bravo.agent),
            await request(stack, "GET", "/v1/admin/bots/banking/webhook", bravo.admin),
            await request(stack, "GET", "/v1/admin/bots/banking/owner", bravo.admin),
            await request(stack, "GET", "/v1/admin/keys", bravo.admin),
            await request(stack, "GET", "/v1/admin/bots/banking/channels/telegram",
                          bravo.admin)]


def router_routes(stack: Stack) -> list[tuple[str, str, RouteSpec | None]]:
    """(method, path, spec) of every route of the running gateway's router: taken from the
    application, not from a list, so that a route added later is in the matrix at once."""
    assert stack.gateway.runner is not None
    app = stack.gateway.runner.app
    found = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        assert path, route
        spec = app[SPEC].get(route.resource.name or "") if route.resource else None
        found.append((route.method, path, spec))
    return found


async def test_no_route_reaches_another_tenants_bot(stack: Stack) -> None:
    """Every route of the router, with any key of tenant A, on tenant B's bot: 403 or 404.

    The routes come from the running gateway's router (so a new route is in the matrix at
    once); tenant A has admin, agent and client keys with bots `*`, and an admin key that
    names B's bot; each answer is 403 or 404 (404 whenever A's role would allow the call:
    only the tenant refuses it), carries none of B's data, and nothing of B's changes."""
    bravo = await bravo_owns_banking(stack)
    before = await bravo_state(stack, bravo)
    _, a_admin = await create_key(stack, BOOTSTRAP, "alpha", ["*"], "admin")
    a_keys = {"admin": a_admin,
              "agent": (await create_key(stack, a_admin, "alpha", ["*"], "agent"))[1],
              "client": (await create_key(stack, a_admin, "alpha", ["*"], "client"))[1],
              # issued by the platform, naming B's bot: still A's key, so it reaches nothing
              "admin naming banking": (await create_key(stack, BOOTSTRAP, "alpha",
                                                        ["banking"], "admin"))[1]}
    bodies = {"put_bot_owner": {"tenant": "alpha"}}
    tried: set[tuple[str, str]] = set()
    for method, path, spec in router_routes(stack):
        if spec is None or spec.needs is None:
            # public: health, documents, pages, the widget's script; a platform's channel
            # webhook is verified by the platform's own signature, never by a key
            assert spec is None or spec.name in ("channel_inbound", "channel_handshake") \
                or "{bot}" not in path, (method, path)
            continue
        url, body = route_call(spec, bot="banking", conversation="bc1",
                               message_id=bravo.reply_id, key_id=bravo.client_id,
                               tenant_name="bravo")
        body = bodies.get(spec.name, body)
        for role, key in a_keys.items():
            if spec.websocket:
                status, answer = await socket_status(stack, url, key), ""
            else:
                status, answer = await request(stack, method, url, key, body=body)
            assert status in (403, 404), (method, spec.name, role, status, answer)
            # (what the request itself carries may be echoed: a tenant or key id it names)
            sent = url + json.dumps(body)
            text = json.dumps(answer)
            leaked = [s for s in bravo.secrets if s in text and s not in sent]
            assert not leaked, (method, spec.name, role, leaked)
            if "{bot}" in spec.path and spec.needs in ROLE_PERMISSIONS[
                    role.split()[0]]:  # the role allows it: only the tenant refuses
                assert (status == 404 and answer in ("", {**NO_BANKING, "title": "Not Found"})) \
                    or method == "HEAD", (method, spec.name, role, answer)
        tried.add((method, spec.name))
    # every guarded route of the table was tried (GET and its HEAD)
    assert {name for _, name in tried} == {spec.name for spec in GUARDED}
    assert await bravo_state(stack, bravo) == before
    # A's listings show nothing of B's
    for path in ("/v1/admin/keys", "/v1/admin/bots", "/v1/admin/keys?tenant=alpha"):
        status, listed = await request(stack, "GET", path, a_admin)
        assert status == 200 and not any(s in json.dumps(listed) for s in bravo.secrets)
    assert (await request(stack, "GET", "/v1/admin/keys?tenant=bravo", a_admin))[0] == 403
    # B still works
    assert (await stack.post("bc1", "again", key=bravo.client))[0] == 200

    # gRPC: the same refusal (NOT_FOUND, as HTTP's 404)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.gateway.grpc_port}") as channel:
        stub = gateway_pb2_grpc.ChatServiceStub(channel)
        for call in (
            stub.SendMessage(gateway_pb2.SendMessageRequest(
                bot_id="banking", conversation_id="bc1", text="hi"),
                metadata=bearer(a_keys["client"]), timeout=10),
            stub.GetTranscript(gateway_pb2.GetTranscriptRequest(
                bot_id="banking", conversation_id="bc1"), metadata=bearer(a_keys["agent"]),
                timeout=10),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert not any(s in (caught.value.details() or "") for s in bravo.secrets)


NO_BANKING = {"type": "urn:botfactory:problem:bot-not-found", "status": 404,
              "detail": "no bot 'banking' here"}


async def test_bots_get_their_tenant_when_first_deployed(stack: Stack) -> None:
    _, acme = await create_key(stack, BOOTSTRAP, "acme", ["*"], "admin")
    _, evil = await create_key(stack, BOOTSTRAP, "evil", ["*"], "admin")
    files = banking_files("acmebot")
    # a new bot: its first deployer's tenant's
    status, deployed = await request(stack, "PUT", "/v1/admin/bots/acmebot/definition", acme,
                                     body={"files": files})
    assert status == 200, deployed
    status, owner = await request(stack, "GET", "/v1/admin/bots/acmebot/owner", acme)
    assert (status, owner) == (200, {"bot_id": "acmebot", "tenant": "acme",
                                     "recorded": True})
    # taken: another tenant gets the one 404, for its definition as for anything else
    for path in ("/v1/admin/bots/acmebot/definition", "/v1/admin/bots/banking/definition"):
        name = path.split("/")[4]
        status, answer = await request(stack, "PUT", path, evil,
                                       body={"files": banking_files(name)})
        assert (status, answer["detail"]) == (404, f"no bot {name!r} here")
    # the platform deploys for a tenant it names; a tenant admin cannot name another tenant
    status, _ = await request(stack, "PUT", "/v1/admin/bots/evilbot/definition?tenant=evil",
                              BOOTSTRAP, body={"files": banking_files("evilbot")})
    assert status == 200
    assert (await request(stack, "GET", "/v1/admin/bots/evilbot/owner", evil))[0] == 200
    assert (await request(stack, "GET", "/v1/admin/bots/evilbot/owner", acme))[0] == 404
    status, _ = await request(stack, "PUT", "/v1/admin/bots/acmebot2/definition?tenant=evil",
                              acme, body={"files": banking_files("acmebot2")})
    assert status == 404
    # moving a bot: the platform (or an admin of both tenants); audited
    status, moved = await request(stack, "PUT", "/v1/admin/bots/evilbot/owner", acme,
                                  body={"tenant": "acme"})
    assert status == 404
    status, moved = await request(stack, "PUT", "/v1/admin/bots/evilbot/owner", evil,
                                  body={"tenant": "acme"})
    assert status == 403
    status, moved = await request(stack, "PUT", "/v1/admin/bots/evilbot/owner", BOOTSTRAP,
                                  body={"tenant": "acme"})
    assert (status, moved["tenant"]) == (200, "acme")
    assert (await request(stack, "GET", "/v1/admin/bots/evilbot/owner", evil))[0] == 404
    status, listed = await request(stack, "GET", "/v1/admin/bots", acme)
    assert {b["bot_id"] for b in listed["bots"]} == {"acmebot", "evilbot"}


# --- revoked and malformed keys ---------------------------------------------------------------


async def test_revoked_and_malformed_keys_get_one_and_the_same_401(stack: Stack) -> None:
    acme = await tenant(stack, "acme", "banking")
    _, sent = await stack.post("c2", "/greet", key=acme.client)
    for key_id in (acme.client_id, acme.admin_id):
        assert (await request(stack, "DELETE", f"/v1/admin/keys/{key_id}", BOOTSTRAP))[0] == 200
    malformed = ["", "bfk_", "bfk_zz_yy", "x" * 300, acme.client[:-1], acme.client + "x",
                 acme.client.upper(), BOOTSTRAP + "x", "null", "' OR 1=1 --"]
    for spec in GUARDED:
        path, body = route_call(spec, bot="banking", conversation="c2",
                                message_id=sent["replies"][0]["message_id"],
                                key_id=acme.client_id, tenant_name="acme")
        revoked = acme.admin if spec.role is not None and spec.role.value == "admin" \
            else acme.client
        if spec.websocket:
            for key in (revoked, "bfk_0_x"):
                assert await socket_status(stack, path, key) == 401
            continue
        for key in (revoked, *malformed):
            status, answer = await request(stack, spec.method, path, key, body=body)
            assert (status, answer) == (401, INVALID), (spec.name, key[:20])
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic YTpi"},
                        {"Authorization": f"Token {acme.agent}"}):
            status, answer = await request(stack, spec.method, path, body=body, headers=headers)
            assert (status, answer) == (401, INVALID), (spec.name, headers)


async def test_a_revoked_key_ends_an_open_socket(stack: Stack) -> None:
    assert stack.session is not None
    key_id, key = await create_key(stack, BOOTSTRAP, "acme", ["banking"], "client")
    url = f"{stack.base_url}/v1/bots/banking/conversations/c3/ws"
    async with stack.session.ws_connect(url, protocols=("botfactory.v1", f"bearer.{key}")) as ws:
        await ws.send_json({"text": "/greet"})
        assert (await ws.receive_json(timeout=10))["type"] in ("ack", "message")
        assert (await request(stack, "DELETE", f"/v1/admin/keys/{key_id}", BOOTSTRAP))[0] == 200
        await ws.send_json({"text": "still there?"})
        frames = []
        while not ws.closed:
            message = await ws.receive(timeout=10)
            if message.type == aiohttp.WSMsgType.TEXT:
                frames.append(json.loads(message.data))
        errors = [frame for frame in frames if frame["type"] == "error"]
        assert errors and errors[-1]["status"] == 401
        assert ws.close_code == 4401


# --- brute force ------------------------------------------------------------------------------


async def test_key_guessing_is_throttled_per_address_and_logged(
        nats_server: NatsServer, tiny_banking_model: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("test", "INFO")
    async with running_stack(nats_server.url, tiny_banking_model,
                             client_ip_header="X-Forwarded-For", auth_failures_burst=5,
                             auth_failures_per_s=0.05) as stack:
        url = "/v1/bots/banking/conversations/c4/transcript"

        def source(ip: str) -> dict[str, str]:
            return {"X-Forwarded-For": f"198.51.100.7, {ip}"}  # the proxy appends the peer

        started = time.perf_counter()
        guesses = [f"bfk_{n:016x}_guess{n}secretpart" for n in range(40)]
        statuses = []
        for guess in guesses:
            status, _ = await request(stack, "GET", url, guess, headers=source("203.0.113.5"))
            statuses.append(status)
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
        assert time.perf_counter() - started < 10
        # the guesses are throttled while the bucket refills (one try per 20 s) ...
        assert stack.session is not None
        async with stack.session.get(f"{stack.base_url}{url}", headers={
                "Authorization": "Bearer bfk_00_one_more_guess", **source("203.0.113.5")}) as resp:
            assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        # ... not the valid keys of that address (everyone else behind the same NAT)
        for ip in ("203.0.113.5", "203.0.113.6"):
            assert (await request(stack, "GET", url, stack.agent_key,
                                  headers=source(ip)))[0] == 200
        # gRPC shares the limit (here its own address from the same header)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.gateway.grpc_port}") as channel:
            stub = gateway_pb2_grpc.ChatServiceStub(channel)
            codes = []
            for guess in guesses[:7]:
                try:
                    await stub.GetTranscript(gateway_pb2.GetTranscriptRequest(
                        bot_id="banking", conversation_id="c4"), timeout=10,
                        metadata=bearer(guess, **{"x-forwarded-for": "203.0.113.9"}))
                except grpc.aio.AioRpcError as exc:
                    codes.append(exc.code())
        assert codes[:5] == [grpc.StatusCode.UNAUTHENTICATED] * 5
        assert set(codes[5:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    out = capsys.readouterr().out
    structlog.reset_defaults()
    failed = [json.loads(line) for line in out.splitlines() if '"auth_failed"' in line]
    assert [f["client"] for f in failed].count("203.0.113.5") == 5
    assert all(f["reason"] == "unknown_or_revoked" for f in failed)
    assert '"auth_blocked"' in out
    assert not any(f"guess{n}secretpart" in out for n in range(40))


# --- who reads a conversation ---------------------------------------------------------------


async def grpc_transcript_code(stack: Stack, conversation: str, key: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.gateway.grpc_port}") as channel:
        stub = gateway_pb2_grpc.ChatServiceStub(channel)
        try:
            await stub.GetTranscript(gateway_pb2.GetTranscriptRequest(
                bot_id="banking", conversation_id=conversation), metadata=bearer(key),
                timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_transcripts_need_the_conversations_visitor_token_or_an_agent_key(
        stack: Stack) -> None:
    acme = await tenant(stack, "acme", "banking")
    for conversation in ("v1", "v2"):
        assert (await stack.post(conversation, "/greet", key=acme.client))[0] == 200
    status, issued = await request(stack, "POST", "/v1/bots/banking/conversations/v1/tokens",
                                   acme.client)
    assert status == 201 and issued["token"].startswith("bfv_")
    token = issued["token"]
    read = "/v1/bots/banking/conversations/{}/transcript"
    expected = [(acme.client, "v1", 403), (acme.client, "v2", 403), (token, "v1", 200),
                (token, "v2", 403), (acme.agent, "v2", 200), (acme.admin, "v1", 200)]
    grpc_codes = {200: grpc.StatusCode.OK, 403: grpc.StatusCode.PERMISSION_DENIED}
    for key, conversation, status in expected:
        assert (await request(stack, "GET", read.format(conversation), key))[0] == status
        assert await grpc_transcript_code(stack, conversation, key) == grpc_codes[status]
    # the token sends and follows its own conversation only
    assert (await stack.post("v1", "/greet", key=token))[0] == 200
    assert (await stack.post("v2", "/greet", key=token))[0] == 403
    assert await socket_status(stack, "/v1/bots/banking/conversations/v2/ws", token) == 403
    # expired: 401 over HTTP and gRPC (the gateway's wall clock moved on past the TTL)
    assert stack.gateway.runner is not None
    tokens = stack.gateway.runner.app[STATE].auth.tokens
    now = tokens.clock()
    tokens.clock = lambda: now + tokens.ttl_s
    status, answer = await request(stack, "GET", read.format("v1"), token)
    assert status == 401 and "expired" in answer["detail"]
    assert await grpc_transcript_code(stack, "v1", token) == grpc.StatusCode.UNAUTHENTICATED


# --- hostile input ----------------------------------------------------------------------------


async def test_hostile_bodies_are_refused_and_the_stack_keeps_working(stack: Stack) -> None:
    messages = "/v1/bots/banking/conversations/c5/messages"
    key, json_type = stack.client_key, {"Content-Type": "application/json"}
    cases: list[tuple[bytes, int, str]] = [
        (json.dumps({"text": "x" * 70_000}).encode(), 413, "larger than"),
        (b"[" * 60 + b"]" * 60, 400, "nested deeper"),
        (b"[" * 30_000 + b"]" * 30_000, 400, "nested deeper"),
        (b'{"text": "\xff\xfe\xfd"}', 400, "not valid JSON"),
        (b'{"text": "\\udc80 lone"}', 400, "lone surrogate"),
        (json.dumps({"text": "bell\x07"}).encode(), 400, "control characters"),
        (json.dumps({"text": "nul\x00byte"}).encode(), 400, "control characters"),
        (json.dumps({"text": "esc\x1b[2J"}).encode(), 400, "control characters"),
        (json.dumps({"text": "x" * 2001}).encode(), 400, "at most 2000"),
        (json.dumps({"text": "hi", "sender": "s" * 257}).encode(), 400, "at most 256"),
        (json.dumps({"text": "hi", "metadata": {str(i): "v" for i in range(33)}}).encode(),
         400, "at most 32"),
        (json.dumps({"text": "hi", "extra": 1}).encode(), 400, "unknown field"),
    ]
    for data, status, detail in cases:
        got, answer = await request(stack, "POST", messages, key, data=data, headers=json_type)
        assert got == status, (data[:40], answer)
        assert detail in json.dumps(answer), (data[:40], answer)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1024

    got, _ = await request(stack, "POST", messages, key, data=chunks(), headers=json_type)
    assert got == 413  # no Content-Length: cut off while reading
    big = {"files": {"bot.yml": "x" * (1024 * 1024 + 1)}}
    assert (await request(stack, "PUT", "/v1/admin/bots/banking/definition", BOOTSTRAP,
                          body=big))[0] == 413

    # the same rules on the WebSocket and over gRPC
    assert stack.session is not None
    async with stack.session.ws_connect(
            f"{stack.base_url}/v1/bots/banking/conversations/c5/ws",
            protocols=("botfactory.v1", f"bearer.{key}")) as ws:
        for frame in ("[" * 5000 + "]" * 5000, json.dumps({"text": "a\x00b"}), "{nope"):
            await ws.send_str(frame)
            answer = await ws.receive_json(timeout=10)
            assert (answer["type"], answer["status"]) == ("error", 400), answer
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.gateway.grpc_port}") as channel:
        stub = gateway_pb2_grpc.ChatServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendMessage(gateway_pb2.SendMessageRequest(
                bot_id="banking", conversation_id="c5", text="a\x1bb"), metadata=bearer(key),
                timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # tabs and line breaks are text, kept as sent; the stack still answers
    status, _ = await stack.post("c5", "line 1\nline\t2\r\n")
    assert status == 200
    entries = await stack.transcript("c5")
    assert [e["text"] for e in entries if e["type"] == "user"] == ["line 1\nline\t2\r\n"]


async def test_huge_slot_values_are_bounded_by_the_text_limit(stack: Stack) -> None:
    name = "n" * 1900
    status, body = await stack.post("c6", '/transfer_money{"amount": "50", "recipient": "'
                                    + name + '"}')
    assert status == 200 and body["replies"][-1]["text"] == f"Send 50.00 EUR to {name}?"
    status, _ = await stack.post("c6", '/transfer_money{"recipient": "' + "n" * 2000 + '"}')
    assert status == 400
    bus = await connect(stack.nats_url, name="abuse-test")
    try:
        entry = await (await bus.kv(KV_TRACKERS)).get("banking.c6")
        slots = json.loads(entry.value or b"{}")["tracker"]["slots"]
    finally:
        await bus.drain()
    assert slots["recipient"] == name and len(json.dumps(slots)) < 2100


# --- templates --------------------------------------------------------------------------------


async def test_user_text_is_never_evaluated_as_a_template(stack: Stack) -> None:
    probes = ["{{ 7*7 }}", "{% for x in range(10**9) %}x{% endfor %}",
              "{{ ''.__class__.__mro__[1].__subclasses__() }}", "${7*7} #{7*7} <%= 7*7 %>"]
    for number, probe in enumerate(probes):
        # as a slot value that a response template shows
        status, body = await stack.post(f"c7-{number}", '/transfer_money{"amount": "50", '
                                        '"recipient": ' + json.dumps(probe) + "}")
        assert status == 200
        assert body["replies"][-1]["text"] == f"Send 50.00 EUR to {probe}?"
        # as free text
        status, body = await stack.post(f"c7-free-{number}", probe)
        assert status == 200
        assert all("49" not in r["text"] and "class" not in r["text"] for r in body["replies"])
        users = [e["text"] for e in await stack.transcript(f"c7-free-{number}")
                 if e["type"] == "user"]
        assert users == [probe]


INJECT_DATA = ('version: "1"\nintents:\n  - {name: greet, examples: [hi, hello]}\n'
               "  - {name: bye, examples: [bye, goodbye]}\n")


def inject_files(response: str, *, slot_regex: str = "[a-z]+",
                 entity_regex: str = r"\d{5}") -> dict[str, str]:
    domain = {"version": "1",
              "slots": {"code": {"type": "text", "regex": slot_regex}},
              "responses": {"utter_greet": [response],
                            "utter_goodbye": ["Bye {{ 'x' * 10**9 }}{{ '%099999999d' % 1 }}!"]},
              "flows": {"hello": {"title": "Hello", "trigger": "greet",
                                  "steps": [{"say": "utter_greet"}]},
                        "bye": {"title": "Bye", "trigger": "bye",
                                "steps": [{"say": "utter_goodbye"}]}}}
    data = INJECT_DATA + f"entities:\n  - name: zip\n    regex: [{json.dumps(entity_regex)}]\n"
    return {"bot.yml": 'version: "1"\nname: inject\n', "data/nlu.yml": data,
            "domain/d.yml": json.dumps(domain)}


async def test_bot_files_are_sandboxed_and_runaway_ones_refused(stack: Stack) -> None:
    url = "/v1/admin/bots/inject/definition"
    refused = {
        "loops inside loops": "{% for a in range(9) %}{% for b in range(9) %}x{% endfor %}"
                              "{% endfor %}",
        "`macro` is not allowed": "{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}",
        "`include` is not allowed": "{% include 'bot.yml' %}",
    }
    for message, template in refused.items():
        status, body = await request(stack, "PUT", url, BOOTSTRAP,
                                     body={"files": inject_files(template)})
        assert status == 422 and message in json.dumps(body["issues"]), body
    # injection attempts that load are sandboxed when they run
    status, body = await request(stack, "PUT", url, BOOTSTRAP, body={"files": inject_files(
        "Hi {{ ''.__class__.__mro__[1].__subclasses__() }}{{ slot.__class__.__init__ }}"
        "{{ 'x'.ljust(10**9) }}!")})
    assert status == 200, body
    _, key = await create_key(stack, BOOTSTRAP, "acme", ["inject"], "client")

    async def greeted() -> str:
        for _ in range(100):
            _, answer = await stack.post("i1", "/greet", key=key, bot="inject")
            text = str(answer["replies"][0]["text"])
            if "not available" not in text:
                return text
            await asyncio.sleep(0.05)
        raise AssertionError("the deployed bot never answered")

    started = time.perf_counter()
    assert await greeted() == "Hi !"
    _, answer = await stack.post("i1", "/bye", key=key, bot="inject")
    assert [r["text"] for r in answer["replies"]] == ["Bye !"]
    assert time.perf_counter() - started < 20


# --- regexes ----------------------------------------------------------------------------------


async def test_catastrophic_regexes_are_refused_and_long_text_is_fast(stack: Stack) -> None:
    url = "/v1/admin/bots/inject/definition"
    for files in (inject_files("Hi", entity_regex=r"(a+)\1$"),
                  inject_files("Hi", slot_regex=r"(?<!x)(\w+\s?)*$"),
                  inject_files("Hi", entity_regex=r"(?=\d)(\d+)(\d+)x"),
                  inject_files("Hi", entity_regex=r"(?>a|ab)+c")):
        status, body = await request(stack, "PUT", url, BOOTSTRAP, body={"files": files})
        assert status == 422 and "unsafe regex" in json.dumps(body["issues"]), body
    # the demo bot's own entity regexes on the longest, most hostile text allowed
    texts = ("A" * 2000, "DE00 " * 400, "AA11" + "A1B2 " * 399, "1 " * 1000)
    for number, text in enumerate(texts):  # (new conversations: no handoff after fallbacks)
        started = time.perf_counter()
        status, _ = await stack.post(f"c8-{number}", text[:2000])
        assert status == 200 and time.perf_counter() - started < 5


# --- workflow URLs (the RPA runner's allow-list) ----------------------------------------------

FETCH = """
    name: fetch
    inputs: {url: string}
    outputs: {status: steps.get.outputs.status}
    steps:
      - id: get
        http:
          method: GET
          url: "{{ inputs.url }}"
          outputs: {status: status}
        retry: {max_attempts: 1}
    """


async def test_workflow_urls_to_internal_addresses_are_refused(nats_server: NatsServer,
                                                               tmp_path: Path) -> None:
    hits: list[str] = []

    async def record(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    bot_dir = write_test_bot(tmp_path / "bot", {"fetch": FETCH}, hosts=(f"127.0.0.1:{port}",))
    try:
        async with harness(nats_server.url, bot_dir) as h:
            result, _ = await h.run("fetch", {"url": f"http://127.0.0.1:{port}/allowed"})
            assert result["status"] == "succeeded", result
            assert hits == ["/allowed"]
            for url in ("http://169.254.169.254/latest/meta-data/iam/",
                        "http://[fd00:ec2::254]/latest/", "http://metadata.google.internal/",
                        f"http://127.0.0.1:{port + 1}/", f"http://localhost:{port}/",
                        f"http://[::1]:{port}/", f"http://2130706433:{port}/",
                        f"http://0x7f000001:{port}/", f"http://127.1:{port}/",
                        f"http://[::ffff:127.0.0.1]:{port}/", "http://10.0.0.1/",
                        "http://kubernetes.default.svc/api", "http://169.254.169.254.nip.io/",
                        f"gopher://127.0.0.1:{port}/", "file:///etc/passwd"):
                result, _ = await h.run("fetch", {"url": url})
                assert result["status"] == "failed" and "allow-list" in result["error"], \
                    (url, result)
            assert hits == ["/allowed"]  # no request left the runner
    finally:
        await runner.cleanup()
