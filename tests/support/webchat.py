"""The web chat page in a headless Chromium: Debian's chromium (installed when missing and
root), the gateway app served with an in-memory echo hub, opening the chat page, and typing
through an input method (tests/integration/test_webchat_browser.py, test_kb_dialogue.py,
test_widget_browser.py; fixtures in conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from playwright.async_api import BrowserContext, ConsoleMessage, Locator, Page

from tests.support.gateway import FakeHub

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 10_000
COMPOSITION_GUARD_MS = 100  # chat.js, widget.js: an Enter this soon after compositionend waits

# Synthetic Enter keydowns on a text field (untrusted: they submit nothing) and whether the
# page prevented each: the ones an input method's Enter looks like in some browser must be.
_HELD_BACK = """field => {
  const prevented = (init) => !field.dispatchEvent(new KeyboardEvent("keydown",
    { key: "Enter", bubbles: true, cancelable: true, ...init }));
  const plain = prevented({});
  const keyCode229 = prevented({ keyCode: 229 });
  const isComposing = prevented({ isComposing: true });
  field.dispatchEvent(new CompositionEvent("compositionstart", { data: "" }));
  const duringComposition = prevented({});
  field.dispatchEvent(new CompositionEvent("compositionend", { data: "" }));
  const rightAfterIt = prevented({});  // Safari: the keydown comes after compositionend
  return { plain, keyCode229, isComposing, duringComposition, rightAfterIt };
}"""


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


async def held_back_enters(field: Locator) -> dict[str, bool]:
    """Which Enter keydowns the field's page prevents (so they send nothing), by kind: a plain
    one, keyCode 229, isComposing, one during a composition and one right after it ends."""
    found: dict[str, bool] = await field.evaluate(_HELD_BACK)
    return found


async def compose(page: Page, reading: str) -> None:
    """Start an input method composition of `reading` (pinyin) in the focused field and press
    Enter while composing, as Chromium's IME does: the keydown has isComposing."""
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Input.imeSetComposition",
                   {"text": reading, "selectionStart": len(reading), "selectionEnd": len(reading)})
    await page.keyboard.press("Enter")
    await cdp.detach()


async def commit(page: Page, text: str) -> None:
    """End the composition with `text` (the characters picked: compositionend)."""
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Input.insertText", {"text": text})
    await cdp.detach()
