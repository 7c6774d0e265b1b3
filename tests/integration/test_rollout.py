"""Safe rollout on a real nats-server: the NLU service serving an active and a candidate model
over gRPC (canary, shadow), zero failed parses through activate / canary / promote / rollback,
the admin API with its audit events, and the dialogue's guard aborting a bad canary once with
two replicas (docs/rollout.md)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from botfactory.local.nats_server import NatsServer
from services.common.modelformat import content_version
from services.common.modelstore import (
    ModelRef,
    Rollout,
    activate,
    get_rollout,
    history,
    promote,
    publish,
    rollback,
    start_rollout,
    upload,
)
from services.common.nats import Bus, connect, provision
from services.common.pb.botfactory.v1 import conversation_pb2, nlu_pb2, nlu_pb2_grpc
from services.common.subjects import events
from services.dialogue.app import DialogueServer
from services.dialogue.config import DialogueConfig
from services.gateway.app import GatewayServer
from services.gateway.config import GatewayConfig
from services.nlu.app import NluServer
from services.nlu.config import NluConfig
from services.nlu.rollout import Plan
from tests.support.models import TinyModels
from tests.support.polling import eventually
from tests.support.stack import BOOTSTRAP

NLU = NluConfig(grpc_port=0, metrics_port=0, max_batch_wait_ms=2.0, shutdown_grace_s=2.0)


@pytest.fixture(scope="module")
def bad_model(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new version of the tiny bot whose intent labels are rotated: it disagrees with the
    others on every text (no training needed)."""
    target = tmp_path_factory.mktemp("bad") / "model"
    shutil.copytree(tiny_models.v1, target)
    labels = json.loads((target / "labels.json").read_text())
    labels["intents"] = labels["intents"][1:] + labels["intents"][:1]
    (target / "labels.json").write_text(json.dumps(labels))
    meta = json.loads((target / "metadata.json").read_text())
    meta["version"] = content_version(target)
    (target / "metadata.json").write_text(json.dumps(meta))
    return target


def _version(model_dir: Path) -> str:
    return str(json.loads((model_dir / "metadata.json").read_text())["version"])


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    connected = await connect(nats_server.url, name="test")
    await provision(connected)
    yield connected
    await connected.drain()


@pytest.fixture
async def nlu(bus: Bus, nats_server: NatsServer, tiny_models: TinyModels,
              tmp_path: Path) -> AsyncIterator[tuple[NluServer, nlu_pb2_grpc.NluServiceStub]]:
    await publish(bus, tiny_models.v1)
    server = NluServer(replace(NLU, nats_url=nats_server.url, model_cache_dir=tmp_path / "c"))
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    yield server, nlu_pb2_grpc.NluServiceStub(channel)
    await channel.close()
    await server.stop()


def _counter(server: NluServer, name: str, **labels: str) -> float:
    value = server.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_canary_is_sticky_and_shadow_reports_disagreements(
        nlu: tuple[NluServer, nlu_pb2_grpc.NluServiceStub], bus: Bus, bad_model: Path,
        tiny_models: TinyModels) -> None:
    server, stub = nlu
    v1, bad = _version(tiny_models.v1), _version(bad_model)
    await upload(bus, bad_model)
    await start_rollout(bus, "tiny", Rollout(candidate=bad, mode="canary", share=0.5))
    await eventually(lambda: server.rollouts.get("tiny") is not None)

    seen: dict[str, set[tuple[str, str]]] = {}
    for i in range(30):
        for text in ("hello", "send 50 dollars to anna"):
            reply = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text=text,
                                                          conversation_id=f"conv-{i}"))
            seen.setdefault(f"conv-{i}", set()).add((reply.variant, reply.model_version))
    assert all(len(pairs) == 1 for pairs in seen.values())  # sticky per conversation
    plan = Plan(bad, "canary", 0.5)
    for conversation, pairs in seen.items():
        expected = plan.variant("tiny", conversation)
        assert pairs == {(expected, bad if expected == "canary" else v1)}
    assert {v for pairs in seen.values() for v, _ in pairs} == {"active", "canary"}
    # a batch of texts from many conversations (the dialogue coalesces concurrent turns):
    # each text parsed by its own conversation's variant, results in request order
    conversations = [f"conv-{i}" for i in range(30)]
    batch = await stub.ParseBatch(nlu_pb2.ParseBatchRequest(
        bot_id="tiny", texts=["hello"] * 30, conversation_ids=conversations))
    assert [{(r.variant, r.model_version)} for r in batch.results] == [
        seen[c] for c in conversations]
    plain = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text="hello"))
    assert (plain.variant, plain.model_version) == ("active", v1)
    listed = await stub.ListModels(nlu_pb2.ListModelsRequest())
    assert sorted(m.version for m in listed.models) == sorted([v1, bad])

    received: list[dict[str, Any]] = []

    async def on_event(msg: Any) -> None:
        received.append(json.loads(msg.data))

    sub = await bus.nc.subscribe("events.nlu.shadow.tiny", cb=on_event)
    await start_rollout(bus, "tiny", Rollout(candidate=bad, mode="shadow"))
    await eventually(lambda: server.rollouts.shadowing("tiny"))
    texts = ["hello", "call me on +44 20 7946 0958", "what is the balance of my savings account"]
    for i, text in enumerate(texts):
        reply = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text=text,
                                                      conversation_id=f"s{i}"))
        assert (reply.variant, reply.model_version) == ("active", v1)  # replies unchanged
    batch = await stub.ParseBatch(nlu_pb2.ParseBatchRequest(
        bot_id="tiny", texts=texts[:2], conversation_ids=["b0", "b1"]))
    assert [(r.variant, r.model_version) for r in batch.results] == [("active", v1)] * 2
    await eventually(lambda: len(received) == 5)
    await sub.unsubscribe()
    assert _counter(server, "botfactory_nlu_shadow_comparisons_total", bot="tiny",
                    agree="false") == 5
    assert _counter(server, "botfactory_nlu_shadow_confidence_delta_count", bot="tiny") == 5
    by_conversation = {e["conversation_id"]: e for e in received}
    assert "7946" not in by_conversation["s1"]["text"]
    assert "7946" not in by_conversation["b1"]["text"]
    assert by_conversation["b0"]["text"] == "hello"
    assert by_conversation["s0"]["active"]["version"] == v1
    assert by_conversation["s0"]["candidate"]["version"] == bad
    assert by_conversation["s0"]["active"]["intent"] != by_conversation["s0"]["candidate"][
        "intent"]

    kv = await bus.kv("bots")
    await kv.delete("rollout.tiny")
    await eventually(lambda: server.registry.candidate("tiny") is None)
    assert server.rollouts.get("tiny") is None


async def test_zero_failed_parses_through_activate_canary_promote_and_rollback(
        nlu: tuple[NluServer, nlu_pb2_grpc.NluServiceStub], bus: Bus, bad_model: Path,
        tiny_models: TinyModels) -> None:
    server, stub = nlu
    v2, bad = _version(tiny_models.v2), _version(bad_model)
    await upload(bus, tiny_models.v2)
    await upload(bus, bad_model)
    answers: list[tuple[str, str]] = []
    after_rollback: list[tuple[str, str]] = []  # answers to requests sent once it was done
    failures: list[BaseException] = []
    stop, rolled_back = asyncio.Event(), asyncio.Event()

    async def client(n: int) -> None:
        turn = 0
        while not stop.is_set():
            turn += 1
            sent_after_rollback = rolled_back.is_set()
            try:
                r = await stub.Parse(nlu_pb2.ParseRequest(
                    bot_id="tiny", text="hi there", conversation_id=f"c{n}-{turn % 7}"))
                answers.append((r.variant, r.model_version))
                if sent_after_rollback:
                    after_rollback.append(answers[-1])
            except grpc.aio.AioRpcError as exc:
                failures.append(exc)

    def active() -> str:
        entry = server.registry.get("tiny")
        return entry.model.version if entry else ""

    clients = [asyncio.create_task(client(n)) for n in range(8)]
    try:
        await activate(bus, ModelRef("tiny", v2), actor="test")
        await eventually(lambda: active() == v2)
        await start_rollout(bus, "tiny", Rollout(candidate=bad, mode="canary", share=0.5))
        await eventually(lambda: ("canary", bad) in answers[-50:])
        await promote(bus, "tiny", actor="test")
        await eventually(lambda: active() == bad and server.registry.candidate("tiny") is None)
        await rollback(bus, "tiny", actor="test")
        await eventually(lambda: active() == v2)
        rolled_back.set()
        await eventually(lambda: len(after_rollback) >= 2 * len(clients))
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert failures == []
    assert set(after_rollback) == {("active", v2)}
    assert await get_rollout(bus, "tiny") is None
    reasons = [(a.reason, a.version) for a in await history(bus, "tiny")]
    assert reasons[-3:] == [("activate", v2), ("promote", bad), ("rollback", v2)]
    assert _counter(server, "botfactory_nlu_variant_parses_total", bot="tiny",
                    variant="canary") > 0


async def _audit_events(bus: Bus, count: int) -> list[dict[str, Any]]:
    sub = await bus.js.pull_subscribe("events.audit.>", stream="EVENTS", config=ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL))
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(found) < count and time.monotonic() < deadline:
        try:
            messages = await sub.fetch(count, timeout=1)
        except TimeoutError:
            continue
        found.extend(json.loads(m.data) for m in messages)
    await sub.unsubscribe()
    return found


async def test_admin_api_lists_versions_rolls_out_promotes_and_rolls_back(
        nats_server: NatsServer, bus: Bus, tiny_models: TinyModels) -> None:
    v1, v2 = _version(tiny_models.v1), _version(tiny_models.v2)
    await upload(bus, tiny_models.v1)
    await upload(bus, tiny_models.v2)
    gateway = GatewayServer(GatewayConfig(
        http_port=0, metrics_port=0, grpc_port=0, nats_url=nats_server.url, partitions=4,
        api_key_pepper="pepper-for-tests-only", admin_bootstrap_key=BOOTSTRAP,
        shutdown_grace_s=1.0))
    await gateway.start()
    base = f"http://127.0.0.1:{gateway.port}/v1/admin/bots/tiny"
    headers = {"Authorization": f"Bearer {BOOTSTRAP}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
                async with http.request(method, base + path, json=body) as resp:
                    return resp.status, await resp.json()

            assert (await call("PUT", "/model", {"version": v1}))[0] == 200
            assert (await call("PUT", "/model", {"version": v2}))[0] == 200
            status, listing = await call("GET", "/models")
            assert status == 200 and sorted(listing["versions"]) == sorted([v1, v2])
            assert listing["active"] == v2 and listing["rollout"] is None
            assert all(m["size_bytes"] > 0 and "heldout" in m["metrics"]
                       for m in listing["models"])
            assert [(h["version"], h["previous"], h["actor"]) for h in listing["history"]] == [
                (v1, "", "bootstrap"), (v2, v1, "bootstrap")]

            status, body = await call("POST", "/model/rollback")
            assert status == 200 and body["activation"]["version"] == v1
            assert (await call("DELETE", "/rollout"))[0] == 409
            assert (await call("POST", "/rollout/promote"))[0] == 409
            status, problem = await call("PUT", "/rollout", {"candidate": "nope", "mode": "shadow"})
            assert status == 404 and "nope" in problem["detail"]
            assert (await call("PUT", "/rollout", {"candidate": v1, "mode": "shadow"}))[0] == 400
            status, problem = await call("PUT", "/rollout", {"candidate": v2, "mode": "canary"})
            assert status == 400 and problem["errors"][0]["field"] == "share"
            status, body = await call("PUT", "/rollout",
                                      {"candidate": v2, "mode": "canary", "share": 0.3})
            assert status == 200 and body["rollout"]["baseline"] == v1
            assert (await call("GET", "/models"))[1]["rollout"]["candidate"] == v2
            status, body = await call("POST", "/rollout/promote")
            assert status == 200 and body["activation"]["version"] == v2
            status, listing = await call("GET", "/models")
            assert listing["active"] == v2 and listing["rollout"] is None
            assert (await call("PUT", "/rollout", {"candidate": v1, "mode": "shadow"}))[0] == 200
            status, body = await call("DELETE", "/rollout")
            assert status == 200 and body["rollout"]["candidate"] == v1
    finally:
        await gateway.stop()
    actions = [e["action"] for e in await _audit_events(bus, 7)]
    assert actions == ["model.activated", "model.activated", "model.rolled_back",
                       "model.rollout_started", "model.rollout_promoted",
                       "model.rollout_started", "model.rollout_aborted"]


async def test_guard_aborts_a_bad_canary_exactly_once_with_two_replicas(
        nats_server: NatsServer, bus: Bus, tiny_models: TinyModels) -> None:
    v1, v2 = _version(tiny_models.v1), _version(tiny_models.v2)
    await publish(bus, tiny_models.v1)
    await upload(bus, tiny_models.v2)
    config = DialogueConfig(nats_url=nats_server.url, nlu_address="127.0.0.1:1", partitions=2,
                            grpc_port=0, metrics_port=0, analytics=False)
    replicas = [DialogueServer(config), DialogueServer(config)]
    for replica in replicas:
        await replica.start()
    try:
        await start_rollout(bus, "tiny", Rollout(candidate=v2, mode="canary", share=0.5,
                                                 min_samples=10, max_fallback_increase=0.2))
        for i in range(12):
            for variant, version in (("active", v1), ("canary", v2)):
                await _turn(bus, f"{variant}-{i}", variant, version, fallback=variant == "canary")
        await eventually(lambda: sum(_aborts(r) for r in replicas) == 1)
        rollout = await get_rollout(bus, "tiny")
        assert rollout is None
        await asyncio.sleep(0.5)  # the other replica saw the same events
        assert sum(_aborts(r) for r in replicas) == 1
    finally:
        for replica in replicas:
            await replica.stop()
    aborted = [e for e in await _audit_events(bus, 1) if e["action"] == "model.rollout_aborted"]
    assert len(aborted) == 1
    assert aborted[0]["actor_key_id"] == "rollout-guard"
    assert aborted[0]["target"]["candidate"] == v2 and "fallback rate" in aborted[0]["target"][
        "reason"]


def _aborts(server: DialogueServer) -> float:
    value = server.metrics.registry.get_sample_value("botfactory_rollout_aborts_total",
                                                     {"bot": "tiny"})
    return value or 0.0


async def _turn(bus: Bus, conversation: str, variant: str, version: str, *,
                fallback: bool) -> None:
    now = int(time.time() * 1000)
    kinds: list[tuple[str, dict[str, Any]]] = [("user_message", {
        "text": "hi", "nlu": {"intent": "greet", "variant": variant, "model_version": version}})]
    if fallback:
        kinds.append(("fallback", {"reason": "low_confidence"}))
    for kind, data in kinds:
        event = conversation_pb2.ConversationEvent(
            bot_id="tiny", conversation_id=conversation, type=kind, at_unix_ms=now,
            data_json=json.dumps(data))
        await bus.js.publish(events("tiny", conversation), event.SerializeToString())


def test_cli_publishes_rolls_out_promotes_rolls_back_and_audits(
        nats_server: NatsServer, tiny_models: TinyModels,
        capsys: pytest.CaptureFixture[str]) -> None:
    from botfactory.cli import main

    v1, v2 = _version(tiny_models.v1), _version(tiny_models.v2)
    nats = ["--nats", nats_server.url]
    assert main(["publish", str(tiny_models.v1), *nats]) == 0
    assert main(["publish", str(tiny_models.v2), "--canary", "0.2", *nats]) == 0
    assert f"published tiny@{v2} (canary 0.2)" in capsys.readouterr().out
    assert main(["models", "list", "tiny", "--json", *nats]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["active"] == v1 and listing["rollout"]["candidate"] == v2
    assert listing["rollout"]["share"] == 0.2
    assert {m["version"] for m in listing["models"]} == {v1, v2}
    assert main(["models", "promote", "tiny", *nats]) == 0
    assert main(["models", "rollback", "tiny", *nats]) == 0
    assert f"tiny: active {v1} (was {v2})" in capsys.readouterr().out
    assert main(["models", "abort", "tiny", *nats]) == 2
    assert "no rollout to abort" in capsys.readouterr().err
    assert main(["models", "activate", "tiny", "nope", *nats]) == 2
    assert "no model version 'nope'" in capsys.readouterr().err
    assert main(["models", "list", "tiny", *nats]) == 0
    assert f"* {v1}" in capsys.readouterr().out

    async def audited() -> list[dict[str, Any]]:
        connected = await connect(nats_server.url, name="test")
        try:
            return await _audit_events(connected, 4)
        finally:
            await connected.drain()

    found = asyncio.run(audited())
    assert [e["action"] for e in found] == ["model.activated", "model.rollout_started",
                                            "model.rollout_promoted", "model.rolled_back"]
    assert all(e["actor_key_id"].startswith("cli") and e["tenant"] == "_platform"
               for e in found)
