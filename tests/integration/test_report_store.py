"""The report command (botfactory/commands/report.py) reading the events, the model store and
the review queue from a real nats-server (moved from tests/unit/test_report_trends.py)."""

from __future__ import annotations

import json
from pathlib import Path

from botfactory.analytics.models import timeline
from botfactory.analytics.trends import analyse
from botfactory.commands.report import read_events
from botfactory.local.nats_server import NatsServer
from services.common.reviewqueue import item_id

T0 = 1_700_006_400_000  # 2023-11-15 00:00 UTC, a day boundary


def fake_model(directory: Path, version: str, accuracy: float) -> Path:
    """A model directory as far as the store cares: metadata.json (and one more file)."""
    directory.mkdir(parents=True)
    meta = {"bot": "banking", "version": version, "kind": "nlu",
            "created_at": f"2023-11-1{version[-1]}T00:00:00+00:00",
            "metrics": {"heldout": {"n": 10, "intent_accuracy": accuracy}}}
    (directory / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    (directory / "labels.json").write_text("{}", encoding="utf-8")
    return directory


async def test_read_events_also_reads_versions_history_and_review_statuses(
        nats_server: NatsServer, tmp_path: Path) -> None:
    from services.common import modelstore
    from services.common.nats import KV_REVIEW, connect, provision
    from services.common.pb.botfactory.v1 import conversation_pb2
    from services.common.reviewqueue import Observation, ReviewQueue

    bus = await connect(nats_server.url, name="test")
    try:
        await provision(bus)
        for version, acc in (("v1", 0.8), ("v2", 0.9)):
            await modelstore.publish(bus, fake_model(tmp_path / version, version, acc))
        await modelstore.rollback(bus, "banking")
        event = conversation_pb2.ConversationEvent(
            bot_id="banking", conversation_id="c1", type="user_message", at_unix_ms=T0,
            data_json=json.dumps({"message_id": "m1", "text": "hmm what", "nlu": {
                "intent": "greet", "confidence": 0.2, "model_version": "v1"}}))
        await bus.js.publish("conv.event.banking.c1", event.SerializeToString())
        await ReviewQueue(await bus.kv(KV_REVIEW)).record(Observation(
            bot="banking", text="hmm what", reason="low_confidence", message_id="m1",
            confidence=0.2))
    finally:
        await bus.drain()
    found = await read_events(nats_server.url, "banking", None)
    assert len(found.events) == 1 and found.store_note == ""
    assert found.store is not None and found.store.active == "v1"
    assert [v.version for v in found.store.versions] == ["v1", "v2"]
    assert [(a.version, a.reason) for a in found.store.history] == [
        ("v1", "activate"), ("v2", "activate"), ("v1", "rollback")]
    assert found.review == {item_id("hmm what"): "pending"}
    rows = timeline(found.store, analyse(found.events).versions)
    assert rows[0].active and rows[0].scores == {"heldout.intent_accuracy": 0.8}
    assert rows[0].live is not None and rows[0].live.user_messages == 1


async def test_read_events_without_store_or_review_bucket_keeps_the_events(
        nats_server: NatsServer) -> None:
    from services.common.nats import connect
    from services.common.pb.botfactory.v1 import conversation_pb2

    bus = await connect(nats_server.url, name="test")
    try:
        await bus.js.add_stream(name="CONV", subjects=["conv.>"])
        event = conversation_pb2.ConversationEvent(
            bot_id="banking", conversation_id="c1", type="user_message", at_unix_ms=T0,
            data_json=json.dumps({"message_id": "m1", "text": "hi"}))
        await bus.js.publish("conv.event.banking.c1", event.SerializeToString())
    finally:
        await bus.drain()
    found = await read_events(nats_server.url, "banking", None)
    assert len(found.events) == 1
    assert found.store is None and found.store_note.startswith("model store not read")
    assert found.review is None
