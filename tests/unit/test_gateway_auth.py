"""API keys (hashing, scopes, revocation, the in-memory and NATS KV stores), rate limiting and
the gateway's configuration."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from botfactory.local.nats_server import NatsServer
from services.common.config import ConfigError
from services.common.errors import PermissionDenied, Unauthenticated
from services.common.nats import Bus, connect
from services.gateway.auth import (
    BOOTSTRAP_PRINCIPAL,
    INVALID_KEY,
    KV_APIKEYS,
    Authenticator,
    InMemoryKeyStore,
    KeyExists,
    NatsKeyStore,
    Principal,
    authorize,
    hash_secret,
    new_token,
    record_from_json,
    record_to_json,
)
from services.gateway.config import GatewayConfig, load
from services.gateway.ports import ApiKeyRecord, KeyStore, Role
from services.gateway.ratelimit import RateLimited, RateLimiter

PEPPER = "pepper-0123456789abcdef"


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def record(key_id: str = "a1", tenant: str = "t1", bots: tuple[str, ...] = ("alpha",),
           role: Role = Role.CLIENT, created: int = 1) -> ApiKeyRecord:
    return ApiKeyRecord(key_id=key_id, key_hash=hash_secret(PEPPER, f"token-{key_id}"),
                        tenant=tenant, bots=bots, role=role, created_at_unix_ms=created)


# --- hashing and tokens -----------------------------------------------------------------------


def test_tokens_are_random_and_hashes_depend_on_the_pepper() -> None:
    key_id, token = new_token()
    assert token.startswith(f"bfk_{key_id}_") and len(token) > 40
    assert new_token()[1] != token
    assert hash_secret(PEPPER, token) == hash_secret(PEPPER, token)
    assert hash_secret(PEPPER, token) != hash_secret(PEPPER + "x", token)
    assert len(hash_secret(PEPPER, token)) == 64


def test_records_round_trip_as_json_without_secrets() -> None:
    original = dataclasses.replace(record(role=Role.AGENT), revoked_at_unix_ms=5,
                                   description="desk")
    assert record_from_json(record_to_json(original)) == original
    assert "token-a1" not in record_to_json(original).decode()


# --- the authenticator ------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def authenticator(clock: FakeClock) -> Authenticator:
    return Authenticator(InMemoryKeyStore(), PEPPER, bootstrap_key="boot-0123456789abcdef",
                         cache_s=5.0, clock=clock)


async def test_issued_keys_authenticate_with_their_scope(authenticator: Authenticator) -> None:
    issued = await authenticator.issue("t1", ["alpha", "beta"], Role.AGENT, "support desk")
    principal = await authenticator.authenticate(issued.secret)
    assert principal == Principal(issued.record.key_id, "t1", ("alpha", "beta"), Role.AGENT)
    stored = await authenticator.store.get(issued.record.key_id)
    assert stored is not None and stored.key_hash == hash_secret(PEPPER, issued.secret)
    assert issued.secret not in repr(stored)


@pytest.mark.parametrize("token", [None, "", "bfk_x_y", "x" * 300, "boot-0123456789abcdeX"])
async def test_bad_keys_all_get_the_same_error(authenticator: Authenticator,
                                               token: str | None) -> None:
    await authenticator.issue("t1", ["alpha"], Role.CLIENT)
    with pytest.raises(Unauthenticated) as caught:
        await authenticator.authenticate(token)
    assert str(caught.value) == INVALID_KEY


async def test_revocation_is_immediate_here_and_within_the_cache_time_elsewhere(
        authenticator: Authenticator, clock: FakeClock) -> None:
    first = await authenticator.issue("t1", ["alpha"], Role.CLIENT)
    await authenticator.authenticate(first.secret)
    await authenticator.revoke(first.record.key_id)
    with pytest.raises(Unauthenticated):
        await authenticator.authenticate(first.secret)
    second = await authenticator.issue("t1", ["alpha"], Role.CLIENT)
    await authenticator.authenticate(second.secret)
    await authenticator.store.revoke(second.record.key_id)  # as another replica would
    await authenticator.authenticate(second.secret)  # still cached
    clock.now += 5.1
    with pytest.raises(Unauthenticated):
        await authenticator.authenticate(second.secret)


async def test_bootstrap_key_is_an_admin_of_everything(authenticator: Authenticator) -> None:
    assert await authenticator.authenticate("boot-0123456789abcdef") == BOOTSTRAP_PRINCIPAL
    disabled = Authenticator(InMemoryKeyStore(), PEPPER, bootstrap_key="")
    with pytest.raises(Unauthenticated):
        await disabled.authenticate("boot-0123456789abcdef")


def test_roles_include_the_lesser_ones() -> None:
    assert Role.ADMIN.includes(Role.AGENT) and Role.AGENT.includes(Role.CLIENT)
    assert not Role.CLIENT.includes(Role.AGENT) and not Role.AGENT.includes(Role.ADMIN)


def test_authorize_checks_role_and_bot() -> None:
    agent = Principal("k", "t1", ("alpha",), Role.AGENT)
    authorize(agent, Role.CLIENT, "alpha")
    authorize(agent, Role.AGENT, "alpha")
    with pytest.raises(PermissionDenied, match="role"):
        authorize(agent, Role.ADMIN, "alpha")
    with pytest.raises(PermissionDenied, match="beta"):
        authorize(agent, Role.CLIENT, "beta")
    authorize(Principal("k", "t1", ("*",), Role.CLIENT), Role.CLIENT, "anything")


def test_admin_scope_over_tenants_and_bots() -> None:
    admin = Principal("k", "t1", ("alpha",), Role.ADMIN)
    assert admin.manages_tenant("t1") and not admin.manages_tenant("t2")
    assert admin.covers_bots(["alpha"]) and not admin.covers_bots(["alpha", "beta"])
    assert not admin.covers_bots(["*"])
    assert Principal("k", "t1", ("*",), Role.ADMIN).covers_bots(["*", "beta"])
    assert not Principal("k", "t1", ("*",), Role.AGENT).manages_tenant("t1")
    assert BOOTSTRAP_PRINCIPAL.manages_tenant("anyone")


# --- stores: one contract, two implementations ------------------------------------------------


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


# --- rate limits ------------------------------------------------------------------------------


def test_token_bucket_allows_the_burst_then_the_rate(clock: FakeClock) -> None:
    limiter = RateLimiter(rps=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.check("k")
    with pytest.raises(RateLimited) as caught:
        limiter.check("k")
    assert caught.value.retry_after_s == pytest.approx(0.5)
    assert caught.value.retry_after_header == "1"
    limiter.check("other")  # buckets are per key
    clock.now += 0.5
    limiter.check("k")
    with pytest.raises(RateLimited):
        limiter.check("k")
    clock.now += 100
    for _ in range(3):  # refills up to the burst, no more
        limiter.check("k")
    with pytest.raises(RateLimited):
        limiter.check("k")


def test_rate_limiter_forgets_idle_buckets(clock: FakeClock, monkeypatch: Any) -> None:
    monkeypatch.setattr("services.gateway.ratelimit.MAX_BUCKETS", 2)
    limiter = RateLimiter(rps=1.0, burst=1, clock=clock)
    limiter.check("a")
    limiter.check("b")
    clock.now += 10
    limiter.check("c")
    assert len(limiter._buckets) == 1


def test_rate_limiter_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rps=0, burst=1)


# --- configuration ----------------------------------------------------------------------------


def test_config_from_environment() -> None:
    config = load({"BOTFACTORY_GATEWAY_API_KEY_PEPPER": PEPPER,
                   "BOTFACTORY_GATEWAY_HTTP_PORT": "0",
                   "BOTFACTORY_GATEWAY_SYNC_WAIT_S": "2.5",
                   "BOTFACTORY_GATEWAY_RATE_LIMIT_BURST": "7"})
    assert (config.http_port, config.sync_wait_s, config.rate_limit_burst) == (0, 2.5, 7)
    assert config.body_limit_bytes == 64 * 1024 and config.max_text_chars == 2000
    assert GatewayConfig(api_key_pepper=PEPPER).sync_wait_s == 5.0


@pytest.mark.parametrize(("env", "variable"), [
    ({}, "BOTFACTORY_GATEWAY_API_KEY_PEPPER"),
    ({"BOTFACTORY_GATEWAY_ADMIN_BOOTSTRAP_KEY": "short"}, "ADMIN_BOOTSTRAP_KEY"),
    ({"BOTFACTORY_GATEWAY_RATE_LIMIT_RPS": "0"}, "RATE_LIMIT_RPS"),
    ({"BOTFACTORY_GATEWAY_HTTP_PORT": "70000"}, "HTTP_PORT"),
    ({"BOTFACTORY_GATEWAY_WEBHOOK_MAX_ATTEMPTS": "0"}, "WEBHOOK_MAX_ATTEMPTS"),
])
def test_config_validation_names_the_variable(env: dict[str, str], variable: str) -> None:
    base = {} if variable.endswith("PEPPER") else {"BOTFACTORY_GATEWAY_API_KEY_PEPPER": PEPPER}
    with pytest.raises(ConfigError, match=variable):
        load({**base, **env})
