"""`make run` (`make run BOT=DIR`, `botfactory run DIR`): the whole platform on one machine,
with no installs beyond pip.

Starts nats-server (JetStream data under `.botfactory/nats`), trains the bot on first run
(`.botfactory/models/<bot>`; the demo bot bots/banking by default), publishes it to the model
store, starts the services (and a trainer for the admin API's training jobs) as child
processes, prints the endpoints, and stops everything on
Ctrl-C / SIGTERM. The bot's workflows get its rpa.yml settings (--setting NAME=VALUE
overrides one) and its secrets (BOT/secrets.env or --secrets FILE; botfactory/local/
botrun.py); the demo bank runs for the demo bot only. --free-ports: free ports, printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from botfactory.local.botrun import (
    SECRETS_FILE,
    BotRunError,
    Ports,
    missing_secrets,
    secret_env,
    settings_overrides,
    stale_model,
    taken_ports,
)
from botfactory.local.nats_server import NatsServer
from botfactory.local.options import DEMO_BOT, ROOT, add_arguments
from services.common.nats import without_passwords
from services.rpa_runner.secrets import SECRET_ENV_PREFIX


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


def prepare_model(bot_dir: Path, models_dir: Path, name: str | None = None,
                  retrain: bool = False, intents: list[str] | None = None) -> Path:
    """Train the bot (into models_dir/NAME, NAME the bot's name) unless a model for it is
    there that still fits it (`intents`, its data not changed since) and `retrain` is false."""
    target = models_dir / (name or bot_dir.name)
    if not (target / "metadata.json").is_file():
        print(f"training {bot_dir} (first run; a few minutes)...", flush=True)
    elif retrain:
        print(f"training {bot_dir} again (--retrain; a few minutes)...", flush=True)
    elif intents is not None and (why := stale_model(bot_dir, target, intents)) is not None:
        print(f"training {bot_dir} again: {why} (a few minutes)...", flush=True)
    else:
        return target
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


def _secret(path: Path, make: Callable[[], str] = lambda: secrets.token_urlsafe(32)) -> str:
    """A random secret kept under the data dir (so keys survive restarts)."""
    if not path.is_file():
        path.write_text(make())
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
    parser.add_argument("--bot", type=Path, default=DEMO_BOT,
                        help="the bot folder to run (default: the demo bot bots/banking)")
    add_arguments(parser)
    return run_stack(parser.parse_args(argv))


def run_stack(args: argparse.Namespace) -> int:
    """Run the stack for `args.bot` until Ctrl-C / SIGTERM; the exit code."""
    try:
        plan = plan_run(args)
        taken = taken_ports(plan.ports)
        if taken:
            raise BotRunError(f"ports {taken} are taken (another make run?): stop what listens "
                              "there, or run with --free-ports (make run RUN_ARGS=--free-ports)")
    except BotRunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logs = args.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        model = prepare_model(args.bot, args.data_dir / "models", plan.name, args.retrain,
                              list(plan.intents))
        knowledge = prepare_knowledge(args.bot, args.data_dir)
        nats = NatsServer(args.data_dir / "nats")
        nats.start(port=plan.ports.nats)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name in plan.missing_secrets:
        print(f"warning: the workflows read secrets.{name}, which is not set (add {name}=... "
              f"to {args.bot / SECRETS_FILE} or set {SECRET_ENV_PREFIX}{name})",
              file=sys.stderr, flush=True)
    return _serve(args, plan, model, knowledge, nats, logs)


def _serve(args: argparse.Namespace, plan: RunPlan, model: Path, knowledge: Path | None,
           nats: NatsServer, logs: Path) -> int:
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
        base_url = _start_services(args, plan, nats, logs, processes)
        admin_key = _secret(args.data_dir / "admin-key")
        key = _demo_key(base_url, admin_key, plan.name)
        agent_key = _demo_key(base_url, admin_key, plan.name, "agent")
        print(_banner(args, plan, nats, base_url, key, agent_key), flush=True)
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


def _start_services(args: argparse.Namespace, plan: RunPlan, nats: NatsServer, logs: Path,
                    processes: list[subprocess.Popen[bytes]]) -> str:
    """Start NLU, dialogue, (the demo bank,) RPA runner, trainer and gateway; the gateway's
    URL."""
    ports = plan.ports
    processes.append(_start("nlu", "services.nlu", _env(
        BOTFACTORY_NLU_NATS_URL=nats.url_for("nlu"),
        BOTFACTORY_NLU_GRPC_PORT=str(ports.nlu),
        BOTFACTORY_NLU_METRICS_PORT=str(ports.nlu_metrics),
        BOTFACTORY_NLU_MODEL_CACHE_DIR=str(args.data_dir / "model-cache"),
    ), logs))
    _wait_grpc_serving(f"127.0.0.1:{ports.nlu}", processes[-1])
    processes.append(_start("dialogue", "services.dialogue", _env(
        BOTFACTORY_DIALOGUE_NATS_URL=nats.url_for("dialogue"),
        BOTFACTORY_DIALOGUE_NLU_ADDRESS=f"127.0.0.1:{ports.nlu}",
        BOTFACTORY_DIALOGUE_GRPC_PORT=str(ports.dialogue_grpc),
        BOTFACTORY_DIALOGUE_METRICS_PORT=str(ports.dialogue_metrics),
        BOTFACTORY_DIALOGUE_BOTS=str(args.bot),
    ), logs))
    dialogue = processes[-1]
    rpa_env = dict(plan.secrets)
    settings = list(plan.settings)
    if plan.demo_bank:
        rpa_env, settings = _start_demo_bank(args, ports, logs, processes, rpa_env, settings)
    processes.append(_start("rpa_runner", "services.rpa_runner", _env(
        BOTFACTORY_RPA_NATS_URL=nats.url_for("rpa-runner"),
        BOTFACTORY_RPA_BOTS=str(args.bot),
        BOTFACTORY_RPA_SETTINGS=",".join(settings),
        BOTFACTORY_RPA_SCREENSHOTS_DIR=str(args.data_dir / "screenshots"),
        BOTFACTORY_RPA_GRPC_PORT=str(ports.rpa_grpc),
        BOTFACTORY_RPA_METRICS_PORT=str(ports.rpa_metrics),
        **rpa_env,
    ), logs))
    # Training jobs of the admin API (docs/training.md), at the lowest CPU priority.
    processes.append(_start("trainer", "services.trainer", _env(
        BOTFACTORY_TRAINER_NATS_URL=nats.url_for("trainer"),
        BOTFACTORY_TRAINER_WORK_DIR=str(args.data_dir / "trainer"),
        BOTFACTORY_TRAINER_METRICS_PORT=str(ports.trainer_metrics),
        BOTFACTORY_TRAINER_NICE="19",
    ), logs))
    processes.append(_start("gateway", "services.gateway", _env(
        BOTFACTORY_GATEWAY_NATS_URL=nats.url_for("gateway"),
        BOTFACTORY_GATEWAY_HTTP_PORT=str(ports.http),
        BOTFACTORY_GATEWAY_GRPC_PORT=str(ports.gateway_grpc),
        BOTFACTORY_GATEWAY_METRICS_PORT=str(ports.gateway_metrics),
        BOTFACTORY_GATEWAY_RPA_ADDRESS=f"127.0.0.1:{ports.rpa_grpc}",
        BOTFACTORY_GATEWAY_API_KEY_PEPPER=_secret(args.data_dir / "pepper"),
        BOTFACTORY_GATEWAY_ADMIN_BOOTSTRAP_KEY=_secret(args.data_dir / "admin-key"),
        # Generated here for the local stack only: production sets its own (config.py).
        BOTFACTORY_GATEWAY_VISITOR_TOKEN_SECRET=_secret(args.data_dir /
                                                        "visitor-token-secret"),
        # Seals the messaging channels' secrets (docs/channels.md): a Fernet key.
        BOTFACTORY_GATEWAY_CHANNEL_SECRETS_KEY=_secret(
            args.data_dir / "channel-secrets-key",
            lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()),
    ), logs))
    base_url = f"http://127.0.0.1:{ports.http}"
    # The dialogue serves gRPC once it announced its bot: the gateway 404s bots nobody serves.
    _wait_grpc_serving(f"127.0.0.1:{ports.dialogue_grpc}", dialogue)
    _wait_ready(f"{base_url}/readyz", processes[-1])
    return base_url


def _start_demo_bank(args: argparse.Namespace, ports: Ports, logs: Path,
                     processes: list[subprocess.Popen[bytes]], rpa_env: dict[str, str],
                     settings: list[str]) -> tuple[dict[str, str], list[str]]:
    """Start the demo bank; the RPA runner's secrets and settings with the demo's first (the
    user's --setting and secrets win)."""
    bank_token = _secret(args.data_dir / "demo-bank-token")
    bank_pin = _secret(args.data_dir / "demo-bank-pin")[:8]
    processes.append(_start("demo_bank", "botfactory.local.demo_bank", _env(), logs,
                            "--port", str(ports.bank), "--token", bank_token,
                            "--legacy-pin", bank_pin))
    browser = Path("/usr/bin/chromium").is_file()
    demo = [f"core_bank_url=http://127.0.0.1:{ports.bank}",
            f"legacy_url=http://127.0.0.1:{ports.bank}",
            f"legacy_filing={'true' if browser else 'false'}"]
    secrets_env = {f"{SECRET_ENV_PREFIX}CORE_API_TOKEN": bank_token,
                   f"{SECRET_ENV_PREFIX}LEGACY_PIN": bank_pin, **rpa_env}
    return secrets_env, demo + settings


def _banner(args: argparse.Namespace, plan: RunPlan, nats: NatsServer, base_url: str,
            key: str, agent_key: str) -> str:
    ports, logs = plan.ports, args.data_dir / "logs"
    dialogue = ("" if ports.dialogue_grpc == Ports().dialogue_grpc
                else f" --dialogue 127.0.0.1:{ports.dialogue_grpc}")
    bank = f", demo bank http://127.0.0.1:{ports.bank}" if plan.demo_bank else ""
    return (f"\nbotfactory is running.\n  web chat:  {base_url}/  (bot: {plan.name}, "
            f"API key: {key})\n  HTTP API:  {base_url}/openapi.json\n"
            f"  terminal:  .venv/bin/botfactory chat {plan.name} --gateway {base_url} "
            f"--api-key {key}{dialogue}\n  agent key: {agent_key}  (handoffs, workflow "
            f"approvals, transcripts: not for the chat)\n  admin key: "
            f"{args.data_dir / 'admin-key'}\n  NATS {nats.plain_url} (auth on: admin password "
            f"in {nats.workdir / 'admin-password'}),\n  NLU gRPC 127.0.0.1:{ports.nlu}, "
            f"dialogue gRPC 127.0.0.1:{ports.dialogue_grpc}, RPA gRPC "
            f"127.0.0.1:{ports.rpa_grpc}{bank}\n  metrics on :{ports.nlu_metrics} (nlu), "
            f":{ports.gateway_metrics} (gateway), :{ports.dialogue_metrics} (dialogue), "
            f":{ports.rpa_metrics} (rpa), :{ports.trainer_metrics} (trainer); logs in {logs}\n"
            f"  train on the trainer: .venv/bin/botfactory train {args.bot} --remote "
            f"--gateway {base_url} --api-key $(cat {args.data_dir / 'admin-key'})\n"
            "Ctrl-C stops it.")


@dataclass(frozen=True)
class RunPlan:
    """What `run_stack` starts for a bot: its id, ports, RPA settings overrides, secrets
    (BOTFACTORY_SECRET_* variables) and whether the demo bank runs."""

    name: str
    ports: Ports
    settings: tuple[str, ...]
    secrets: dict[str, str]
    demo_bank: bool
    missing_secrets: tuple[str, ...] = ()
    intents: tuple[str, ...] = ()


def plan_run(args: argparse.Namespace) -> RunPlan:
    """The RunPlan of the parsed options (BotRunError: the bot or an option is unusable)."""
    from services.botdef import BotDefinitionError, load_bot

    try:
        bot = load_bot(args.bot)
    except BotDefinitionError as exc:
        raise BotRunError(f"{args.bot} is not a valid bot folder "
                          f"(botfactory validate {args.bot}):\n{exc}") from None
    demo = args.bot.resolve() == DEMO_BOT.resolve()
    demo_bank = demo if args.demo_bank is None else bool(args.demo_bank)
    ports = Ports.free() if args.free_ports else Ports(
        nats=args.nats_port, nlu=args.nlu_port, http=args.http_port, bank=args.bank_port)
    secrets_env = secret_env(args.bot, args.secrets)
    missing = () if demo_bank else tuple(missing_secrets(bot.raw.get("workflows"), secrets_env))
    return RunPlan(bot.name, ports.resolved(), tuple(settings_overrides(args.setting)),
                   secrets_env, demo_bank, missing, tuple(bot.intent_names()))


if __name__ == "__main__":
    sys.exit(main())
