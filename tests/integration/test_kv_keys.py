"""KV listings against the real nats-server: the gateway's handoff inbox and the dialogue's
conversation list read the keys of one bot (services.common.nats.kv_keys)."""

from __future__ import annotations

import json

import pytest
from nats.js.errors import NoKeysError

from botfactory.local.nats_server import NatsServer
from services.common.nats import KV_HANDOFFS, KV_TRACKERS, connect, provision
from services.common.pull import kv_keys
from services.dialogue.store import TrackerStore
from services.gateway.hub import BusHub


async def test_a_bots_keys_are_listed_exactly(nats_server: NatsServer) -> None:
    bus = await connect(nats_server.url, name="test")
    try:
        await provision(bus)
        kv = await bus.kv(KV_HANDOFFS)
        since = json.dumps({"since": 1}).encode()
        for key in ("banking.c1", "banking.c2", "banking.c3", "bankingx.c1", "other.c1"):
            await kv.put(key, since)
        await kv.delete("banking.c2")
        # what the inbox used before: nats-py matches filters as substrings on the client
        with pytest.raises(NoKeysError):
            await kv.keys(filters=["banking.>"])
        assert await kv_keys(kv, "banking.") == ["banking.c1", "banking.c3"]
        assert await kv_keys(kv, "nobody.") == []
        with pytest.raises(ValueError, match=r"ends with '\.'"):
            await kv_keys(kv, "banking")

        hub = BusHub(bus, partitions=4)
        assert await hub.handoffs("banking") == [
            {"conversation_id": "c1", "since": 1}, {"conversation_id": "c3", "since": 1}]
        assert await hub.handoffs("other") == [{"conversation_id": "c1", "since": 1}]

        trackers = await bus.kv(KV_TRACKERS)
        for key in ("banking.a", "banking.b", "bank.c"):
            await trackers.put(key, b"{}")
        store = TrackerStore(trackers)
        assert await store.keys("banking.", 10) == ["banking.a", "banking.b"]
        assert await store.keys("banking.", 1) == ["banking.a"]
    finally:
        await bus.drain()
