"""The whole conversation path in one process: NLU, dialogue worker(s) and gateway on a real
nats-server, every server on port 0."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from botfactory.local.natsconf import service_url
from services.common.nats import KV_TRACKERS, Bus, connect, provision
from services.common.served import ServedAnnouncer
from services.dialogue.app import DialogueServer
from services.dialogue.config import DialogueConfig
from services.gateway.app import GatewayServer
from services.gateway.config import GatewayConfig
from services.nlu.app import NluServer
from services.nlu.config import NluConfig
from tests.support.polling import eventually

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = "bootstrap-admin-key-for-tests"
VISITOR_SECRET = "visitor-token-secret-for-tests-0123456789"


@dataclass
class Stack:
    nats_url: str
    nlu: NluServer
    gateway: GatewayServer
    dialogues: list[DialogueServer] = field(default_factory=list)
    announcers: list[tuple[ServedAnnouncer, Bus]] = field(default_factory=list)
    session: aiohttp.ClientSession | None = None
    client_key: str = ""
    # Reads transcripts (a client key only sends: docs/security.md).
    agent_key: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    def dialogue_config(self, **overrides: Any) -> DialogueConfig:
        base = DialogueConfig(nats_url=service_url(self.nats_url, "dialogue"),
                              nlu_address=f"127.0.0.1:{self.nlu.port}",
                              bots=(str(ROOT / "bots" / "banking"),), partitions=4,
                              grpc_port=0, metrics_port=0, ack_wait_s=2.0, nlu_timeout_s=2.0)
        return replace(base, **overrides)

    async def announce(self, *bots: str) -> None:
        """Announce `bots` as served (as a dialogue replica does: services/common/served.py)
        until the stack stops, so the gateway takes their messages without a dialogue that
        loads them; returns once the gateway knows."""
        assert self.gateway.served is not None
        bus = await connect(service_url(self.nats_url, "dialogue"), name="announcer")
        announcer = ServedAnnouncer(bus, lambda: list(bots), replica="tests")
        await announcer.start()
        self.announcers.append((announcer, bus))
        served = self.gateway.served
        await eventually(lambda: all(served.serves(bot) for bot in bots) or None,
                         f"the gateway knows {bots} are served")

    async def add_dialogue(self, **overrides: Any) -> DialogueServer:
        server = DialogueServer(self.dialogue_config(**overrides))
        await server.start()
        self.dialogues.append(server)
        return server

    async def post(self, conversation: str, text: str, *, key: str | None = None,
                   bot: str = "banking", wait: bool = True,
                   **body: Any) -> tuple[int, dict[str, Any]]:
        assert self.session is not None
        url = f"{self.base_url}/v1/bots/{bot}/conversations/{conversation}/messages"
        if not wait:
            url += "?wait=false"
        headers = {"Authorization": f"Bearer {key or self.client_key}"}
        async with self.session.post(url, json={"text": text, **body}, headers=headers) as resp:
            return resp.status, await resp.json()

    async def transcript(self, conversation: str, bot: str = "banking",
                         include: str = "") -> list[dict[str, Any]]:
        assert self.session is not None
        url = f"{self.base_url}/v1/bots/{bot}/conversations/{conversation}/transcript"
        if include:
            url += f"?include={include}"
        headers = {"Authorization": f"Bearer {self.agent_key}"}
        async with self.session.get(url, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        entries: list[dict[str, Any]] = body["entries"] if isinstance(body, dict) else body
        return entries

    async def bot_texts(self, conversation: str, needle: str = "",
                        within: float = 20.0) -> list[str]:
        """The conversation's bot messages once one of them contains `needle` (any with "")."""
        async def texts() -> list[str] | None:
            found = [e["text"] for e in await self.transcript(conversation) if e["type"] == "bot"]
            return found if any(needle in text for text in found) else None

        return await eventually(texts, f"a bot message with {needle!r} in {conversation}",
                                within)


async def issue_key(session: aiohttp.ClientSession, base_url: str, role: str = "client",
                    bots: tuple[str, ...] = ("banking",)) -> str:
    headers = {"Authorization": f"Bearer {BOOTSTRAP}"}
    body = {"tenant": "acme", "bots": list(bots), "role": role}
    async with session.post(f"{base_url}/v1/admin/keys", json=body, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        secret: str = (await resp.json())["secret"]
        return secret


async def provision_as_admin(nats_url: str) -> None:
    """Create the streams and buckets with the admin identity (the services may only check
    them: services/common/natsauth.py)."""
    bus = await connect(nats_url, name="provision")
    try:
        await provision(bus)
    finally:
        await bus.drain()


@contextlib.asynccontextmanager
async def running_stack(nats_url: str, model: Path, *, dialogues: int = 1,
                        sync_wait_s: float = 5.0,
                        **gateway_config: Any) -> AsyncIterator[Stack]:
    """`gateway_config`: GatewayConfig fields to override. With an admin URL (the test
    nats-server has auth on) each service connects with its own identity."""
    await provision_as_admin(nats_url)
    nlu = NluServer(NluConfig(grpc_port=0, metrics_port=0, models=(str(model),),
                              shutdown_grace_s=1.0))
    await nlu.start()
    gateway = GatewayServer(replace(GatewayConfig(
        http_port=0, metrics_port=0, grpc_port=0, nats_url=service_url(nats_url, "gateway"),
        partitions=4,
        api_key_pepper="pepper-for-tests-only", admin_bootstrap_key=BOOTSTRAP,
        visitor_token_secret=VISITOR_SECRET,
        sync_wait_s=sync_wait_s, rate_limit_rps=1000, rate_limit_burst=1000,
        shutdown_grace_s=1.0), **gateway_config))
    stack = Stack(nats_url, nlu, gateway)
    try:
        for _ in range(dialogues):
            await stack.add_dialogue()
        await gateway.start()
        async with aiohttp.ClientSession() as session:
            stack.session = session
            stack.client_key = await issue_key(session, stack.base_url)
            stack.agent_key = await issue_key(session, stack.base_url, role="agent")
            yield stack
    finally:
        for announcer, bus in stack.announcers:
            await announcer.stop()
            await bus.drain()
        await gateway.stop()
        for dialogue in stack.dialogues:
            await dialogue.stop()
        await nlu.stop()


@contextlib.asynccontextmanager
async def channel_stack(nats_url: str, model: Path, channel: str,
                        settings: dict[str, str]) -> AsyncIterator[tuple[Stack, dict[str, Any]]]:
    """`running_stack` with channels on (fast send retries) and `channel` set up for the
    banking bot through the admin API; yields the stack and the settings as the API showed
    them (tests/integration/test_channel_*.py)."""
    from services.gateway.channels.secrets import new_key

    async with running_stack(nats_url, model, channel_secrets_key=new_key(),
                             channel_send_attempts=3, channel_backoff_s=0.05,
                             channel_backoff_max_s=0.1) as running:
        assert running.session is not None
        async with running.session.put(
                f"{running.base_url}/v1/admin/bots/banking/channels/{channel}",
                headers={"Authorization": f"Bearer {BOOTSTRAP}"}, json=settings) as resp:
            assert resp.status == 200, await resp.text()
            shown: dict[str, Any] = await resp.json()
        yield running, shown


async def tracker_record(nats_url: str, bot: str, conversation: str) -> dict[str, Any]:
    """The dialogue's stored record of a conversation (KV `trackers`: the tracker, the turn's
    outbox)."""
    bus = await connect(nats_url, name="test")
    try:
        entry = await (await bus.kv(KV_TRACKERS)).get(f"{bot}.{conversation}")
        assert entry.value is not None
        record: dict[str, Any] = json.loads(entry.value)
        return record
    finally:
        await bus.drain()
