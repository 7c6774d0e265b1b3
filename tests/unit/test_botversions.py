"""Bot versions and environments without a server (services/common/botversions.py; the
KV-backed behaviour on a real nats-server: tests/integration/test_bot_versions.py)."""

from __future__ import annotations

import json

import pytest

from botfactory.commands.versions import parse_env_option
from services.common.botversions import (
    BotEnvironments,
    BotVersion,
    EnvConfig,
    Environment,
    VersionConflict,
    VersionError,
    VersionInvalid,
    VersionStore,
    content_id,
)
from services.dialogue.engine import Tracker
from services.dialogue.store import Record
from tests.support.memstores import MemoryBus

FILES = {"bot.yml": "name: tiny\n", "domain/flows.yml": "flows: {}\n"}


def test_the_id_is_a_hash_of_the_content_whatever_the_order() -> None:
    first = content_id(FILES, "m1", "")
    assert first == content_id(dict(reversed(FILES.items())), "m1", "")
    assert first.startswith("v") and len(first) == 17
    assert first != content_id(FILES, "m2", "")
    assert first != content_id(FILES, "m1", "k1")
    assert first != content_id({**FILES, "bot.yml": "name: tiny\n# x\n"}, "m1", "")


def test_a_record_that_does_not_match_its_id_is_refused() -> None:
    version = BotVersion.build("tiny", FILES, "m1", actor="t")
    assert BotVersion.from_bytes(json.dumps(version.to_json()).encode()) == version
    tampered = {**version.to_json(), "files": {**FILES, "bot.yml": "name: evil\n"}}
    with pytest.raises(VersionError, match="does not match"):
        BotVersion.from_bytes(json.dumps(tampered).encode())
    with pytest.raises(VersionInvalid):
        BotVersion.build("tiny", {}, "m1")
    with pytest.raises(VersionInvalid):
        BotVersion.build("tiny", FILES, "bad version")
    with pytest.raises(VersionInvalid):
        BotVersion.build("bad.bot", FILES, "m1")


def test_environment_configurations_are_checked() -> None:
    assert [e.name for e in BotEnvironments().environments] == ["dev", "staging", "prod"]
    with pytest.raises(VersionInvalid, match="default"):
        BotEnvironments((EnvConfig("dev"),), "prod").validate()
    with pytest.raises(VersionInvalid, match="unique"):
        BotEnvironments((EnvConfig("prod"), EnvConfig("prod")), "prod").validate()
    with pytest.raises(VersionInvalid, match="environment name"):
        BotEnvironments((EnvConfig("Prod!"),), "Prod!").validate()
    with pytest.raises(VersionInvalid, match="check name"):
        BotEnvironments((EnvConfig("prod", ("no such",)),), "prod").validate()
    parsed = BotEnvironments.from_json({"environments": [
        {"name": "qa"}, {"name": "live", "requires": ["model_gate"]}], "default": "live"})
    assert parsed.get("live").requires == ("model_gate",)
    assert parse_env_option("prod:conversation_tests,model_gate") == (
        "prod", ("conversation_tests", "model_gate"))
    assert parse_env_option("dev") == ("dev", ())


def test_the_canary_is_sticky_and_takes_about_its_share() -> None:
    env = Environment("tiny", "prod", version="va", canary_version="vb", canary_share=0.2)
    chosen = [env.choose(f"c{i}") for i in range(2000)]
    assert chosen == [env.choose(f"c{i}") for i in range(2000)]
    assert 0.15 < chosen.count("vb") / len(chosen) < 0.25
    assert Environment("tiny", "prod", version="va").choose("c1") == "va"
    assert env.choose("") == "va"  # no conversation id: never the canary
    restored = Environment.from_bytes(env.to_bytes())
    assert restored == env


def test_a_tracker_record_keeps_its_version_and_environment() -> None:
    record = Record(Tracker.new("tiny", "c1", 1.0), None, version="v0123456789abcdef",
                    environment="staging")
    after = record.after_turn(record.tracker, "m1", ())
    decoded = Record.decode(after.encode(), 3)
    assert (decoded.version, decoded.environment) == ("v0123456789abcdef", "staging")
    plain = Record.decode(Record(Tracker.new("tiny", "c2", 1.0), None).encode(), 1)
    assert (plain.version, plain.environment) == ("", "")
    assert b'"bv"' not in Record(Tracker.new("tiny", "c2", 1.0), None).encode()


async def test_promote_and_roll_back_in_memory() -> None:
    store = VersionStore(MemoryBus())  # type: ignore[arg-type]
    a, created = await store.create(BotVersion.build("tiny", FILES, "m1"))
    b, _ = await store.create(BotVersion.build("tiny", FILES, "m2"))
    assert created
    c, _ = await store.create(BotVersion.build("tiny", FILES, "m3"))
    for version in (a, b, c):
        await store.promote("tiny", "dev", version.id, actor="t")
    # rollbacks walk back along the promotions, down to the first version
    assert (await store.rollback("tiny", "dev", actor="t")).version == b.id
    assert (await store.rollback("tiny", "dev", actor="t")).version == a.id
    with pytest.raises(VersionConflict):
        await store.rollback("tiny", "dev", actor="t")
    assert {v.id for v in await store.versions("tiny")} == {a.id, b.id, c.id}


async def test_the_dialogue_serves_the_bots_environments_serve() -> None:
    from services.common.botversions import ENV_PREFIX
    from services.dialogue.bots import BotRegistry
    from services.dialogue.versions import VersionedBots

    versions = VersionedBots(MemoryBus(), BotRegistry())  # type: ignore[arg-type]
    changes: list[int] = []
    versions.on_change(lambda: changes.append(1))
    record = Environment("newbot", "staging", version="v0123456789abcdef")
    versions._apply(ENV_PREFIX, "newbot.staging", record.to_bytes())
    versions._apply(ENV_PREFIX, "other.dev", Environment("other", "dev").to_bytes())
    assert versions.bots() == ["newbot"] and changes
    # a version that cannot be loaded: nothing serves the bot (no deployed definition)
    assert await versions.serving("newbot", "c1", "staging", None) is None
