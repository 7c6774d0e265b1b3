"""Workflows of bot versions (docs/versions.md): a job that names a bot version runs that
version's workflow definition (KV `bot_versions`), a job without one runs the deployed
definition, the run records its version, and a run parked mid-way resumes with its own
version's workflow on a fresh runner."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from botfactory.local.nats_server import NatsServer
from services.common.botversions import BotVersion, VersionStore
from services.common.definitions import read_folder
from services.common.pb.botfactory.v1 import rpa_pb2
from services.rpa_runner.jobs import Job, encode_job, job_subject
from tests.support.rpa import BOT, Harness, harness, write_test_bot

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
