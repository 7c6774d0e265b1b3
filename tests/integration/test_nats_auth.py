"""NATS authentication and per-service permissions (services/common/natsauth.py) on a real
nats-server: each identity can do its service's work through the real code paths, and is
refused what it must not do; the local config is one nats-server accepts."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client

from botfactory.local.nats_server import NatsServer, nats_server_binary
from botfactory.local.natsconf import server_conf
from services.common import modelstore
from services.common.nats import (
    KV_BOTS,
    KV_RPA_RUNS,
    Bus,
    ProvisioningRefused,
    connect,
    inbox_prefix,
    provision,
)
from tests.support.stack import provision_as_admin, running_stack

VIOLATION = "Permissions Violation"


class Client_:
    """A raw connection that records the errors the server reports (permission violations)."""

    def __init__(self, nc: Client, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors

    async def refused(self, what: str) -> bool:
        """Whether the server reported a violation mentioning `what` (within 2 s)."""
        for _ in range(40):
            if any(what.lower() in e.lower() for e in self.errors):
                return True
            await asyncio.sleep(0.05)
        return False


@pytest.fixture
async def as_user(nats_server: NatsServer) -> AsyncIterator[Callable[[str],
                                                                       Awaitable[Client_]]]:
    await provision_as_admin(nats_server.url)
    opened: list[Client] = []

    async def open_(user: str) -> Client_:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(nats_server.url_for(user), error_cb=on_error,
                                allow_reconnect=False, inbox_prefix=inbox_prefix(user).encode())
        opened.append(nc)
        return Client_(nc, errors)

    yield open_
    for nc in opened:
        await nc.close()


def violations(nats_server: NatsServer) -> list[str]:
    log = nats_server.workdir / "nats-server.log"
    return [line for line in log.read_text().splitlines() if VIOLATION in line]


async def test_the_conversation_path_runs_with_each_service_identity(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    trainer = await connect(nats_server.url_for("trainer"), name="trainer")
    try:
        await provision_as_admin(nats_server.url)
        ref = await modelstore.publish(trainer, tiny_banking_model)  # upload + activate
    finally:
        await trainer.drain()
    nlu = await connect(nats_server.url_for("nlu"), name="nlu")
    try:
        assert await modelstore.active_version(nlu, ref.bot) == ref.version
        fetched = await modelstore.fetch(nlu, ref, nats_server.workdir / "cache")
        assert (fetched / "metadata.json").is_file()
    finally:
        await nlu.drain()
    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        status, body = await stack.post("auth1", "/greet", message_id="auth1-a")
        assert status == 200 and body["replies"], body
        assert [e["type"] for e in await stack.transcript("auth1")] == ["user", "bot"]
    assert violations(nats_server) == []


async def test_gateway_cannot_reply_as_the_bot_nor_read_workflow_runs(
        as_user: Callable[[str], Awaitable[Client_]]) -> None:
    gateway = await as_user("gateway")
    await gateway.nc.publish("conv.out.banking.c1", b"forged")
    await gateway.nc.flush()
    assert await gateway.refused('publish to "conv.out.banking.c1"')
    runs = await gateway.nc.jetstream(timeout=1.0).key_value(KV_RPA_RUNS)
    with pytest.raises(nats.errors.TimeoutError):
        await runs.get("any-run")
    assert await gateway.refused("KV_rpa_runs")
    with pytest.raises(nats.errors.TimeoutError):
        await gateway.nc.jetstream(timeout=1.0).delete_stream("CONV")
    assert await gateway.refused("$JS.API.STREAM.DELETE.CONV")


async def test_nlu_cannot_post_user_messages_nor_listen_to_conversations(
        as_user: Callable[[str], Awaitable[Client_]]) -> None:
    nlu = await as_user("nlu")
    await nlu.nc.publish("conv.in.0.banking.c1", b"forged")
    await nlu.nc.subscribe("conv.out.>")
    await nlu.nc.flush()
    assert await nlu.refused('publish to "conv.in.0.banking.c1"')
    assert await nlu.refused('subscription to "conv.out.>"')
    bots = await nlu.nc.jetstream(timeout=1.0).key_value(KV_BOTS)
    with pytest.raises(nats.errors.TimeoutError):
        await bots.put("model.banking", b"evil")
    assert await nlu.refused("$KV.bots.model.banking")


async def test_an_identity_reads_only_its_own_replies(
        as_user: Callable[[str], Awaitable[Client_]]) -> None:
    """Replies (JetStream API answers, publish acks, the gateway's reply inboxes) go to
    `_INBOX_<user>.…`: no service can listen to another's."""
    nlu = await as_user("nlu")
    for subject in ("_INBOX.>", "_INBOX_gateway.>", "_INBOX_dialogue.>"):
        await nlu.nc.subscribe(subject)
    await nlu.nc.flush()
    for subject in ("_INBOX.>", "_INBOX_gateway.>", "_INBOX_dialogue.>"):
        assert await nlu.refused(f'subscription to "{subject}"'), subject
    # ... while its own requests get their answers
    assert (await nlu.nc.jetstream(timeout=2.0).stream_info("CONV")).config.name == "CONV"


async def test_services_cannot_create_streams_and_bad_passwords_are_refused(
        nats_server: NatsServer) -> None:
    """Nothing provisioned: a service stops with a clear error; only admin provisions."""
    dialogue = await connect(nats_server.url_for("dialogue"), name="dialogue")
    try:
        dialogue.js = dialogue.nc.jetstream(timeout=1.0)
        with pytest.raises(ProvisioningRefused, match="admin identity"):
            await provision(dialogue)
    finally:
        await dialogue.drain()
    admin = await connect(nats_server.url, name="admin")
    try:
        await provision(admin)
        assert (await admin.js.stream_info("CONV")).config.name == "CONV"
    finally:
        await admin.drain()
    wrong = nats_server.url_for("gateway").replace("gateway:", "gateway:x", 1)
    with pytest.raises((nats.errors.Error, ConnectionError, OSError)):
        await Bus.drain(await connect(wrong, name="intruder", connect_timeout=1.0))


def test_local_config_is_accepted_by_nats_server(tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(server_conf("a" * 48))
    result = subprocess.run([nats_server_binary(), "-t", "-c", str(conf)], capture_output=True,
                            text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
