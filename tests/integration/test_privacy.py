"""PII redaction end to end (docs/security.md, "PII"): a scripted conversation full of card
numbers, IBANs, e-mail addresses and phone numbers through the whole stack (gateway, dialogue,
NLU on a real nats-server); then every captured log line, every message stored on the CONV
and EVENTS streams (user messages, bot messages, events, feedback, audit) and the transcript
(HTTP and gRPC) are searched for them: none is found. A bot with `privacy: {redact_pii:
false}` keeps them."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog

from botfactory.local.nats_server import NatsServer
from services.common.logging import configure_logging, get_logger
from services.common.nats import KV_TRACKERS, Bus, connect
from services.common.pb.botfactory.v1 import gateway_pb2, gateway_pb2_grpc
from services.common.pii import CARD, EMAIL, IBAN, PHONE
from services.common.subjects import HEADER_KIND, HEADER_PII, KIND_WORKFLOW_RESULT, inbound
from tests.support.polling import eventually
from tests.support.stack import BOOTSTRAP, Stack, issue_key, running_stack

ROOT = Path(__file__).resolve().parents[2]
CARD_NO = "4111 1111 1111 1111"
EMAIL_ADDR = "jane.doe@example.com"
IBAN_NO = "DE89 3704 0044 0532 0130 00"
PHONE_NO = "+44 20 7946 0958"
# Every way the data could appear: as typed, without spaces, as JSON escapes would keep it.
SECRETS = (CARD_NO, "4111111111111111", EMAIL_ADDR, IBAN_NO, "DE89370400440532013000",
           PHONE_NO, "7946 0958", "442079460958")


def leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


async def stored(bus: Bus, stream: str) -> list[tuple[str, str]]:
    """(subject, headers and data as text) of every message the stream holds."""
    info = await bus.js.stream_info(stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await bus.js.get_msg(stream, seq)
        except Exception:  # erased or deleted: nothing stored
            continue
        text = json.dumps(msg.headers or {}) + (msg.data or b"").decode("utf-8", "replace")
        found.append((str(msg.subject), text))
    return found


async def _run_id(bus: Bus, conversation: str) -> str:
    for _ in range(100):
        entry = await (await bus.kv(KV_TRACKERS)).get(f"banking.{conversation}")
        run_id = json.loads(entry.value or b"{}").get("tracker", {}).get("wf")
        if run_id:
            return str(run_id)
        await asyncio.sleep(0.05)
    raise AssertionError("no workflow started")


async def _grpc_transcript(stack: Stack, conversation: str, bot: str = "banking") -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.gateway.grpc_port}") as channel:
        stub = gateway_pb2_grpc.ChatServiceStub(channel)
        reply = await stub.GetTranscript(
            gateway_pb2.GetTranscriptRequest(bot_id=bot, conversation_id=conversation),
            metadata=(("authorization", f"Bearer {stack.agent_key}"),), timeout=10)
    return str(reply)


async def test_no_pii_in_logs_events_transcripts_or_stored_messages(
        nats_server: NatsServer, tiny_banking_model: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("test", "DEBUG")
    # no RPA runner here: the sync reply does not wait for the transfer's result
    async with running_stack(nats_server.url, tiny_banking_model,
                             workflow_wait_s=0.0) as stack:
        assert stack.session is not None
        conversation = "pii-1"
        status, first = await stack.post(
            conversation, f"my card is {CARD_NO}, mail me at {EMAIL_ADDR}",
            sender=EMAIL_ADDR, metadata={"phone": PHONE_NO})
        assert status == 200
        status, asked = await stack.post(
            conversation, '/transfer_money{"amount": "50", "recipient": "' + IBAN_NO + '"}')
        assert status == 200
        assert asked["replies"][-1]["text"] == f"Send 50.00 EUR to {IBAN}?"  # masked echo
        status, _ = await stack.post(conversation, "/affirm")
        assert status == 202  # the workflow's result is still to come
        status, _ = await stack.post(conversation, f"call me on {PHONE_NO} about {IBAN_NO}")
        assert status == 200
        url = (f"{stack.base_url}/v1/bots/banking/conversations/{conversation}/messages/"
               f"{first['replies'][0]['message_id']}/feedback")
        async with stack.session.post(
                url, json={"rating": -1, "comment": f"ring {PHONE_NO} or {EMAIL_ADDR}"},
                headers={"Authorization": f"Bearer {stack.client_key}"}) as response:
            assert response.status == 202
        get_logger("probe").info("probe", text=f"a log line with {CARD_NO}")
        logging.getLogger("probe").warning("stdlib %s", EMAIL_ADDR)

        bus = await connect(stack.nats_url, name="privacy-test")
        try:
            # the transfer's workflow answers with PII in its outputs
            run_id = await _run_id(bus, conversation)
            result = {"run_id": run_id, "workflow": "transfer_funds", "status": "succeeded",
                      "outputs": {"reference": "TX-1", "receipt_to": EMAIL_ADDR}}
            await bus.js.publish(inbound("banking", conversation, 4),
                                 json.dumps(result).encode(),
                                 headers={HEADER_KIND: KIND_WORKFLOW_RESULT,
                                          "Nats-Msg-Id": f"wf-{run_id}"})

            async def done() -> list[dict[str, Any]] | None:
                entries = await stack.transcript(conversation)
                return entries if any("reference TX-1" in e["text"] for e in entries) else None

            entries = await eventually(done, "the workflow's message")

            async def drained() -> bool:  # every handled message gone from the work queue
                return not await stored(bus, "CONV_IN")

            await eventually(drained, "conv.in to be emptied")
            conv = await stored(bus, "CONV")
            events = await stored(bus, "EVENTS")
        finally:
            await bus.drain()
        over_grpc = await _grpc_transcript(stack, conversation)
    logs = capsys.readouterr()
    structlog.reset_defaults()

    transcript = json.dumps(entries, ensure_ascii=False)
    assert leaks(transcript) == [] and leaks(over_grpc) == []
    for subject, text in conv + events:
        assert leaks(text) == [], f"{subject} holds PII: {text[:300]}"
    assert leaks(logs.out + logs.err) == []

    # ... and what was said is still there, masked
    users = [e["text"] for e in entries if e["type"] == "user"]
    assert users[0] == f"my card is {CARD}, mail me at {EMAIL}"
    assert users[-1] == f"call me on {PHONE} about {IBAN}"
    assert f"is on its way to {IBAN} (reference TX-1)" in transcript
    subjects = {subject for subject, _ in conv}
    assert {"conv.event.banking.pii-1", "conv.out.banking.pii-1"} <= subjects
    assert "[EMAIL]" in "".join(t for s, t in conv if "feedback" in t)
    assert '"probe"' in logs.out and f"a log line with {CARD}" in logs.out


def _definition(name: str, privacy: str) -> dict[str, str]:
    folder = ROOT / "bots" / "banking"
    files = {}
    for path in sorted(folder.rglob("*.yml")):
        relative = path.relative_to(folder).as_posix()
        if relative.split("/")[0] in ("data", "domain", "workflows"):
            files[relative] = path.read_text(encoding="utf-8")
    bot = (folder / "bot.yml").read_text(encoding="utf-8").replace("name: banking",
                                                                   f"name: {name}")
    files["bot.yml"] = bot + privacy
    return files


async def test_a_bot_can_keep_pii(nats_server: NatsServer, tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        assert stack.session is not None
        url = f"{stack.base_url}/v1/admin/bots/keeper/definition"
        files = _definition("keeper", "privacy:\n  redact_pii: false\n")
        async with stack.session.put(url, json={"files": files},
                                     headers={"Authorization": f"Bearer {BOOTSTRAP}"}) as resp:
            assert resp.status == 200, await resp.text()
        key = await issue_key(stack.session, stack.base_url, bots=("keeper",))

        async def loaded() -> bool:
            _, body = await stack.post("k0", "/greet", key=key, bot="keeper")
            return "not available" not in body["replies"][0]["text"]

        await eventually(loaded, "the deployed bot")
        status, _ = await stack.post("k1", f"/greet mail {EMAIL_ADDR} card {CARD_NO}", key=key,
                                     bot="keeper")
        assert status == 200
        stack.agent_key = await issue_key(stack.session, stack.base_url, role="agent",
                                          bots=("keeper",))
        entries = await stack.transcript("k1", bot="keeper")
        assert entries[0]["text"] == f"/greet mail {EMAIL_ADDR} card {CARD_NO}"
        bus = await connect(stack.nats_url, name="privacy-test")
        try:
            conv = await stored(bus, "CONV") + await stored(bus, "CONV_IN")
        finally:
            await bus.drain()
        kept = [text for subject, text in conv if subject == "conv.event.keeper.k1"]
        assert any(EMAIL_ADDR in text and CARD_NO in text for text in kept)
        assert all(HEADER_PII in text for text in kept)
        assert not any(s.startswith("conv.in.") and s.endswith(".keeper.k1") for s, _ in conv)
