"""One training as a child process: `botfactory train BOT_DIR --out MODEL_DIR --events FILE`.

The child runs in its own process group (cancel = SIGTERM to the group, SIGKILL after a grace
period) and, on Linux, dies with the trainer (PR_SET_PDEATHSIG): a trainer killed with -9
leaves no training running unseen. Its output goes to a log file whose tail the job keeps;
its progress events are JSON lines in the events file, read as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.logging import get_logger

log = get_logger(__name__)
PR_SET_PDEATHSIG = 1
ERROR_PREFIX = "error:"


def _child_setup(nice: int) -> None:
    """Runs in the child before exec: die with the parent, lower the CPU priority."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if nice:
        os.nice(nice)


@dataclass
class Paths:
    """A job's working files under the trainer's work dir."""

    root: Path

    @property
    def bot_dir(self) -> Path:
        return self.root / "bot"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "train.log"


@dataclass
class TrainingProcess:
    process: asyncio.subprocess.Process
    paths: Paths
    stop_grace_s: float
    _offset: int = 0
    _partial: bytes = b""
    stopped: bool = field(default=False)

    @classmethod
    async def start(cls, command: list[str], paths: Paths, *, stop_grace_s: float,
                    nice: int = 0) -> TrainingProcess:
        env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
        with paths.log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=lambda: _child_setup(nice))
        return cls(process, paths, stop_grace_s)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait(self, timeout_s: float) -> int | None:
        """The exit code once it ended within `timeout_s`, else None (negative: a signal)."""
        try:
            return await asyncio.wait_for(self.process.wait(), timeout_s)
        except TimeoutError:
            return None

    async def stop(self) -> int:
        """SIGTERM to its process group, SIGKILL after the grace period; the exit code."""
        self.stopped = True
        if self.process.returncode is None:
            self._signal(signal.SIGTERM)
            code = await self.wait(self.stop_grace_s)
            if code is not None:
                return code
            self._signal(signal.SIGKILL)
        return await self.process.wait()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def new_events(self) -> list[dict[str, Any]]:
        """The progress events written since the last call (whole lines only)."""
        try:
            with self.paths.events.open("rb") as source:
                source.seek(self._offset)
                data = source.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        events = []
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events

    def log_tail(self, limit: int) -> str:
        """The last `limit` bytes of its output (from a line start when cut)."""
        try:
            size = self.paths.log.stat().st_size
            with self.paths.log.open("rb") as source:
                source.seek(max(0, size - limit))
                data = source.read(limit)
        except FileNotFoundError:
            return ""
        if size > limit and b"\n" in data:
            data = data[data.index(b"\n") + 1:]
        return data.decode("utf-8", errors="replace")


def failure_reason(code: int, tail: str) -> str:
    """Why a training failed: its `error: ...` lines, else how it ended."""
    errors = [line[len(ERROR_PREFIX):].strip() for line in tail.splitlines()
              if line.startswith(ERROR_PREFIX)]
    if errors:
        return "; ".join(errors)[-2000:]
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return f"the training process was killed ({name})"
    last = [line for line in tail.splitlines() if line.strip()][-3:]
    detail = (": " + " | ".join(last))[-1000:] if last else ""
    return f"the training process exited with code {code}{detail}"
