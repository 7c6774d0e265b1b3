"""`make run`: the whole platform on one machine, with no installs beyond pip.

Starts nats-server (JetStream data under `.botfactory/nats`), trains the demo bot on first run
(`.botfactory/models/<bot>`), publishes it to the model store, starts the services as child
processes, prints the endpoints, and stops everything on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from botfactory.local.nats_server import NatsServer

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
    print("$ botfactory " + " ".join(args), flush=True)
    subprocess.run(command, cwd=ROOT, env=_env(), check=True)


def prepare_model(bot_dir: Path, models_dir: Path) -> Path:
    """Train the bot unless a model for it is already there."""
    target = models_dir / bot_dir.name
    if not (target / "metadata.json").is_file():
        print(f"training {bot_dir} (first run; a few minutes)...", flush=True)
        _botfactory("train", str(bot_dir), "--out", str(target))
    return target


def _start(name: str, module: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    log = (logs / f"{name}.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    print(f"started {name} (pid {process.pid}, log {logs / (name + '.log')})", flush=True)
    return process


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
    args = parser.parse_args(argv)
    logs = args.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    model = prepare_model(args.bot, args.data_dir / "models")
    nats = NatsServer(args.data_dir / "nats")
    nats.start(port=args.nats_port)
    processes: list[subprocess.Popen[bytes]] = []
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        os.environ["BOTFACTORY_NATS_URL"] = nats.url
        _botfactory("publish", str(model), "--nats", nats.url)
        processes.append(_start("nlu", "services.nlu", _env(
            BOTFACTORY_NLU_NATS_URL=nats.url,
            BOTFACTORY_NLU_GRPC_PORT=str(args.nlu_port),
            BOTFACTORY_NLU_MODEL_CACHE_DIR=str(args.data_dir / "model-cache"),
        ), logs))
        print(f"\nbotfactory is running: NATS {nats.url}, NLU gRPC 127.0.0.1:{args.nlu_port}, "
              f"NLU metrics http://127.0.0.1:9101/metrics\nCtrl-C stops it.", flush=True)
        while not stopping and all(p.poll() is None for p in processes):
            time.sleep(0.5)
        failed = [p for p in processes if p.poll() not in (None, 0)]
        return 1 if failed and not stopping else 0
    finally:
        _stop(processes)
        nats.stop()


if __name__ == "__main__":
    sys.exit(main())
