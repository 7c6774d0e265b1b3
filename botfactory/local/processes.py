"""Services as real child processes: the benchmarks and the SIGTERM / kill -9 tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def service_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTFACTORY_")}
    env.update(values)
    env["PYTHONPATH"] = str(ROOT)
    return env


def start_service(module: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env=service_env(**env))


def wait_for_event(log: Path, process: subprocess.Popen[bytes], event: str,
                   timeout: float = 60.0) -> dict[str, object]:
    """The first JSON log line with `event`; fails if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args!r} exited: {log.read_text()}")
        for line in log.read_text().splitlines():
            if line.startswith("{"):
                record: dict[str, object] = json.loads(line)
                if record.get("event") == event:
                    return record
        time.sleep(0.05)
    raise AssertionError(f"no {event!r} in {log} within {timeout}s")


def log_events(log: Path) -> list[str]:
    return [str(json.loads(line)["event"]) for line in log.read_text().splitlines()
            if line.startswith("{")]
