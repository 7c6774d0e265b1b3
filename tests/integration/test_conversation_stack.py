"""Conversations end to end: gateway (HTTP) → JetStream → dialogue worker(s) → NLU (gRPC) →
replies, on a real nats-server. Intents are forced with `/intent{...}` button payloads where a
test needs a given path (the tiny test model's predictions are meaningless)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from botfactory.local.nats_server import NatsServer
from services.common.nats import KV_TRACKERS, connect
from services.common.subjects import HEADER_KIND, KIND_WORKFLOW_RESULT, inbound
from tests.support.stack import Stack, running_stack, tracker_record

TRANSFER = '/transfer_money{"amount": "50", "recipient": "anna"}'


async def _tracker(stack: Stack, conversation: str) -> dict[str, object]:
    return await tracker_record(stack.nats_url, "banking", conversation)


async def test_sync_reply_flow_and_async_workflow_result(nats_server: NatsServer,
                                                         tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model, workflow_wait_s=0.0) as stack:
        status, body = await stack.post("c1", "/greet")
        assert status == 200 and body["complete"] is True
        assert "banking assistant" in body["replies"][0]["text"] or "Hi there" in \
            body["replies"][0]["text"]
        assert any(b["payload"] == "/transfer_money" for b in body["replies"][0]["buttons"])

        status, body = await stack.post("c1", TRANSFER)
        assert status == 200
        assert body["replies"][-1]["text"] == "Send 50.00 EUR to anna?"
        status, body = await stack.post("c1", "/affirm")
        # no workflow wait: the turn's result is still to come (docs/chat-api.md)
        assert status == 202 and body["complete"] is False
        assert [r["text"] for r in body["replies"]] == ["Sending the money now..."]

        record = await _tracker(stack, "c1")
        tracker = record["tracker"]
        assert isinstance(tracker, dict)
        run_id = tracker["wf"]
        assert isinstance(run_id, str) and run_id
        bus = await connect(stack.nats_url, name="rpa-fake")
        try:
            result = {"run_id": run_id, "workflow": "transfer_funds", "status": "succeeded",
                      "outputs": {"reference": "TX-1"}}
            await bus.js.publish(inbound("banking", "c1", 4), json.dumps(result).encode(),
                                 headers={HEADER_KIND: KIND_WORKFLOW_RESULT,
                                          "Nats-Msg-Id": f"wf-{run_id}"})
        finally:
            await bus.drain()
        for _ in range(100):
            entries = await stack.transcript("c1")
            if any("reference TX-1" in e["text"] for e in entries):
                break
            await asyncio.sleep(0.05)
        texts = [(e["type"], e["text"]) for e in entries]
        assert texts[0] == ("user", "/greet")
        assert ("bot", "Done! 50.00 EUR is on its way to anna (reference TX-1).") in texts
        assert [t for t, _ in texts].count("user") == 3


async def test_free_text_goes_through_nlu_and_nlu_outage_is_polite(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        status, body = await stack.post("c2", "I would like to send 20 euros to bob")
        assert status == 200 and body["replies"], body
        record = await _tracker(stack, "c2")
        assert record["applied"] == [body["message_id"]]

        await stack.nlu.stop()
        status, body = await stack.post("c2", "hello again")
        assert status == 200
        assert "trouble" in body["replies"][0]["text"].lower()


async def test_duplicate_message_id_is_applied_once(nats_server: NatsServer,
                                                    tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        first = await stack.post("c3", "/greet", message_id="m-1")
        second = await stack.post("c3", "/greet", message_id="m-1")
        assert first[0] == 200 and second[0] == 200
        assert second[1]["duplicate"] is True
        assert [r["text"] for r in second[1]["replies"]] == \
            [r["text"] for r in first[1]["replies"]]
        record = await _tracker(stack, "c3")
        assert record["applied"] == ["m-1"]
        entries = await stack.transcript("c3")
        assert [e["type"] for e in entries] == ["user", "bot"]


async def test_two_workers_keep_each_conversation_in_order_exactly_once(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model, dialogues=2) as stack:
        conversations = [f"race{i}" for i in range(6)]
        per_conversation = 8

        async def talk(conversation: str) -> None:
            # back-to-back sends (no waiting for replies): the workers race on them
            for n in range(per_conversation):
                status, _ = await stack.post(conversation, "/greet", wait=False,
                                             message_id=f"{conversation}-{n}")
                assert status == 202

        await asyncio.gather(*(talk(c) for c in conversations))
        for conversation in conversations:
            for _ in range(200):
                record = await _tracker(stack, conversation)
                if len(record["applied"]) == per_conversation:  # type: ignore[arg-type]
                    break
                await asyncio.sleep(0.05)
            assert record["applied"] == [f"{conversation}-{n}" for n in range(per_conversation)]
            entries = await stack.transcript(conversation)
            replies = [e for e in entries if e["type"] == "bot"]
            assert [r["in_reply_to"] for r in replies] == \
                [f"{conversation}-{n}" for n in range(per_conversation)]
        handled = sum(d.metrics.messages.labels(bot="banking", kind="message",
                                                outcome="ok")._value.get()
                      for d in stack.dialogues)
        assert handled == len(conversations) * per_conversation
        assert all(d.metrics.messages.labels(bot="banking", kind="message",
                                             outcome="ok")._value.get() > 0
                   for d in stack.dialogues), "both workers should take part"


@pytest.mark.parametrize("role", ["client"])
async def test_key_for_another_bot_is_refused(nats_server: NatsServer, tiny_banking_model: Path,
                                              role: str) -> None:
    from tests.support.stack import issue_key

    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        assert stack.session is not None
        other = await issue_key(stack.session, stack.base_url, role=role, bots=("other",))
        status, body = await stack.post("c4", "/greet", key=other)
        # a bot out of the key's reach is "not found" (docs/security.md, "Tenants")
        assert status == 404 and body["detail"] == "no bot 'banking' here"


async def test_worker_killed_mid_message_is_processed_exactly_once(
        nats_server: NatsServer, tiny_banking_model: Path, tmp_path: Path) -> None:
    """kill -9 a dialogue worker while it holds a message (its NLU call hangs); another worker
    gets the message after the ack wait and it is applied once, replied to once."""
    import os
    import signal

    from botfactory.local.processes import start_service, wait_for_event

    nlu_log, worker_log = tmp_path / "nlu.log", tmp_path / "worker.log"
    nlu = start_service("services.nlu", nlu_log, BOTFACTORY_NLU_MODELS=str(tiny_banking_model),
                        BOTFACTORY_NLU_GRPC_PORT="0", BOTFACTORY_NLU_METRICS_PORT="0")
    worker = None
    try:
        nlu_port = int(str(wait_for_event(nlu_log, nlu, "nlu_started")["grpc_port"]))
        worker = start_service(
            "services.dialogue", worker_log, BOTFACTORY_DIALOGUE_NATS_URL=nats_server.url,
            BOTFACTORY_DIALOGUE_NLU_ADDRESS=f"127.0.0.1:{nlu_port}",
            BOTFACTORY_DIALOGUE_BOTS=str(Path(__file__).parents[2] / "bots" / "banking"),
            BOTFACTORY_DIALOGUE_PARTITIONS="4", BOTFACTORY_DIALOGUE_ACK_WAIT_S="2",
            BOTFACTORY_DIALOGUE_NLU_TIMEOUT_S="60", BOTFACTORY_DIALOGUE_GRPC_PORT="0",
            BOTFACTORY_DIALOGUE_METRICS_PORT="0")
        wait_for_event(worker_log, worker, "dialogue_started")
        async with running_stack(nats_server.url, tiny_banking_model, dialogues=0) as stack:
            os.kill(nlu.pid, signal.SIGSTOP)  # the worker's NLU call will hang
            status, _ = await stack.post("k1", "hello there", wait=False, message_id="k1-1")
            assert status == 202
            await _wait_until_held(stack.nats_url, "k1")
            worker.kill()  # SIGKILL while it holds the message
            worker.wait(timeout=10)
            os.kill(nlu.pid, signal.SIGCONT)
            # a fresh in-process worker takes over, NLU answering again
            await stack.add_dialogue(nlu_address=f"127.0.0.1:{nlu_port}")
            for _ in range(200):
                entries = await stack.transcript("k1")
                if any(e["type"] == "bot" for e in entries):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(3)  # past another ack wait: no second delivery may appear
            entries = await stack.transcript("k1")
            bot_replies = [e for e in entries if e["type"] == "bot"]
            assert bot_replies and all(e["in_reply_to"] == "k1-1" for e in bot_replies)
            assert len({e["message_id"] for e in bot_replies}) == len(bot_replies)
            record = await _tracker(stack, "k1")
            assert record["applied"] == ["k1-1"]
    finally:
        for process in (worker, nlu):
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
                process.wait(timeout=10)


async def _wait_until_held(nats_url: str, conversation: str) -> None:
    """Until the conversation's partition consumer has one message delivered, not acked."""
    from services.common.subjects import partition

    bus = await connect(nats_url, name="probe")
    try:
        durable = f"dialogue-p{partition(conversation, 4)}"
        for _ in range(200):
            info = await bus.js.consumer_info("CONV_IN", durable)
            if info.num_ack_pending == 1:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the worker never took the message")
    finally:
        await bus.drain()


async def test_a_real_bot_reply_can_be_rated(nats_server: NatsServer,
                                             tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        _, body = await stack.post("c5", "/greet")
        reply_id = body["replies"][0]["message_id"]
        assert ":" in reply_id
        assert stack.session is not None
        url = f"{stack.base_url}/v1/bots/banking/conversations/c5/messages/{reply_id}/feedback"
        async with stack.session.post(url, json={"rating": -1, "comment": "not what I asked"},
                                      headers={"Authorization": f"Bearer {stack.client_key}"}
                                      ) as response:
            assert response.status == 202, await response.text()


async def test_remembered_trackers_are_used_and_another_writer_is_noticed(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        dialogue = stack.dialogues[0]

        def reads(source: str) -> float:
            value: float = dialogue.metrics.tracker_reads.labels(source=source)._value.get()
            return value

        conflicts = dialogue.metrics.cas_conflicts
        assert (await stack.post("mem1", "/greet"))[0] == 200
        for _ in range(3):  # every conversation of partition: later turns start from memory
            assert (await stack.post("mem1", "/greet"))[0] == 200
        assert reads("memory") >= 2
        status, body = await stack.post("mem1", TRANSFER)
        assert body["replies"][-1]["text"] == "Send 50.00 EUR to anna?"
        bus = await connect(stack.nats_url, name="admin-reset")
        try:  # another writer: the remembered record is stale now
            await (await bus.kv(KV_TRACKERS)).delete("banking.mem1")
        finally:
            await bus.drain()
        before = conflicts._value.get()
        status, body = await stack.post("mem1", "/affirm")
        assert status == 200
        assert "Sending the money now..." not in [r["text"] for r in body["replies"]]
        assert conflicts._value.get() == before + 1  # the write failed, the turn re-read KV
        record = await _tracker(stack, "mem1")
        assert record["applied"] == [body["message_id"]]  # a fresh conversation


async def test_agents_see_why_the_bot_did_what_it_did(nats_server: NatsServer,
                                                      tiny_banking_model: Path) -> None:
    """Issue 18: `?include=events` puts each turn's NLU result and events (a refused slot
    value with its reason) between the user's message and the bot's replies."""
    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        payload = '/transfer_money{"amount": "50000", "recipient": "anna"}'
        status, _ = await stack.post("why-1", payload, message_id="w1")
        assert status == 200
        entries = await stack.transcript("why-1", include="events")
        kinds = [e.get("event") or e["type"] for e in entries]
        assert kinds[:2] == ["user", "flow_started"] and kinds[-1] == "bot"  # a payload: no NLU
        rejected = next(e for e in entries if e.get("event") == "slot_rejected")
        assert rejected["in_reply_to"] == "w1"
        assert rejected["data"] == {"slot": "amount", "value": "50000", "reason": "validation",
                                    "problem": "it must be at most 10,000"}
        assert kinds.index("slot_rejected") < kinds.index("bot")
        assert "event" not in [e["type"] for e in await stack.transcript("why-1")]
        status, _ = await stack.post("why-1", "fifty please", message_id="w2")
        entries = await stack.transcript("why-1", include="events")
        said = [e["type"] for e in entries].index("user", 1)
        assert entries[said + 1]["event"] == "nlu" and entries[said + 1]["in_reply_to"] == "w2"
        assert {"intent", "confidence", "entities"} <= set(entries[said + 1]["data"])


async def test_chat_debug_prints_the_turns_events_from_the_stack(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    """`botfactory chat --debug` with an agent key, against the real stack: the turn's events
    (stored after its replies) are waited for and shown before the replies."""
    from botfactory.commands.chat import ChatClient, chat_loop

    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        lines = iter(['/transfer_money{"amount": "50000", "recipient": "anna"}'])

        async def read_line() -> str | None:
            return next(lines, None)

        out = io.StringIO()
        async with ChatClient(stack.base_url, stack.agent_key, "banking", "dbg-1",
                              debug=True) as client:
            assert await chat_loop(client, read_line, out, live=False) == 0
        shown = out.getvalue().splitlines()
        refused = ("  [slot_rejected] amount: '50000' refused (validation: it must be at most "
                   "10,000)")
        assert shown[0].startswith("  [nlu] transfer_money 1.00")
        assert refused in shown
        assert shown.index(refused) < min(i for i, s in enumerate(shown) if s.startswith("bot:"))
