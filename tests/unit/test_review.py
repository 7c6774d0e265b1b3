"""Review queue items (merge, priority, order), the collector's rules, writing reviewed items
into a bot folder, and the terminal review loop (against a fake API)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest

from botfactory.commands.review import apply_decided, interactive, parse_entities
from botfactory.evaluation.reviewed import REVIEWED_FILE, ApplyError, apply_items
from services.botdef import NluSettings, load_bot, write_bot
from services.common.reviewqueue import (
    EntityGuess,
    Observation,
    ReviewItem,
    item_id,
    merge,
    normalize_text,
    ordered,
)
from services.dialogue.review import shadow_observation, user_message_reason
from tests.support.models import TINY_ENTITIES, tiny_examples


def obs(text: str, message_id: str, confidence: float, reason: str = "fallback",
        **extra: Any) -> Observation:
    return Observation(bot="b", text=text, reason=reason, message_id=message_id,
                       confidence=confidence, at_ms=1000, **extra)


def test_normalised_texts_share_one_item_and_ids_ignore_pii_digits() -> None:
    assert normalize_text("  What's   my BALANCE?! ") == "what s my balance"
    assert item_id("What's my balance?") == item_id("what's my balance")
    assert item_id("card 4111 1111 1111 1111") == item_id("card 5500 0000 0000 0004")


def test_merge_counts_distinct_messages_keeps_lowest_confidence_and_redacts() -> None:
    first = merge(None, obs("pay 4111 1111 1111 1111 to anna", "m1", 0.4, intent="transfer",
                            entities=(EntityGuess("recipient", "anna"),
                                      EntityGuess("amount", "4111"))))
    assert first.text == "pay [CARD] to anna" and first.count == 1
    assert first.predicted_entities == (EntityGuess("recipient", "anna", 14, 18),)  # no 4111
    again = merge(first, obs("pay 4111 1111 1111 1111 to anna", "m1", 0.2, "low_confidence"))
    assert again.count == 1 and again.reasons == ("fallback", "low_confidence")
    assert again.min_confidence == 0.2
    third = merge(again, obs("Pay 4111 1111 1111 1111 to Anna!", "m2", 0.9))
    assert third.count == 2 and third.min_confidence == 0.2
    assert ReviewItem.from_json(third.to_json()) == third


def test_priority_is_uncertainty_times_log_frequency_and_orders_the_list() -> None:
    rare_unsure = merge(None, obs("a b", "m1", 0.1))
    frequent = rare_unsure
    for n in range(2, 6):
        frequent = merge(frequent, obs("a b", f"m{n}", 0.5))
    sure = merge(None, obs("c d", "m9", 1.0))
    assert rare_unsure.priority == pytest.approx(0.9 * math.log(2), abs=1e-6)
    assert frequent.priority == pytest.approx(0.9 * math.log(6), abs=1e-6)
    assert sure.priority == pytest.approx(0.05 * math.log(2), abs=1e-6)
    other = merge(None, obs("e f", "m8", 0.3, "disagreement"))
    assert [i.text for i in ordered([sure, other, frequent])] == ["a b", "e f", "c d"]
    assert [i.text for i in ordered([sure, other], reason="disagreement")] == ["e f"]


def test_collector_rules() -> None:
    assert user_message_reason({"confidence": 0.3}, 0.6) == "low_confidence"
    assert user_message_reason({"confidence": 0.9, "out_of_scope": True}, 0.6) == "out_of_scope"
    assert user_message_reason({"confidence": 0.9}, 0.6) is None
    shadow = shadow_observation("b", {"text": "x y", "active": {"intent": "a", "confidence": 0.7},
                                      "candidate": {"intent": "c", "confidence": 0.6}}, 5)
    assert shadow is not None and shadow.reason == "disagreement" and shadow.intent == "a"
    assert shadow.candidate == {"intent": "c", "confidence": 0.6}
    assert shadow_observation("b", {"text": "x"}, 5) is None


def decided(identifier: str, text: str, intent: str | None = None, oos: bool = False,
            entities: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"id": identifier, "text": text, "status": "decided",
            "decision": {"intent": intent, "out_of_scope": oos, "entities": entities or []}}


@pytest.fixture
def bot_dir(tmp_path: Path) -> Path:
    return write_bot(tmp_path / "bot", "tiny", tiny_examples(), entities=TINY_ENTITIES,
                     nlu=NluSettings(out_of_scope_intent="out_of_scope"))


def test_apply_writes_deduplicates_and_validates(bot_dir: Path) -> None:
    items = [
        decided("a1", "wire [CARD] dollars to zoe", "transfer_money",
                entities=[{"entity": "recipient", "start": 23, "end": 26}]),
        decided("a2", "Hello!", "greet"),  # already an example ("hello")
        decided("a3", "hi there", "check_balance"),  # conflicts with a greet example
        decided("a4", "sing me a song", oos=True),  # the bot has no out_of_scope intent
        decided("a5", "show me my money", "no_such_intent"),
        decided("a6", "send it to [PHONE]", "transfer_money",
                entities=[{"entity": "unknown_entity", "start": 0, "end": 4}]),
        decided("a7", "wire  [CARD] dollars to ZOE", "transfer_money"),  # a1 again
    ]
    outcome = apply_items(bot_dir, items)
    assert outcome.written == ["a1"] and outcome.duplicates == ["a2", "a7"]
    assert set(outcome.rejected) == {"a3", "a4", "a5", "a6"}
    assert "conflict" in outcome.rejected["a3"] and "out_of_scope" in outcome.rejected["a4"]
    text = (bot_dir / REVIEWED_FILE).read_text(encoding="utf-8")
    assert "wire \\[CARD\\] dollars to [zoe](recipient)" in text
    examples = {(e.text, e.intent) for e in load_bot(bot_dir).examples()}
    assert ("wire [CARD] dollars to zoe", "transfer_money") in examples
    assert apply_items(bot_dir, items[:1]).duplicates == ["a1"]  # idempotent


def test_apply_refuses_an_invalid_bot(tmp_path: Path) -> None:
    (tmp_path / "bot.yml").write_text("version: '1'\nname: x\nunknown: 1\n", encoding="utf-8")
    with pytest.raises(ApplyError, match="invalid bot definition"):
        apply_items(tmp_path, [])


class FakeApi:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.pending = items
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def items(self, status: str = "pending", reason: str | None = None,
              limit: int = 500) -> list[dict[str, Any]]:
        return self.pending[:limit]

    def decide(self, item: str, **decision: Any) -> None:
        self.calls.append(("decide", item, decision))

    def skip(self, item: str) -> None:
        self.calls.append(("skip", item, {}))


class PagedApi:
    """A review API that lists at most `page` decided items, as the gateway does (500)."""

    def __init__(self, items: list[dict[str, Any]], page: int) -> None:
        self.decided = {str(i["id"]): i for i in items}
        self.page = page
        self.marked: list[str] = []

    def items(self, status: str = "pending", reason: str | None = None,
              limit: int = 500) -> list[dict[str, Any]]:
        assert status == "decided"
        return list(self.decided.values())[:min(limit, self.page)]

    def applied(self, items: list[str]) -> None:
        self.marked += items
        for identifier in items:
            del self.decided[identifier]


def test_apply_writes_every_decided_item_past_one_page(bot_dir: Path) -> None:
    """`review apply` used to write only the first page (500 of 2,538 labelled items in the
    improvement loop on Banking77): it goes on until nothing decided is left."""
    items = [decided(f"n{i}", f"what is the balance of account number {i}", "check_balance")
             for i in range(12)]
    items.insert(5, decided("bad", "sing me a song", "no_such_intent"))  # stays decided
    api = PagedApi(items, page=5)
    out = io.StringIO()
    assert apply_decided(api, bot_dir, out) == 1  # one item could not be written
    assert sorted(api.marked) == sorted(f"n{i}" for i in range(12))
    assert list(api.decided) == ["bad"]
    assert out.getvalue().startswith("12 written") and "1 not written" in out.getvalue()
    texts = {e.text for e in load_bot(bot_dir).examples()}
    assert {f"what is the balance of account number {i}" for i in range(12)} <= texts


def pending(identifier: str, text: str, intent: str,
            entities: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"id": identifier, "text": text, "count": 3, "min_confidence": 0.42,
            "reasons": ["fallback"], "predicted": {"intent": intent, "entities": entities or []}}


def test_terminal_review_confirms_corrects_marks_and_quits(bot_dir: Path) -> None:
    api = FakeApi([
        pending("i1", "send 5 dollars to bob", "transfer_money",
                [{"entity": "amount", "value": "5", "start": 5, "end": 6}]),
        pending("i2", "hey what is in savings", "greet"),
        pending("i3", "sing a song", "greet"),
        pending("i4", "whatever", "greet"),
        pending("i5", "never shown", "greet"),
    ])
    answers = iter(["", "x", "i", "nope", "check_balance", "account_type=nothing",
                    "account_type=Savings", "o", "s", "q"])
    out = io.StringIO()
    interactive(api, bot_dir, lambda _: next(answers), out,  # type: ignore[arg-type]
                reason=None, limit=10)
    assert api.calls == [
        ("decide", "i1", {"intent": "transfer_money",
                          "entities": [{"entity": "amount", "start": 5, "end": 6}]}),
        ("decide", "i2", {"intent": "check_balance",
                          "entities": [{"entity": "account_type", "start": 15, "end": 22}]}),
        ("decide", "i3", {"out_of_scope": True}),
        ("skip", "i4", {}),
    ]
    text = out.getvalue()
    assert "[1/5] 'send 5 dollars to bob'" in text
    assert "suggested: transfer_money amount='5'" in text
    assert "intents: greet, transfer_money, check_balance" in text


def test_parse_entities() -> None:
    assert parse_entities("send 5 to Bob", "amount=5; recipient=bob") == (
        [{"entity": "amount", "start": 5, "end": 6},
         {"entity": "recipient", "start": 10, "end": 13}], None)
    assert parse_entities("send 5", "")[0] == []
    assert parse_entities("send 5", "amount")[1] is not None

