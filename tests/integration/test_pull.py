"""ContinuousPull (services/common/pull.py) and the CONV -> CONV_IN migration, on a real
nats-server: one pull request serves many messages, a used-up request is renewed before the
next message is needed, a server restart is survived, and unhandled inbound messages of the
old layout move to the work-queue stream with their message ids."""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StreamConfig

from botfactory.local.nats_server import NatsServer
from services.common.nats import Bus, connect, migrate_inbound, provision
from services.common.pull import ContinuousPull, open_pull, pulled_batches

STREAM, DURABLE = "PULLTEST", "worker"


async def _setup(bus: Bus) -> None:
    await bus.js.add_stream(StreamConfig(name=STREAM, subjects=["pt.>"],
                                         retention=RetentionPolicy.WORK_QUEUE))
    await bus.js.add_consumer(STREAM, ConsumerConfig(
        durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
        max_ack_pending=1, ack_wait=30))


async def _requests(bus: Bus) -> list[dict[str, int]]:
    """Every pull request sent to the consumer, as it is sent."""
    seen: list[dict[str, int]] = []

    async def record(msg: object) -> None:
        seen.append(json.loads(msg.data))  # type: ignore[attr-defined]

    await bus.nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{DURABLE}", cb=record)
    return seen


async def _take(pull: ContinuousPull, n: int) -> list[bytes]:
    got = []
    for _ in range(n):
        msg = await asyncio.wait_for(pull.next(), timeout=10)
        got.append(msg.data)
        await msg.ack_sync()  # confirmed: a restart right after cannot lose it
    return got


async def test_one_request_serves_messages_one_at_a_time_in_order(
        nats_server: NatsServer) -> None:
    bus = await connect(nats_server.url, name="admin")
    try:
        await _setup(bus)
        requests = await _requests(bus)
        for i in range(20):
            await bus.js.publish(f"pt.{i % 3}", str(i).encode())
        pull = ContinuousPull(bus.nc, STREAM, DURABLE, batch=100)
        await pull.start()
        assert await _take(pull, 20) == [str(i).encode() for i in range(20)]
        await bus.nc.flush()
        assert len(requests) == 1 and requests[0]["batch"] == 100  # not one per message
        assert (await bus.js.stream_info(STREAM)).state.messages == 0  # acked: gone
        await pull.stop()
        with pytest.raises(Exception, match="closed"):
            await pull.next()
    finally:
        await bus.drain()


async def test_batches_take_what_was_delivered_behind_the_next_message(
        nats_server: NatsServer) -> None:
    bus = await connect(nats_server.url, name="admin")
    try:
        await bus.js.add_stream(StreamConfig(name=STREAM, subjects=["pt.>"]))
        requests = await _requests(bus)
        for i in range(10):
            await bus.js.publish("pt.e", str(i).encode())
        pull = await open_pull(bus, STREAM, ConsumerConfig(
            durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, max_ack_pending=100, ack_wait=30))
        first = await asyncio.wait_for(pull.next(), timeout=10)
        for _ in range(100):  # the other nine arrive behind it (one pull request)
            if len(pull._delivered) == 9:
                break
            await asyncio.sleep(0.05)
        batches = [[first]]
        async for batch in pulled_batches(pull, 4, lambda: sum(map(len, batches)) < 10):
            batches.append(batch)
        assert [len(b) for b in batches] == [1, 4, 4, 1]
        assert [m.data for b in batches for m in b] == [str(i).encode() for i in range(10)]
        await bus.nc.flush()
        assert len(requests) == 1
        await pull.stop()
        assert [b async for b in pulled_batches(pull, 4, lambda: True)] == []  # stopped: ends
    finally:
        await bus.drain()


async def test_a_used_up_request_is_renewed(nats_server: NatsServer) -> None:
    bus = await connect(nats_server.url, name="admin")
    try:
        await _setup(bus)
        requests = await _requests(bus)
        for i in range(7):
            await bus.js.publish("pt.x", str(i).encode())
        pull = ContinuousPull(bus.nc, STREAM, DURABLE, batch=3)
        await pull.start()
        assert await _take(pull, 7) == [str(i).encode() for i in range(7)]
        await bus.nc.flush()
        assert len(requests) == 3  # 3 + 3 + 1 (the third still open for more)
        await pull.stop()
    finally:
        await bus.drain()


async def test_a_request_lost_with_a_server_restart_is_sent_again(
        nats_server: NatsServer) -> None:
    bus = await connect(nats_server.url, name="admin")
    try:
        await _setup(bus)
        pull = ContinuousPull(bus.nc, STREAM, DURABLE, expires_s=30.0, heartbeat_s=0.2)
        await pull.start()
        await bus.js.publish("pt.a", b"before")
        assert await _take(pull, 1) == [b"before"]
        port = nats_server.port
        nats_server.stop()
        nats_server.start(port=port)  # the open pull request is gone with the old process
        for _ in range(100):  # until reconnected and JetStream has recovered the stream
            try:
                await bus.js.publish("pt.a", b"after", timeout=0.5)
                break
            except Exception:  # not connected yet, or JetStream not ready
                await asyncio.sleep(0.1)
        assert await _take(pull, 1) == [b"after"]  # well before the 30 s expiry
        await pull.stop()
    finally:
        await bus.drain()


async def test_the_old_layout_is_migrated_with_unhandled_messages(
        nats_server: NatsServer) -> None:
    bus = await connect(nats_server.url, name="admin")
    try:
        await bus.js.add_stream(StreamConfig(name="CONV", subjects=["conv.>"],
                                             duplicate_window=120.0))
        await bus.js.add_consumer("CONV", ConsumerConfig(
            durable_name="dialogue-p0", filter_subject="conv.in.0.>",
            ack_policy=AckPolicy.EXPLICIT, max_ack_pending=1))
        await bus.js.publish("conv.in.0.bank.c1", b"hello", headers={"Nats-Msg-Id": "m1"})
        await bus.js.publish("conv.out.bank.c1", b"reply", headers={"Nats-Msg-Id": "m1:0"})
        await bus.js.publish("conv.in.1.bank.c2", b"later", headers={"Nats-Msg-Id": "m2"})
        await provision(bus)
        conv = await bus.js.stream_info("CONV")
        assert conv.config.subjects == ["conv.out.>", "conv.event.>"]
        assert conv.state.messages == 1  # the reply stays, the inbound ones moved
        assert [c.name for c in await bus.js.consumers_info("CONV")] == []
        inbound = await bus.js.stream_info("CONV_IN")
        assert inbound.config.retention == RetentionPolicy.WORK_QUEUE
        moved = [await bus.js.get_msg("CONV_IN", seq) for seq in (1, 2)]
        assert [(m.subject, m.data, (m.headers or {}).get("Nats-Msg-Id")) for m in moved] == [
            ("conv.in.0.bank.c1", b"hello", "m1"), ("conv.in.1.bank.c2", b"later", "m2")]
        ack = await bus.js.publish("conv.in.0.bank.c1", b"hello", headers={"Nats-Msg-Id": "m1"})
        assert ack.duplicate  # the dedupe window knows the moved ids
        assert await migrate_inbound(bus.js) == 0  # done: nothing more to do
    finally:
        await bus.drain()


async def test_a_migration_interrupted_after_narrowing_conv_finishes(
        nats_server: NatsServer) -> None:
    bus = await connect(nats_server.url, name="admin")
    try:
        await bus.js.add_stream(StreamConfig(name="CONV", subjects=["conv.>"]))
        await bus.js.publish("conv.in.0.bank.c1", b"hello", headers={"Nats-Msg-Id": "m1"})
        await bus.js.update_stream(StreamConfig(  # what the first run did before it stopped
            name="CONV", subjects=["conv.out.>", "conv.event.>"]))
        assert await migrate_inbound(bus.js) == 1
        moved = await bus.js.get_msg("CONV_IN", 1)
        assert (moved.subject, moved.data) == ("conv.in.0.bank.c1", b"hello")
        assert (await bus.js.stream_info("CONV")).state.messages == 0
        assert await migrate_inbound(bus.js) == 0
    finally:
        await bus.drain()
