"""The bot-version phase of the rollout benchmark (docs/versions.md): whole conversations
through the gateway, the dialogue and the NLU while the prod environment is promoted to another
bot version, canaried, rolled back. Counts failed turns (an HTTP error, an incomplete turn, a
"not available" / "went wrong" / "try again" reply) and turns answered by another version
than the one their conversation started on (each turn sends `/greet`, whose text names the
version).

Used by benchmarks/rollout.py (`--bot-versions`) and by tests/integration/test_versions_bench.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BANKING = ROOT / "bots" / "banking"
BOOTSTRAP = "bench-bootstrap-admin-key-0123456789"
GREETINGS_A = ("Hello! I'm your banking assistant. What can I do for you?",
               "Hi there! How can I help with your banking today?")
GREETINGS_B = ("Version B here. What can I do for you?", "Version B, how can I help today?")
FAILED_TEXTS = ("not available", "went wrong", "try again")


def side(text: str) -> str:
    """Which version said `text` ("A", "B", "" for neither)."""
    return "A" if text in GREETINGS_A else "B" if text in GREETINGS_B else ""


@dataclass
class Traffic:
    """Clients, each running conversations of `turns` turns one after the other."""

    post: Callable[[str], Awaitable[tuple[int, dict[str, Any]]]]
    concurrency: int
    turns: int = 6
    failures: list[str] = field(default_factory=list)
    switched: int = 0  # turns answered by another version than their conversation's first
    turns_done: int = 0
    latencies: list[float] = field(default_factory=list)
    started_on: dict[str, int] = field(default_factory=dict)  # first-turn version → count
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(n)) for n in range(self.concurrency)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _client(self, n: int) -> None:
        conversation = 0
        while not self._stop.is_set():
            conversation += 1
            await self._conversation(f"bench-{n}-{conversation}")

    async def _conversation(self, conversation: str) -> None:
        first = ""
        for _ in range(self.turns):
            started = time.perf_counter()
            try:
                status, body = await self.post(conversation)
            except Exception as exc:  # a connection error is a failed turn too
                self.failures.append(repr(exc))
                continue
            self.latencies.append(time.perf_counter() - started)
            self.turns_done += 1
            replies = body.get("replies") or []
            text = str(replies[0].get("text", "")) if replies else ""
            if status != 200 or not body.get("complete", False) or not text \
                    or any(t in text for t in FAILED_TEXTS):
                self.failures.append(f"{status}: {text or body}")
                continue
            said = side(text)
            if not first:
                first = said
                self.started_on[said] = self.started_on.get(said, 0) + 1
            elif said != first:
                self.switched += 1


@dataclass
class Stack:
    base_url: str
    admin: Callable[[str, str, Any], Awaitable[tuple[int, Any]]]
    post: Callable[[str], Awaitable[tuple[int, dict[str, Any]]]]


@contextlib.asynccontextmanager
async def stack(nats_url: str, model_dir: Path, work: Path) -> AsyncIterator[Stack]:
    """NLU, one dialogue and a gateway on `nats_url`, the banking bot with `model_dir`."""
    import aiohttp

    from services.dialogue.app import DialogueServer
    from services.dialogue.config import DialogueConfig
    from services.gateway.app import GatewayServer
    from services.gateway.config import GatewayConfig
    from services.nlu.app import NluServer
    from services.nlu.config import NluConfig

    nlu = NluServer(NluConfig(grpc_port=0, metrics_port=0, models=(str(model_dir),),
                              nats_url=nats_url, model_cache_dir=work / "nlu-cache",
                              shutdown_grace_s=1.0))
    await nlu.start()
    dialogue = DialogueServer(DialogueConfig(
        nats_url=nats_url, nlu_address=f"127.0.0.1:{nlu.port}", bots=(str(BANKING),),
        partitions=4, grpc_port=0, metrics_port=0, nlu_timeout_s=5.0))
    gateway = GatewayServer(replace(GatewayConfig(), http_port=0, metrics_port=0, grpc_port=0,
                                    nats_url=nats_url, partitions=4,
                                    api_key_pepper="bench-pepper-0123456789",
                                    admin_bootstrap_key=BOOTSTRAP, sync_wait_s=10.0,
                                    rate_limit_rps=1e6, rate_limit_burst=1_000_000,
                                    shutdown_grace_s=1.0))
    try:
        await dialogue.start()
        await gateway.start()
        base = f"http://127.0.0.1:{gateway.port}"
        async with aiohttp.ClientSession() as session:
            async def admin(method: str, path: str, body: Any = None) -> tuple[int, Any]:
                async with session.request(method, f"{base}{path}", json=body, headers={
                        "Authorization": f"Bearer {BOOTSTRAP}"}) as resp:
                    return resp.status, await resp.json()

            status, key = await admin("POST", "/v1/admin/keys", {
                "tenant": "bench", "bots": ["banking"], "role": "client"})
            assert status == 201, key
            headers = {"Authorization": f"Bearer {key['secret']}"}

            async def post(conversation: str) -> tuple[int, dict[str, Any]]:
                url = f"{base}/v1/bots/banking/conversations/{conversation}/messages"
                async with session.post(url, json={"text": "/greet"}, headers=headers) as resp:
                    return resp.status, await resp.json()

            yield Stack(base, admin, post)
    finally:
        await gateway.stop()
        await dialogue.stop()
        await nlu.stop()


async def create_versions(bot: Stack, model_version: str) -> tuple[str, str]:
    """Versions A (the demo bot) and B (its greetings reworded) with the same model."""
    from services.common.definitions import read_folder

    files = read_folder(BANKING)
    responses = files["domain/responses.yml"]
    for old, new in zip(GREETINGS_A, GREETINGS_B, strict=True):
        responses = responses.replace(old, new)
    ids = []
    for version_files in (files, {**files, "domain/responses.yml": responses}):
        status, body = await bot.admin("POST", "/v1/admin/bots/banking/versions",
                                       {"files": version_files, "model": model_version})
        assert status in (200, 201), body
        ids.append(body["id"])
    return ids[0], ids[1]


async def run_phase(nats_url: str, model_dir: Path, work: Path, *, concurrency: int,
                    seconds: float) -> dict[str, Any]:
    """Promote, canary, end the canary, roll back prod under conversation load."""
    from services.common import modelstore
    from services.common.nats import connect, provision

    bus = await connect(nats_url, name="bench-versions")
    try:
        await provision(bus)
        model_version = (await modelstore.upload(bus, model_dir)).version
    finally:
        await bus.drain()
    async with stack(nats_url, model_dir, work) as bot:
        a, b = await create_versions(bot, model_version)
        env = "/v1/admin/bots/banking/environments/prod"
        assert (await bot.admin("POST", f"{env}/promote", {"version": a}))[0] == 200
        traffic = Traffic(bot.post, concurrency)
        traffic.start()
        changes = []
        steps: list[tuple[str, str, str, Any]] = [
            ("promote", "POST", f"{env}/promote", {"version": b}),
            ("canary 0.5", "PUT", f"{env}/canary", {"version": a, "share": 0.5}),
            ("end canary", "DELETE", f"{env}/canary", None),
            ("rollback", "POST", f"{env}/rollback", None)]
        try:
            await asyncio.sleep(seconds / 4)
            for name, method, path, body in steps:
                started = time.perf_counter()
                status, answer = await bot.admin(method, path, body)
                assert status == 200, answer
                changes.append({"step": name, "answered_s": round(
                    time.perf_counter() - started, 3)})
                await asyncio.sleep(seconds / 4)
        finally:
            await traffic.stop()
    latencies = sorted(traffic.latencies)
    return {
        "turns": traffic.turns_done, "failed_turns": len(traffic.failures),
        "failures": traffic.failures[:5],
        "turns_on_another_version": traffic.switched,
        "conversations_started_on": traffic.started_on, "changes": changes,
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
    }
