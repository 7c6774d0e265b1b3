"""A bilingual bot's conversation language on the real stack (issue 23): detected from the
user's Chinese message, stored in the tracker (KV), kept by another dialogue worker after a
restart, replies in Chinese, and the `language_set` event in the transcript. The tiny test
model's predictions are meaningless: whatever it makes of a message, every reply of the demo
bot in a Chinese conversation is Chinese, and payloads force the rest."""

from __future__ import annotations

import re
from pathlib import Path

from botfactory.local.nats_server import NatsServer
from tests.support.stack import Stack, running_stack, tracker_record

CJK = re.compile(r"[\u4e00-\u9fff]")
SAVINGS = '/check_balance{"account_type": "savings"}'
PENDING_ZH = "我还在处理您上一个请求，请稍等。"


async def _tracker(stack: Stack, conversation: str) -> dict[str, object]:
    tracker = (await tracker_record(stack.nats_url, "banking", conversation))["tracker"]
    assert isinstance(tracker, dict)
    return tracker


async def test_chinese_message_sets_the_language_and_it_survives_a_restart(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        status, body = await stack.post("zh1", "/greet")
        assert status == 200 and not CJK.search(body["replies"][0]["text"])
        assert "lang" not in await _tracker(stack, "zh1")  # a payload decides nothing

        status, body = await stack.post("zh1", "我想查一下我的余额")
        assert status == 200 and body["replies"]
        assert all(CJK.search(reply["text"]) for reply in body["replies"]), body["replies"]
        assert (await _tracker(stack, "zh1"))["lang"] == "zh"

        old = stack.dialogues.pop()  # a new worker reads the language from the tracker
        await old.stop()
        await stack.add_dialogue()
        status, body = await stack.post("zh1", SAVINGS)
        assert status in (200, 202)  # 202: the balance workflow runs (no RPA runner here)
        assert body["replies"][-1]["text"] in ("请稍等，正在为您查询储蓄账户余额。", PENDING_ZH)

        entries = await stack.transcript("zh1", include="events")
        changes = [e for e in entries if (e.get("data") or {}).get("language") is not None]
        assert [(c["data"]["language"], c["data"]["previous"]) for c in changes] == [
            ("zh", "en")]


async def test_english_conversation_of_the_bilingual_bot_stays_english(
        nats_server: NatsServer, tiny_banking_model: Path) -> None:
    async with running_stack(nats_server.url, tiny_banking_model) as stack:
        status, body = await stack.post("en1", "hello there, how are you today?")
        assert status == 200 and body["replies"]
        assert not any(CJK.search(reply["text"]) for reply in body["replies"])
        status, body = await stack.post("en1", SAVINGS)
        assert status in (200, 202)
        assert body["replies"][-1]["text"] in (
            "One moment, I'm looking up your savings balance.",
            "I'm still working on your previous request, one moment please.")
        assert (await _tracker(stack, "en1")).get("lang") in (None, "en")
