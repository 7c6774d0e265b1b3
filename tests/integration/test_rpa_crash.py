"""Crash and resume: a runner process is killed (SIGKILL) while its runs are in the middle of a
slow step; another runner takes the jobs over and resumes each run from its last checkpoint.
The bank sees every side effect exactly once (the in-flight steps are sent again with the same
idempotency keys), and a non-idempotent step found in flight is not sent again: its run waits
for a person (needs_attention)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from botfactory.local.nats_server import NatsServer
from botfactory.local.processes import start_service, wait_for_event
from tests.support.rpa import Harness, harness, runner_env, write_test_bot

STEPS = """
name: {name}
inputs: {{to: string}}
outputs: {{reference: steps.book.outputs.id}}
steps:
  - id: hold
    http:
      method: POST
      url: "{{{{ settings.bank }}}}/holds"
      headers: {{Authorization: "Bearer {{{{ secrets.CORE_TOKEN }}}}"}}
      json: {{account: checking, amount: 1, reference: "{{{{ run.id }}}}"}}
      outputs: {{id: body.hold_id}}
    compensate:
      http:
        method: POST
        url: "{{{{ settings.bank }}}}/holds/{{{{ steps.hold.outputs.id }}}}/release"
        headers: {{Authorization: "Bearer {{{{ secrets.CORE_TOKEN }}}}"}}
  - id: book
    non_idempotent: {unsafe}
    http:
      method: POST
      url: "{{{{ settings.bank }}}}/transfers"
      headers: {{Authorization: "Bearer {{{{ secrets.CORE_TOKEN }}}}"}}
      json: {{amount: 1, recipient: "{{{{ inputs.to }}}}", reference: "{{{{ run.id }}}}"}}
      outputs: {{id: body.transfer_id}}
    timeout: 10s
  - id: confirm
    http:
      method: POST
      url: "{{{{ settings.bank }}}}/transfers/{{{{ steps.book.outputs.id }}}}/confirm"
      headers: {{Authorization: "Bearer {{{{ secrets.CORE_TOKEN }}}}"}}
"""
RUNS = 6


pytestmark = pytest.mark.usefixtures("rpa_secrets")


async def _in_flight(h: Harness, count: int, limit_s: float = 30.0) -> None:
    """Wait until `count` transfer requests reached the (slow) bank."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        stats = await h.bank("GET", "/_stats")
        if stats["effects"].get("hold", 0) >= count and stats["requests"] >= 2 * count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the runs did not reach the slow step: {stats}")


async def test_killed_runner_is_resumed_by_another_exactly_once(
        nats_server: NatsServer, tmp_path: Path) -> None:
    bot = write_test_bot(tmp_path / "bot", {
        "pay": STEPS.format(name="pay", unsafe="false"),
        "unsafe": STEPS.format(name="unsafe", unsafe="true")})
    async with harness(nats_server.url, bot, runners=0) as h:
        await h.bank("POST", "/_faults", {"path": "/transfers", "method": "POST",
                                          "delay_ms": 1500})
        log = tmp_path / "runner-a.log"
        victim = start_service("services.rpa_runner", log,
                               **runner_env(nats_server.url, bot, h.bank_url))
        try:
            wait_for_event(log, victim, "rpa_runner_started", timeout=60)
            safe = [await h.start_run("pay", {"to": f"r{i}"}) for i in range(RUNS - 1)]
            unsafe = await h.start_run("unsafe", {"to": "u"})
            await _in_flight(h, RUNS)
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
        finally:
            if victim.poll() is None:
                victim.kill()
        assert not h.results, "nothing finished before the crash"
        await h.add_runner()  # the survivor
        results = [await h.result(run_id, limit_s=30) for run_id in safe]
        attention = await h.wait_status(unsafe, "needs_attention", limit_s=30)
        await asyncio.sleep(1.6)  # the killed runner's last requests land at the bank
        stats = await h.bank("GET", "/_stats")
        states = [await h.store.get(run_id) for run_id in safe]

    assert [r["status"] for r in results] == ["succeeded"] * (RUNS - 1)
    assert stats["duplicates"] == 0
    assert stats["effects"] == {"hold": RUNS, "transfer": RUNS, "confirm": RUNS - 1}
    # every safe run's in-flight transfer was sent again, and answered from the bank's record
    assert stats["replays"] >= RUNS - 1
    for state in states:
        assert state is not None and state.resumes == 1
        assert [e["step"] for e in state.history] == ["hold", "book", "confirm"]
    assert "not idempotent" in (attention.error or "")
    assert attention.pc == 1 and attention.steps["hold"]["outputs"]["id"]
