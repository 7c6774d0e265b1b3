"""End to end: the banking bot's transfer flow (gateway → dialogue) starts the real
`transfer_funds` workflow; the RPA runner runs it against the demo bank (HTTP API and, for the
back-office record, the legacy web form in headless Chromium) and the conversation gets its
"Done! … reference …" reply from the run's result. A large transfer waits for a person's
approval (gRPC), and the conversation is told so by the workflow's notify message."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from botfactory.local.demo_bank import create_app, serve
from botfactory.local.nats_server import NatsServer
from services.common.pb.botfactory.v1 import rpa_pb2, rpa_pb2_grpc
from services.rpa_runner.app import RunnerServer
from services.rpa_runner.config import CHROMIUM, RunnerConfig
from tests.support.stack import ROOT, Stack, running_stack

TOKEN, PIN = "demo-core-token-91b2", "demo-pin-4471"


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("BOTFACTORY_SECRET_CORE_API_TOKEN", TOKEN)
    monkeypatch.setenv("BOTFACTORY_SECRET_LEGACY_PIN", PIN)
    yield


async def _transfer(stack: Stack, conversation: str, amount: int, recipient: str) -> None:
    payload = f'/transfer_money{{"amount": "{amount}", "recipient": "{recipient}"}}'
    status, body = await stack.post(conversation, payload)
    assert status == 200 and body["replies"][-1]["text"].startswith("Send ")
    status, body = await stack.post(conversation, "/affirm", message_id=f"{conversation}-yes")
    # the sync reply waits (bounded) for the workflow's result and its notify messages, which
    # answer the message that started the run (issue 17 item 7)
    assert body["replies"][0]["text"] == "Sending the money now..."
    assert {r["in_reply_to"] for r in body["replies"]} == {f"{conversation}-yes"}


@dataclass
class BankStack:
    stack: Stack
    runner: RunnerServer
    bank: str


@pytest.fixture
async def bank_stack(nats_server: NatsServer, tiny_banking_model: Path,
                     tmp_path: Path) -> AsyncIterator[BankStack]:
    """The conversation stack, the RPA runner and the demo bank it books against."""
    web, port = await serve(create_app(TOKEN, PIN))
    bank = f"http://127.0.0.1:{port}"
    runner = RunnerServer(RunnerConfig(
        nats_url=nats_server.url, bots=(str(ROOT / "bots" / "banking"),), partitions=4,
        settings=(f"core_bank_url={bank}", f"legacy_url={bank}"), grpc_port=0, metrics_port=0,
        ack_wait_s=5.0, shutdown_grace_s=1.0, screenshots_dir=tmp_path / "shots"))
    try:
        async with running_stack(nats_server.url, tiny_banking_model) as stack:
            await runner.start()
            yield BankStack(stack, runner, bank)
    finally:
        await runner.stop()
        await web.cleanup()


async def test_transfer_flow_runs_the_real_workflow(bank_stack: BankStack) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"the end-to-end workflow files a record with {CHROMIUM}", pytrace=False)
    stack = bank_stack.stack
    await _transfer(stack, "e2e-1", 50, "anna")
    done = [e for e in await stack.transcript("e2e-1") if "reference TX-" in e["text"]]
    assert done and done[0]["in_reply_to"] == "e2e-1-yes"  # in the sync reply too
    texts = await stack.bot_texts("e2e-1", "reference TX-", within=30)
    assert "Done! 50.00 EUR is on its way to anna (reference TX-000001)." in texts

    await _transfer(stack, "e2e-2", 6000, "bob")
    await stack.bot_texts("e2e-2", "need a quick check by our team", within=30)
    await _approve(bank_stack.runner)
    texts = await stack.bot_texts("e2e-2", "reference TX-", within=30)
    assert texts[-1] == "Done! 6,000.00 EUR is on its way to bob (reference TX-000003)."
    stats: dict[str, Any] = await _get(stack, f"{bank_stack.bank}/_stats")
    assert stats["effects"] == {"transfer": 2, "legacy_record": 2, "confirm": 2}
    assert stats["duplicates"] == 0


async def test_a_failed_step_tells_the_customer_only_what_the_author_wrote(
        bank_stack: BankStack) -> None:
    """Issue 18: the bank refuses the booking (HTTP 422); the customer gets the flow's
    on_failure message without the technical error, which agents see in the transcript's
    workflow_finished event (and the run record keeps)."""
    stack = bank_stack.stack
    await _transfer(stack, "e2e-fail", 50, "blocked-bob")
    texts = await stack.bot_texts("e2e-fail", "didn't go through", within=30)
    assert texts[-1] == "Sorry, the transfer didn't go through. No money was sent."
    events = [e for e in await stack.transcript("e2e-fail", include="events")
              if e.get("event") == "workflow_finished"]
    assert events[0]["data"]["status"] == "failed"
    assert "returned HTTP 422" in events[0]["data"]["error"]


async def _approve(runner: RunnerServer) -> None:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as channel:
        stub = rpa_pb2_grpc.RpaRunnerStub(channel)
        waiting = await stub.ListRuns(rpa_pb2.ListRunsRequest(bot_id="banking",
                                                              status="waiting_approval"))
        assert len(waiting.runs) == 1 and waiting.runs[0].workflow == "transfer_funds"
        assert waiting.runs[0].approval.message == "Transfer of 6,000.00 EUR to bob"
        await stub.Approve(rpa_pb2.ApprovalDecision(run_id=waiting.runs[0].run_id,
                                                    approver="payments-team"))


async def _get(stack: Stack, url: str) -> Any:
    assert stack.session is not None
    async with stack.session.get(url) as response:
        return await response.json()
