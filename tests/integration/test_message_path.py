"""The conversation message path (issue 17 items 1, 3, 7 and 13) on a real nats-server:
message ids scoped per conversation, the handoff status and the agent side of a handoff, the
sync reply waiting for the turn's workflow results, and `?include=nlu`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.msg import Msg

from botfactory.local.nats_server import NatsServer
from services.common.nats import KV_TRACKERS, Bus, connect
from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.subjects import (
    HEADER_KIND,
    HEADER_REPLY_INBOX,
    KIND_WORKFLOW_RESULT,
    inbound,
    scoped_id,
)
from tests.support.stack import Stack, issue_key, running_stack

TRANSFER = '/transfer_money{"amount": "50", "recipient": "anna"}'


async def _post(stack: Stack, conversation: str, text: str, *, bot: str = "banking",
                key: str | None = None, query: str = "",
                **body: Any) -> tuple[int, dict[str, Any]]:
    assert stack.session is not None
    url = f"{stack.base_url}/v1/bots/{bot}/conversations/{conversation}/messages{query}"
    headers = {"Authorization": f"Bearer {key or stack.client_key}"}
    async with stack.session.post(url, json={"text": text, **body}, headers=headers) as resp:
        return resp.status, await resp.json()


async def _waiting_run(bus: Bus, conversation: str) -> str:
    """The run id the conversation's tracker waits for (polls until there is one)."""
    kv = await bus.kv(KV_TRACKERS)
    for _ in range(200):
        entry = await kv.get(f"banking.{conversation}")
        run_id = json.loads(entry.value or b"{}")["tracker"].get("wf") if entry.value else None
        if run_id:
            return str(run_id)
        await asyncio.sleep(0.02)
    raise AssertionError("the conversation never waited for a workflow")


async def _finish_run(bus: Bus, conversation: str, reference: str) -> None:
    """What the RPA runner does when the transfer succeeds (services/rpa_runner/jobs.py)."""
    run_id = await _waiting_run(bus, conversation)
    result = {"run_id": run_id, "workflow": "transfer_funds", "status": "succeeded",
              "outputs": {"reference": reference}}
    await bus.js.publish(inbound("banking", conversation, 4), json.dumps(result).encode(),
                         headers={HEADER_KIND: KIND_WORKFLOW_RESULT,
                                  "Nats-Msg-Id": scoped_id("banking", conversation,
                                                           f"wf-{run_id}")})


# -- item 1: message ids are unique per conversation ---------------------------------------------


async def test_the_same_message_id_in_other_conversations_and_bots_is_another_message(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        assert stack.session is not None
        both = await issue_key(stack.session, stack.base_url, bots=("banking", "otherbot"))
        await stack.announce("otherbot")  # served elsewhere: this dialogue does not load it
        status, first = await _post(stack, "chatA", "/greet", message_id="m-1")
        assert status == 200 and first["duplicate"] is False
        # another tenant's bot (this dialogue answers "not available") and the same
        # conversation id under another bot
        status, other = await _post(stack, "victim", "/greet", bot="otherbot", key=both,
                                    message_id="m-1")
        assert status == 200 and other["duplicate"] is False
        status, victim = await _post(stack, "victim", "/greet", message_id="m-1")
        assert status == 200 and victim["duplicate"] is False and victim["complete"] is True
        assert victim["replies"] and victim["replies"][0]["in_reply_to"] == "m-1"
        assert [e["type"] for e in await stack.transcript("victim")] == ["user", "bot"]
        # a retry in the same conversation still is one message
        status, again = await _post(stack, "victim", "/greet", message_id="m-1")
        assert again["duplicate"] is True
        assert [r["text"] for r in again["replies"]] == [r["text"] for r in victim["replies"]]


# -- item 7: the sync reply includes the turn's workflow results ---------------------------------


async def test_sync_reply_waits_for_the_workflow_results_of_the_turn(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        status, _ = await _post(stack, "wf1", TRANSFER)
        assert status == 200
        bus = await connect(stack.nats_url, name="rpa-fake")
        try:
            answer = asyncio.create_task(_post(stack, "wf1", "/affirm", message_id="yes-1"))
            await _finish_run(bus, "wf1", "TX-7")
            status, body = await answer
        finally:
            await bus.drain()
        assert status == 200 and body["complete"] is True, body
        assert [r["text"] for r in body["replies"]] == [
            "Sending the money now...",
            "Done! 50.00 EUR is on its way to anna (reference TX-7)."]
        assert {r["in_reply_to"] for r in body["replies"]} == {"yes-1"}
        entries = await stack.transcript("wf1")
        done = [e for e in entries if "TX-7" in e["text"]]
        assert done and done[0]["in_reply_to"] == "yes-1"


async def test_a_workflow_slower_than_the_bound_leaves_the_reply_incomplete(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model,
                             workflow_wait_s=0.2) as stack:
        await _post(stack, "wf2", TRANSFER)
        status, body = await _post(stack, "wf2", "/affirm", message_id="yes-2")
        assert status == 202 and body["complete"] is False
        assert [r["text"] for r in body["replies"]] == ["Sending the money now..."]
        bus = await connect(stack.nats_url, name="rpa-fake")
        try:
            await _finish_run(bus, "wf2", "TX-8")
        finally:
            await bus.drain()
        for _ in range(100):  # the later result answers the message that started the run
            done = [e for e in await stack.transcript("wf2") if "TX-8" in e["text"]]
            if done:
                break
            await asyncio.sleep(0.05)
        assert done and done[0]["in_reply_to"] == "yes-2"


# -- item 3: handoff ------------------------------------------------------------------------------


async def _agent_desk(stack: Stack, received: list[dict[str, Any]],
                      ready: asyncio.Event) -> None:
    assert stack.session is not None
    url = f"{stack.base_url}/v1/bots/banking/handoffs/ws"
    async with stack.session.ws_connect(
            url, protocols=("botfactory.v1", f"bearer.{stack.agent_key}")) as ws:
        ready.set()
        async for frame in ws:
            if frame.type is aiohttp.WSMsgType.TEXT:
                received.append(json.loads(frame.data))
                return


async def test_handed_off_conversation_answers_at_once_and_reaches_the_agent(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model, sync_wait_s=30.0) as stack:
        status, body = await _post(stack, "h1", "/human_handoff")
        assert status == 200 and body["handoff"] is True and body["replies"]
        received: list[dict[str, Any]] = []
        ready = asyncio.Event()
        desk = asyncio.create_task(_agent_desk(stack, received, ready))
        await ready.wait()
        bus = await connect(stack.nats_url, name="observer")
        relayed: list[conversation_pb2.BotMessage] = []

        async def on_out(msg: Msg) -> None:
            relayed.append(conversation_pb2.BotMessage.FromString(msg.data))

        sub = await bus.nc.subscribe("conv.out.banking.h1", cb=on_out)
        try:
            # the sync wait is 30 s: the answer must not wait for it
            status, body = await asyncio.wait_for(
                _post(stack, "h1", "my card is blocked", message_id="u-2"), 10.0)
            await asyncio.wait_for(desk, 10.0)
        finally:
            await sub.unsubscribe()
            await bus.drain()
        assert status == 200, body
        assert (body["handoff"], body["complete"], body["replies"]) == (True, True, [])
        assert received[0]["type"] == "user_message" and received[0]["role"] == "user"
        assert (received[0]["conversation_id"], received[0]["message_id"],
                received[0]["text"]) == ("h1", "u-2", "my card is blocked")
        assert [(m.role, m.text) for m in relayed] == [("user", "my card is blocked")]
        entries = await stack.transcript("h1")
        assert [e["type"] for e in entries].count("user") == 2  # not twice


# -- item 13: ?include=nlu ------------------------------------------------------------------------


async def test_include_nlu_gives_the_intent_entities_and_flow_step(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        status, body = await _post(stack, "n1", '/transfer_money{"amount": "50"}',
                                   query="?include=nlu")
        assert status == 200
        nlu = body["nlu"]
        assert (nlu["intent"], nlu["confidence"]) == ("transfer_money", 1.0)
        assert {"entity": "amount", "value": "50"}.items() <= nlu["entities"][0].items()
        assert nlu["flow"] == "transfer_money" and nlu["step"] == "collect:recipient"
        status, body = await _post(stack, "n1", "to anna please", query="?include=nlu")
        assert status == 200 and isinstance(body["nlu"]["intent"], str)
        assert 0.0 <= body["nlu"]["confidence"] <= 1.0
        status, body = await _post(stack, "n1", "/greet")
        assert status == 200 and "nlu" not in body
        status, body = await _post(stack, "n1", "/greet", query="?include=slots")
        assert status == 400 and body["errors"][0]["field"] == "include"


async def test_stream_copies_of_inbox_replies_name_the_inbox(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    """The dialogue's conv.out copy of a reply it also sent to the waiting gateway's inbox
    carries that inbox (`Bf-Reply-Inbox`: the channel outbox of that replica sends it from
    there first); the user's message relayed to an agent does not."""
    async with running_stack(nats_server.url, tiny_banking_model, sync_wait_s=10.0) as stack:
        bus = await connect(stack.nats_url, name="observer")
        seen: list[tuple[str, str | None]] = []

        async def on_out(msg: Msg) -> None:
            message = conversation_pb2.BotMessage.FromString(msg.data)
            seen.append((message.role, (msg.headers or {}).get(HEADER_REPLY_INBOX)))

        sub = await bus.nc.subscribe("conv.out.banking.i1", cb=on_out)
        try:
            status, body = await _post(stack, "i1", "/human_handoff")
            assert status == 200 and body["replies"]
            status, _ = await _post(stack, "i1", "hello agent", message_id="u-2")
            assert status == 200
            await asyncio.sleep(0.3)
        finally:
            await sub.unsubscribe()
            await bus.drain()
    replies = [inbox for role, inbox in seen if role != "user"]
    assert replies and all(inbox and ".banking.i1." in inbox for inbox in replies)
    assert [inbox for role, inbox in seen if role == "user"] == [None]
