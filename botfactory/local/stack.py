"""`make run`: the whole platform on one machine, with no installs beyond pip.

Starts nats-server (JetStream data under `.botfactory/nats`), trains the demo bot on first run
(`.botfactory/models/<bot>`), publishes it to the model store, starts the services as child
processes, prints the endpoints, and stops everything on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from botfactory.local.nats_server import NatsServer
from services.common.nats import without_passwords

ROOT = Path(__file__).resolve().parents[2]


def _env(**values: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = str(ROOT)
    env.update(values)
    return env


def _botfactory(*args: str) -> None:
    command = [sys.executable, "-m", "botfactory", *args]
    print("$ botfactory " + without_passwords(" ".join(args)), flush=True)
    subprocess.run(command, cwd=ROOT, env=_env(), check=True)


def prepare_model(bot_dir: Path, models_dir: Path) -> Path:
    """Train the bot unless a model for it is already there."""
    target = models_dir / bot_dir.name
    if not (target / "metadata.json").is_file():
        print(f"training {bot_dir} (first run; a few minutes)...", flush=True)
        _botfactory("train", str(bot_dir), "--out", str(target))
    return target


def prepare_knowledge(bot_dir: Path, data_dir: Path) -> Path | None:
    """Build the bot's knowledge index when it has a `knowledge/` folder (seconds once the
    sentence encoder export is cached); None when there is none or it does not build."""
    if not (bot_dir / "knowledge").is_dir():
        return None
    target = data_dir / "models" / f"{bot_dir.name}.kb"
    try:
        _botfactory("kb", "build", str(bot_dir), "--out", str(target), "--quiet",
                    "--cache-dir", str(data_dir / "cache" / "kb-encoder"))
    except subprocess.CalledProcessError:
        print("warning: the knowledge base did not build (see above); starting without it",
              file=sys.stderr, flush=True)
        return None
    return target


SENTIMENT_DATA = ROOT.parent / "shared" / "data" / "goemotions"
SENTIMENT_TRAIN_ARGS = ("--max-train", "8000", "--max-heldout", "1000")


class SentimentJob:
    """The platform sentiment model (GoEmotions → negative / neutral / positive in every
    Parse). A model trained by an earlier run is published before the NLU starts; otherwise it
    is trained in the background at the lowest CPU priority once the stack answers (the first
    answer does not wait for it) and published when done: the NLU hot-swaps it in."""

    def __init__(self, data: Path | None, target: Path, log: Path,
                 train_args: Sequence[str] = SENTIMENT_TRAIN_ARGS) -> None:
        self.data = data
        self.target = target
        self.log = log
        self.train_args = tuple(train_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def trained(self) -> bool:
        return (self.target / "metadata.json").is_file()

    def start(self) -> str:
        """Start the background training when there is data and no model; says what it did."""
        if self.trained:
            return f"sentiment model {self.target}"
        if self.data is None or not self.data.exists():
            return ("no sentiment model (no GoEmotions data: give --sentiment-data DIR, a "
                    "GoEmotions folder or a text,label CSV)")
        command = [sys.executable, "-m", "botfactory", "train-sentiment", "--data",
                   str(self.data), "--out", str(self.target), "--quiet", *self.train_args]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=lambda: os.nice(19))
        return (f"training the sentiment model in the background (log {self.log}); the NLU "
                "adds it to every parse when it is done")

    def finished(self) -> int | None:
        """The training's exit code once it has ended (then forgotten), else None."""
        if self.process is None or self.process.poll() is None:
            return None
        code, self.process = self.process.returncode, None
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _publish_sentiment(job: SentimentJob, nats_url: str) -> None:
    code = job.finished()
    if code is None:
        return
    if code != 0 or not job.trained:
        print(f"warning: sentiment training failed (exit {code}); see {job.log}",
              file=sys.stderr, flush=True)
        return
    try:
        _botfactory("publish", str(job.target), "--nats", nats_url)
        print("sentiment model published: every parse now carries a sentiment", flush=True)
    except subprocess.CalledProcessError:
        print("warning: the sentiment model did not publish (see above)", file=sys.stderr,
              flush=True)


def _start(name: str, module: str, env: dict[str, str], logs: Path,
           *args: str) -> subprocess.Popen[bytes]:
    log = (logs / f"{name}.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    print(f"started {name} (pid {process.pid}, log {logs / (name + '.log')})", flush=True)
    return process


def _secret(path: Path) -> str:
    """A random secret kept under the data dir (so keys survive restarts)."""
    if not path.is_file():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def provision_as_admin(url: str) -> None:
    """Create the streams and buckets as the NATS admin (the services' identities may only
    check them: services/common/natsauth.py)."""
    from services.common.nats import connect, provision

    async def run() -> None:
        bus = await connect(url, name="provision")
        try:
            await provision(bus)
        finally:
            await bus.drain()

    asyncio.run(run())


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"a service exited while starting (see .botfactory/logs): {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s")


def _wait_grpc_serving(target: str, process: subprocess.Popen[bytes],
                      timeout: float = 120.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"a service exited while starting (see .botfactory/logs): "
                                   f"{target}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    raise RuntimeError(f"{target} not serving after {timeout:.0f}s")


def _demo_key(base_url: str, admin_key: str, bot: str, role: str = "client") -> str:
    """A key of the demo tenant for `bot`: `client` for the chat page and the terminal chat
    (the page trades it for a visitor token of its conversation), `agent` for the handoff
    desk and workflow approvals (never the chat's: it could approve its own transfers)."""
    body = json.dumps({"tenant": "demo", "bots": [bot], "role": role,
                       "description": f"make run demo {role} key"}).encode()
    request = urllib.request.Request(f"{base_url}/v1/admin/keys", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {admin_key}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["secret"])


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in reversed(processes):
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bot", type=Path, default=ROOT / "bots" / "banking")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".botfactory")
    parser.add_argument("--nats-port", type=int, default=4222)
    parser.add_argument("--nlu-port", type=int, default=50051)
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--bank-port", type=int, default=8099,
                        help="the demo core-banking service the workflows call")
    parser.add_argument("--sentiment-data", type=Path,
                        default=SENTIMENT_DATA if SENTIMENT_DATA.is_dir() else None,
                        help="GoEmotions folder (or text,label CSV) to train the sentiment "
                             "model from (default ../shared/data/goemotions when it exists)")
    parser.add_argument("--no-sentiment", action="store_true",
                        help="serve no sentiment model")
    args = parser.parse_args(argv)
    logs = args.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        model = prepare_model(args.bot, args.data_dir / "models")
        knowledge = prepare_knowledge(args.bot, args.data_dir)
        nats = NatsServer(args.data_dir / "nats")
        nats.start(port=args.nats_port)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    processes: list[subprocess.Popen[bytes]] = []
    sentiment = SentimentJob(None if args.no_sentiment else args.sentiment_data,
                             args.data_dir / "models" / "sentiment", logs / "sentiment.log")
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        # The CLI (publish, report) acts as the NATS admin; each service gets its own identity.
        os.environ["BOTFACTORY_NATS_URL"] = nats.url
        provision_as_admin(nats.url)
        _botfactory("publish", str(model), "--nats", nats.url)
        if knowledge is not None:
            _botfactory("kb", "publish", str(knowledge), "--nats", nats.url)
        if sentiment.trained and not args.no_sentiment:
            _botfactory("publish", str(sentiment.target), "--nats", nats.url)
        processes.append(_start("nlu", "services.nlu", _env(
            BOTFACTORY_NLU_NATS_URL=nats.url_for("nlu"),
            BOTFACTORY_NLU_GRPC_PORT=str(args.nlu_port),
            BOTFACTORY_NLU_MODEL_CACHE_DIR=str(args.data_dir / "model-cache"),
        ), logs))
        _wait_grpc_serving(f"127.0.0.1:{args.nlu_port}", processes[-1])
        processes.append(_start("dialogue", "services.dialogue", _env(
            BOTFACTORY_DIALOGUE_NATS_URL=nats.url_for("dialogue"),
            BOTFACTORY_DIALOGUE_NLU_ADDRESS=f"127.0.0.1:{args.nlu_port}",
            BOTFACTORY_DIALOGUE_BOTS=str(args.bot),
        ), logs))
        bank_token = _secret(args.data_dir / "demo-bank-token")
        bank_pin = _secret(args.data_dir / "demo-bank-pin")[:8]
        processes.append(_start("demo_bank", "botfactory.local.demo_bank", _env(), logs,
                                "--port", str(args.bank_port), "--token", bank_token,
                                "--legacy-pin", bank_pin))
        browser = Path("/usr/bin/chromium").is_file()
        processes.append(_start("rpa_runner", "services.rpa_runner", _env(
            BOTFACTORY_RPA_NATS_URL=nats.url_for("rpa-runner"),
            BOTFACTORY_RPA_BOTS=str(args.bot),
            BOTFACTORY_RPA_SETTINGS=(f"core_bank_url=http://127.0.0.1:{args.bank_port},"
                                     f"legacy_url=http://127.0.0.1:{args.bank_port},"
                                     f"legacy_filing={'true' if browser else 'false'}"),
            BOTFACTORY_RPA_SCREENSHOTS_DIR=str(args.data_dir / "screenshots"),
            BOTFACTORY_SECRET_CORE_API_TOKEN=bank_token,
            BOTFACTORY_SECRET_LEGACY_PIN=bank_pin,
        ), logs))
        admin_key = _secret(args.data_dir / "admin-key")
        processes.append(_start("gateway", "services.gateway", _env(
            BOTFACTORY_GATEWAY_NATS_URL=nats.url_for("gateway"),
            BOTFACTORY_GATEWAY_HTTP_PORT=str(args.http_port),
            BOTFACTORY_GATEWAY_API_KEY_PEPPER=_secret(args.data_dir / "pepper"),
            BOTFACTORY_GATEWAY_ADMIN_BOOTSTRAP_KEY=admin_key,
            # Generated here for the local stack only: production sets its own (config.py).
            BOTFACTORY_GATEWAY_VISITOR_TOKEN_SECRET=_secret(args.data_dir /
                                                            "visitor-token-secret"),
        ), logs))
        base_url = f"http://127.0.0.1:{args.http_port}"
        _wait_ready(f"{base_url}/readyz", processes[-1])
        key = _demo_key(base_url, admin_key, args.bot.name)
        agent_key = _demo_key(base_url, admin_key, args.bot.name, "agent")
        print(f"\nbotfactory is running.\n  web chat:  {base_url}/  (bot: {args.bot.name}, "
              f"API key: {key})\n  HTTP API:  {base_url}/openapi.json\n"
              f"  terminal:  .venv/bin/botfactory chat {args.bot.name} --gateway {base_url} "
              f"--api-key {key}\n  agent key: {agent_key}  (handoffs, workflow approvals, "
              f"transcripts: not for the chat)\n  admin key: {args.data_dir / 'admin-key'}\n"
              f"  NATS {nats.plain_url} (auth on: admin password in "
              f"{nats.workdir / 'admin-password'}),\n  NLU gRPC 127.0.0.1:{args.nlu_port}, "
              f"RPA gRPC 127.0.0.1:50081, "
              f"demo bank http://127.0.0.1:{args.bank_port}\n  metrics on :9101 (nlu), "
              f":9102 (gateway), :9103 (dialogue), :9104 (rpa); logs in {logs}\n"
              f"Ctrl-C stops it.", flush=True)
        if not args.no_sentiment:
            print(sentiment.start(), flush=True)
        while not stopping and all(p.poll() is None for p in processes):
            _publish_sentiment(sentiment, nats.url)
            time.sleep(0.5)
        failed = [p for p in processes if p.poll() not in (None, 0)]
        if failed and not stopping:
            print(f"error: a service exited; see {logs}", file=sys.stderr)
            return 1
        return 0
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        print(f"error: {exc} (logs in {logs})", file=sys.stderr)
        return 1
    finally:
        sentiment.stop()
        _stop(processes)
        nats.stop()


if __name__ == "__main__":
    sys.exit(main())
