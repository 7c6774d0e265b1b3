"""The review queue end to end: conversations through the real stack (tiny NLU model: its
confidence is low on real text), the dialogue's review collector filling KV `review`, the
gateway's admin review API, and `botfactory review apply` writing a bot folder."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from botfactory.cli import main
from botfactory.local.nats_server import NatsServer
from services.botdef import load_bot
from services.common.nats import connect
from tests.support.polling import eventually
from tests.support.stack import ROOT, Stack, issue_key, running_stack

GREETING = "hello there my friend"
CARD_TEXT = "please pay 4111 1111 1111 1111 to the landlord"
SHADOW = {"text": "shut down my account", "conversation_id": "s1", "message_id": "sh1",
          "active": {"intent": "block_card", "confidence": 0.55, "version": "v1"},
          "candidate": {"intent": "out_of_scope", "confidence": 0.7, "version": "v2"}}


async def request(stack: Stack, key: str, method: str, path: str,
                  body: Any = None) -> tuple[int, Any]:
    assert stack.session is not None
    url = f"{stack.base_url}/v1/admin/bots/banking/review{path}"
    async with stack.session.request(method, url, json=body,
                                     headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status, await resp.json(content_type=None)


async def wait_items(stack: Stack, key: str, count: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for _ in range(200):
        status, body = await request(stack, key, "GET", "?limit=100")
        assert status == 200, body
        items = body["items"]
        by_text = {i["text"]: i for i in items}
        card = by_text.get("please pay [CARD] to the landlord", {})
        greeting = by_text.get(GREETING, {})
        shadowed = any("disagreement" in i.get("reasons", ()) for i in items)
        if (len(items) >= count and card.get("count") == 2 and shadowed
                and "negative_feedback" in greeting.get("reasons", ())):
            return items
        await asyncio.sleep(0.05)
    return items


async def talk(stack: Stack, admin_url: str) -> None:
    for conversation in ("r1", "r2"):
        status, body = await stack.post(conversation, CARD_TEXT)
        assert status == 200, body
    status, body = await stack.post("r3", "/greet")
    assert status == 200, body
    status, body = await stack.post("r3", GREETING)
    assert status == 200, body
    assert stack.session is not None
    rated = body["replies"][0]["message_id"]
    url = f"{stack.base_url}/v1/bots/banking/conversations/r3/messages/{rated}/feedback"
    async with stack.session.post(url, json={"rating": -1},
                                  headers={"Authorization": f"Bearer {stack.client_key}"}) as r:
        assert r.status == 202
    bus = await connect(admin_url, name="shadow-publisher")  # as the NLU service would
    try:
        await bus.js.publish("events.nlu.shadow.banking", json.dumps(SHADOW).encode())
    finally:
        await bus.drain()


async def test_review_queue_collects_decides_and_applies(
        nats_server: NatsServer, tiny_banking_model: Path, tmp_path: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        assert stack.session is not None
        admin = await issue_key(stack.session, stack.base_url, role="admin")
        for page in ("review.html", "review.js"):
            async with stack.session.get(f"{stack.base_url}/static/{page}") as resp:
                assert resp.status == 200 and "/review" in await resp.text()
        await talk(stack, nats_server.url)
        items = await wait_items(stack, admin, 3)
        by_text = {i["text"]: i for i in items}
        card = by_text["please pay [CARD] to the landlord"]
        # the tiny model is never sure: NLU flags the text out of scope, the turn falls back
        assert card["count"] == 2 and {"out_of_scope", "fallback"} <= set(card["reasons"])
        assert card["min_confidence"] < 0.6
        assert "4111" not in json.dumps(items) and "message_ids" not in card
        assert "negative_feedback" in by_text[GREETING]["reasons"]
        assert [i["priority"] for i in items] == sorted((i["priority"] for i in items),
                                                        reverse=True)

        async def disagreements() -> list[dict[str, Any]]:
            status, body = await request(stack, admin, "GET", "?reason=disagreement")
            assert status == 200, body
            found: list[dict[str, Any]] = body["items"]
            return found

        # The full listing above already showed the disagreement; a loaded CI host once gave
        # an empty filtered listing right after it: wait for it rather than race.
        listed = await eventually(disagreements, "the shadow disagreement in the filtered list")
        assert [i["text"] for i in listed] == [SHADOW["text"]]
        shadow = listed[0]
        assert shadow["candidate"]["intent"] == "out_of_scope"
        assert shadow["predicted"]["intent"] == "block_card"

        await check_bad_decisions(stack, admin, card["id"])
        start = card["text"].index("[CARD]")
        status, decided = await request(stack, admin, "POST", "/decisions", {
            "item": card["id"], "intent": "transfer_money",
            "entities": [{"entity": "recipient", "start": card["text"].index("landlord"),
                          "end": card["text"].index("landlord") + 8}]})
        assert status == 200 and decided["status"] == "decided", decided
        assert start > 0
        status, _ = await request(stack, admin, "POST", "/decisions",
                                  {"item": shadow["id"], "out_of_scope": True})
        assert status == 200
        status, skipped = await request(stack, admin, "POST", "/skips",
                                        {"item": by_text[GREETING]["id"]})
        assert status == 200 and skipped["status"] == "skipped"
        status, body = await request(stack, admin, "GET", "")
        pending = {i["id"] for i in body["items"]}
        assert card["id"] not in pending and by_text[GREETING]["id"] not in pending

        bot_dir = tmp_path / "banking"
        shutil.copytree(ROOT / "bots" / "banking", bot_dir)
        argv = ["review", "apply", "banking", "--gateway", stack.base_url, "--api-key", admin,
                "--bot-dir", str(bot_dir)]
        assert await asyncio.to_thread(main, argv) == 0
        reviewed = (bot_dir / "data" / "nlu" / "reviewed.yml").read_text(encoding="utf-8")
        assert "please pay \\[CARD\\] to the [landlord](recipient)" in reviewed
        assert "shut down my account" in reviewed
        bot = load_bot(bot_dir)
        assert ("shut down my account", "out_of_scope") in {(e.text, e.intent)
                                                            for e in bot.examples()}
        status, body = await request(stack, admin, "GET", "?status=applied")
        assert {i["id"] for i in body["items"]} == {card["id"], shadow["id"]}
        assert await asyncio.to_thread(main, argv) == 0  # nothing decided any more
        assert (bot_dir / "data" / "nlu" / "reviewed.yml").read_text(
            encoding="utf-8") == reviewed


async def check_bad_decisions(stack: Stack, admin: str, item: str) -> None:
    status, body = await request(stack, admin, "POST", "/decisions",
                                 {"item": "0" * 24, "intent": "greet"})
    assert status == 404, body
    status, body = await request(stack, admin, "POST", "/decisions",
                                 {"item": item, "intent": "greet", "out_of_scope": True})
    assert status == 400 and body["errors"][0]["field"] == "intent"
    status, body = await request(stack, admin, "POST", "/decisions", {
        "item": item, "intent": "greet", "entities": [{"entity": "x", "start": 0, "end": 999}]})
    assert status == 400 and body["errors"][0]["field"] == "entities[0]"
    status, body = await request(stack, admin, "POST", "/applied", {"items": [item]})
    assert status == 409, body
    assert stack.session is not None
    status, body = await request(stack, stack.client_key, "GET", "")
    assert status == 403
