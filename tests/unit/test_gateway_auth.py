"""API keys (hashing, scopes, revocation, the in-memory and NATS KV stores), rate limiting and
the gateway's configuration."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest

from services.common.config import ConfigError
from services.common.errors import PermissionDenied, Unauthenticated
from services.gateway.access import BotNotFound
from services.gateway.auth import (
    BOOTSTRAP_PRINCIPAL,
    INVALID_KEY,
    Authenticator,
    Principal,
    authorize,
    hash_secret,
    new_token,
    record_from_json,
    record_to_json,
)
from services.gateway.config import GatewayConfig, load
from services.gateway.ports import ApiKeyRecord, Role
from services.gateway.ratelimit import AuthThrottled, RateLimited, RateLimiter
from services.gateway.visitor import EXPIRED_TOKEN, TokenExpired, VisitorTokens
from tests.support.apikeys import PEPPER, record
from tests.support.memstores import InMemoryKeyStore

VISITOR_SECRET = "visitor-secret-0123456789abcdef-0123"


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


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
    with pytest.raises(BotNotFound, match="no bot 'beta' here"):  # 404: out of reach
        authorize(agent, Role.CLIENT, "beta")
    # bots `*`: every bot of the key's tenant, and of no other
    everything = Principal("k", "t1", ("*",), Role.CLIENT)
    authorize(everything, Role.CLIENT, "anything", owner="t1")
    for owner in ("t2", None):  # another tenant's; a bot without owner (the default tenant's)
        with pytest.raises(BotNotFound):
            authorize(everything, Role.CLIENT, "anything", owner=owner)
    authorize(Principal("k", "default", ("*",), Role.CLIENT), Role.CLIENT, "anything")


def test_admin_scope_over_tenants_and_bots() -> None:
    admin = Principal("k", "t1", ("alpha",), Role.ADMIN)
    assert admin.manages_tenant("t1") and not admin.manages_tenant("t2")
    assert admin.covers_bots(["alpha"]) and not admin.covers_bots(["alpha", "beta"])
    assert not admin.covers_bots(["*"])
    assert Principal("k", "t1", ("*",), Role.ADMIN).covers_bots(["*", "beta"])
    assert not Principal("k", "t1", ("*",), Role.AGENT).manages_tenant("t1")
    assert BOOTSTRAP_PRINCIPAL.manages_tenant("anyone")


# --- visitor tokens ---------------------------------------------------------------------------


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def visitors(clock: FakeClock, wall: FakeClock) -> Authenticator:
    return Authenticator(InMemoryKeyStore(), PEPPER, bootstrap_key="boot-0123456789abcdef",
                         cache_s=5.0, clock=clock,
                         tokens=VisitorTokens(VISITOR_SECRET, 600.0, clock=wall))


async def test_a_visitor_token_is_bound_to_its_bot_and_conversation(
        visitors: Authenticator) -> None:
    issued = await visitors.issue("t1", ["alpha", "beta"], Role.CLIENT)
    client = await visitors.authenticate(issued.secret)
    token, expires = visitors.mint(client, "alpha", "c1")
    assert token.startswith("bfv_") and expires == 1_800_000_600
    visitor = await visitors.authenticate(token)
    assert (visitor.tenant, visitor.bots, visitor.conversation) == ("t1", ("alpha",), "c1")
    assert visitor.is_visitor and issued.record.key_id in visitor.key_id
    authorize(visitor, Role.AGENT, "alpha", conversation="c1")  # e.g. the transcript
    for bot, conversation in (("alpha", "c2"), ("beta", "c1")):
        with pytest.raises(PermissionDenied, match="another conversation"):
            authorize(visitor, Role.CLIENT, bot, conversation=conversation)
    with pytest.raises(PermissionDenied, match="its own conversation"):
        authorize(visitor, Role.CLIENT, "alpha")  # a route that takes no visitor token
    with pytest.raises(PermissionDenied, match="cannot issue"):
        visitors.mint(visitor, "alpha", "c1")


async def test_client_keys_may_not_read_what_a_visitor_token_may() -> None:
    client = Principal("k", "t1", ("alpha",), Role.CLIENT)
    with pytest.raises(PermissionDenied, match="needs agent, or a visitor token"):
        authorize(client, Role.AGENT, "alpha", conversation="c1")
    authorize(Principal("k", "t1", ("alpha",), Role.AGENT), Role.AGENT, "alpha",
              conversation="c1")


async def test_visitor_tokens_expire_and_die_with_their_key(
        visitors: Authenticator, clock: FakeClock, wall: FakeClock) -> None:
    issued = await visitors.issue("t1", ["alpha"], Role.CLIENT)
    token, _ = visitors.mint(await visitors.authenticate(issued.secret), "alpha", "c1")
    wall.now += 600
    with pytest.raises(TokenExpired, match=EXPIRED_TOKEN):
        await visitors.authenticate(token)
    wall.now -= 1
    await visitors.authenticate(token)
    await visitors.revoke(issued.record.key_id)
    with pytest.raises(Unauthenticated) as caught:
        await visitors.authenticate(token)
    assert str(caught.value) == INVALID_KEY


async def test_forged_visitor_tokens_get_the_one_401(visitors: Authenticator) -> None:
    issued = await visitors.issue("t1", ["alpha"], Role.CLIENT)
    token, _ = visitors.mint(await visitors.authenticate(issued.secret), "alpha", "c1")
    payload, signature = token[4:].split(".")
    other = VisitorTokens("another-secret-0123456789abcdef-0123", 600.0)
    forged_elsewhere, _ = other.mint(issued.record.key_id, "alpha", "c1")
    swapped = other.mint(issued.record.key_id, "alpha", "c2")[0].split(".")[0] + "." + signature
    for bad in (f"bfv_{payload}.{signature[:-2]}", f"bfv_{payload}x.{signature}", "bfv_",
                "bfv_.", forged_elsewhere, swapped, token + "x" * 1100):
        with pytest.raises(Unauthenticated) as caught:
            await visitors.authenticate(bad)
        assert str(caught.value) == INVALID_KEY, bad[:30]
    off = Authenticator(InMemoryKeyStore(), PEPPER)  # no secret: tokens are off
    with pytest.raises(Unauthenticated):
        await off.authenticate(token)


# --- failed attempts throttle ----------------------------------------------------------------


class CountingStore(InMemoryKeyStore):
    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    async def get_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        self.lookups += 1
        return await super().get_by_hash(key_hash)


async def test_a_throttled_address_keeps_its_valid_keys(clock: FakeClock) -> None:
    store = CountingStore()
    auth = Authenticator(store, PEPPER, bootstrap_key="boot-0123456789abcdef", clock=clock,
                         failures=RateLimiter(0.1, 2, clock=clock))
    good = (await auth.issue("t1", ["alpha"], Role.CLIENT)).secret
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await auth.authenticate("bfk_00_wrong", client="10.0.0.1")
    with pytest.raises(AuthThrottled):
        await auth.authenticate("bfk_00_wrong", client="10.0.0.1")
    # the bad client is throttled; the valid keys behind the same address are not
    assert (await auth.authenticate(good, client="10.0.0.1")).role is Role.CLIENT
    assert await auth.authenticate("boot-0123456789abcdef", client="10.0.0.1") == \
        BOOTSTRAP_PRINCIPAL
    looked_up = store.lookups
    for garbage in (None, "", "nonsense", "x" * 300):
        with pytest.raises(AuthThrottled):
            await auth.authenticate(garbage, client="10.0.0.1")
    assert store.lookups == looked_up  # garbage costs no look-up while throttled
    clock.now += 10
    with pytest.raises(Unauthenticated):
        await auth.authenticate("bfk_00_wrong", client="10.0.0.1")


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


SECRETS = {"BOTFACTORY_GATEWAY_API_KEY_PEPPER": PEPPER,
           "BOTFACTORY_GATEWAY_VISITOR_TOKEN_SECRET": VISITOR_SECRET}


def test_config_from_environment() -> None:
    config = load({**SECRETS,
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
    ({"BOTFACTORY_GATEWAY_VISITOR_TOKEN_SECRET": ""}, "VISITOR_TOKEN_SECRET"),
    ({"BOTFACTORY_GATEWAY_VISITOR_TOKEN_SECRET": "x" * 31}, "VISITOR_TOKEN_SECRET"),
    ({"BOTFACTORY_GATEWAY_VISITOR_TOKEN_TTL_S": "0"}, "VISITOR_TOKEN_TTL_S"),
])
def test_config_validation_names_the_variable(env: dict[str, str], variable: str) -> None:
    base = {} if variable.endswith("PEPPER") else SECRETS
    with pytest.raises(ConfigError, match=variable):
        load({**base, **env})


async def test_a_key_bound_to_an_environment_passes_it_to_its_visitor_tokens(
        visitors: Authenticator) -> None:
    issued = await visitors.issue("t1", ["alpha"], Role.CLIENT, environment="staging")
    assert record_from_json(record_to_json(issued.record)).environment == "staging"
    client = await visitors.authenticate(issued.secret)
    assert client.environment == "staging"
    token, _ = visitors.mint(client, "alpha", "c1")
    assert (await visitors.authenticate(token)).environment == "staging"
    plain = await visitors.issue("t1", ["alpha"], Role.CLIENT)  # as before: no environment
    assert b"environment" not in record_to_json(plain.record)
    principal = await visitors.authenticate(plain.secret)
    assert principal.environment == ""
    token, _ = visitors.mint(principal, "alpha", "c2")
    assert (await visitors.authenticate(token)).environment == ""
