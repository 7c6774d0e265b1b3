"""`botfactory run BOT --free-ports` end to end: a bot made by `botfactory new` (its model
trained on a tiny encoder beforehand) on the real stack on free ports, the printed URL and key
answering, its workflow calling the API named by `--setting` with the token of its
secrets.env, no demo bank, and a clean stop on Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from botfactory.scaffold import create_bot
from services.botdef import load_bot
from tests.support.models import make_tiny_encoder

ROOT = Path(__file__).resolve().parents[2]
CHAT = re.compile(r"web chat:\s+(http://\S+)/\s+\(bot: (\S+), API key: (\S+)\)")
TOKEN = "t0k3n-of-the-orders-api"


class OrdersApi(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str]]] = []

    def do_GET(self) -> None:
        OrdersApi.seen.append((self.path, self.headers.get("Authorization", "")))
        ok = self.headers.get("Authorization") == f"Bearer {TOKEN}"
        body = json.dumps({"status": "shipped"} if ok else {"error": "no"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def orders_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), OrdersApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture()
def trained_bot(tmp_path: Path) -> tuple[Path, Path]:
    """(bot folder, data dir with the bot's model already in models/)."""
    from botfactory.training import CheckThresholds, train_bot

    bot_dir = tmp_path / "orders"
    create_bot("orders", bot_dir)
    (bot_dir / "secrets.env").write_text(f"ORDERS_API_TOKEN={TOKEN}\n")
    data_dir = tmp_path / "data"
    train_bot(load_bot(bot_dir), data_dir / "models" / "orders",
              base_model=str(make_tiny_encoder(tmp_path / "encoder")), epochs=1,
              progress=False, checks=CheckThresholds(max_int8_disagreement=1.0))
    return bot_dir, data_dir


def _send(url: str, bot: str, key: str, text: str) -> list[str]:
    request = urllib.request.Request(
        f"{url}/v1/bots/{bot}/conversations/run-test/messages",
        data=json.dumps({"text": text}).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return [str(reply.get("text", "")) for reply in json.loads(response.read())["replies"]]


def _wait_running(process: subprocess.Popen[str], lines: list[str]) -> re.Match[str]:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        found = CHAT.search(line)
        if found:
            return found
    raise AssertionError("botfactory run ended before it was running:\n" + "".join(lines))


@pytest.mark.timeout(300)
def test_run_a_new_bot_on_free_ports(trained_bot: tuple[Path, Path], orders_api: str) -> None:
    bot_dir, data_dir = trained_bot
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTFACTORY_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "botfactory", "run", str(bot_dir), "--free-ports",
         "--data-dir", str(data_dir), "--no-sentiment",
         "--setting", f"orders_api_url={orders_api}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    lines: list[str] = []
    try:
        found = _wait_running(process, lines)
        url, bot, key = found.group(1), found.group(2), found.group(3)
        assert bot == "orders" and not url.endswith(":8080")
        assert "order number" in " ".join(_send(url, bot, key, "/check_order"))
        _send(url, bot, key, '/inform{"order_id": "AB-1234"}')
        replies = " ".join(_send(url, bot, key, "/affirm"))
        assert "Order AB-1234 is shipped" in replies, (replies, OrdersApi.seen)
        assert OrdersApi.seen == [("/orders/AB-1234", f"Bearer {TOKEN}")]
    finally:
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    output = "".join(lines) + rest
    assert process.returncode == 0, output
    assert "demo_bank" not in output and "Traceback" not in output
    assert TOKEN not in output
