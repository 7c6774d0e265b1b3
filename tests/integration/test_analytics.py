"""Analytics end to end: conversations through the gateway, the dialogue's shared `analytics`
consumer counting the events into its metrics (two replicas: each event counted once), and
`botfactory report` reading the CONV stream into an HTML file. Intents are forced with
`/intent{...}` payloads (the tiny test model's predictions are meaningless)."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from botfactory.cli import main
from botfactory.local.nats_server import NatsServer
from tests.support.stack import Stack, running_stack

TRANSFER = '/transfer_money{"amount": "50", "recipient": "anna"}'
UNKNOWN = "/order_pizza<b>"
"""A payload naming no intent of the bot: a fallback (and a user text the report escapes)."""


def total(stack: Stack, name: str, **labels: str) -> float:
    """A counter summed over the dialogue replicas."""
    found = 0.0
    for dialogue in stack.dialogues:
        value = dialogue.metrics.registry.get_sample_value(name, {"bot": "banking", **labels})
        found += value or 0.0
    return found


async def feedback(stack: Stack, conversation: str, message_id: str, rating: int,
                   comment: str) -> None:
    assert stack.session is not None
    url = (f"{stack.base_url}/v1/bots/banking/conversations/{conversation}/messages/"
           f"{message_id}/feedback")
    headers = {"Authorization": f"Bearer {stack.client_key}"}
    async with stack.session.post(url, json={"rating": rating, "comment": comment},
                                  headers=headers) as resp:
        assert resp.status == 202, await resp.text()


async def talk(stack: Stack) -> None:
    async def say(conversation: str, text: str) -> dict[str, Any]:
        status, body = await stack.post(conversation, text)
        assert status == 200, body
        return body

    first = await say("an1", "/greet")
    await say("an1", TRANSFER)
    await say("an1", "/deny")
    second = await say("an2", "/greet")
    await say("an2", "/human_handoff")
    await say("an3", UNKNOWN)
    await say("an3", "/greet")
    await feedback(stack, "an1", first["replies"][0]["message_id"], 1, "")
    await feedback(stack, "an2", second["replies"][0]["message_id"], -1, "<i>meh</i>")


EXPECTED = {
    ("botfactory_conversations_total", ()): 3.0,
    ("botfactory_user_messages_total", ()): 7.0,
    ("botfactory_fallbacks_total", ()): 1.0,
    ("botfactory_handoffs_total", ()): 1.0,
    ("botfactory_flows_started_total", (("flow", "transfer_money"),)): 1.0,
    ("botfactory_flows_completed_total", (("flow", "transfer_money"),)): 1.0,
    ("botfactory_flows_cancelled_total", (("flow", "transfer_money"),)): 0.0,
    # the bot's human_handoff flow completes at its own handoff step
    ("botfactory_flows_started_total", (("flow", "human_handoff"),)): 1.0,
    ("botfactory_flows_completed_total", (("flow", "human_handoff"),)): 1.0,
    ("botfactory_flows_cancelled_total", (("flow", "human_handoff"),)): 0.0,
    ("botfactory_feedback_events_total", (("rating", "up"),)): 1.0,
    ("botfactory_feedback_events_total", (("rating", "down"),)): 1.0,
}


def counted(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {key: total(stack, key[0], **dict(key[1])) for key in EXPECTED}


async def wait_counted(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The counters once they reach the expected values (or after 10 s)."""
    for _ in range(200):
        if counted(stack) == EXPECTED:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # anything counted twice would show up by now
    return counted(stack)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
    return text


def card(page: str, label: str) -> str:
    match = re.search(rf'<div class="value">([^<]*)</div><div class="label">{label}</div>', page)
    assert match is not None, label
    return match.group(1)


async def test_metrics_count_each_event_once_and_report_shows_the_totals(
        nats_server: NatsServer, tiny_banking_model: Path, tmp_path: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model, dialogues=2) as stack:
        await talk(stack)
        assert await wait_counted(stack) == EXPECTED

        servers = [d.metrics_server for d in stack.dialogues]
        exported = "".join(scrape(s.port) for s in servers if s is not None)
        assert 'botfactory_user_messages_total{bot="banking"}' in exported
        assert "# TYPE botfactory_conversations_total counter" in exported

        out = tmp_path / "reports" / "banking.html"
        code = await asyncio.to_thread(main, ["report", "banking", "--nats", nats_server.url,
                                              "--out", str(out)])
        assert code == 0
        page = out.read_text(encoding="utf-8")
        assert card(page, "conversations") == "3"
        assert card(page, "user messages") == "7"
        assert card(page, "containment") == "66.7%"
        assert card(page, "fallback rate") == "14.3%"
        assert card(page, "handoff rate") == "33.3%"
        assert card(page, "flow completion") == "100.0%"  # transfer and handoff flows done
        assert card(page, "feedback score") == "+0.00"
        assert ("<tr><td>transfer_money</td><td class=\"num\">1</td><td class=\"num\">1</td>"
                "<td class=\"num\">0</td><td class=\"num\">100.0%</td></tr>") in page
        assert "<td>/order_pizza&lt;b&gt;</td>" in page  # the fallback text, escaped
        assert "<td>greet</td><td class=\"num\">3</td>" in page  # top intent
        assert "<b>" not in page and "<i>meh" not in page
        assert page.count("data:image/png;base64,") == 3

        since = tmp_path / "since.html"
        code = await asyncio.to_thread(main, ["report", "banking", "--nats", nats_server.url,
                                              "--out", str(since), "--since", "1h"])
        assert code == 0
        assert card(since.read_text(encoding="utf-8"), "conversations") == "3"


async def test_report_exits_2_for_a_bot_without_events(
        nats_server: NatsServer, tiny_banking_model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        status, _ = await stack.post("x1", "/greet")
        assert status == 200
        out = tmp_path / "none.html"
        code = await asyncio.to_thread(main, ["report", "nobody", "--nats", nats_server.url,
                                              "--out", str(out)])
        assert code == 2
        err = capsys.readouterr().err
        assert "no events for bot 'nobody'" in err and "Traceback" not in err
        assert not out.exists()
