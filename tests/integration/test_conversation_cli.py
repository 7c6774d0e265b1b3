"""`botfactory test-conversations` against the running stack (gateway HTTP + dialogue admin
gRPC), with a fake RPA runner answering the transfer workflow. Steps use `/intent` payloads
only: the tiny test model's predictions are meaningless."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from botfactory.cli import main
from botfactory.conversation_tests import ConversationTest, NluHint, load_conversation_tests
from botfactory.local.demo_bank import create_app, serve
from botfactory.local.nats_server import NatsServer
from services.common.nats import connect
from services.common.pb.botfactory.v1 import nlu_pb2, nlu_pb2_grpc
from services.common.subjects import HEADER_KIND, HEADER_MSG_ID, KIND_WORKFLOW_RESULT, inbound
from services.rpa_runner.app import RunnerServer
from services.rpa_runner.config import RunnerConfig
from tests.support.stack import ROOT, Stack, running_stack

BANKING = ROOT / "bots" / "banking"
BANK_TOKEN, BANK_PIN = "demo-core-token-5d0e", "demo-pin-7731"

PASSING = """\
version: "1"
tests:
  - name: greeting offers the main tasks
    steps:
      - user: /greet
        bot: {regex: "(?i)banking", buttons: [Check my balance, Transfer money]}
        flow: null

  - name: transfer asks for the amount
    steps:
      - user: /transfer_money
        bot: {regex: "(?i)how much|what amount"}
        flow: transfer_money
        slots: {amount: null}
      - user: /deny
        flow: transfer_money

  - name: a confirmed transfer runs its workflow
    steps:
      - user: '/transfer_money{"amount": "50", "recipient": "anna"}'
        bot: "Send 50.00 EUR to anna?"
        flow: transfer_money
        slots: {amount: 50, recipient: anna}
      - user: /affirm
        bot: ["Sending the money now", "on its way to anna (reference TX-7)"]
        flow: null
        slots: {transfer_reference: TX-7}
"""

FAILING = """\
version: "1"
tests:
  - name: greeting works
    steps:
      - user: /greet
        bot: {regex: "(?i)banking"}
  - name: greeting is expected to say goodbye
    steps:
      - user: /greet
        bot: {regex: "(?i)banking"}
      - user: /greet
        bot: "See you tomorrow"
"""


async def fake_rpa(nats_url: str, partitions: int = 4) -> AsyncIterator[None]:
    """Answers every `rpa.jobs.banking` job at once: succeeded, reference TX-7."""
    bus = await connect(nats_url, name="fake-rpa")

    async def on_job(msg: object) -> None:
        job = json.loads(getattr(msg, "data"))  # noqa: B009
        result = {"run_id": job["run_id"], "workflow": job["workflow"], "status": "succeeded",
                  "outputs": {"reference": "TX-7", "balance": 100.0}}
        await bus.js.publish(inbound(job["bot_id"], job["conversation_id"], partitions),
                             json.dumps(result).encode(),
                             headers={HEADER_KIND: KIND_WORKFLOW_RESULT,
                                      HEADER_MSG_ID: f"wf-{job['run_id']}"})

    sub = await bus.nc.subscribe("rpa.jobs.banking", cb=on_job)
    try:
        yield
    finally:
        await sub.unsubscribe()
        await bus.drain()


@pytest.fixture
async def stack(nats_server: NatsServer, tiny_banking_model: Path) -> AsyncIterator[Stack]:
    async with running_stack(nats_server.url, tiny_banking_model) as running:
        async for _ in fake_rpa(nats_server.url):
            yield running


LOG_LINE = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}")


def report_of(out: str) -> str:
    """The CLI's output without the in-process services' log lines (one per request)."""
    return "".join(line for line in out.splitlines(keepends=True) if not LOG_LINE.match(line))


async def cli(stack: Stack, tests: Path, *extra: str, key: str | None = None) -> int:
    argv = ["test-conversations", str(BANKING), "--tests", str(tests),
            "--gateway", stack.base_url, "--api-key", key or stack.client_key,
            "--dialogue", f"127.0.0.1:{stack.dialogues[0].port}", "--workflow-timeout", "10",
            *extra]
    return await asyncio.to_thread(main, argv)


async def test_conversation_tests_pass_and_fail_against_the_stack(
        stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    passing = tmp_path / "passing.yml"
    passing.write_text(PASSING)
    report = tmp_path / "report.json"
    assert await cli(stack, passing, "--report", str(report)) == 0
    out, err = capsys.readouterr()
    assert "3 passed, 0 failed, 3 total" in out, out + err
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["total"] == 3
    ids = [t["conversation_id"] for t in data["tests"]]
    assert len(set(ids)) == 3 and all(i.startswith("convtest-") for i in ids)

    # a second run uses new conversations
    assert await cli(stack, passing, "--select", "greeting", "--report", str(report)) == 0
    again = json.loads(report.read_text())
    assert again["total"] == 1 and again["tests"][0]["conversation_id"] not in ids
    capsys.readouterr()

    failing = tmp_path / "failing.yml"
    failing.write_text(FAILING)
    text_report = tmp_path / "report.txt"
    assert await cli(stack, failing, "--report", str(text_report)) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "PASS  greeting works" in out
    assert "FAIL  greeting is expected to say goodbye" in out
    assert "step 2 (failing.yml:11) user: '/greet'" in out
    assert "expected a reply containing 'See you tomorrow'; got " in out, out
    assert "1 passed, 1 failed, 2 total" in out
    assert "greeting is expected to say goodbye: convtest-" in out
    assert text_report.read_text() == report_of(out)


async def test_bad_input_exits_2_with_a_clear_message(
        stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tests = tmp_path / "tests.yml"
    tests.write_text(FAILING)

    argv = ["test-conversations", str(BANKING), "--tests", str(tests), "--gateway",
            stack.base_url, "--api-key", stack.client_key, "--dialogue", "127.0.0.1:1",
            "--timeout", "3"]
    assert await asyncio.to_thread(main, argv) == 2
    err = capsys.readouterr().err
    assert "cannot reach the dialogue service at 127.0.0.1:1" in err and "--dialogue" in err

    assert await cli(stack, tests, key="bfk_wrong_key") == 2
    err = capsys.readouterr().err
    assert "refused the API key for bot 'banking'" in err and "401" in err

    broken = tmp_path / "broken.yml"
    broken.write_text("tests:\n  - name: x\n    steps: []\n")
    assert await cli(stack, broken) == 2
    err = capsys.readouterr().err
    assert "invalid conversation tests" in err and "broken.yml" in err

    assert await asyncio.to_thread(main, ["test-conversations", str(tmp_path),
                                          "--api-key", "k"]) == 2
    err = capsys.readouterr().err
    assert "is not a valid bot folder" in err and "Traceback" not in err


# --- the banking bot's own tests on the whole stack ------------------------------------------


class HintNlu(nlu_pb2_grpc.NluServiceServicer):  # type: ignore[misc]
    """An NLU that answers each test step's text with its `nlu:` hint (no hint: no intent),
    so that the stack's answers depend on everything but the model: gateway, dialogue,
    RPA runner and demo bank are real."""

    def __init__(self, hints: dict[str, NluHint]) -> None:
        self.hints = hints

    def answer(self, bot: str, text: str) -> nlu_pb2.ParseResponse:
        hint = self.hints.get(text)
        if hint is None:
            return nlu_pb2.ParseResponse(bot_id=bot, text=text,
                                         intent=nlu_pb2.IntentScore(name="", confidence=0.0))
        ranking = hint.ranking or ((hint.intent, hint.confidence),)
        return nlu_pb2.ParseResponse(
            bot_id=bot, text=text,
            intent=nlu_pb2.IntentScore(name=hint.intent, confidence=hint.confidence),
            ranking=[nlu_pb2.IntentScore(name=n, confidence=c) for n, c in ranking],
            entities=[nlu_pb2.Entity(entity=e, value=v, raw=r) for e, v, r in hint.entities],
            out_of_scope=hint.out_of_scope, model_version="hints")

    async def Parse(self, request: Any, context: Any) -> nlu_pb2.ParseResponse:
        return self.answer(request.bot_id, request.text)

    async def ParseBatch(self, request: Any, context: Any) -> nlu_pb2.ParseBatchResponse:
        return nlu_pb2.ParseBatchResponse(
            results=[self.answer(request.bot_id, text) for text in request.texts])

    async def Search(self, request: Any, context: Any) -> nlu_pb2.SearchResponse:
        return nlu_pb2.SearchResponse()

    async def ListModels(self, request: Any, context: Any) -> nlu_pb2.ListModelsResponse:
        return nlu_pb2.ListModelsResponse()


@contextlib.asynccontextmanager
async def hint_nlu(tests: list[ConversationTest]) -> AsyncIterator[int]:
    hints = {step.user: step.nlu for test in tests for step in test.steps if step.nlu}
    server = grpc.aio.server()
    nlu_pb2_grpc.add_NluServiceServicer_to_server(HintNlu(hints), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def banking_runner(nats_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """The demo bank in process and an RPA runner with the banking bot's workflows (no
    legacy filing: no browser needed)."""
    web_runner, port = await serve(create_app(BANK_TOKEN, BANK_PIN))
    bank = f"http://127.0.0.1:{port}"
    runner = RunnerServer(RunnerConfig(
        nats_url=nats_url, bots=(str(BANKING),), partitions=4,
        settings=(f"core_bank_url={bank}", f"legacy_url={bank}", "legacy_filing=false"),
        grpc_port=0, metrics_port=0, ack_wait_s=5.0, shutdown_grace_s=1.0,
        screenshots_dir=tmp_path / "shots"))
    await runner.start()
    try:
        yield bank
    finally:
        await runner.stop()
        await web_runner.cleanup()


async def test_the_banking_tests_pass_on_the_stack_with_real_workflows(
        nats_server: NatsServer, tiny_banking_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Every test of bots/banking/tests passes with the real gateway, dialogue, RPA runner
    and demo bank: the workflows' outcomes are the bank's, not `workflow_result` stubs (only
    the NLU is replaced, by one answering the steps' hints). The tests marked `offline: true`
    (they need a given confidence) are skipped, and reported as such."""
    monkeypatch.setenv("BOTFACTORY_SECRET_CORE_API_TOKEN", BANK_TOKEN)
    monkeypatch.setenv("BOTFACTORY_SECRET_LEGACY_PIN", BANK_PIN)
    tests = load_conversation_tests(BANKING)
    async with hint_nlu(tests) as nlu_port, \
            running_stack(nats_server.url, tiny_banking_model, dialogues=0) as stack, \
            banking_runner(nats_server.url, tmp_path):
        await stack.add_dialogue(nlu_address=f"127.0.0.1:{nlu_port}")
        code = await cli(stack, BANKING / "tests", "--timeout", "20")
    out, err = capsys.readouterr()
    report = report_of(out)
    assert code == 0, report + err
    offline = [t for t in tests if t.offline]
    assert [t.name for t in offline] == ["low confidence asks which intent was meant"]
    assert (f"{len(tests) - 1} passed, 0 failed, 1 skipped, {len(tests)} total"
            in report), report
    assert "SKIP  low confidence asks which intent was meant" in report
