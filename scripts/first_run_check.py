"""README's first command, end to end, as a newcomer runs it (`make first-run-check`, and
once in CI): `make run` from an empty data folder (it trains the demo bot, starts the stack and
prints a demo API key), a first conversation through the HTTP API with the printed key, then
Ctrl-C and a clean stop (every service gone, every port free, no traceback).

Uses the README's default ports; it refuses to start when one of them is taken.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTS = (4222, 8080, 50051, 50061, 50071, 50081, 8099, 9101, 9102, 9103, 9104)
READY = "botfactory is running."
KEY = re.compile(r"web chat:\s+(http://\S+)/\s+\(bot: (\S+), API key: (\S+)\)")
FIRST_MESSAGES = ("hi", "what is my balance")


class CheckFailed(Exception):
    """What a newcomer would have hit."""


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Output:
    """Collects the lines of `make run` (stdout and stderr together) from a thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(f"  | {line}")
            sys.stdout.flush()
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _wait_ready(process: subprocess.Popen[str], output: Output,
                timeout: float) -> tuple[str, str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = output.text()
        if READY in text:
            match = KEY.search(text)
            if match is None:
                raise CheckFailed("make run said it is running but printed no API key line")
            return match.group(1), match.group(2), match.group(3)
        if process.poll() is not None:
            raise CheckFailed(f"make run exited with {process.returncode} before it was "
                              "running")
        time.sleep(0.5)
    raise CheckFailed(f"make run was not running after {timeout:.0f} s")


def _converse(base_url: str, bot: str, key: str) -> list[str]:
    """Send the first messages of a new conversation; returns the bot's reply texts."""
    conversation = f"first-run-{uuid.uuid4().hex[:8]}"
    replies: list[str] = []
    for text in FIRST_MESSAGES:
        body = json.dumps({"text": text}).encode()
        request = urllib.request.Request(
            f"{base_url}/v1/bots/{bot}/conversations/{conversation}/messages", data=body,
            method="POST", headers={"Authorization": f"Bearer {key}",
                                    "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
            if response.status != 200 or not answer.get("replies"):
                raise CheckFailed(f"{text!r}: HTTP {response.status}, {answer}")
        texts = [str(reply.get("text", "")) for reply in answer["replies"]]
        print(f"user: {text}\nbot:  {' / '.join(texts)}", flush=True)
        replies.extend(texts)
    return replies


def _stop(process: subprocess.Popen[str], output: Output, timeout: float) -> None:
    """Ctrl-C as a terminal sends it (SIGINT to the whole process group), then check that
    everything stopped cleanly."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise CheckFailed(f"make run did not stop within {timeout:.0f} s of Ctrl-C") from None
    output.join(5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_port_taken(p) for p in PORTS):
        time.sleep(0.2)
    taken = [port for port in PORTS if _port_taken(port)]
    if taken:
        raise CheckFailed(f"ports still open after the stop: {taken}")
    text = output.text()
    for bad in ("Traceback", "error:"):
        if bad in text:
            raise CheckFailed(f"make run printed {bad!r} (see the output above)")


def check(data_dir: Path, ready_timeout: float) -> None:
    taken = [port for port in PORTS if _port_taken(port)]
    if taken:
        raise CheckFailed(f"ports {taken} are taken: stop what listens there (an earlier "
                          "make run?) first")
    started = time.monotonic()
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"RUN_ARGS=--data-dir {data_dir}"], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        start_new_session=True)
    output = Output(process)
    try:
        base_url, bot, key = _wait_ready(process, output, ready_timeout)
        ready_s = time.monotonic() - started
        replies = _converse(base_url, bot, key)
    except BaseException:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        raise
    _stop(process, output, timeout=60)
    print(f"first run ok: running after {ready_s:.0f} s (empty {data_dir.name}/, the demo bot "
          f"trained), {len(replies)} replies to {len(FIRST_MESSAGES)} messages, clean stop",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ready-timeout", type=float, default=900.0,
                        help="seconds make run may take to be running (default 900)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="first-run-") as temp:
        data_dir = Path(temp) / ".botfactory"
        try:
            check(data_dir, args.ready_timeout)
        except (CheckFailed, OSError) as exc:
            print(f"first run check FAILED: {exc}", file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
