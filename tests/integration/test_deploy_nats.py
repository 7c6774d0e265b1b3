"""deploy/'s NATS configs against a real nats-server: `nats-server -t` on every config, the
JetStream setup script on one node, and base/nats/nats.conf forming a three-node cluster
(moved from tests/unit/test_deploy.py: these start servers). `make k8s-validate` runs it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from botfactory.local.nats_server import NatsServer, nats_server_binary
from botfactory.local.processes import wait_for_event
from services.common.nats import KV_BUCKETS, OBJ_MODELS, STREAMS
from tests.support.k8s import K8S, ROOT, by_name


def test_nats_configs_are_valid(tmp_path: Path) -> None:
    """nats-server -t on every NATS config, with exactly the variables the pod provides."""
    statefulset = by_name("base", "StatefulSet")["nats"]
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    provided = {item["name"] for item in container["env"]}
    for config in (K8S / "base" / "nats" / "nats.conf",
                   K8S / "overlays" / "dev" / "nats-standalone.conf"):
        text = re.sub(r"#.*", "", config.read_text(encoding="utf-8"))
        text = re.sub(r'"[^"]*"', '""', text)  # "$JS.API.>" in a permission is no variable
        needed = set(re.findall(r"\$([A-Z_][A-Z0-9_]*)", text))
        assert needed <= provided, f"{config.name}: the pod does not set {needed - provided}"
        env = {**os.environ, **{name: "placeholder" for name in provided},
               **{item["name"]: item["value"] for item in container["env"] if "value" in item}}
        result = subprocess.run([nats_server_binary(), "-t", "-c", str(config)], env=env,
                                capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert result.returncode == 0, f"{config.name}: {result.stdout}{result.stderr}"


def test_jetstream_setup_provisions_idempotently(nats_server: NatsServer) -> None:
    """The gateway's init container script against a real nats-server (one node: R1)."""
    script = K8S / "base" / "nats" / "jetstream_setup.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NATS_URL": nats_server.url,
           "JETSTREAM_REPLICAS": "1", "CONNECT_TIMEOUT_S": "5"}
    for _ in range(2):
        result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        events = [json.loads(line) for line in result.stdout.splitlines()
                  if line.startswith("{")]
        done = {e["stream"] for e in events if e["event"] in ("replicas_ok", "replicas_set")}
        expected = {c.name for c in STREAMS} | {f"KV_{b}" for b, _ in KV_BUCKETS} | \
            {f"OBJ_{OBJ_MODELS}"}
        assert done == expected


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_healthy(http_port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"NATS on :{http_port} not healthy in {timeout} s"
        time.sleep(0.2)


def test_nats_cluster_config_forms_a_cluster_and_setup_raises_replicas(tmp_path: Path) -> None:
    """base/nats/nats.conf, ports and paths moved to this machine: three servers form the
    JetStream cluster, clients authenticate as their users, and jetstream_setup.py raises
    every asset to R3 (then finds them there). The setup starts with one server up (no
    JetStream quorum yet, as when the pods start one by one) and waits for the others."""
    conf = (K8S / "base" / "nats" / "nats.conf").read_text(encoding="utf-8")
    clients, routes, monitors = free_ports(3), free_ports(3), free_ports(3)
    for i in range(3):
        conf = conf.replace(f"nats://nats-{i}.nats-headless:6222", f"nats://127.0.0.1:{routes[i]}")
    passwords = {name: f"pw-{name.lower()}" for name in
                 ("ADMIN_PASSWORD", "GATEWAY_PASSWORD", "DIALOGUE_PASSWORD", "NLU_PASSWORD",
                  "RPA_RUNNER_PASSWORD", "TRAINER_PASSWORD")}
    processes: list[subprocess.Popen[bytes]] = []

    def start_server(i: int) -> None:
        home = tmp_path / f"nats-{i}"
        home.mkdir()
        text = (conf.replace("port: 4222", f"port: {clients[i]}")
                .replace("http_port: 8222", f"http_port: {monitors[i]}")
                .replace("port: 6222", f"port: {routes[i]}")
                .replace("/data/jetstream", str(home / "jetstream"))
                .replace("/var/run/nats/nats.pid", str(home / "nats.pid")))
        (home / "nats.conf").write_text(text)
        env = {**os.environ, **passwords, "POD_NAME": f"nats-{i}"}
        log = (home / "log").open("wb")
        processes.append(subprocess.Popen([nats_server_binary(), "-c", str(home / "nats.conf")],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))

    script = K8S / "base" / "nats" / "jetstream_setup.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JETSTREAM_REPLICAS": "3",
           "CONNECT_TIMEOUT_S": "60",
           "NATS_URL": f"nats://admin:{passwords['ADMIN_PASSWORD']}@127.0.0.1:{clients[0]}"}
    try:
        start_server(0)
        first_out = tmp_path / "setup-1.out"
        with first_out.open("wb") as out:
            first = subprocess.Popen([sys.executable, str(script)], env=env, stdout=out,
                                     stderr=subprocess.STDOUT)
        try:
            wait_for_event(first_out, first, "jetstream_not_ready", timeout=60)
            start_server(1)
            start_server(2)
            assert first.wait(timeout=120) == 0, first_out.read_text()
        finally:
            if first.poll() is None:
                first.kill()
        second = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 0, second.stdout + second.stderr
        seen = [{e["event"] for e in json_lines(text) if "stream" in e}
                for text in (first_out.read_text(), second.stdout)]
        assert seen == [{"replicas_set"}, {"replicas_ok"}]
        for port in monitors:
            wait_healthy(port, 30)
        bad = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=60, env={**env, "CONNECT_TIMEOUT_S": "1", "NATS_URL":
                                              f"nats://admin:wrong@127.0.0.1:{clients[1]}"})
        assert bad.returncode != 0, "a wrong password is refused"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
