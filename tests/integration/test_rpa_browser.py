"""The `browser` step in headless Chromium (Playwright, Debian's `chromium`) against the demo
bank's legacy web form: filling and submitting it, extracting the record id, a screenshot on
failure, and the allow-list held for the browser too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from botfactory.local.nats_server import NatsServer
from services.rpa_runner.config import CHROMIUM
from tests.support.rpa import PIN, harness, write_test_bot

FORM = """
name: file
inputs: {amount: number, to: string, reference: string}
outputs: {record: steps.form.outputs.record}
steps:
  - id: form
    browser:
      actions:
        - goto: "{{ settings.bank }}/legacy/transfers/new"
        - fill: {selector: "#reference", value: "{{ inputs.reference }}"}
        - fill: {selector: "#amount", value: "{{ money(inputs.amount) }}"}
        - select: {selector: "#currency", value: GBP}
        - fill: {selector: "#recipient", value: "{{ inputs.to }}"}
        - fill: {selector: "#operator-pin", value: "{{ secrets.LEGACY_PIN }}"}
        - click: "#submit"
        - wait_for: "#record-id"
        - extract_text: {selector: "#record-id", output: record}
        - extract_text: {selector: "#confirmation", output: confirmation}
    timeout: 20s
"""
BROKEN = """
name: broken
steps:
  - id: form
    browser:
      actions:
        - goto: "{{ settings.bank }}/legacy/transfers/new"
        - click: "#no-such-button"
    timeout: 3s
"""
ESCAPE = """
name: escape
inputs: {url: string}
steps:
  - id: visit
    browser:
      actions:
        - goto: "{{ inputs.url }}"
"""


pytestmark = pytest.mark.usefixtures("rpa_secrets")


@pytest.fixture(scope="module")
def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"the browser step tests need {CHROMIUM} (Debian package `chromium`)",
                    pytrace=False)
    return CHROMIUM


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


async def test_browser_step_files_the_legacy_form(nats_server: NatsServer, tmp_path: Path,
                                                  chromium: str) -> None:
    bot = write_test_bot(tmp_path / "bot", {"file": FORM, "broken": BROKEN, "escape": ESCAPE})
    async with harness(nats_server.url, bot, browser_timeout_s=5.0,
                       chromium_path=chromium) as h:
        inputs = {"amount": 12.5, "to": "Anna Smith", "reference": "ref-1"}
        result, state = await h.run("file", inputs, limit_s=60)
        assert result["status"] == "succeeded", result
        assert result["outputs"]["record"].startswith("REC-")
        assert state.steps["form"]["outputs"]["confirmation"] == (
            "Transfer record filed for 12.50 GBP to Anna Smith.")
        again, _ = await h.run("file", inputs, limit_s=60)  # the same reference: filed once
        assert again["outputs"]["record"] == result["outputs"]["record"]
        stats = await h.bank("GET", "/_stats")
        assert stats["effects"] == {"legacy_record": 1}

        result, state = await h.run("broken", limit_s=60)
        assert result["status"] == "failed"
        assert "action 2 (click #no-such-button)" in result["error"]
        screenshot = Path(result["error"].rsplit("(screenshot: ", 1)[1].rstrip(")"))
        assert is_png(screenshot) and screenshot.parent == bot / "screenshots"

        result, _ = await h.run("escape", {"url": "http://169.254.169.254/"}, limit_s=60)
        assert result["status"] == "failed" and "allow-list" in result["error"]
        stored = [s.to_json().decode() for s in await h.store.all()]
    assert all(PIN not in text for text in stored)
