"""The API key stores against one contract: the in-memory store and the NATS KV store on a real
nats-server (moved from tests/unit/test_gateway_auth.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from botfactory.local.nats_server import NatsServer
from services.common.errors import Unauthenticated
from services.common.nats import Bus, connect
from services.gateway.auth import (
    KV_APIKEYS,
    Authenticator,
    KeyExists,
    NatsKeyStore,
)
from services.gateway.ports import KeyStore, Role
from tests.support.apikeys import PEPPER, record
from tests.support.memstores import InMemoryKeyStore


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    connected = await connect(nats_server.url, name="test-keys")
    try:
        yield connected
    finally:
        await connected.drain()



@pytest.fixture(params=["memory", "nats"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    if request.param == "memory":
        yield InMemoryKeyStore()
        return
    server = NatsServer(tmp_path / "nats")
    server.start()
    connected = await connect(server.url, name="test-keys")
    try:
        yield await NatsKeyStore.open(connected)
    finally:
        await connected.drain()
        server.stop()


async def test_store_create_get_and_duplicates(store: KeyStore) -> None:
    first = record("a1")
    await store.create(first)
    assert await store.get("a1") == first
    assert await store.get_by_hash(first.key_hash) == first
    assert await store.get("zz") is None
    assert await store.get_by_hash("0" * 64) is None
    with pytest.raises(KeyExists):
        await store.create(first)
    with pytest.raises(KeyExists):
        await store.create(dataclasses.replace(record("b2"), key_hash=first.key_hash))


async def test_store_revoke_keeps_the_record(store: KeyStore) -> None:
    await store.create(record("a1"))
    revoked = await store.revoke("a1")
    assert revoked is not None and revoked.revoked
    again = await store.revoke("a1")
    assert again == revoked
    stored = await store.get("a1")
    assert stored is not None and stored.revoked
    assert await store.revoke("ff") is None


async def test_store_lists_by_tenant_oldest_first(store: KeyStore) -> None:
    assert await store.list_keys() == []
    for key_id, tenant, created in (("c3", "t1", 3), ("a1", "t1", 1), ("b2", "t2", 2)):
        await store.create(record(key_id, tenant=tenant, created=created))
    assert [r.key_id for r in await store.list_keys()] == ["a1", "b2", "c3"]
    assert [r.key_id for r in await store.list_keys("t1")] == ["a1", "c3"]
    assert await store.list_keys("t9") == []


async def test_nats_store_is_shared_and_the_bucket_idempotent(bus: Bus) -> None:
    one = await NatsKeyStore.open(bus)
    authenticator = Authenticator(one, PEPPER)
    issued = await authenticator.issue("t1", ["alpha"], Role.CLIENT)
    two = await NatsKeyStore.open(bus)  # another replica: the bucket exists already
    other = Authenticator(two, PEPPER)
    assert (await other.authenticate(issued.secret)).key_id == issued.record.key_id
    await other.revoke(issued.record.key_id)
    with pytest.raises(Unauthenticated):
        await Authenticator(one, PEPPER, cache_s=0).authenticate(issued.secret)
    assert (await bus.js.key_value(KV_APIKEYS)).__class__.__name__ == "KeyValue"
