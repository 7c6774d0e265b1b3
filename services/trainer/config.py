"""Trainer configuration, from `BOTFACTORY_TRAINER_*` environment variables."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from services.common.config import load_config, require

SECTION = "trainer"
PREFIX = "BOTFACTORY_TRAINER_"


@dataclass(frozen=True)
class TrainerConfig:
    nats_url: str = "nats://127.0.0.1:4222"
    # Trainings this worker runs at once (each a `botfactory train` process: size the pod's CPU
    # and memory for this many).
    concurrency: int = 1
    # Each job's bot folder, model directory, events and log, removed when the job ends.
    work_dir: Path = Path("/tmp/botfactory-trainer")
    # How often a running job's record is rewritten (heartbeat, progress, log tail) and its
    # queue message acknowledged as in progress.
    heartbeat_s: float = 2.0
    # A running job whose heartbeat is older than this is failed as "trainer lost" (by the
    # gateway when it reads it, by any trainer's sweep).
    lost_after_s: float = 30.0
    # Seconds a taken job may go without an in-progress ack before JetStream hands it out
    # again (a redelivered running job of a dead trainer is failed, never run twice).
    ack_wait_s: float = 30.0
    # How often every running job of every trainer is checked for a lost heartbeat.
    sweep_s: float = 15.0
    # The tail of a training's output kept with the job (GET .../trainings/{id}/logs).
    log_tail_bytes: int = 64 * 1024
    # On cancel or shutdown: SIGTERM to the training, SIGKILL after this many seconds.
    stop_grace_s: float = 10.0
    # The training command; the job adds BOT_DIR --out MODEL_DIR --events FILE and options.
    # Empty: `<this python> -m botfactory train`.
    train_command: tuple[str, ...] = ()
    # CPU priority of the training processes (0..19; 19: the lowest, as `make run` uses).
    nice: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9105
    log_level: str = "INFO"

    def validate(self) -> None:
        require(bool(self.nats_url), f"{PREFIX}NATS_URL", "is required")
        require(1 <= self.concurrency <= 64, f"{PREFIX}CONCURRENCY", "must be 1..64")
        require(self.heartbeat_s > 0, f"{PREFIX}HEARTBEAT_S", "must be > 0")
        require(self.lost_after_s >= 3 * self.heartbeat_s, f"{PREFIX}LOST_AFTER_S",
                "must be at least 3 x BOTFACTORY_TRAINER_HEARTBEAT_S")
        require(self.ack_wait_s >= 2 * self.heartbeat_s, f"{PREFIX}ACK_WAIT_S",
                "must be at least 2 x BOTFACTORY_TRAINER_HEARTBEAT_S")
        require(self.sweep_s > 0, f"{PREFIX}SWEEP_S", "must be > 0")
        require(self.log_tail_bytes >= 1024, f"{PREFIX}LOG_TAIL_BYTES", "must be >= 1024")
        require(self.log_tail_bytes <= 512 * 1024, f"{PREFIX}LOG_TAIL_BYTES",
                "must be <= 524288 (it is stored in one KV entry)")
        require(self.stop_grace_s >= 0, f"{PREFIX}STOP_GRACE_S", "must be >= 0")
        require(0 <= self.nice <= 19, f"{PREFIX}NICE", "must be 0..19")
        require(0 <= self.metrics_port <= 65535, f"{PREFIX}METRICS_PORT", "must be 0..65535")

    def command(self) -> list[str]:
        return list(self.train_command) or [sys.executable, "-m", "botfactory", "train"]


def load() -> TrainerConfig:
    return load_config(TrainerConfig, SECTION)
