"""End-to-end load: the local stack (nats-server, NLU, dialogue, gateway as separate processes)
driven through the HTTP API by a light asyncio generator, for a bounded time.

    python benchmarks/e2e_load.py [--quick] [--users 50] [--connections 10] [--duration 30]

Shapes: `users` (N conversations, each waits for the reply then thinks ~Exp(200 ms)) and
`saturation` (C connections sending back to back). Reports p50/p99 latency, messages/s,
errors, lost replies (no complete reply), duplicated and out-of-order replies, and the
generator's own CPU share; writes benchmarks/results/e2e_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import resource
import secrets
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.nlu_latency import percentile  # noqa: E402
from botfactory.local.nats_server import NatsServer  # noqa: E402
from botfactory.local.processes import start_service, wait_for_event  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "e2e_load.json"
# Intents whose flows answer at once (no workflow), so every message has a synchronous reply.
TEXTS = ["hello", "hi there", "good morning", "what are your opening hours?",
         "when are you open on saturday", "what are the fees for a transfer",
         "how much does a card cost", "thanks a lot", "thank you", "what can you do?",
         "help me please", "bye", "goodbye", "are you open on sundays", "do you charge fees"]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0

    def merge(self, other: Tally) -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.out_of_order += other.out_of_order


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def send(session: Any, url: str, key: str, text: str, message_id: str,
               tally: Tally) -> None:
    started = time.perf_counter()
    try:
        async with session.post(url, json={"text": text, "message_id": message_id},
                                headers={"Authorization": f"Bearer {key}"}) as response:
            body = await response.json()
            status = response.status
    except Exception:  # connection errors count as errors, the run goes on
        tally.errors += 1
        return
    tally.latencies.append(time.perf_counter() - started)
    if status not in (200, 202):
        tally.errors += 1
        return
    replies = body.get("replies", [])
    if status == 202 or not body.get("complete") or not replies:
        tally.lost += 1
    ids = [r["message_id"] for r in replies]
    tally.duplicated += len(ids) - len(set(ids))
    tally.out_of_order += sum(1 for r in replies if r.get("in_reply_to") != message_id)
    tally.out_of_order += sum(1 for a, b in itertools.pairwise(ids)
                              if int(a.rsplit(":", 1)[1]) > int(b.rsplit(":", 1)[1]))


async def user(session: Any, base: str, key: str, name: str, deadline: float, think: float,
               rng: random.Random) -> Tally:
    tally = Tally()
    url = f"{base}/v1/bots/banking/conversations/{name}/messages"
    n = 0
    while time.perf_counter() < deadline:
        await send(session, url, key, rng.choice(TEXTS), f"{name}-{n}", tally)
        n += 1
        if think > 0:
            await asyncio.sleep(rng.expovariate(1 / think))
    return tally


async def shape(base: str, key: str, concurrency: int, duration: float, think: float,
                label: str) -> dict[str, Any]:
    import aiohttp

    rng = random.Random(7)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        deadline = began + duration
        tallies = await asyncio.gather(*(
            user(session, base, key, f"{label}{secrets.token_hex(3)}{i}", deadline, think,
                 random.Random(rng.random())) for i in range(concurrency)))
        elapsed = time.perf_counter() - began
    total = Tally()
    for tally in tallies:
        total.merge(tally)
    ms = [v * 1000 for v in total.latencies] or [0.0]
    return {"messages": len(total.latencies), "messages_per_s": round(len(ms) / elapsed, 1),
            "p50_ms": round(percentile(ms, 50), 2), "p99_ms": round(percentile(ms, 99), 2),
            "errors": total.errors, "lost": total.lost, "duplicated": total.duplicated,
            "out_of_order": total.out_of_order, "duration_s": round(elapsed, 1)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LocalStack:
    """nats-server + NLU + dialogue + gateway as child processes on free ports."""

    def __init__(self, workdir: Path, model: Path) -> None:
        self.workdir = workdir
        self.model = model
        self.nats = NatsServer(workdir / "nats")
        self.processes: list[Any] = []
        self.base_url = ""
        self.admin_key = secrets.token_urlsafe(24)

    def start(self) -> None:
        self.nats.start()
        nlu_port, http_port = free_port(), free_port()
        self._start("nlu", "services.nlu", "nlu_started", BOTFACTORY_NLU_MODELS=str(self.model),
                    BOTFACTORY_NLU_GRPC_PORT=str(nlu_port), BOTFACTORY_NLU_METRICS_PORT="0")
        self._start("dialogue", "services.dialogue", "dialogue_started",
                    BOTFACTORY_DIALOGUE_NATS_URL=self.nats.url,
                    BOTFACTORY_DIALOGUE_NLU_ADDRESS=f"127.0.0.1:{nlu_port}",
                    BOTFACTORY_DIALOGUE_BOTS=str(ROOT / "bots" / "banking"),
                    BOTFACTORY_DIALOGUE_GRPC_PORT="0", BOTFACTORY_DIALOGUE_METRICS_PORT="0")
        self._start("gateway", "services.gateway", "gateway_started",
                    BOTFACTORY_GATEWAY_NATS_URL=self.nats.url,
                    BOTFACTORY_GATEWAY_HTTP_PORT=str(http_port),
                    BOTFACTORY_GATEWAY_METRICS_PORT="0", BOTFACTORY_GATEWAY_GRPC_PORT="0",
                    BOTFACTORY_GATEWAY_API_KEY_PEPPER=secrets.token_urlsafe(24),
                    BOTFACTORY_GATEWAY_ADMIN_BOOTSTRAP_KEY=self.admin_key,
                    BOTFACTORY_GATEWAY_RATE_LIMIT_RPS="100000",
                    BOTFACTORY_GATEWAY_RATE_LIMIT_BURST="100000")
        self.base_url = f"http://127.0.0.1:{http_port}"

    def _start(self, name: str, module: str, ready_event: str, **env: str) -> None:
        log = self.workdir / f"{name}.log"
        process = start_service(module, log, **env)
        self.processes.append(process)
        wait_for_event(log, process, ready_event, timeout=120)

    def pids(self) -> list[int]:
        assert self.nats.process is not None
        return [self.nats.process.pid, *(p.pid for p in self.processes)]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            process.wait(timeout=30)
        self.nats.stop()


async def client_key(base_url: str, admin_key: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.post(f"{base_url}/v1/admin/keys",
                            json={"tenant": "bench", "bots": ["banking"], "role": "client"},
                            headers={"Authorization": f"Bearer {admin_key}"}) as response:
        return str((await response.json())["secret"])


async def drive(stack: LocalStack, users: int, connections: int,
                duration: float) -> dict[str, Any]:
    key = await client_key(stack.base_url, stack.admin_key)
    await shape(stack.base_url, key, 4, 2.0, 0.0, "warm")
    results: dict[str, Any] = {}
    gen_cpu, wall, stack_cpu = 0.0, 0.0, 0.0
    for label, concurrency, think in (("users", users, 0.2), ("saturation", connections, 0.0)):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        stack0 = sum(cpu_seconds(pid) for pid in stack.pids())
        results[label] = await shape(stack.base_url, key, concurrency, duration, think, label)
        gen_cpu += time.process_time() - cpu0
        wall += time.perf_counter() - wall0
        stack_cpu += sum(cpu_seconds(pid) for pid in stack.pids()) - stack0
        results[label]["conversations" if label == "users" else "connections"] = concurrency
        print(f"{label:>10}: " + ", ".join(f"{k}={v}" for k, v in results[label].items()),
              flush=True)
    results["generator_cpu_share"] = round(gen_cpu / max(gen_cpu + stack_cpu, 1e-9), 3)
    results["generator_cpu_s"] = round(gen_cpu, 2)
    results["stack_cpu_s"] = round(stack_cpu, 2)
    return results


def totals(results: dict[str, Any]) -> dict[str, int]:
    shapes: Sequence[dict[str, Any]] = (results["users"], results["saturation"])
    return {k: sum(int(s[k]) for s in shapes)
            for k in ("errors", "lost", "duplicated", "out_of_order")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="15 s per shape")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per shape")
    parser.add_argument("--model", type=Path, default=ROOT / ".botfactory" / "models" / "banking")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    duration = 15.0 if args.quick else args.duration
    if not (args.model / "metadata.json").is_file():
        from botfactory.local.stack import prepare_model

        prepare_model(ROOT / "bots" / "banking", args.model.parent)
    workdir = ROOT / ".botfactory" / "bench" / f"e2e-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    stack = LocalStack(workdir, args.model)
    try:
        stack.start()
        results = asyncio.run(drive(stack, args.users, args.connections, duration))
    finally:
        stack.stop()
    results.update(totals(results))
    results.update(benchmark="e2e_load", quick=args.quick, cpus=os.cpu_count(),
                   created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    print(f"errors={results['errors']} lost={results['lost']} "
          f"duplicated={results['duplicated']} out_of_order={results['out_of_order']} "
          f"generator_cpu_share={results['generator_cpu_share']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
