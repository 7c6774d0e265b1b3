"""Rollout benchmark: Parse latency with no rollout, in shadow mode and as a 50% canary, and
failed Parse calls while a version is activated, canaried, promoted and rolled back under load;
then failed conversation turns while a bot version is promoted, canaried and rolled back
(gateway, dialogue and NLU; benchmarks/bot_versions.py, docs/versions.md).

    python benchmarks/rollout.py [--quick] [--model DIR] [--concurrency N] [--no-bot-versions]

Runs a nats-server and the NLU service (in this process, clients on the same event loop) with
the model DIR (default .botfactory/models/banking, `botfactory train` it first) as the active
version and, as candidate, a copy with its intent labels rotated (a different version that
disagrees on every text). Prints the figures; writes benchmarks/results/rollout.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.nlu_latency import summary  # noqa: E402
from benchmarks.paths import shown  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "rollout.json"
TEXTS = ["what is my balance", "send 50 euros to anna", "hello there", "block my card please",
         "i want to talk to a human", "how much did i spend last month"]


def rotated_copy(model_dir: Path, target: Path) -> Path:
    """Another version of the same bot: intent labels rotated, version recomputed."""
    from services.common.modelformat import content_version

    shutil.copytree(model_dir, target)
    labels = json.loads((target / "labels.json").read_text())
    labels["intents"] = labels["intents"][1:] + labels["intents"][:1]
    (target / "labels.json").write_text(json.dumps(labels))
    meta = json.loads((target / "metadata.json").read_text())
    meta["version"] = content_version(target)
    (target / "metadata.json").write_text(json.dumps(meta))
    return target


class Load:
    """Clients parsing in a loop, each over its own conversations."""

    def __init__(self, stub: Any, bot: str, concurrency: int) -> None:
        self.stub, self.bot, self.concurrency = stub, bot, concurrency
        self.latencies: list[float] = []
        self.variants: dict[str, int] = {}
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._client(n)) for n in range(self.concurrency)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _client(self, n: int) -> None:
        import grpc

        from services.common.pb.botfactory.v1 import nlu_pb2

        turn = 0
        while not self._stop.is_set():
            turn += 1
            request = nlu_pb2.ParseRequest(bot_id=self.bot, text=TEXTS[turn % len(TEXTS)],
                                           conversation_id=f"c{n}-{turn % 50}")
            started = time.perf_counter()
            try:
                reply = await self.stub.Parse(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                self.failures.append(exc.code().name)
                continue
            self.latencies.append(time.perf_counter() - started)
            self.variants[reply.variant] = self.variants.get(reply.variant, 0) + 1


async def phase(load: Load, seconds: float) -> dict[str, Any]:
    load.latencies, load.variants, load.failures = [], {}, []
    started = time.perf_counter()
    load.start()
    await asyncio.sleep(seconds)
    await load.stop()
    elapsed = time.perf_counter() - started
    return {**summary(load.latencies), "parses_per_s": round(len(load.latencies) / elapsed, 1),
            "variants": dict(load.variants), "failed": len(load.failures)}


def serves(server: Any, bot: str, version: str) -> bool:
    entry = server.registry.get(bot)
    return entry is not None and bool(entry.model.version == version)


async def run(model_dir: Path, concurrency: int, seconds: float,
              bot_versions: bool = True) -> dict[str, Any]:
    import grpc

    from botfactory.local.nats_server import NatsServer
    from services.common import modelstore
    from services.common.modelstore import Activation, ModelRef, Rollout
    from services.common.nats import connect, provision
    from services.common.pb.botfactory.v1 import nlu_pb2_grpc
    from services.nlu.app import NluServer
    from services.nlu.config import NluConfig

    work = Path(tempfile.mkdtemp(prefix="bf-rollout-"))
    nats = NatsServer(work / "nats")
    nats.start()
    bus = await connect(nats.url, name="bench")
    await provision(bus)
    active = await modelstore.publish(bus, model_dir)
    candidate = await modelstore.upload(bus, rotated_copy(model_dir, work / "candidate"))
    server = NluServer(NluConfig(grpc_port=0, metrics_port=0, nats_url=nats.url,
                                 model_cache_dir=work / "cache", shutdown_grace_s=2.0))
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    load = Load(nlu_pb2_grpc.NluServiceStub(channel), active.bot, concurrency)

    async def until(condition: Any, within: float = 120.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if condition():
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("the NLU service did not apply the change")

    def sample(name: str, **labels: str) -> float:
        return server.metrics.registry.get_sample_value(name, labels) or 0.0

    try:
        results: dict[str, Any] = {"baseline": await phase(load, seconds)}
        shadow = Rollout(candidate=candidate.version, mode="shadow")
        await modelstore.start_rollout(bus, active.bot, shadow)
        await until(lambda: server.rollouts.shadowing(active.bot))
        results["shadow"] = await phase(load, seconds)
        bot = active.bot
        results["shadow"]["comparisons"] = sample("botfactory_nlu_shadow_comparisons_total",
                                                  bot=bot, agree="false") + sample(
            "botfactory_nlu_shadow_comparisons_total", bot=bot, agree="true")
        results["shadow"]["dropped"] = sample("botfactory_nlu_shadow_dropped_total", bot=bot)
        canary = Rollout(candidate=candidate.version, mode="canary", share=0.5)
        await modelstore.start_rollout(bus, bot, canary)
        await until(lambda: (p := server.rollouts.get(bot)) is not None and p.mode == "canary")
        results["canary_0.5"] = await phase(load, seconds)

        load.latencies, load.variants, load.failures = [], {}, []
        load.start()
        changes = []
        steps: list[tuple[str, Callable[[], Awaitable[Activation]]]] = [
            ("promote", lambda: modelstore.promote(bus, bot, actor="bench")),
            ("rollback", lambda: modelstore.rollback(bus, bot, actor="bench")),
            ("activate", lambda: modelstore.activate(bus, ModelRef(bot, candidate.version),
                                                     actor="bench")),
            ("rollback", lambda: modelstore.rollback(bus, bot, actor="bench"))]
        for step, action in steps:
            started = time.perf_counter()
            version = (await action()).version
            await until(functools.partial(serves, server, bot, version))
            changes.append({"step": step, "applied_s": round(time.perf_counter() - started, 3)})
            await asyncio.sleep(seconds / 4)
        await load.stop()
        results["swaps_under_load"] = {"changes": changes, "parses": len(load.latencies),
                                       "failed": len(load.failures),
                                       **summary(load.latencies)}
        if bot_versions:
            from benchmarks.bot_versions import run_phase

            results["bot_versions_under_load"] = await run_phase(
                nats.url, model_dir, work, concurrency=concurrency, seconds=seconds)
        return results
    finally:
        await channel.close()
        await server.stop()
        await bus.drain()
        nats.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases")
    parser.add_argument("--model", type=Path, default=ROOT / ".botfactory" / "models" / "banking")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-bot-versions", action="store_true",
                        help="skip the bot-version phase (whole conversations)")
    args = parser.parse_args()
    if not (args.model / "metadata.json").is_file():
        print(f"error: no model at {args.model}; run `botfactory train bots/banking --out "
              f"{args.model}` first", file=sys.stderr)
        return 2
    seconds = 3.0 if args.quick else 15.0
    results = asyncio.run(run(args.model, args.concurrency, seconds,
                              bot_versions=not args.no_bot_versions))
    for name, figures in results.items():
        print(f"{name:18} " + json.dumps(figures))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "rollout", "quick": args.quick, "concurrency": args.concurrency,
        "phase_s": seconds, "model": shown(args.model), "machine": platform.platform(),
        "cpus": os.cpu_count(), "results": results}, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
