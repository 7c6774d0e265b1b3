"""RPA runner configuration, from `BOTFACTORY_RPA_*` environment variables."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.config import load_config, require
from services.common.subjects import DEFAULT_PARTITIONS

SECTION = "rpa"
PREFIX = "BOTFACTORY_RPA_"
CHROMIUM = "/usr/bin/chromium"


@dataclass(frozen=True)
class RunnerConfig:
    nats_url: str = "nats://127.0.0.1:4222"
    # Bot folders served from disk (comma list); bots deployed through the admin API are read
    # from KV `bots` as well.
    bots: tuple[str, ...] = ()
    # Overrides of the bots' rpa.yml settings, `name=value` (comma list); a value that reads
    # as JSON (true, 12, "x") takes that type, e.g. core_bank_url=http://bank:8080.
    settings: tuple[str, ...] = ()
    # Must match the dialogue's (the recorded value in KV `bots` wins).
    partitions: int = DEFAULT_PARTITIONS
    # Runs one process executes at once.
    concurrency: int = 64
    # Seconds a job may go without an in-progress ack before another runner takes it over
    # (also the lease on a run's checkpoint).
    ack_wait_s: float = 30.0
    # Waits (wait steps, retry back-off) up to this long stay in the process; longer ones
    # park the run (the job is redelivered when it is due).
    inline_wait_max_s: float = 5.0
    # A parked run is looked at again at least this often.
    park_max_s: float = 300.0
    # A run resumed after this many runner crashes fails (its job is dead-lettered).
    max_resumes: int = 10
    # A run a conversation waits for that is still going after this many seconds tells the
    # conversation once (`workflow_progress`: the bot says it is still working on it).
    # 0 disables the notice.
    progress_notice_s: float = 10.0
    http_timeout_s: float = 30.0
    browser_timeout_s: float = 60.0
    browser_concurrency: int = 2
    chromium_path: str = CHROMIUM
    screenshots_dir: Path = Path(".botfactory/screenshots")
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50081
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9104
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"

    def validate(self) -> None:
        require(bool(self.nats_url), f"{PREFIX}NATS_URL", "is required")
        require(1 <= self.partitions <= 1024, f"{PREFIX}PARTITIONS", "must be 1..1024")
        require(1 <= self.concurrency <= 10000, f"{PREFIX}CONCURRENCY", "must be 1..10000")
        require(self.ack_wait_s >= 1, f"{PREFIX}ACK_WAIT_S", "must be >= 1")
        require(self.inline_wait_max_s >= 0, f"{PREFIX}INLINE_WAIT_MAX_S", "must be >= 0")
        require(self.park_max_s >= 1, f"{PREFIX}PARK_MAX_S", "must be >= 1")
        require(self.max_resumes >= 1, f"{PREFIX}MAX_RESUMES", "must be >= 1")
        require(self.progress_notice_s >= 0, f"{PREFIX}PROGRESS_NOTICE_S", "must be >= 0")
        require(self.http_timeout_s > 0, f"{PREFIX}HTTP_TIMEOUT_S", "must be > 0")
        require(self.browser_timeout_s > 0, f"{PREFIX}BROWSER_TIMEOUT_S", "must be > 0")
        require(self.browser_concurrency >= 1, f"{PREFIX}BROWSER_CONCURRENCY", "must be >= 1")
        require(0 <= self.grpc_port <= 65535, f"{PREFIX}GRPC_PORT", "must be 0..65535")
        require(0 <= self.metrics_port <= 65535, f"{PREFIX}METRICS_PORT", "must be 0..65535")
        for item in self.settings:
            require("=" in item, f"{PREFIX}SETTINGS", f"{item!r} is not name=value")

    def setting_overrides(self) -> dict[str, Any]:
        return dict(parse_setting(item) for item in self.settings)


def parse_setting(item: str) -> tuple[str, Any]:
    name, _, raw = item.partition("=")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return name.strip(), value


def load() -> RunnerConfig:
    return load_config(RunnerConfig, SECTION)
