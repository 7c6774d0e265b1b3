"""The local stack as child processes for the benchmarks (e2e_load.py, chaos.py).

nats-server (JetStream on disk under the work dir), NLU, N dialogue workers, the gateway and,
optionally, the demo bank and an RPA runner: each on a fixed port chosen at the first start,
so that any component can be killed with SIGKILL and restarted on the same port and store.
Per-process figures (RSS, open file descriptors, threads) come from /proc.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.nlu_latency import time_each
from botfactory.local.nats_server import NatsServer
from botfactory.local.processes import service_env, start_service, wait_for_event
from services.gateway.channels.secrets import new_key

ROOT = Path(__file__).resolve().parent.parent
BANKING = ROOT / "bots" / "banking"
BANK_TOKEN = "chaos-bank-token-8f3e1a"
BANK_PIN = "pin-5c2b7d"
READY_TIMEOUT_S = 120.0


def host_yardstick(rounds: int = 5) -> dict[str, float]:
    """Median milliseconds of two fixed workloads on this host right now (lower = faster): a
    pure-Python loop (interpreter speed) and a sum over 64 MB (memory bandwidth, which the
    encoder's weight reads depend on). Figures taken at different moments of a shared host
    compare through these."""
    block = np.ones(8 * 1024 * 1024)  # 64 MB of float64

    def python_loop(_: str) -> None:
        total = 0
        for i in range(200_000):
            total += i * i % 7

    def memory_sum(_: str) -> None:
        block.sum()

    return {name: round(statistics.median(time_each(work, [""] * rounds, warmup=1)) * 1000, 2)
            for name, work in (("python_ms", python_loop), ("memory_ms", memory_sum))}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_stats(pid: int) -> dict[str, float]:
    """RSS (MB), open file descriptors and OS threads ("tasks") of one live process."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    values = dict(line.split(":", 1) for line in status if ":" in line)
    return {"rss_mb": round(int(values["VmRSS"].split()[0]) / 1024, 1),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(values["Threads"].strip())}


@dataclass
class Component:
    """One service process: how to start it and its current incarnation."""

    name: str
    module: str
    ready_event: str
    env: dict[str, str]
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.poll() is None \
            else None


@dataclass
class StackOptions:
    model: Path
    dialogues: int = 1
    with_rpa: bool = False
    dialogue_ack_wait_s: float = 30.0
    rpa_ack_wait_s: float = 30.0
    sync_wait_s: float = 5.0
    bot_dir: Path = BANKING
    nlu_follows_store: bool = False
    """NLU also loads the store's active versions and swaps on activation (a rollout)."""
    channel_secrets_key: str = field(default_factory=new_key)
    """The gateway's messaging channels are on (a fresh Fernet key seals their secrets), as
    in a deployment: its channel outbox reads every reply of conv.out (docs/channels.md)."""


@dataclass
class ProcessStack:
    """Start with `start()`; `kill(name)` sends SIGKILL, `restart(name)` starts it again."""

    workdir: Path
    options: StackOptions
    nats: NatsServer = field(init=False)
    components: dict[str, Component] = field(default_factory=dict)
    admin_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    http_port: int = field(default_factory=free_port)
    bank_url: str = ""
    bank: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nats = NatsServer(self.workdir / "nats")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def dialogue_targets(self) -> list[str]:
        return [f"127.0.0.1:{c.env['BOTFACTORY_DIALOGUE_GRPC_PORT']}"
                for c in self.components.values() if c.module == "services.dialogue"]

    def start(self) -> None:
        self.nats.start()
        if self.options.with_rpa:
            self.bank, self.bank_url = start_bank(self.workdir / "bank.log")
        for component in self._define():
            self.components[component.name] = component
            self.start_component(component.name)

    def _define(self) -> list[Component]:
        nlu_port = free_port()
        found = [Component("nlu", "services.nlu", "nlu_started", {
            "BOTFACTORY_NLU_MODELS": str(self.options.model),
            "BOTFACTORY_NLU_GRPC_PORT": str(nlu_port), "BOTFACTORY_NLU_METRICS_PORT": "0",
            **({"BOTFACTORY_NLU_NATS_URL": "",
                "BOTFACTORY_NLU_MODEL_CACHE_DIR": str(self.workdir / "model-cache")}
               if self.options.nlu_follows_store else {})})]
        for index in range(self.options.dialogues):
            found.append(Component(f"dialogue-{index}", "services.dialogue", "dialogue_started", {
                "BOTFACTORY_DIALOGUE_NATS_URL": "",
                "BOTFACTORY_DIALOGUE_BOTS": str(self.options.bot_dir),
                "BOTFACTORY_DIALOGUE_NLU_ADDRESS": f"127.0.0.1:{nlu_port}",
                "BOTFACTORY_DIALOGUE_GRPC_PORT": str(free_port()),
                "BOTFACTORY_DIALOGUE_METRICS_PORT": "0",
                "BOTFACTORY_DIALOGUE_ACK_WAIT_S": str(self.options.dialogue_ack_wait_s)}))
        if self.options.with_rpa:
            found.append(self._rpa())
        found.append(Component("gateway", "services.gateway", "gateway_started", {
            "BOTFACTORY_GATEWAY_NATS_URL": "", "BOTFACTORY_GATEWAY_HTTP_PORT": str(self.http_port),
            "BOTFACTORY_GATEWAY_METRICS_PORT": "0", "BOTFACTORY_GATEWAY_GRPC_PORT": "0",
            "BOTFACTORY_GATEWAY_API_KEY_PEPPER": secrets.token_urlsafe(24),
            "BOTFACTORY_GATEWAY_VISITOR_TOKEN_SECRET": secrets.token_urlsafe(32),
            "BOTFACTORY_GATEWAY_ADMIN_BOOTSTRAP_KEY": self.admin_key,
            "BOTFACTORY_GATEWAY_SYNC_WAIT_S": str(self.options.sync_wait_s),
            "BOTFACTORY_GATEWAY_CHANNEL_SECRETS_KEY": self.options.channel_secrets_key,
            "BOTFACTORY_GATEWAY_RATE_LIMIT_RPS": "100000",
            "BOTFACTORY_GATEWAY_RATE_LIMIT_BURST": "100000"}))
        return found

    def _rpa(self) -> Component:
        return Component("rpa_runner", "services.rpa_runner", "rpa_runner_started", {
            "BOTFACTORY_RPA_NATS_URL": "", "BOTFACTORY_RPA_BOTS": str(BANKING),
            "BOTFACTORY_RPA_SETTINGS": (f"core_bank_url={self.bank_url},"
                                        f"legacy_url={self.bank_url},legacy_filing=false"),
            "BOTFACTORY_RPA_GRPC_PORT": "0", "BOTFACTORY_RPA_METRICS_PORT": "0",
            "BOTFACTORY_RPA_ACK_WAIT_S": str(self.options.rpa_ack_wait_s),
            "BOTFACTORY_RPA_SCREENSHOTS_DIR": str(self.workdir / "screenshots"),
            "BOTFACTORY_SECRET_CORE_API_TOKEN": BANK_TOKEN,
            "BOTFACTORY_SECRET_LEGACY_PIN": BANK_PIN})

    def names(self) -> list[str]:
        return ["nats", *self.components]

    def start_component(self, name: str) -> float:
        """Start (or restart) a component and wait until it is ready; returns the seconds."""
        began = time.perf_counter()
        if name == "nats":
            self.nats.start(port=self.nats.port or None)
            return time.perf_counter() - began
        component = self.components[name]
        env = {k: (self.nats.url if k.endswith("_NATS_URL") else v)
               for k, v in component.env.items()}
        log = self.workdir / f"{name}-{component.starts}.log"
        component.starts += 1
        component.process = start_service(component.module, log, **env)
        wait_for_event(log, component.process, component.ready_event, timeout=READY_TIMEOUT_S)
        return time.perf_counter() - began

    def kill(self, name: str) -> None:
        """SIGKILL, no goodbye: in-flight work is whatever the process had."""
        if name == "nats":
            self.nats.stop(kill=True)
            return
        process = self.components[name].process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def pids(self) -> dict[str, int]:
        found = {"nats": self.nats.process.pid} if self.nats.process is not None else {}
        found.update({n: c.pid for n, c in self.components.items() if c.pid is not None})
        return found

    def stats(self) -> dict[str, dict[str, float]]:
        result = {}
        for name, pid in self.pids().items():
            try:
                result[name] = proc_stats(pid)
            except (FileNotFoundError, KeyError, ProcessLookupError):
                continue
        return result

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.pids().values():
            try:
                total += cpu_seconds(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
        return total

    def stop(self) -> None:
        running = [c.process for c in reversed(self.components.values())
                   if c.process is not None and c.process.poll() is None]
        for process in running:
            process.terminate()
        for process in running:
            _wait_or_kill(process)
        if self.bank is not None:
            self.bank.terminate()
            _wait_or_kill(self.bank)
        self.nats.stop()


def _wait_or_kill(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_bank(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The demo bank (side effects counted per business reference) on a free port."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "botfactory.local.demo_bank", "--port", "0",
             "--token", BANK_TOKEN, "--legacy-pin", BANK_PIN],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=service_env())
    try:
        started = wait_for_event(log, process, "demo_bank_started", timeout=30)
    except AssertionError:
        process.kill()
        raise RuntimeError(f"demo bank did not start: {log.read_text()}") from None
    return process, str(started["url"])


async def client_key(base_url: str, admin_key: str, bots: tuple[str, ...] = ("banking",)) -> str:
    """A client API key for `bots`, made through the admin API."""
    import aiohttp

    body = {"tenant": "bench", "bots": list(bots), "role": "client"}
    async with aiohttp.ClientSession() as session, session.post(
            f"{base_url}/v1/admin/keys", json=body,
            headers={"Authorization": f"Bearer {admin_key}"}) as response:
        return str((await response.json())["secret"])


def ensure_model(model: Path) -> None:
    """Train the demo bot into `model` unless it is there (first run: a few minutes)."""
    if not (model / "metadata.json").is_file():
        from botfactory.local.stack import prepare_model

        prepare_model(BANKING, model.parent)


def bench_workdir(kind: str) -> Path:
    """A fresh work directory for one benchmark run (nats store, logs)."""
    return ROOT / ".botfactory" / "bench" / f"{kind}-{os.getpid()}"


def discard_workdir(workdir: Path, ok: bool) -> None:
    """Remove a run's work directory once it succeeded; a failed run's logs stay for a look."""
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs and store kept in {workdir}", file=sys.stderr)
