"""Training as a job on a real nats-server (docs/training.md): the trainer service takes jobs
from the TRAIN queue and trains a tiny bot in a child process: queued → running → progress
events → succeeded with a model version in the object store; the concurrency limit keeps a
second job queued; cancel stops a running training; a trainer killed with -9 leaves its job
failed ("trainer lost"), never running, and its redelivered job is not run again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from botfactory.local.nats_server import NatsServer
from botfactory.local.natsconf import service_url
from botfactory.local.processes import start_service, wait_for_event
from services.botdef import write_bot
from services.common import trainings
from services.common.definitions import read_folder, write_folder
from services.common.modelstore import active_version, list_versions
from services.common.nats import Bus, connect
from services.common.trainings import Options, Training, TrainingStore
from services.gateway.app import GatewayServer
from services.gateway.config import GatewayConfig
from services.trainer.app import TrainerServer
from services.trainer.config import TrainerConfig
from tests.support.models import TINY_ENTITIES, make_tiny_encoder, tiny_examples, tiny_settings
from tests.support.polling import eventually
from tests.support.stack import BOOTSTRAP, VISITOR_SECRET, provision_as_admin

BOT = "tiny"
# A long training: it is still running when the test cancels or kills it.
LONG = Options(epochs=500)


@pytest.fixture(scope="module")
def tiny_bot(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The files of a tiny bot folder (its nlu.base_model: a tiny random encoder)."""
    root = tmp_path_factory.mktemp("trainer")
    encoder = make_tiny_encoder(root / "encoder")
    folder = write_bot(root / "bot", BOT, tiny_examples(), entities=TINY_ENTITIES,
                       nlu=tiny_settings(encoder, epochs=2))
    return read_folder(folder)


def trainer_config(nats_server: NatsServer, work_dir: Path, **overrides: Any) -> TrainerConfig:
    return replace(TrainerConfig(
        nats_url=service_url(nats_server.url, "trainer"), work_dir=work_dir, metrics_port=0,
        heartbeat_s=0.5, lost_after_s=3.0, ack_wait_s=2.0, sweep_s=1.0, stop_grace_s=5.0),
        **overrides)


@contextlib.asynccontextmanager
async def admin_bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    await provision_as_admin(nats_server.url)
    bus = await connect(nats_server.url, name="test")
    try:
        yield bus
    finally:
        await bus.drain()


@contextlib.asynccontextmanager
async def trainer(config: TrainerConfig) -> AsyncIterator[TrainerServer]:
    server = TrainerServer(config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def status_of(bus: Bus, job: Training, status: str, within: float = 120.0) -> Training:
    store = TrainingStore(bus)

    async def check() -> Training | None:
        record = await store.get(job.bot, job.job_id)
        return record if record.status == status else None

    return await eventually(check, f"training {job.job_id} {status}", within=within, every=0.2)


async def an_epoch(bus: Bus, job: Training) -> Training:
    store = TrainingStore(bus)

    async def check() -> Training | None:
        record = await store.get(job.bot, job.job_id)
        return record if record.progress.get("history") else None

    return await eventually(check, f"an epoch of {job.job_id}", within=120.0, every=0.2)


async def training_events(bus: Bus, subject: str = trainings.events_subject(BOT)
                          ) -> list[dict[str, Any]]:
    sub = await bus.js.pull_subscribe(
        subject, stream="EVENTS",
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
    found: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        while True:
            batch = await sub.fetch(100, timeout=1.0)
            found += [json.loads(msg.data) for msg in batch]
    await sub.unsubscribe()
    return found


async def test_a_job_trains_and_publishes_a_model_version(
        nats_server: NatsServer, tiny_bot: dict[str, str], tmp_path: Path) -> None:
    async with admin_bus(nats_server) as bus, trainer(trainer_config(nats_server, tmp_path)):
        job = await trainings.submit(bus, BOT, tiny_bot, Options(epochs=2), requested_by="t")
        assert job.status == "queued"
        done = await status_of(bus, job, "succeeded")
        assert done.model_version is not None and done.attempts == 1
        assert [v.version for v in await list_versions(bus, BOT)] == [done.model_version]
        assert await active_version(bus, BOT) is None  # published, not activated
        assert done.report is not None
        assert done.report["version"] == done.model_version
        assert done.report["training"]["epochs_run"] == 2
        assert done.report["metrics"]["heldout"]["n"] > 0
        assert [e["epoch"] for e in done.progress["history"]] == [1, 2]
        assert done.progress["history"][0]["epochs"] == 2
        log = await TrainingStore(bus).log(BOT, job.job_id)
        assert "fine-tuning on" in log and "wrote " in log
        kinds = [e["kind"] for e in await training_events(bus)]
        assert kinds == ["queued", "running", "epoch", "epoch", "succeeded"]
        epoch = next(e for e in await training_events(bus) if e["kind"] == "epoch")
        assert {"train_loss", "heldout_loss", "heldout"} <= set(epoch)
        assert "intent_accuracy" in epoch["heldout"]
        assert not (tmp_path / job.job_id).exists()  # the work folder is cleaned up


async def test_activate_makes_the_new_version_active(
        nats_server: NatsServer, tiny_bot: dict[str, str], tmp_path: Path) -> None:
    async with admin_bus(nats_server) as bus, trainer(trainer_config(nats_server, tmp_path)):
        job = await trainings.submit(bus, BOT, tiny_bot, Options(epochs=1, activate=True))
        done = await status_of(bus, job, "succeeded")
        assert done.activated
        assert await active_version(bus, BOT) == done.model_version


async def test_a_bad_definition_fails_with_the_trainings_error(
        nats_server: NatsServer, tiny_bot: dict[str, str], tmp_path: Path) -> None:
    files = {**tiny_bot, "bot.yml": tiny_bot["bot.yml"].replace("name: tiny", "nme: tiny")}
    async with admin_bus(nats_server) as bus, trainer(trainer_config(nats_server, tmp_path)):
        job = await trainings.submit(bus, BOT, files, Options(epochs=1))
        failed = await status_of(bus, job, "failed")
        assert failed.error is not None and "invalid bot definition" in failed.error
        assert await list_versions(bus, BOT) == []


async def test_limit_one_keeps_the_second_job_queued_and_cancel_stops_a_running_one(
        nats_server: NatsServer, tiny_bot: dict[str, str], tmp_path: Path) -> None:
    async with admin_bus(nats_server) as bus, \
            trainer(trainer_config(nats_server, tmp_path, concurrency=1)) as server:
        first = await trainings.submit(bus, BOT, tiny_bot, LONG)
        second = await trainings.submit(bus, BOT, tiny_bot, LONG)
        await an_epoch(bus, first)
        await asyncio.sleep(2.0)  # several heartbeats: the second one stays in the queue
        store = TrainingStore(bus)
        assert (await store.get(BOT, second.job_id)).status == "queued"
        assert server.worker is not None and server.worker.running_jobs == [first.job_id]

        asked = await trainings.cancel(bus, BOT, first.job_id)
        assert asked.status == "running" and asked.cancel_requested
        cancelled = await status_of(bus, first, "cancelled", within=30.0)
        assert cancelled.error == "cancelled by request" and cancelled.model_version is None
        await status_of(bus, second, "running", within=30.0)  # the slot went to the next one

        with pytest.raises(trainings.TrainingConflict, match="already cancelled"):
            await trainings.cancel(bus, BOT, first.job_id)
        await trainings.cancel(bus, BOT, second.job_id)
        await status_of(bus, second, "cancelled", within=30.0)
        assert await list_versions(bus, BOT) == []


async def test_a_training_process_that_dies_fails_its_job(
        nats_server: NatsServer, tiny_bot: dict[str, str], tmp_path: Path) -> None:
    async with admin_bus(nats_server) as bus, \
            trainer(trainer_config(nats_server, tmp_path)) as server:
        job = await trainings.submit(bus, BOT, tiny_bot, LONG)
        await an_epoch(bus, job)
        assert server.worker is not None
        (run,) = server.worker.runs
        assert run.child is not None
        os.kill(run.child.pid, signal.SIGKILL)  # e.g. the kernel's OOM killer
        failed = await status_of(bus, job, "failed", within=30.0)
        assert failed.error == "the training process was killed (SIGKILL)"
        assert failed.model_version is None and failed.progress["history"]


async def test_a_trainer_stopping_gives_its_job_back_and_another_one_runs_it(
        nats_server: NatsServer, tiny_bot: dict[str, str], tmp_path: Path) -> None:
    async with admin_bus(nats_server) as bus:
        first = TrainerServer(trainer_config(nats_server, tmp_path / "a"))
        await first.start()
        try:
            job = await trainings.submit(bus, BOT, tiny_bot, LONG)
            await an_epoch(bus, job)
        finally:
            await first.stop()  # SIGTERM: the training stops, the job goes back to the queue
        back = await TrainingStore(bus).get(BOT, job.job_id)
        assert (back.status, back.attempts, back.worker, back.progress) == ("queued", 1, "", {})
        async with trainer(trainer_config(nats_server, tmp_path / "b")) as second:
            running = await an_epoch(bus, job)
            assert running.attempts == 2 and running.worker == second.worker_id
            await trainings.cancel(bus, BOT, job.job_id)
            await status_of(bus, job, "cancelled", within=30.0)
        kinds = [e["kind"] for e in await training_events(bus)]
        assert kinds[:2] == ["queued", "running"] and kinds.count("running") == 2


async def test_a_queued_job_cancelled_never_runs(
        nats_server: NatsServer, tiny_bot: dict[str, str], tmp_path: Path) -> None:
    async with admin_bus(nats_server) as bus:
        job = await trainings.submit(bus, BOT, tiny_bot, Options(epochs=1))
        cancelled = await trainings.cancel(bus, BOT, job.job_id)
        assert cancelled.status == "cancelled"
        async with trainer(trainer_config(nats_server, tmp_path)):
            info = await bus.js.stream_info(trainings.STREAM)

            async def consumed() -> bool:
                return (await bus.js.stream_info(trainings.STREAM)).state.messages == 0

            await eventually(consumed, "the queue message consumed", within=30.0)
        assert info.config.name == "TRAIN"
        after = await TrainingStore(bus).get(BOT, job.job_id)
        assert after.status == "cancelled" and after.attempts == 0


async def test_a_trainer_killed_mid_run_leaves_its_job_failed_not_running(
        nats_server: NatsServer, tiny_bot: dict[str, str], tmp_path: Path) -> None:
    config = trainer_config(nats_server, tmp_path / "a")
    env = {f"BOTFACTORY_TRAINER_{name.upper()}": str(getattr(config, name)) for name in (
        "nats_url", "work_dir", "heartbeat_s", "lost_after_s", "ack_wait_s", "metrics_port")}
    async with admin_bus(nats_server) as bus:
        log = tmp_path / "trainer.log"
        process = start_service("services.trainer", log, **env)
        try:
            wait_for_event(log, process, "trainer_started")
            job = await trainings.submit(bus, BOT, tiny_bot, LONG)
            running = await an_epoch(bus, job)
            assert running.status == "running"
            child = _training_pid(log)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
        # the training process dies with its trainer (PR_SET_PDEATHSIG)
        await eventually(lambda: not _alive(child), "the training process gone", within=10.0)
        # a reader (the gateway, the CLI) sees it failed once the heartbeat is stale
        failed = await status_of(bus, job, "failed", within=30.0)
        assert failed.error is not None and failed.error.startswith("trainer lost")
        # another trainer gets the redelivered job: it stays failed, it does not run again
        async with trainer(trainer_config(nats_server, tmp_path / "b")):
            async def consumed() -> bool:
                return (await bus.js.stream_info(trainings.STREAM)).state.messages == 0

            await eventually(consumed, "the redelivered job consumed", within=30.0)
        after = await TrainingStore(bus).get(BOT, job.job_id)
        assert after.status == "failed" and after.attempts == 1


async def test_the_sweep_of_a_running_trainer_fails_a_lost_job(
        nats_server: NatsServer, tmp_path: Path) -> None:
    async with admin_bus(nats_server) as bus:
        store = TrainingStore(bus)
        job = await trainings.submit(bus, BOT, {"bot.yml": "x"}, Options())
        # another trainer claimed it, then went silent long ago
        await store.update(BOT, job.job_id, lambda r: r.moved_to(
            "running", at_ms=1000, worker="gone", lost_after_s=3.0))
        async with trainer(trainer_config(nats_server, tmp_path)):
            async def failed() -> Training | None:
                found = await store.read(BOT, job.job_id)
                assert found is not None
                return found[0] if found[0].status == "failed" else None

            record = await eventually(failed, "the sweep failing the lost job", within=20.0)
        assert record.error is not None and "gone" in record.error


@contextlib.asynccontextmanager
async def gateway(nats_server: NatsServer) -> AsyncIterator[str]:
    server = GatewayServer(GatewayConfig(
        http_port=0, metrics_port=0, grpc_port=0, partitions=4,
        nats_url=service_url(nats_server.url, "gateway"), api_key_pepper="pepper-for-tests",
        admin_bootstrap_key=BOOTSTRAP, visitor_token_secret=VISITOR_SECRET,
        shutdown_grace_s=1.0))
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()


async def test_the_admin_api_and_train_remote_run_trainings_on_a_trainer(
        nats_server: NatsServer, tiny_bot: dict[str, str], tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {BOOTSTRAP}"}
    trainings_url = f"/v1/admin/bots/{BOT}/trainings"
    async with admin_bus(nats_server) as bus, gateway(nats_server) as base, \
            trainer(trainer_config(nats_server, tmp_path / "work")), \
            aiohttp.ClientSession(base, headers=headers) as http:
        async with http.post(trainings_url, json={}) as resp:  # nothing deployed yet
            assert resp.status == 404
            assert "no deployed definition" in (await resp.json())["detail"]
        bad = {**tiny_bot, "bot.yml": tiny_bot["bot.yml"].replace("name: tiny", "name: other")}
        async with http.post(trainings_url, json={"files": bad}) as resp:
            assert resp.status == 422 and (await resp.json())["issues"][0]["field"] == "name"
        async with http.post(trainings_url, json={"epochs": 0, "activate": "yes"}) as resp:
            assert resp.status == 400
            assert {e["field"] for e in (await resp.json())["errors"]} == {"epochs", "activate"}
        async with http.put(f"/v1/admin/bots/{BOT}/definition", json={"files": tiny_bot}) as resp:
            assert resp.status == 200
            revision = (await resp.json())["revision"]

        async with http.post(trainings_url, json={"epochs": 1}) as resp:
            assert resp.status == 202, await resp.text()
            started = await resp.json()
            assert resp.headers["Location"] == f"{trainings_url}/{started['job_id']}"
        assert started["status"] == "queued" and started["source"] == "deployed"
        assert started["definition_revision"] == revision

        # the CLI: the bot folder's files go with the request; it follows the job to the end
        folder = write_folder(tiny_bot, tmp_path / "bot")
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "botfactory", "train", str(folder), "--remote",
            "--gateway", base, "--api-key", BOOTSTRAP, "--epochs", "2", "--poll-s", "0.2",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(cli.communicate(), 180)
        assert cli.returncode == 0, err.decode()
        printed = out.decode()
        assert "queued" in printed and "epoch 1/2  loss" in printed and "epoch 2/2" in printed
        assert "published (not activated" in printed and "held out: intent accuracy" in printed

        async with http.get(f"{trainings_url}/{started['job_id']}") as resp:
            first = await resp.json()
        assert first["status"] == "succeeded" and first["model_version"]
        async with http.get(trainings_url) as resp:
            listed = (await resp.json())["trainings"]
        assert [t["status"] for t in listed] == ["succeeded", "succeeded"]
        assert listed[1]["job_id"] == started["job_id"] and listed[0]["source"] == "request"
        async with http.get(f"/v1/admin/bots/{BOT}/models") as resp:
            versions = (await resp.json())["versions"]
        assert {t["model_version"] for t in listed} <= set(versions)
        async with http.get(f"{trainings_url}/{started['job_id']}/logs") as resp:
            assert resp.status == 200 and resp.content_type == "text/plain"
            assert "fine-tuning on" in await resp.text()
        async with http.post(f"{trainings_url}/{started['job_id']}/cancel") as resp:
            assert resp.status == 409
        async with http.get(f"{trainings_url}/tr-0-0") as resp:
            assert resp.status == 404
        audit = await training_events(bus, "events.audit.>")
        assert [e["action"] for e in audit if e["action"].startswith("training.")] == [
            "training.started", "training.started"]


def _training_pid(log: Path) -> int:
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"training_process"' in line:
            return int(json.loads(line)["pid"])
    raise AssertionError("no training_process line in the trainer's log")


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
