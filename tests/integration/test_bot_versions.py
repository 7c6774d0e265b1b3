"""Bot versions and environments on a real nats-server (services/common/botversions.py,
docs/versions.md): immutable content-addressed versions, promotion, rollback, the
bot-version canary and the checks an environment requires."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from botfactory.local.nats_server import NatsServer
from services.common.botversions import (
    BotEnvironments,
    BotVersion,
    CheckResult,
    EnvConfig,
    VersionConflict,
    VersionInvalid,
    VersionNotFound,
    VersionStore,
    canary_point,
    diff,
    publish_version,
)
from services.common.modelstore import publish, upload
from services.common.nats import Bus, connect, provision
from services.common.pb.botfactory.v1 import nlu_pb2, nlu_pb2_grpc
from services.nlu.app import NluServer
from services.nlu.config import NluConfig
from tests.support.models import TinyModels
from tests.support.polling import eventually

FILES = {"bot.yml": "name: tiny\n", "flows.yml": "flows: {}\n"}


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    connected = await connect(nats_server.url, name="test")
    await provision(connected)
    yield connected
    await connected.drain()


def _version(model: str = "m1", **files: str) -> BotVersion:
    return BotVersion.build("tiny", {**FILES, **files}, model, actor="test")


async def test_versions_are_content_addressed_and_immutable(bus: Bus) -> None:
    store = VersionStore(bus)
    first, created = await store.create(_version())
    again, created_again = await store.create(_version())
    assert created and not created_again
    assert again.id == first.id and again.created_at_unix_ms == first.created_at_unix_ms
    other, _ = await store.create(_version("m2"))
    assert other.id != first.id
    assert [v.id for v in await store.versions("tiny")] == [first.id, other.id]
    assert await store.versions("nobody") == []
    kv = await bus.kv("bot_versions")
    tampered = first.to_json() | {"model": "m9"}
    await kv.put(f"v.tiny.{first.id}", json.dumps(tampered).encode())
    with pytest.raises(Exception, match="does not match its content"):
        await store.get("tiny", first.id)
    with pytest.raises(VersionNotFound):
        await store.get("tiny", "v0000000000000000")
    with pytest.raises(VersionInvalid):
        await store.get("tiny", "../x")


def test_diff_names_changed_files_and_models() -> None:
    old = _version("m1", **{"responses.yml": "a: 1\n"})
    new = _version("m2", **{"responses.yml": "a: 2\n", "extra.yml": "x: 1\n"})
    report = diff(old, new)
    assert report["files"]["added"] == ["extra.yml"]
    assert report["files"]["removed"] == []
    assert "-a: 1" in report["files"]["changed"]["responses.yml"]
    assert "+a: 2" in report["files"]["changed"]["responses.yml"]
    assert report["model"] == {"from": "m1", "to": "m2", "changed": True}
    assert report["kb"]["changed"] is False


async def test_promote_rollback_and_canary(bus: Bus) -> None:
    store = VersionStore(bus)
    v1, _ = await store.create(_version("m1"))
    v2, _ = await store.create(_version("m2"))
    assert [e.name for e in await store.environments("tiny")] == ["dev", "staging", "prod"]
    with pytest.raises(VersionConflict):
        await store.promote_from("tiny", "staging", "prod", actor="t")
    await store.promote("tiny", "staging", v1.id, actor="t")
    prod = await store.promote_from("tiny", "staging", "prod", actor="t")
    assert prod.version == v1.id
    with pytest.raises(VersionConflict, match="no earlier version"):
        await store.rollback("tiny", "prod", actor="t")
    with pytest.raises(VersionInvalid, match="already"):
        await store.set_canary("tiny", "prod", v1.id, 0.5, actor="t")
    prod = await store.set_canary("tiny", "prod", v2.id, 0.5, actor="t")
    chosen = {c: prod.choose(c) for c in (f"c{i}" for i in range(200))}
    assert set(chosen.values()) == {v1.id, v2.id}
    for conversation, version in chosen.items():
        inside = canary_point("tiny", v2.id, conversation) < 0.5
        assert version == (v2.id if inside else v1.id)
        assert prod.choose(conversation) == version  # sticky
    prod = await store.promote("tiny", "prod", v2.id, actor="t")
    assert (prod.version, prod.canary_version, prod.canary_share) == (v2.id, "", 0.0)
    prod = await store.rollback("tiny", "prod", actor="t")
    assert prod.version == v1.id
    assert [c.reason for c in prod.history] == ["promote", "canary", "promote", "rollback"]
    with pytest.raises(VersionNotFound):
        await store.promote("tiny", "qa", v1.id, actor="t")


async def test_an_environment_can_require_checks(bus: Bus) -> None:
    store = VersionStore(bus)
    v1, _ = await store.create(_version("m1"))
    await store.configure("tiny", BotEnvironments(
        (EnvConfig("staging"), EnvConfig("prod", ("conversation_tests", "model_gate"))),
        "prod"))
    await store.promote("tiny", "staging", v1.id, actor="t")
    with pytest.raises(VersionConflict, match="conversation_tests, model_gate"):
        await store.promote("tiny", "prod", v1.id, actor="t")
    await store.record_check("tiny", v1.id, CheckResult("conversation_tests", True))
    await store.record_check("tiny", v1.id, CheckResult("model_gate", False))
    with pytest.raises(VersionConflict, match="model_gate"):
        await store.promote("tiny", "prod", v1.id, actor="t")
    await store.record_check("tiny", v1.id, CheckResult("model_gate", True))
    assert (await store.promote("tiny", "prod", v1.id, actor="t")).version == v1.id
    with pytest.raises(VersionNotFound):
        await store.environment("tiny", "dev")


# --- the NLU parses with the model version a request names -----------------------------------


async def test_the_nlu_loads_a_named_model_version_beside_the_active_one(
        bus: Bus, nats_server: NatsServer, tiny_models: TinyModels, tmp_path: Path) -> None:
    v1 = (await publish(bus, tiny_models.v1)).version
    v2 = (await upload(bus, tiny_models.v2)).version
    server = NluServer(NluConfig(grpc_port=0, metrics_port=0, max_batch_wait_ms=2.0,
                                 shutdown_grace_s=2.0, nats_url=nats_server.url,
                                 model_cache_dir=tmp_path / "cache"))
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = nlu_pb2_grpc.NluServiceStub(channel)
    try:
        plain = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text="hello"))
        assert (plain.model_version, plain.variant) == (v1, "active")
        # an environment serving a version with model v2: the NLU loads it before any request
        version, _ = await publish_version(bus, "tiny", FILES, v2, actor="t")
        await VersionStore(bus).promote("tiny", "staging", version.id, actor="t")
        await eventually(lambda: server.registry.version("tiny", v2), "v2 loaded ahead")
        pinned = await asyncio.gather(*(stub.Parse(nlu_pb2.ParseRequest(
            bot_id="tiny", text="hello", conversation_id=f"c{i}", model_version=v2))
            for i in range(5)))
        assert {(r.model_version, r.variant) for r in pinned} == {(v2, "pinned")}
        batch = await stub.ParseBatch(nlu_pb2.ParseBatchRequest(
            bot_id="tiny", texts=["hello", "hi there"], model_version=v2))
        assert [r.model_version for r in batch.results] == [v2, v2]
        same = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text="hi",
                                                     model_version=v1))
        assert (same.model_version, same.variant) == (v1, "active")
        # a version not in the store: the active model answers, and says so
        missing = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text="hi",
                                                        model_version="nosuch"))
        assert missing.model_version == v1
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text="hi",
                                                  model_version="../x"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as unknown:  # no such bot, nor version of it
            await stub.Parse(nlu_pb2.ParseRequest(bot_id="nobot", text="hi", model_version=v2))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await channel.close()
        await server.stop()


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_publishes_a_bot_version_and_moves_environments(
        nats_server: NatsServer, tiny_models: TinyModels, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from botfactory.cli import main

    nats = ["--nats", nats_server.url]
    bot_dir = tmp_path / "tiny"
    shutil.copytree(tiny_models.bot_dir, bot_dir)
    assert main(["publish", str(bot_dir), *nats]) == 2  # a bot folder needs --model
    assert "needs --model" in capsys.readouterr().err
    assert main(["publish", str(bot_dir), "--model", str(tiny_models.v1), *nats]) == 0
    first = capsys.readouterr().out
    assert "(created)" in first
    v1 = first.split("@")[1].split(" ")[0]
    assert main(["publish", str(bot_dir), "--model", str(tiny_models.v1), *nats]) == 0
    assert f"tiny@{v1} (exists already)" in capsys.readouterr().out
    (bot_dir / "bot.yml").write_text((bot_dir / "bot.yml").read_text() + "# changed\n")
    model_v2 = json.loads((tiny_models.v2 / "metadata.json").read_text())["version"]
    assert main(["publish", str(bot_dir), "--model", str(tiny_models.v2), *nats]) == 0
    v2 = capsys.readouterr().out.split("@")[1].split(" ")[0]
    # by id: a model version already in the store; an unknown one is refused
    assert main(["publish", str(bot_dir), "--model", model_v2, *nats]) == 0
    assert f"tiny@{v2} (exists already)" in capsys.readouterr().out
    assert main(["versions", "create", str(bot_dir), "--model", model_v2, *nats]) == 0
    assert f"tiny@{v2} (exists already)" in capsys.readouterr().out
    assert main(["publish", str(bot_dir), "--model", "nosuch", *nats]) == 2
    assert "no model version" in capsys.readouterr().err

    assert main(["versions", "list", "tiny", "--json", *nats]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["id"] for v in listed["versions"]] == [v1, v2]
    assert main(["versions", "diff", "tiny", v1, v2, *nats]) == 0
    shown = capsys.readouterr().out
    assert "+# changed" in shown and "model: " in shown
    assert main(["env", "configure", "tiny", "--env", "staging",
                 "--env", "prod:conversation_tests", *nats]) == 0
    assert main(["env", "promote", "tiny", "staging", "--version", v1, *nats]) == 0
    assert main(["env", "promote", "tiny", "prod", "--from", "staging", *nats]) == 2
    assert "conversation_tests" in capsys.readouterr().err
    assert main(["versions", "check", "tiny", v1, "conversation_tests", "--passed", *nats]) == 0
    assert main(["versions", "check", "tiny", v2, "conversation_tests", "--passed", *nats]) == 0
    assert main(["env", "promote", "tiny", "prod", "--from", "staging", *nats]) == 0
    assert main(["env", "promote", "tiny", "prod", "--version", v2, *nats]) == 0
    assert main(["env", "canary", "tiny", "staging", v2, "0.25", *nats]) == 0
    capsys.readouterr()
    assert main(["env", "status", "tiny", "--json", *nats]) == 0
    status = {e["name"]: e for e in json.loads(capsys.readouterr().out)["environments"]}
    assert status["prod"]["version"] == v2 and status["staging"]["canary_share"] == 0.25
    assert main(["env", "rollback", "tiny", "prod", *nats]) == 0
    assert f"tiny/prod: {v1}" in capsys.readouterr().out
    assert main(["env", "end-canary", "tiny", "staging", *nats]) == 0
    assert main(["env", "end-canary", "tiny", "staging", *nats]) == 2  # none left

    async def mirrored() -> tuple[bytes, bytes]:  # prod (the default) is served the old way
        bus = await connect(nats_server.url, name="check")
        try:
            kv = await bus.kv("bots")
            return (await kv.get("model.tiny")).value or b"", \
                (await kv.get("def.tiny")).value or b""
        finally:
            await bus.drain()

    model, definition = asyncio.run(mirrored())
    assert model.decode() == json.loads((tiny_models.v1 / "metadata.json").read_text())[
        "version"]
    assert "# changed" not in json.loads(definition)["files"]["bot.yml"]


def test_conversation_tests_record_their_outcome_on_a_version(
        nats_server: NatsServer, tiny_banking_model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from botfactory.cli import main
    from services.common.definitions import read_folder

    banking = Path(__file__).resolve().parents[2] / "bots" / "banking"

    async def create() -> tuple[str, str]:
        bus = await connect(nats_server.url, name="test")
        try:
            await provision(bus)
            model = (await upload(bus, tiny_banking_model)).version
            files = read_folder(banking)
            same, _ = await publish_version(bus, "banking", files, model, actor="t")
            other, _ = await publish_version(bus, "banking", {**files, "extra.yml": "a: 1\n"},
                                             model, actor="t")
            return same.id, other.id
        finally:
            await bus.drain()

    async def checks(version: str) -> dict[str, CheckResult]:
        bus = await connect(nats_server.url, name="test")
        try:
            return await VersionStore(bus).checks("banking", version)
        finally:
            await bus.drain()

    same, other = asyncio.run(create())
    run = ["test-conversations", str(banking), "--offline", "--select", "greeting offers",
           "--nats", nats_server.url]
    assert main([*run, "--record-version", same]) == 0
    assert f"recorded on {same}: conversation_tests passed" in capsys.readouterr().out
    recorded = asyncio.run(checks(same))["conversation_tests"]
    assert recorded.passed and recorded.detail == "1 of 1 passed (offline)"
    assert main([*run, "--record-version", other]) == 2  # not that version's files
    assert "is not the definition of" in capsys.readouterr().err
    assert asyncio.run(checks(other)) == {}
