"""`botfactory channels telegram set-webhook / webhook-info` against a local stand-in for the
Bot API (an http.server thread): what it sends, and how it reports Telegram's refusals."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from botfactory.cli import main

TOKEN = "123456:ABCdefGhIJKlmNoPQRstuVWxyz0123456789"


class Recorder(BaseHTTPRequestHandler):
    calls: ClassVar[list[tuple[str, Any]]] = []
    answer: ClassVar[tuple[int, dict[str, Any]]] = (200, {"ok": True, "result": True,
                                                 "description": "Webhook was set"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        Recorder.calls.append((self.path, json.loads(self.rfile.read(length) or b"{}")))
        status, body = Recorder.answer
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    Recorder.calls = []
    Recorder.answer = (200, {"ok": True, "result": True, "description": "Webhook was set"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_set_webhook_sends_the_url_secret_and_updates(api: str, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_SECRET_TOKEN", "s3cret")
    code = main(["channels", "telegram", "set-webhook", "--api-base", api,
                 "--url", "https://chat.example.com/v1/channels/telegram/banking"])
    assert code == 0, capsys.readouterr().err
    assert Recorder.calls == [(f"/bot{TOKEN}/setWebhook", {
        "url": "https://chat.example.com/v1/channels/telegram/banking",
        "secret_token": "s3cret", "allowed_updates": ["message", "callback_query"]})]
    assert "Webhook was set" in capsys.readouterr().out


def test_refusals_and_missing_tokens_are_clear_errors(api: str,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    monkeypatch.delenv("TELEGRAM_SECRET_TOKEN", raising=False)
    url = "https://chat.example.com/v1/channels/telegram/banking"
    assert main(["channels", "telegram", "set-webhook", "--api-base", api, "--url", url]) == 2
    assert "bot token" in capsys.readouterr().err
    assert main(["channels", "telegram", "set-webhook", "--api-base", api, "--bot-token",
                 TOKEN, "--secret-token", "s", "--url", "http://insecure"]) == 2
    assert "HTTPS" in capsys.readouterr().err
    Recorder.answer = (401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
    try:
        assert main(["channels", "telegram", "webhook-info", "--api-base", api,
                     "--bot-token", TOKEN]) == 1
    finally:
        Recorder.answer = (200, {"ok": True, "result": {"url": url, "pending_update_count": 0}})
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "Unauthorized" in err and "Traceback" not in err
    assert main(["channels", "telegram", "webhook-info", "--api-base", api,
                 "--bot-token", TOKEN]) == 0
    assert json.loads(capsys.readouterr().out)["url"] == url
