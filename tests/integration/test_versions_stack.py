"""Bot versions on the whole conversation path (docs/versions.md): versions and environments
through the admin API, a conversation that finishes on the version it started with while new
ones take the promoted version, roll back, a sticky bot-version canary, keys bound to an
environment, and the audit trail."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from botfactory.local.nats_server import NatsServer
from services.common.botversions import canary_point
from services.common.definitions import read_folder
from services.common.modelstore import upload
from services.common.nats import connect
from tests.support.polling import eventually
from tests.support.stack import BOOTSTRAP, ROOT, Stack, running_stack

# The demo bot's English greetings; version B says them differently.
GREETINGS_A = ("Hello! I'm your banking assistant. What can I do for you?",
               "Hi there! How can I help with your banking today?")
GREETINGS_B = ("Version B here. What can I do for you?", "Version B, how can I help today?")
GREETING, GREETING_B = "A", "B"  # which version greeted
ADMIN = {"Authorization": f"Bearer {BOOTSTRAP}"}


@pytest.fixture
async def stack(nats_server: NatsServer, tiny_banking_model: Path) -> AsyncIterator[Stack]:
    async with running_stack(nats_server.url, tiny_banking_model) as running:
        yield running


async def _admin(stack: Stack, method: str, path: str, body: Any = None,
                 key: str = BOOTSTRAP) -> tuple[int, Any]:
    assert stack.session is not None
    async with stack.session.request(method, f"{stack.base_url}/v1/admin/bots/banking{path}",
                                     json=body, headers={"Authorization": f"Bearer {key}"}
                                     ) as resp:
        return resp.status, await resp.json()


async def _key(stack: Stack, environment: str | None) -> str:
    assert stack.session is not None
    body: dict[str, Any] = {"tenant": "acme", "bots": ["banking"], "role": "client"}
    if environment:
        body["environment"] = environment
    async with stack.session.post(f"{stack.base_url}/v1/admin/keys", json=body,
                                  headers=ADMIN) as resp:
        assert resp.status == 201, await resp.text()
        created = await resp.json()
    assert created["environment"] == (environment or "")
    return str(created["secret"])


async def _greeting(stack: Stack, conversation: str, key: str | None = None) -> str:
    """Which version greeted ("A", "B"), else the reply's text."""
    status, body = await stack.post(conversation, "/greet", key=key)
    assert status == 200, body
    text = str(body["replies"][0]["text"])
    return "A" if text in GREETINGS_A else "B" if text in GREETINGS_B else text


async def _versions(stack: Stack, nats_url: str, model: Path) -> tuple[str, str]:
    bus = await connect(nats_url, name="test")
    try:
        model_version = (await upload(bus, model)).version
    finally:
        await bus.drain()
    files = read_folder(ROOT / "bots" / "banking")
    responses = files["domain/responses.yml"]
    for old, new in zip(GREETINGS_A, GREETINGS_B, strict=True):
        responses = responses.replace(old, new)
    changed = {**files, "domain/responses.yml": responses}
    ids = []
    for version_files in (files, changed):
        status, body = await _admin(stack, "POST", "/versions",
                                    {"files": version_files, "model": model_version})
        assert status == 201, body
        ids.append(body["id"])
    status, again = await _admin(stack, "POST", "/versions", {"files": files,
                                                              "model": model_version})
    assert (status, again["id"], again["created"]) == (200, ids[0], False)
    return ids[0], ids[1]


async def _serves(stack: Stack, expected: str, prefix: str) -> None:
    """Wait until new conversations get `expected` (the dialogue follows the environments)."""
    counter = iter(range(10_000))

    async def fresh() -> bool | None:
        return await _greeting(stack, f"{prefix}-{next(counter)}") == expected or None

    await eventually(fresh, f"new conversations greet with {expected!r}")


async def test_conversations_finish_on_their_version_through_promote_canary_rollback(
        stack: Stack, nats_server: NatsServer, tiny_banking_model: Path) -> None:
    a, b = await _versions(stack, nats_server.url, tiny_banking_model)
    status, listed = await _admin(stack, "GET", "/versions")
    assert status == 200 and [v["id"] for v in listed["versions"]] == [a, b]
    status, diff = await _admin(stack, "GET", f"/versions/{b}/diff?from={a}")
    assert status == 200 and list(diff["files"]["changed"]) == ["domain/responses.yml"]
    assert GREETINGS_B[0] in diff["files"]["changed"]["domain/responses.yml"]
    assert diff["model"]["changed"] is False and set(diff["checks"]) == {a, b}
    assert set(diff["model"]["metrics"]) == {diff["model"]["to"]}  # the one model's metrics

    status, env = await _admin(stack, "POST", "/environments/staging/promote", {"version": a})
    assert (status, env["version"]) == (200, a), env
    status, env = await _admin(stack, "POST", "/environments/prod/promote",
                               {"from_environment": "staging"})
    assert (status, env["version"]) == (200, a), env
    assert await _greeting(stack, "early") == GREETING

    # promote B: the running conversation stays on A, new ones start on B
    status, env = await _admin(stack, "POST", "/environments/prod/promote", {"version": b})
    assert (status, env["version"]) == (200, b), env
    await _serves(stack, GREETING_B, "after-b")
    assert await _greeting(stack, "early") == GREETING
    assert await _greeting(stack, "late") == GREETING_B

    # roll back: new conversations on A again; the one started on B finishes on B
    status, env = await _admin(stack, "POST", "/environments/prod/rollback")
    assert (status, env["version"]) == (200, a), env
    await _serves(stack, GREETING, "after-rollback")
    assert await _greeting(stack, "late") == GREETING_B
    assert await _greeting(stack, "early") == GREETING

    # a sticky canary of B for half the new conversations
    status, env = await _admin(stack, "PUT", "/environments/prod/canary",
                               {"version": b, "share": 0.5})
    assert (status, env["canary_version"]) == (200, b), env
    await eventually(_canary_probe(stack, b), "the canary in effect")
    seen = {}
    for i in range(12):
        conversation = f"canary-{i}"
        expected = GREETING_B if canary_point("banking", b, conversation) < 0.5 else GREETING
        seen[conversation] = await _greeting(stack, conversation)
        assert seen[conversation] == expected
    assert set(seen.values()) == {GREETING, GREETING_B}
    status, env = await _admin(stack, "DELETE", "/environments/prod/canary")
    assert status == 200 and env["canary_version"] == ""
    for conversation, greeting in seen.items():  # each finishes on the version it started on
        assert await _greeting(stack, conversation) == greeting

    record = await _tracker(nats_server.url, "late")
    assert (record["bv"], record["env"]) == (b, "prod")
    actions = await _audit_actions(nats_server.url)
    assert actions.count("version.created") == 2
    assert {"environment.promoted", "environment.rolled_back", "environment.canary_set",
            "environment.canary_cleared"} <= set(actions)


def _canary_probe(stack: Stack, version: str) -> Any:
    """A check that a new conversation the canary takes greets with B (fresh ids each call:
    a conversation keeps the version it started on)."""
    inside = (f"canary-probe-{i}" for i in range(100_000)
              if canary_point("banking", version, f"canary-probe-{i}") < 0.5)

    async def probe() -> bool | None:
        return await _greeting(stack, next(inside)) == GREETING_B or None

    return probe


async def _tracker(nats_url: str, conversation: str) -> dict[str, Any]:
    bus = await connect(nats_url, name="test-tracker")
    try:
        entry = await (await bus.kv("trackers")).get(f"banking.{conversation}")
        assert entry.value is not None
        data: dict[str, Any] = json.loads(entry.value)
        return data
    finally:
        await bus.drain()


async def _audit_actions(nats_url: str) -> list[str]:
    bus = await connect(nats_url, name="test-audit")
    try:
        sub = await bus.js.pull_subscribe("events.audit.>", stream="EVENTS", config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL))
        actions = []
        try:
            while True:
                for msg in await sub.fetch(100, timeout=1.0):
                    actions.append(json.loads(msg.data)["action"])
        except TimeoutError:
            pass
        return actions
    finally:
        await bus.drain()


async def test_a_key_bound_to_an_environment_gets_its_version_and_not_another(
        stack: Stack, nats_server: NatsServer, tiny_banking_model: Path) -> None:
    a, b = await _versions(stack, nats_server.url, tiny_banking_model)
    assert (await _admin(stack, "POST", "/environments/prod/promote", {"version": a}))[0] == 200
    assert (await _admin(stack, "POST", "/environments/staging/promote",
                         {"version": b}))[0] == 200
    staging, prod, default = (await _key(stack, "staging"), await _key(stack, "prod"),
                              await _key(stack, None))
    await _serves(stack, GREETING, "prod-ready")

    async def staging_ready() -> bool | None:
        return await _greeting(stack, "s-probe", staging) == GREETING_B or None

    await eventually(staging_ready, "staging serves B")
    assert await _greeting(stack, "s1", staging) == GREETING_B
    assert await _greeting(stack, "p1", prod) == GREETING
    assert await _greeting(stack, "d1", default) == GREETING  # no environment: the default
    # a staging key cannot continue a prod conversation (nor the reverse)
    refused = await _greeting(stack, "p1", staging)
    assert "another environment" in refused
    assert "another environment" in await _greeting(stack, "s1", prod)
    assert "another environment" in await _greeting(stack, "s1", default)  # default: prod
    assert await _greeting(stack, "p1", prod) == GREETING
    # promotion checks: prod requires the conversation tests to have passed on a version
    status, _ = await _admin(stack, "PUT", "/environments", {"environments": [
        {"name": "staging"}, {"name": "prod", "requires": ["conversation_tests"]}]})
    assert status == 200
    status, problem = await _admin(stack, "POST", "/environments/prod/promote",
                                   {"from_environment": "staging"})
    assert status == 409 and "conversation_tests" in problem["detail"], problem
    status, _ = await _admin(stack, "POST", f"/versions/{b}/checks",
                             {"name": "conversation_tests", "passed": True})
    assert status == 200
    status, env = await _admin(stack, "POST", "/environments/prod/promote",
                               {"from_environment": "staging"})
    assert (status, env["version"]) == (200, b), env
    status, shown = await _admin(stack, "GET", f"/versions/{b}")
    assert status == 200 and shown["checks"]["conversation_tests"]["passed"] is True


async def test_promote_canary_rollback_under_load_fail_no_turn(
        nats_server: NatsServer, tiny_banking_model: Path, tmp_path: Path) -> None:
    """The benchmark's bot-version phase, short: no failed turn, no turn answered by another
    version than its conversation's first, conversations started on both versions."""
    from benchmarks.bot_versions import run_phase

    figures = await run_phase(nats_server.url, tiny_banking_model, tmp_path, concurrency=4,
                              seconds=4.0)
    assert figures["turns"] > 50, figures
    assert figures["failed_turns"] == 0, figures
    assert figures["turns_on_another_version"] == 0, figures
    assert set(figures["conversations_started_on"]) == {"A", "B"}, figures
    assert [c["step"] for c in figures["changes"]] == ["promote", "canary 0.5", "end canary",
                                                       "rollback"]
