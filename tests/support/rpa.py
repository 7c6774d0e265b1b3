"""The RPA runner's test harness: a bot folder with given workflows, the demo bank in-process on
a free port, runners (in-process or as child processes), and a bus client that sends jobs and
collects results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from nats.aio.msg import Msg

from botfactory.local.demo_bank import create_app, serve
from botfactory.local.natsconf import service_url
from services.botdef import Example, write_bot
from services.common.nats import KV_RPA_RUNS, Bus, connect, provision
from services.common.pb.botfactory.v1 import rpa_pb2_grpc
from services.rpa_runner.app import RunnerServer
from services.rpa_runner.config import RunnerConfig
from services.rpa_runner.jobs import Job, encode_job, job_subject
from services.rpa_runner.state import RunState, RunStore

BOT = "rpatest"
TOKEN = "core-token-5f2a9c1e7b"  # the bank's API token, given to runners as a secret
PIN = "pin-8d41c3"


def hold(amount: str = '"{{ inputs.amount }}"', account: str = "checking") -> str:
    """A workflow step (YAML, for "steps:" + ...) that holds `amount` on the demo bank's
    `account`; + RELEASE releases the hold on compensation."""
    return f"""
  - id: hold
    http:
      method: POST
      url: "{{{{ settings.bank }}}}/holds"
      headers: {{Authorization: "Bearer {{{{ secrets.CORE_TOKEN }}}}"}}
      json: {{account: {account}, amount: {amount}, reference: "{{{{ run.id }}}}"}}
      outputs: {{id: body.hold_id}}
"""


RELEASE = """\
    compensate:
      http:
        method: POST
        url: "{{ settings.bank }}/holds/{{ steps.hold.outputs.id }}/release"
        headers: {Authorization: "Bearer {{ secrets.CORE_TOKEN }}"}
"""
# The tests' workflow steps ("steps:" + HOLD + BOOK): a hold of inputs.amount released on
# compensation, and a transfer of it to anna.
HOLD = hold() + RELEASE
BOOK = """
  - id: book
    http:
      method: POST
      url: "{{ settings.bank }}/transfers"
      headers: {Authorization: "Bearer {{ secrets.CORE_TOKEN }}"}
      json: {amount: "{{ inputs.amount }}", recipient: anna, reference: "{{ run.id }}"}
      outputs: {id: body.transfer_id}
    retry: {max_attempts: 1}
"""


def write_test_bot(root: Path, workflows: dict[str, str], *, hosts: tuple[str, ...] = (
        "127.0.0.1",), settings: dict[str, Any] | None = None, name: str = BOT) -> Path:
    """A minimal bot folder with the given workflow files (YAML text by name) and rpa.yml."""
    examples = [Example(text, "greet") for text in ("hi", "hello")] + \
        [Example(text, "bye") for text in ("bye", "goodbye")]
    write_bot(root, name, examples)
    folder = root / "workflows"
    folder.mkdir(exist_ok=True)
    for workflow, text in workflows.items():
        (folder / f"{workflow}.yml").write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    rpa = {"version": "1", "allowed_hosts": list(hosts), "settings": settings or {}}
    (root / "rpa.yml").write_text(json.dumps(rpa), encoding="utf-8")
    return root


def runner_env(nats_url: str, bot_dir: Path, bank_url: str, **extra: str) -> dict[str, str]:
    env = {"BOTFACTORY_RPA_NATS_URL": service_url(nats_url, "rpa-runner"),
           "BOTFACTORY_RPA_BOTS": str(bot_dir),
           "BOTFACTORY_RPA_SETTINGS": f"bank={bank_url}", "BOTFACTORY_RPA_GRPC_PORT": "0",
           "BOTFACTORY_RPA_METRICS_PORT": "0", "BOTFACTORY_RPA_ACK_WAIT_S": "1",
           "BOTFACTORY_RPA_PARTITIONS": "4", "BOTFACTORY_SECRET_CORE_TOKEN": TOKEN,
           "BOTFACTORY_SECRET_LEGACY_PIN": PIN, "BOTFACTORY_RPA_SHUTDOWN_GRACE_S": "1"}
    env.update(extra)
    return env


@dataclass
class Harness:
    nats_url: str
    bot_dir: Path
    bank_url: str
    bus: Bus
    store: RunStore
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    runners: list[RunnerServer] = field(default_factory=list)
    session: aiohttp.ClientSession | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def config(self, **overrides: Any) -> RunnerConfig:
        base = RunnerConfig(nats_url=service_url(self.nats_url, "rpa-runner"),
                            bots=(str(self.bot_dir),),
                            settings=(f"bank={self.bank_url}",), partitions=4, grpc_port=0,
                            metrics_port=0, ack_wait_s=1.0, shutdown_grace_s=1.0,
                            screenshots_dir=self.bot_dir / "screenshots")
        return replace(base, **overrides)

    async def add_runner(self, **overrides: Any) -> RunnerServer:
        runner = RunnerServer(self.config(**overrides))
        await runner.start()
        self.runners.append(runner)
        return runner

    def stub(self, runner: RunnerServer) -> tuple[grpc.aio.Channel, rpa_pb2_grpc.RpaRunnerStub]:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}")
        return channel, rpa_pb2_grpc.RpaRunnerStub(channel)

    async def start_run(self, workflow: str, inputs: dict[str, Any] | None = None, *,
                        run_id: str | None = None, conversation: str = "") -> str:
        run_id = run_id or uuid.uuid4().hex
        job = Job(run_id, BOT, workflow=workflow, inputs=inputs or {},
                  conversation_id=conversation)
        await self.bus.js.publish(job_subject(BOT), encode_job(job),
                                  headers={"Nats-Msg-Id": run_id})
        return run_id

    async def result(self, run_id: str, limit_s: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + limit_s
        while run_id not in self.results:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                state = await self.store.get(run_id)
                raise AssertionError(f"no result for {run_id}: {state}")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), min(remaining, 0.5))
        return self.results[run_id]

    async def run(self, workflow: str, inputs: dict[str, Any] | None = None,
                  limit_s: float = 20.0) -> tuple[dict[str, Any], RunState]:
        run_id = await self.start_run(workflow, inputs)
        result = await self.result(run_id, limit_s)
        state = await self.store.get(run_id)
        assert state is not None
        return result, state

    async def wait_status(self, run_id: str, status: str, limit_s: float = 20.0) -> RunState:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            state = await self.store.get(run_id)
            if state is not None and state.status == status:
                return state
            await asyncio.sleep(0.05)
        raise AssertionError(f"run {run_id} not {status}: {await self.store.get(run_id)}")

    async def listen(self, subject: str) -> tuple[list[Msg], Any]:
        """Every message on `subject` from now on (and the subscription)."""
        seen: list[Msg] = []

        async def keep(msg: Msg) -> None:
            seen.append(msg)

        return seen, await self.bus.nc.subscribe(subject, cb=keep)

    async def bank(self, method: str, path: str, body: Any = None) -> Any:
        assert self.session is not None
        async with self.session.request(method, f"{self.bank_url}{path}", json=body) as resp:
            return await resp.json()


@contextlib.asynccontextmanager
async def harness(nats_url: str, bot_dir: Path, *, bank_token: str | None = TOKEN,
                  legacy_pin: str | None = PIN, runners: int = 1,
                  **overrides: Any) -> AsyncIterator[Harness]:
    app = create_app(bank_token, legacy_pin)
    web_runner, port = await serve(app)
    bus = await connect(nats_url, name="rpa-test")
    await provision(bus)
    h = Harness(nats_url, bot_dir, f"http://127.0.0.1:{port}", bus,
                RunStore(await bus.kv(KV_RPA_RUNS)))

    async def collect(msg: Any) -> None:
        body = json.loads(msg.data)
        h.results[body["run_id"]] = body
        h.arrived.set()

    sub = await bus.nc.subscribe("events.rpa.finished.>", cb=collect)
    conv = await bus.nc.subscribe("conv.in.>", cb=collect_workflow_results(h))
    try:
        async with aiohttp.ClientSession() as session:
            h.session = session
            for _ in range(runners):
                await h.add_runner(**overrides)
            yield h
    finally:
        for runner in h.runners:
            await runner.stop()
        await sub.unsubscribe()
        await conv.unsubscribe()
        await bus.drain()
        await web_runner.cleanup()


def collect_workflow_results(h: Harness) -> Any:
    async def collect(msg: Any) -> None:
        if (msg.headers or {}).get("Bf-Kind") == "workflow_result":
            body = json.loads(msg.data)
            h.results[body["run_id"]] = {**body, "subject": msg.subject}
            h.arrived.set()
    return collect
