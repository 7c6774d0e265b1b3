"""The RPA runner on a real nats-server with the demo bank: results and notify messages into
the conversation, retries, step timeouts, the allow-list, and secrets kept out of logs,
run state, results and events."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from botfactory.local.nats_server import NatsServer
from services.common.logging import configure_logging
from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.subjects import inbound
from tests.support.rpa import HOLD, PIN, TOKEN, harness, write_test_bot

AUTH = {"Authorization": "Bearer {{ secrets.CORE_TOKEN }}"}
WORKFLOWS = {
    "pay": "name: pay\ninputs: {amount: number, to: string}\n"
           "outputs: {reference: steps.book.outputs.id}\nsteps:" + HOLD + """\
  - id: tell
    notify: "Booking {{ money(inputs.amount) }} EUR for {{ inputs.to }}..."
  - id: book
    http:
      method: POST
      url: "{{ settings.bank }}/transfers"
      headers: {Authorization: "Bearer {{ secrets.CORE_TOKEN }}"}
      json: {amount: "{{ inputs.amount }}", recipient: "{{ inputs.to }}",
             reference: "{{ run.id }}"}
      expect: [201]
      outputs: {id: body.transfer_id}
    timeout: 500ms
    retry: {max_attempts: 3, initial_interval: 50ms, non_retryable_statuses: [422]}
""",
    "leaky": """
        name: leaky
        steps:
          - id: probe
            http:
              method: GET
              url: "{{ settings.bank }}/accounts/{{ secrets.CORE_TOKEN }}/balance"
              headers: {Authorization: "Bearer {{ secrets.CORE_TOKEN }}"}
              query: {pin: "{{ secrets.LEGACY_PIN }}"}
            retry: {max_attempts: 2, initial_interval: 10ms}
        """,
    "escape": """
        name: escape
        inputs: {url: string}
        steps:
          - id: fetch
            http: {url: "{{ inputs.url }}"}
        """,
}


pytestmark = pytest.mark.usefixtures("rpa_secrets")


@pytest.fixture
def bot_dir(tmp_path: Path) -> Path:
    return write_test_bot(tmp_path / "bot", WORKFLOWS)


async def test_result_and_notify_reach_the_conversation(nats_server: NatsServer,
                                                        bot_dir: Path) -> None:
    async with harness(nats_server.url, bot_dir) as h:
        seen, sub = await h.listen("conv.in.>")
        run_id = await h.start_run("pay", {"amount": 25, "to": "anna"}, conversation="conv-1")
        result = await h.result(run_id)
        await sub.unsubscribe()
        subject = inbound("rpatest", "conv-1", 4)
        assert result == {"run_id": run_id, "workflow": "pay", "status": "succeeded",
                          "outputs": {"reference": result["outputs"]["reference"]},
                          "error": None, "message": None, "subject": subject}
        notify = [m for m in seen if (m.headers or {}).get("Bf-Kind") == "notify"]
        assert len(notify) == 1 and notify[0].subject == subject and notify[0].headers
        # scoped by bot and conversation (issue 17 item 1)
        assert notify[0].headers["Nats-Msg-Id"] == f"rpatest.conv-1.notify-{run_id}-tell"
        message = conversation_pb2.UserMessage.FromString(notify[0].data)
        assert (message.text, message.role, message.message_id) == (
            "Booking 25.00 EUR for anna...", "bot", f"notify-{run_id}-tell")
        done = [m.headers for m in seen if (m.headers or {}).get("Bf-Kind") == "workflow_result"]
        assert done[0] and done[0]["Nats-Msg-Id"] == f"rpatest.conv-1.wf-{run_id}"


async def test_retries_timeouts_and_compensation(nats_server: NatsServer, bot_dir: Path) -> None:
    async with harness(nats_server.url, bot_dir) as h:
        await h.bank("POST", "/_faults", {"path": "/transfers", "fail_times": 2, "status": 503})
        result, state = await h.run("pay", {"amount": 5, "to": "anna"})
        assert result["status"] == "succeeded"
        assert [e["attempts"] for e in state.history if e["step"] == "book"] == [3]

        await h.bank("POST", "/_faults", {"path": "/transfers", "delay_ms": 800})
        result, state = await h.run("pay", {"amount": 5, "to": "bob"})
        assert result["status"] == "compensated"
        assert result["error"] == "step 'book': timed out after 0.5s"
        assert [(e["step"], e["status"]) for e in state.history][-2:] == [
            ("book", "failed"), ("hold", "compensated")]
        await h.bank("POST", "/_faults", [])
        await asyncio.sleep(1.0)  # the timed-out requests land at the bank meanwhile
        stats = await h.bank("GET", "/_stats")
        assert stats["duplicates"] == 0 and stats["effects"]["hold_release"] == 1


async def test_allow_list_refuses_other_hosts(nats_server: NatsServer, bot_dir: Path) -> None:
    async with harness(nats_server.url, bot_dir) as h:
        for url in ("http://169.254.169.254/latest/meta-data", "http://localhost:4222/",
                    "http://[::1]:8080/", "file:///etc/passwd"):
            result, state = await h.run("escape", {"url": url})
            assert result["status"] == "failed"
            assert "allow-list" in result["error"], result
            assert state.history[0]["attempts"] == 1  # refused, never retried


async def test_secrets_stay_out_of_logs_state_results_and_events(
        nats_server: NatsServer, bot_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("rpa_runner", "DEBUG")
    async with harness(nats_server.url, bot_dir) as h:
        events, sub = await h.listen("events.>")
        result, _state = await h.run("leaky")
        _, ok = await h.run("pay", {"amount": 1, "to": "anna"})
        stored = [s.to_json().decode() for s in await h.store.all()]
        await sub.unsubscribe()
    logs = capsys.readouterr().out
    assert result["status"] == "failed"
    # the bank echoed the token in its error: the run keeps it masked
    assert "no account '***'" in result["error"], result
    assert ok.status == "succeeded" and "run_finished" in logs
    texts = [logs, json.dumps(result), *stored, *(e.data.decode() for e in events)]
    for text in texts:
        assert TOKEN not in text and PIN not in text


def test_the_harness_secrets_are_long_enough_to_be_masked() -> None:
    assert len(TOKEN) > 8 and len(PIN) > 4


async def test_undecodable_jobs_are_dead_lettered(nats_server: NatsServer, bot_dir: Path) -> None:
    async with harness(nats_server.url, bot_dir) as h:
        letters, sub = await h.listen("events.deadletter.rpa")
        await h.bus.js.publish("rpa.jobs.rpatest", b"{not json")
        await h.bus.js.publish("rpa.jobs.rpatest", b'{"run_id": "bad id!", "workflow": "pay"}')
        result, _ = await h.run("pay", {"amount": 1, "to": "anna"})  # the queue goes on
        for _ in range(100):
            if len(letters) == 2:
                break
            await asyncio.sleep(0.02)
        await sub.unsubscribe()
        assert result["status"] == "succeeded"
        assert [m.data for m in letters] == [b"{not json", b'{"run_id": "bad id!", '
                                                           b'"workflow": "pay"}']
        assert all((m.headers or {}).get("Bf-Reason") for m in letters)
        metrics = h.runners[0].metrics
        assert metrics.dead_letters._value.get() == 2
