"""RPA runner throughput benchmark: a 3-step HTTP workflow (hold, transfer, confirm; the hold
released by compensation when the transfer is refused) against the demo bank, on a real
nats-server, with the runner(s) and the bank as separate processes.

    python benchmarks/rpa_throughput.py [--quick] [--runs N] [--runners R] [--window W]

Phases: (1) throughput: N runs kept W in flight (runs/s, p50/p99 latency from publishing the
job to receiving the result); (2) unloaded latency (one run at a time); (3) scheduling overhead
per step, from the runs' checkpoints: (run wall time - time inside the step executors) / steps;
(4) crash: 500 runs in flight over two runners (the bank made slow), one runner killed with
SIGKILL mid-way: every run must complete or compensate and the bank must see each side effect
exactly once. Writes benchmarks/results/rpa_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.stack import BANK_TOKEN, start_bank  # noqa: E402
from botfactory.local.nats_server import NatsServer  # noqa: E402
from botfactory.local.processes import start_service, wait_for_event  # noqa: E402
from services.common.nats import KV_RPA_RUNS, Bus, connect, provision  # noqa: E402
from services.rpa_runner.jobs import Job, encode_job, job_subject  # noqa: E402
from services.rpa_runner.state import RunStore  # noqa: E402
from tests.support.rpa import RELEASE, hold, write_test_bot  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "rpa_throughput.json"
BOT = "bench"
TOKEN = BANK_TOKEN
STEPS = 3
WORKFLOW = """
name: pay
inputs: {to: string}
outputs: {reference: steps.transfer.outputs.id}
steps:""" + hold("1", account="business") + RELEASE + """\
  - id: transfer
    http:
      method: POST
      url: "{{ settings.bank }}/transfers"
      headers: {Authorization: "Bearer {{ secrets.CORE_TOKEN }}"}
      json: {from_account: business, amount: 1, recipient: "{{ inputs.to }}",
             reference: "{{ run.id }}"}
      expect: [201]
      outputs: {id: body.transfer_id}
    timeout: 30s
    retry: {max_attempts: 3, initial_interval: 100ms, non_retryable_statuses: [422]}
  - id: confirm
    http:
      method: POST
      url: "{{ settings.bank }}/transfers/{{ steps.transfer.outputs.id }}/confirm"
      headers: {Authorization: "Bearer {{ secrets.CORE_TOKEN }}"}
"""


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def write_bench_bot(root: Path, bank_url: str) -> Path:
    """The bench bot: the tests' minimal bot folder with the `pay` workflow."""
    return write_test_bot(root, {"pay": WORKFLOW}, name=BOT, settings={"bank": bank_url})


class Driver:
    """Publishes jobs and collects results (events.rpa.finished.bench)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.sent: dict[str, float] = {}
        self.done: dict[str, tuple[float, str]] = {}
        self.arrived = asyncio.Event()

    async def start(self) -> None:
        async def collect(msg: Any) -> None:
            body = json.loads(msg.data)
            self.done[body["run_id"]] = (time.perf_counter(), body["status"])
            self.arrived.set()

        await self.bus.nc.subscribe(f"events.rpa.finished.{BOT}", cb=collect)

    async def send(self, recipient: str = "anna") -> str:
        run_id = uuid.uuid4().hex
        job = Job(run_id, BOT, workflow="pay", inputs={"to": recipient})
        self.sent[run_id] = time.perf_counter()
        await self.bus.js.publish(job_subject(BOT), encode_job(job),
                                  headers={"Nats-Msg-Id": run_id})
        return run_id

    async def wait_all(self, run_ids: Sequence[str], limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while any(r not in self.done for r in run_ids):
            if time.monotonic() > deadline:
                missing = sum(r not in self.done for r in run_ids)
                raise RuntimeError(f"{missing} runs did not finish within {limit_s:.0f}s")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), 0.5)

    async def closed_loop(self, count: int, window: int) -> list[str]:
        """`count` runs, at most `window` in flight."""
        slots = asyncio.Semaphore(window)
        ids: list[str] = []

        async def one() -> None:
            async with slots:
                run_id = await self.send()
                ids.append(run_id)
                await self.wait_all([run_id], 120)

        await asyncio.gather(*(one() for _ in range(count)))
        return ids

    def latencies_ms(self, run_ids: Sequence[str]) -> list[float]:
        return [(self.done[r][0] - self.sent[r]) * 1000 for r in run_ids]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(values, 50), 3), "p99_ms": round(percentile(values, 99), 3),
            "mean_ms": round(statistics.fmean(values), 3), "n": len(values)}


async def step_overhead(bus: Bus, run_ids: set[str]) -> dict[str, float]:
    """Per run: (wall time in the runner - time inside step executors) / steps."""
    runs = [r for r in await RunStore(await bus.kv(KV_RPA_RUNS)).all() if r.run_id in run_ids]
    overheads, inside = [], []
    for run in runs:
        if run.finished is None or not run.history:
            continue
        executing = sum(float(h["ms"]) for h in run.history)
        wall = (run.finished - run.created) * 1000
        overheads.append((wall - executing) / len(run.history))
        inside.append(executing / len(run.history))
    return {"step_overhead_p50_ms": round(percentile(overheads, 50), 3),
            "step_overhead_p99_ms": round(percentile(overheads, 99), 3),
            "step_executor_p50_ms": round(percentile(inside, 50), 3), "runs": len(overheads)}


def runner_env(nats_url: str, bot: Path, bank: str, concurrency: int,
               ack_wait: float) -> dict[str, str]:
    return {"BOTFACTORY_RPA_NATS_URL": nats_url, "BOTFACTORY_RPA_BOTS": str(bot),
            "BOTFACTORY_RPA_SETTINGS": f"bank={bank}", "BOTFACTORY_RPA_GRPC_PORT": "0",
            "BOTFACTORY_RPA_METRICS_PORT": "0", "BOTFACTORY_RPA_LOG_LEVEL": "WARNING",
            "BOTFACTORY_RPA_CONCURRENCY": str(concurrency),
            "BOTFACTORY_RPA_ACK_WAIT_S": str(ack_wait), "BOTFACTORY_SECRET_CORE_TOKEN": TOKEN}


def start_runners(tmp: Path, count: int, tag: str, env: dict[str, str]
                  ) -> list[subprocess.Popen[bytes]]:
    processes = []
    for index in range(count):
        log = tmp / f"runner-{tag}-{index}.log"
        env = {**env, "BOTFACTORY_RPA_LOG_LEVEL": "INFO"}
        process = start_service("services.rpa_runner", log, **env)
        wait_for_event(log, process, "rpa_runner_started", timeout=120)
        processes.append(process)
    return processes


def stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def bank_call(bank: str, method: str, path: str, body: Any = None) -> Any:
    import aiohttp

    async with aiohttp.ClientSession() as session, \
            session.request(method, f"{bank}{path}", json=body) as response:
        return await response.json()


async def throughput(args: argparse.Namespace, tmp: Path, nats_url: str, bot: Path,
                     bank: str) -> dict[str, Any]:
    env = runner_env(nats_url, bot, bank, args.concurrency, 30.0)
    runners = start_runners(tmp, args.runners, "t", env)
    bus = await connect(nats_url, name="bench")
    try:
        driver = Driver(bus)
        await driver.start()
        await driver.closed_loop(args.warmup, args.window)
        started = time.perf_counter()
        ids = await driver.closed_loop(args.runs, args.window)
        elapsed = time.perf_counter() - started
        loaded = summary(driver.latencies_ms(ids))
        unloaded_ids = await driver.closed_loop(args.latency_runs, 1)
        unloaded = summary(driver.latencies_ms(unloaded_ids))
        overhead = await step_overhead(bus, set(ids))
        quiet = await step_overhead(bus, set(unloaded_ids))
        unloaded["step_overhead_p50_ms"] = quiet["step_overhead_p50_ms"]
        unloaded["step_executor_p50_ms"] = quiet["step_executor_p50_ms"]
        statuses = {s for r, (_, s) in driver.done.items() if r in ids}
    finally:
        await bus.drain()
        stop(runners)
    return {"runs": args.runs, "seconds": round(elapsed, 3),
            "runs_per_s": round(args.runs / elapsed, 1), "window": args.window,
            "p50_ms": loaded["p50_ms"], "p99_ms": loaded["p99_ms"], "loaded": loaded,
            "unloaded": unloaded, **overhead, "statuses": sorted(statuses)}


async def crash(args: argparse.Namespace, tmp: Path, nats_url: str, bot: Path,
                bank: str) -> dict[str, Any]:
    """500 runs in flight over two runners; one killed with SIGKILL while they run."""
    await bank_call(bank, "POST", "/_reset")
    await bank_call(bank, "POST", "/_faults", {"path": "/transfers", "method": "POST",
                                               "delay_ms": args.crash_delay_ms})
    env = runner_env(nats_url, bot, bank, args.crash_runs, args.crash_ack_wait)
    runners = start_runners(tmp, 2, "c", env)
    bus = await connect(nats_url, name="bench-crash")
    try:
        driver = Driver(bus)
        await driver.start()
        refused = set(range(0, args.crash_runs, 10))  # every 10th run is refused: compensated
        ids = [await driver.send(f"blocked-{i}" if i in refused else f"r{i}")
               for i in range(args.crash_runs)]
        started = time.perf_counter()
        await asyncio.sleep(args.crash_after_s)
        in_flight = args.crash_runs - len(driver.done)
        runners[0].send_signal(signal.SIGKILL)
        runners[0].wait()
        await driver.wait_all(ids, limit_s=240)
        elapsed = time.perf_counter() - started
        await asyncio.sleep(args.crash_delay_ms / 1000 + 0.5)  # the dead runner's last requests
        await bank_call(bank, "POST", "/_faults", [])
        stats = await bank_call(bank, "GET", "/_stats")
        store = RunStore(await bus.kv(KV_RPA_RUNS))
        resumed = sum(1 for r in await store.all() if r.run_id in set(ids) and r.resumes)
    finally:
        await bus.drain()
        stop(runners)
    statuses = [driver.done[r][1] for r in ids]
    completed, compensated = statuses.count("succeeded"), statuses.count("compensated")
    return {"runs": args.crash_runs, "in_flight_at_kill": in_flight, "resumed_runs": resumed,
            "completed": completed, "compensated": compensated,
            "other": len(statuses) - completed - compensated,
            "duplicate_side_effects": stats["duplicates"], "bank_replays": stats["replays"],
            "bank_effects": stats["effects"], "seconds": round(elapsed, 2),
            "expected": {"completed": args.crash_runs - len(refused),
                         "compensated": len(refused)}}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="rpa-bench-"))
    nats = NatsServer(tmp / "nats")
    nats.start()
    bank_process, bank = start_bank(tmp / "bank.log")
    try:
        bot = write_bench_bot(tmp / "bot", bank)
        bus = await connect(nats.url, name="bench-setup")
        await provision(bus)
        await bus.drain()
        result = await throughput(args, tmp, nats.url, bot, bank)
        print(f"throughput: {result['runs_per_s']} runs/s, p50 {result['p50_ms']} ms, "
              f"p99 {result['p99_ms']} ms, overhead/step p50 "
              f"{result['step_overhead_p50_ms']} ms", flush=True)
        result["crash"] = await crash(args, tmp, nats.url, bot, bank)
        print(f"crash: {json.dumps(result['crash'])}", flush=True)
    finally:
        stop([bank_process])
        nats.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (under a minute)")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--runners", type=int, default=2, help="runner processes")
    parser.add_argument("--window", type=int, default=32, help="runs in flight")
    parser.add_argument("--concurrency", type=int, default=64, help="runs per runner process")
    args = parser.parse_args()
    args.runs = args.runs or (1000 if args.quick else 5000)
    args.warmup = 100
    args.latency_runs = 100 if args.quick else 500
    args.crash_runs, args.crash_delay_ms = 500, 1000
    args.crash_after_s, args.crash_ack_wait = 1.5, 2.0
    started = time.perf_counter()
    result = asyncio.run(run(args))
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "platform": platform.platform()}
    result["quick"] = args.quick
    result["wall_s"] = round(time.perf_counter() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)} in {result['wall_s']} s")
    crash_ok = result["crash"]["duplicate_side_effects"] == 0 and result["crash"]["other"] == 0
    return 0 if crash_ok else 1


if __name__ == "__main__":
    sys.exit(main())
