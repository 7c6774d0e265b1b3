"""Served bots (services/common/served.py): dialogue replicas announce the bots they serve in KV
`served`; the gateway answers 404 (gRPC NOT_FOUND) to a message for a bot nobody serves,
on every channel, and keeps nothing of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import aiohttp
import grpc
import pytest

from botfactory.local.nats_server import NatsServer
from services.common.nats import KV_SERVED, SERVED_TTL_S, Bus, connect
from services.common.pb.botfactory.v1 import gateway_pb2, gateway_pb2_grpc
from services.common.served import ServedAnnouncer, ServedBots, served_key
from tests.support.polling import eventually
from tests.support.stack import ROOT, Stack, issue_key, provision_as_admin, running_stack


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    await provision_as_admin(nats_server.url)
    connected = await connect(nats_server.url, name="served-test")
    yield connected
    await connected.drain()


async def test_the_bucket_expires_announcements(bus: Bus) -> None:
    status = await (await bus.kv(KV_SERVED)).status()
    assert status.ttl == SERVED_TTL_S


async def test_announcements_are_followed_and_withdrawn(bus: Bus) -> None:
    bots = ["banking"]
    served = ServedBots(bus, resync_s=3600)
    announcer = ServedAnnouncer(bus, lambda: list(bots), replica="r1", interval_s=3600)
    await served.start()
    try:
        assert not served.serves("banking")
        await announcer.start()
        await eventually(lambda: served.serves("banking") or None, "banking announced")
        assert served.names() == ["banking"] and not served.serves("shop")
        # a deployed definition: announced at once, not at the next beat (an hour away)
        bots.append("shop")
        announcer.changed()
        await eventually(lambda: served.serves("shop") or None, "shop announced at once")
        # a bot no longer served is withdrawn (its key deleted)
        bots.remove("banking")
        await announcer.announce()
        await eventually(lambda: (not served.serves("banking")) or None, "banking withdrawn")
        assert served.names() == ["shop"]
    finally:
        await announcer.stop()
        await served.stop()


async def test_a_replica_that_stops_announcing_expires(nats_server: NatsServer) -> None:
    """On the real server: the bucket's max age drops the announcement of a replica that
    stopped; the follower's resync notices (the watch alone would not)."""
    connected = await connect(nats_server.url, name="served-expiry")
    try:
        await connected.js.create_key_value(bucket=KV_SERVED, history=1, ttl=1.0)
        served = ServedBots(connected, resync_s=0.2)
        announcer = ServedAnnouncer(connected, lambda: ["banking"], replica="r1",
                                    interval_s=0.3)
        await served.start()
        await announcer.start()
        await eventually(lambda: served.serves("banking") or None, "banking announced")
        await asyncio.sleep(1.5)  # beats keep it alive past the TTL
        assert served.serves("banking")
        await announcer.stop()  # stops beating and leaves the key to expire
        await eventually(lambda: (not served.serves("banking")) or None, "expired", within=10)
        await served.stop()
    finally:
        await connected.drain()


async def test_a_follower_started_later_sees_the_current_announcements(bus: Bus) -> None:
    kv = await bus.kv(KV_SERVED)
    await kv.put(served_key("banking", "r9"), b"{}")
    served = ServedBots(bus)
    await served.start()
    try:
        assert served.names() == ["banking"]
    finally:
        await served.stop()


@pytest.fixture
async def stack(nats_server: NatsServer, tiny_banking_model: Path) -> AsyncIterator[Stack]:
    async with running_stack(nats_server.url, tiny_banking_model) as running:
        yield running


async def test_a_message_to_an_unknown_bot_is_404_on_every_channel(stack: Stack) -> None:
    assert stack.session is not None
    key = await issue_key(stack.session, stack.base_url, bots=("banking", "nosuchbot"))
    status, body = await stack.post("u1", "hello", key=key, bot="nosuchbot")
    assert status == 404, body
    assert "nosuchbot" in body["detail"] and body["type"].startswith("urn:botfactory:problem:")
    # the served bot answers as before
    status, body = await stack.post("u1", "/greet", key=key)
    assert status == 200 and body["replies"], body
    # WebSocket: refused at the handshake
    url = f"ws://127.0.0.1:{stack.gateway.port}/v1/bots/nosuchbot/conversations/u1/ws"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await stack.session.ws_connect(url, protocols=("botfactory.v1", f"bearer.{key}"))
    assert refused.value.status == 404
    # gRPC: NOT_FOUND
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.gateway.grpc_port}") as channel:
        stub = cast("gateway_pb2_grpc.ChatServiceAsyncStub",
                    gateway_pb2_grpc.ChatServiceStub(channel))
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.SendMessage(gateway_pb2.SendMessageRequest(
                bot_id="nosuchbot", conversation_id="u1", text="hello"),
                metadata=(("authorization", f"Bearer {key}"),), timeout=10)
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND
    assert "nosuchbot" in str(failed.value.details())


async def test_a_bot_deployed_through_the_admin_api_is_served_at_once(stack: Stack) -> None:
    """Deploying a definition makes the dialogue announce it before its next heartbeat."""
    assert stack.session is not None
    files = {p.relative_to(ROOT / "bots" / "banking").as_posix(): p.read_text(encoding="utf-8")
             for p in (ROOT / "bots" / "banking").rglob("*.yml")}
    files["bot.yml"] = files["bot.yml"].replace("name: banking", "name: banking2", 1)
    admin = {"Authorization": "Bearer bootstrap-admin-key-for-tests"}
    async with stack.session.put(f"{stack.base_url}/v1/admin/bots/banking2/definition",
                                 json={"files": files}, headers=admin) as resp:
        assert resp.status in (200, 201, 202), await resp.text()
    key = await issue_key(stack.session, stack.base_url, bots=("banking2",))

    async def accepted() -> int | None:
        status, _ = await stack.post("d1", "/greet", key=key, bot="banking2", wait=False)
        return status if status != 404 else None

    assert await eventually(accepted, "banking2 served", within=5.0) == 202
