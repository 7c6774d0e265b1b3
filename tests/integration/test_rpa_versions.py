"""Workflows of bot versions (docs/versions.md): a job that names a bot version runs that
version's workflow definition (KV `bot_versions`), a job without one runs the deployed
definition, the run records its version, a run parked mid-way resumes with its own version's
workflow on a fresh runner, and on the whole stack a staging conversation's workflow is the
staging version's."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from botfactory.local.demo_bank import create_app, serve
from botfactory.local.nats_server import NatsServer
from botfactory.local.natsconf import service_url
from services.common.botversions import BotVersion, VersionStore
from services.common.definitions import read_folder
from services.common.modelstore import upload
from services.common.nats import KV_RPA_RUNS, connect
from services.common.pb.botfactory.v1 import rpa_pb2
from services.rpa_runner.app import RunnerServer
from services.rpa_runner.config import RunnerConfig
from services.rpa_runner.jobs import Job, encode_job, job_subject
from services.rpa_runner.state import RunState, RunStore
from tests.support.polling import eventually
from tests.support.rpa import BOT, TOKEN, Harness, harness, write_test_bot
from tests.support.stack import BOOTSTRAP, ROOT, Stack, running_stack

pytestmark = pytest.mark.usefixtures("rpa_secrets")


def quote(edition: str, pause: str = "") -> str:
    """A workflow whose output names its `edition`; `pause` (e.g. "2s") parks it first."""
    wait = f"  - id: pause\n    wait: {pause}\n" if pause else ""
    return (f"name: quote\noutputs: {{edition: vars.edition}}\nsteps:\n{wait}"
            f"  - id: mark\n    set: {{edition: \"'{edition}'\"}}\n")


def bot_files(tmp: Path, edition: str, pause: str = "") -> dict[str, str]:
    return read_folder(write_test_bot(tmp / edition, {"quote": quote(edition, pause)}))


async def new_version(h: Harness, files: dict[str, str]) -> str:
    version, _ = await VersionStore(h.bus).create(BotVersion.build(BOT, files, "m1",
                                                                   actor="test"))
    return version.id


async def start(h: Harness, version: str, conversation: str = "") -> str:
    run_id = uuid.uuid4().hex
    job = Job(run_id, BOT, workflow="quote", conversation_id=conversation, bot_version=version)
    await h.bus.js.publish(job_subject(BOT), encode_job(job), headers={"Nats-Msg-Id": run_id})
    return run_id


async def test_each_job_runs_the_workflow_of_its_bot_version(nats_server: NatsServer,
                                                             tmp_path: Path) -> None:
    deployed = write_test_bot(tmp_path / "deployed", {"quote": quote("deployed")})
    async with harness(nats_server.url, deployed) as h:
        v1 = await new_version(h, bot_files(tmp_path, "one"))
        v2 = await new_version(h, bot_files(tmp_path, "two"))
        runs = {version: await start(h, version, conversation=f"c-{version or 'none'}")
                for version in (v1, v2, "")}
        for version, edition in ((v1, "one"), (v2, "two"), ("", "deployed")):
            result = await h.result(runs[version])
            assert (result["status"], result["outputs"]) == ("succeeded", {"edition": edition})
            state = await h.store.get(runs[version])
            assert state is not None and state.bot_version == version
        # the run API says which version ran, and the current step is that version's
        channel, stub = h.stub(h.runners[0])
        async with channel:
            run = await stub.GetRun(rpa_pb2.GetRunRequest(run_id=runs[v2]))
            assert run.bot_version == v2 and run.status == "succeeded"
            run = await stub.GetRun(rpa_pb2.GetRunRequest(run_id=runs[""]))
            assert run.bot_version == ""
        # a version this bot does not have: the run fails, saying so
        missing = await start(h, "v" + "0" * 16)
        result = await h.result(missing)
        assert result["status"] == "failed"
        state = await h.store.get(missing)
        assert state is not None and "has no version" in (state.error or "")


async def test_a_parked_run_resumes_with_its_version_on_a_fresh_runner(
        nats_server: NatsServer, tmp_path: Path) -> None:
    deployed = write_test_bot(tmp_path / "deployed", {"quote": quote("deployed", "2s")})
    async with harness(nats_server.url, deployed, inline_wait_max_s=0.1) as h:
        v1 = await new_version(h, bot_files(tmp_path, "one", "2s"))
        run_id = await start(h, v1)
        parked = await h.wait_status(run_id, "waiting")
        assert parked.bot_version == v1 and parked.pc == 0
        first = h.runners.pop()
        await first.stop()  # its compiled versions go with it
        await h.add_runner(inline_wait_max_s=0.1)
        result = await h.result(run_id)
        assert (result["status"], result["outputs"]) == ("succeeded", {"edition": "one"})
        state = await h.store.get(run_id)
        assert state is not None and state.bot_version == v1
        assert [entry["step"] for entry in state.history] == ["pause", "mark"]


# The staging version's balance workflow answers without the bank: a fixed balance.
FIXED_BALANCE = """\
version: "1"
name: get_balance
inputs:
  account_type: {type: string, required: false, default: checking}
outputs:
  balance: vars.balance
steps:
  - id: fetch
    set: {balance: "4242"}
"""
BANK_REPLY = "Your checking balance is 12,500.00 EUR."
FIXED_REPLY = "Your checking balance is 4,242.00 EUR."


async def test_a_staging_conversation_runs_the_staging_versions_workflow(
        nats_server: NatsServer, tiny_banking_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOTFACTORY_SECRET_CORE_API_TOKEN", TOKEN)
    web, port = await serve(create_app(TOKEN, None))
    runner = RunnerServer(RunnerConfig(
        nats_url=service_url(nats_server.url, "rpa-runner"),
        bots=(str(ROOT / "bots" / "banking"),), partitions=4,
        settings=(f"core_bank_url=http://127.0.0.1:{port}",), grpc_port=0, metrics_port=0,
        ack_wait_s=5.0, shutdown_grace_s=1.0, screenshots_dir=tmp_path / "shots"))
    try:
        async with running_stack(nats_server.url, tiny_banking_model) as stack:
            await runner.start()
            prod_version, staging_version = await _banking_versions(stack, nats_server.url,
                                                                    tiny_banking_model)
            for environment, version in (("prod", prod_version), ("staging", staging_version)):
                status, body = await _admin(stack, "POST",
                                            f"/environments/{environment}/promote",
                                            {"version": version})
                assert status == 200, body
            staging, prod = await _key(stack, "staging"), await _key(stack, "prod")
            counter = iter(range(10_000))

            async def staging_fixed() -> bool | None:
                reply = await _balance(stack, f"s-probe-{next(counter)}", staging)
                return reply == FIXED_REPLY or None

            await eventually(staging_fixed, "a staging conversation runs staging's workflow")
            assert await _balance(stack, "s1", staging) == FIXED_REPLY
            assert await _balance(stack, "p1", prod) == BANK_REPLY
            runs = await _runs(nats_server.url)
            assert runs["s1"].bot_version == staging_version
            assert runs["p1"].bot_version == prod_version
    finally:
        await runner.stop()
        await web.cleanup()


async def _admin(stack: Stack, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    assert stack.session is not None
    async with stack.session.request(method, f"{stack.base_url}/v1/admin/bots/banking{path}",
                                     json=body, headers={"Authorization": f"Bearer {BOOTSTRAP}"}
                                     ) as resp:
        return resp.status, await resp.json()


async def _key(stack: Stack, environment: str) -> str:
    assert stack.session is not None
    body = {"tenant": "acme", "bots": ["banking"], "role": "client", "environment": environment}
    async with stack.session.post(f"{stack.base_url}/v1/admin/keys", json=body,
                                  headers={"Authorization": f"Bearer {BOOTSTRAP}"}) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["secret"])


async def _balance(stack: Stack, conversation: str, key: str) -> str:
    """The reply that follows the balance workflow's result."""
    status, body = await stack.post(conversation, "/check_balance", key=key)
    assert status == 200 and body["complete"] is True, body
    return str(body["replies"][-1]["text"])


async def _banking_versions(stack: Stack, nats_url: str, model: Path) -> tuple[str, str]:
    """Two versions of the banking bot: as on disk, and with FIXED_BALANCE's workflow."""
    bus = await connect(nats_url, name="test")
    try:
        model_version = (await upload(bus, model)).version
    finally:
        await bus.drain()
    files = read_folder(ROOT / "bots" / "banking")
    ids = []
    for version_files in (files, {**files, "workflows/get_balance.yml": FIXED_BALANCE}):
        status, body = await _admin(stack, "POST", "/versions",
                                    {"files": version_files, "model": model_version})
        assert status == 201, body
        ids.append(str(body["id"]))
    return ids[0], ids[1]


async def _runs(nats_url: str) -> dict[str, RunState]:
    """The stored runs by conversation."""
    bus = await connect(nats_url, name="test-runs")
    try:
        runs = await RunStore(await bus.kv(KV_RPA_RUNS)).all()
    finally:
        await bus.drain()
    return {run.conversation: run for run in runs if run.conversation}
