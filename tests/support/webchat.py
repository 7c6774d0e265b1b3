"""The web chat page in a headless Chromium: Debian's chromium (installed when missing and
root), the gateway app served with an in-memory echo hub, and opening the chat page
(tests/integration/test_webchat_browser.py, test_kb_dialogue.py; fixtures in conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from playwright.async_api import BrowserContext, ConsoleMessage, Page

from tests.support.gateway import FakeHub

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 10_000


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True,
                          timeout=1200, check=False)


def install_chromium() -> str:
    """Install Debian's chromium (as root, with apt-get); '' when it worked, else why not."""
    if os.geteuid() != 0:
        return "not running as root, so `apt-get install -y chromium` cannot be run"
    if shutil.which("apt-get") is None:
        return "apt-get is not available on this machine"
    result = _apt("install", "-y", "chromium")
    if result.returncode != 0:  # stale package lists: refresh once and retry
        _apt("update")
        result = _apt("install", "-y", "chromium")
    if result.returncode != 0 or not os.access(CHROMIUM, os.X_OK):
        return f"`apt-get install -y chromium` failed:\n{(result.stdout + result.stderr)[-3000:]}"
    return ""


@dataclass
class Served:
    url: str
    hub: FakeHub
    app: web.Application


async def open_chat(context: BrowserContext, served: Served, key: str,
                    conversation: str) -> tuple[Page, list[str]]:
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(served.url + "/")
    await page.get_by_test_id("api-key").fill(key)
    await page.get_by_test_id("bot").fill("alpha")
    await page.get_by_test_id("conversation").fill(conversation)
    await page.get_by_test_id("connect").click()
    return page, errors
