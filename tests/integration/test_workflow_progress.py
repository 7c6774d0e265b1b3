""""Still working on it": a run a conversation waits for that takes longer than the runner's
`progress_notice_s` sends one `workflow_progress` message into the conversation (before its
result), and the dialogue says the bot's still-working response. On a real nats-server with a
real runner and the demo bank, whose latency injection (`/_faults` delay_ms) makes a step
slow."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from botfactory.local.demo_bank import create_app, serve
from botfactory.local.nats_server import NatsServer
from services.common.subjects import (
    HEADER_KIND,
    HEADER_MSG_ID,
    KIND_WORKFLOW_PROGRESS,
    KIND_WORKFLOW_RESULT,
    unscoped_id,
)
from services.rpa_runner.app import RunnerServer
from services.rpa_runner.config import RunnerConfig
from tests.support.rpa import TOKEN, Harness, harness, hold, write_test_bot
from tests.support.stack import ROOT, running_stack

HOLD = hold("5")
WORKFLOWS = {
    "hold": "name: hold\nsteps:" + HOLD,
    "review": "name: review\nsteps:" + HOLD + """
  - id: review
    approval: {message: "ok?", approvers: [ops], timeout: 1h}
""",
}
NOTICE_S = 0.3
PENDING = "I'm still working on your previous request, one moment please."


@pytest.fixture(autouse=True)
def _secrets(rpa_secrets: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOTFACTORY_SECRET_CORE_API_TOKEN", TOKEN)


@pytest.fixture
def bot_dir(tmp_path: Path) -> Path:
    return write_test_bot(tmp_path / "bot", WORKFLOWS)


def _of(seen: list[Msg], kind: str, run_id: str) -> list[Msg]:
    return [m for m in seen if (m.headers or {}).get(HEADER_KIND) == kind
            and json.loads(m.data).get("run_id") == run_id]


async def _slow_hold(h: Harness, delay_ms: int) -> None:
    await h.bank("POST", "/_faults", {"path": "/holds", "delay_ms": delay_ms})


async def test_a_slow_run_tells_its_conversation_once_before_the_result(
        nats_server: NatsServer, bot_dir: Path) -> None:
    async with harness(nats_server.url, bot_dir, progress_notice_s=NOTICE_S) as h:
        seen, sub = await h.listen("conv.in.>")
        await _slow_hold(h, 1000)
        slow = await h.start_run("hold", conversation="c-slow")
        detached = await h.start_run("hold")  # no conversation: nobody to tell
        result = await h.result(slow)
        await h.result(detached)
        await _slow_hold(h, 0)
        fast = await h.start_run("hold", conversation="c-fast")
        await h.result(fast)
        await sub.unsubscribe()

        [progress] = _of(seen, KIND_WORKFLOW_PROGRESS, slow)
        [final] = _of(seen, KIND_WORKFLOW_RESULT, slow)
        assert seen.index(progress) < seen.index(final)
        assert progress.subject == final.subject == result["subject"]
        assert progress.headers is not None
        assert unscoped_id(progress.headers[HEADER_MSG_ID]) == f"progress-{slow}"
        body = json.loads(progress.data)
        assert set(body) == {"run_id", "workflow", "elapsed_s"}
        assert body["workflow"] == "hold" and NOTICE_S <= body["elapsed_s"] < 1.0
        assert _of(seen, KIND_WORKFLOW_PROGRESS, fast) == []
        assert [m for m in seen if detached.encode() in m.data] == []
        state = await h.store.get(slow)
        assert state is not None and state.progress_noticed and state.status == "succeeded"


async def test_a_run_parked_for_approval_tells_its_conversation_once(
        nats_server: NatsServer, bot_dir: Path) -> None:
    async with harness(nats_server.url, bot_dir, progress_notice_s=NOTICE_S) as h:
        seen, sub = await h.listen("conv.in.>")
        run_id = await h.start_run("review", conversation="c-review")
        await h.wait_status(run_id, "waiting_approval")
        for _ in range(60):
            if _of(seen, KIND_WORKFLOW_PROGRESS, run_id):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # the run stays parked: no second notice
        await sub.unsubscribe()
        assert len(_of(seen, KIND_WORKFLOW_PROGRESS, run_id)) == 1
        state = await h.store.get(run_id)
        assert state is not None and state.status == "waiting_approval"
        assert state.progress_noticed


async def test_progress_notices_can_be_turned_off(nats_server: NatsServer,
                                                  bot_dir: Path) -> None:
    async with harness(nats_server.url, bot_dir, progress_notice_s=0.0) as h:
        seen, sub = await h.listen("conv.in.>")
        await _slow_hold(h, 600)
        run_id = await h.start_run("hold", conversation="c-off")
        await h.result(run_id)
        await sub.unsubscribe()
        assert _of(seen, KIND_WORKFLOW_PROGRESS, run_id) == []


async def test_the_conversation_hears_still_working_before_a_slow_result(
        nats_server: NatsServer, tiny_banking_model: Path, tmp_path: Path) -> None:
    web, port = await serve(create_app(TOKEN, None))
    bank = f"http://127.0.0.1:{port}"
    runner = RunnerServer(RunnerConfig(
        nats_url=nats_server.url, bots=(str(ROOT / "bots" / "banking"),), partitions=4,
        settings=(f"core_bank_url={bank}",), grpc_port=0, metrics_port=0, ack_wait_s=5.0,
        shutdown_grace_s=1.0, screenshots_dir=tmp_path / "shots",
        progress_notice_s=NOTICE_S))
    try:
        async with running_stack(nats_server.url, tiny_banking_model) as stack:
            await runner.start()
            assert stack.session is not None
            async with stack.session.post(f"{bank}/_faults", json={
                    "path": "/accounts/checking/balance", "delay_ms": 1500}) as response:
                assert response.status < 300
            status, body = await stack.post("slow-1", "/check_balance", message_id="bal-1")
            # the sync reply waits for the turn's workflow (issue 17 item 7): the notice and
            # the result answer the message that started the run
            assert status == 200 and body["complete"] is True
            assert [r["text"] for r in body["replies"]] == [
                "One moment, I'm looking up your checking balance.", PENDING,
                "Your checking balance is 12,500.00 EUR."]
            assert {r["in_reply_to"] for r in body["replies"]} == {"bal-1"}
            texts = await stack.bot_texts("slow-1", "balance is")
            assert texts == ["One moment, I'm looking up your checking balance.", PENDING,
                             "Your checking balance is 12,500.00 EUR."]
            entries: list[dict[str, Any]] = await stack.transcript("slow-1")
            pending = next(e for e in entries if e.get("text") == PENDING)
            assert pending["type"] == "bot"
    finally:
        await runner.stop()
        await web.cleanup()
