"""`botfactory data check`: exact and near duplicates, conflicting labels, frozen-set leaks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from botfactory.cli import main
from botfactory.evaluation.datacheck import check, near_duplicates, occurrence
from services.botdef import EntitySpan, Example, load_bot, write_bot
from tests.support.models import TINY_ENTITIES, tiny_examples


def ex(text: str, intent: str, *spans: tuple[str, str]) -> Example:
    found = [EntitySpan(text.index(w), text.index(w) + len(w), e) for e, w in spans]
    return Example(text, intent, tuple(found))


def test_exact_duplicates_conflicts_and_leaks() -> None:
    examples = [
        ex("What is my balance?", "balance"), ex("what is my balance", "balance"),
        ex("hi there", "greet"), ex("Hi there!", "goodbye"),
        ex("send 5 to bob", "transfer", ("amount", "5")),
        ex("send 5 to bob", "transfer", ("recipient", "bob")),
        ex("a completely different sentence here", "other"),
    ]
    report = check(examples, frozen=[ex("HI THERE", "greet"), ex("unseen text", "greet")])
    assert [[o.text for o in g] for g in report.duplicates] == [
        ["What is my balance?", "what is my balance"]]
    assert [[o.intent for o in g] for g in report.conflicts] == [
        ["greet", "goodbye"], ["transfer", "transfer"]]
    assert [o.text for o in report.leaks] == ["HI THERE"] and report.failed
    assert not check(examples[:2]).failed


def test_near_duplicates_with_and_without_conflict() -> None:
    examples = [ex("i want to close my account now", "close"),
                ex("i want to close my account today", "close"),  # 6/8 with the first
                ex("i want to close my savings account now", "open"),  # 7/8 with the first
                ex("nothing alike at all", "x")]
    pairs = check(examples, threshold=0.8).near
    assert [(p.a.intent, p.b.intent, round(p.similarity, 2)) for p in pairs] in (
        [("close", "open", 0.88)], [("open", "close", 0.88)])
    assert pairs[0].conflicting
    assert len(check(examples, threshold=0.7).near) == 2  # + (now, today); not 6/9


def test_prefix_filtering_finds_every_pair_that_brute_force_finds() -> None:
    rng = random.Random(3)
    words = [f"w{i}" for i in range(12)]
    texts = {" ".join(sorted(set(rng.choices(words, k=rng.randint(2, 6))))) for _ in range(300)}
    occurrences = {t: occurrence(Example(t, "i")) for t in texts}
    found = {frozenset((p.a.text, p.b.text)) for p in near_duplicates(occurrences, 0.6)}
    brute = set()
    for a in texts:
        for b in texts:
            sa, sb = set(a.split()), set(b.split())
            if a < b and len(sa & sb) / len(sa | sb) >= 0.6:
                brute.add(frozenset((a, b)))
    assert found == brute and brute


def test_cli_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bot_dir = write_bot(tmp_path / "bot", "tiny", tiny_examples(), entities=TINY_ENTITIES)
    assert main(["data", "check", str(bot_dir)]) == 0
    assert "0 conflicts" in capsys.readouterr().out
    (bot_dir / "tests").mkdir()
    (bot_dir / "tests" / "nlu.yml").write_text(
        "intents:\n  - name: greet\n    examples:\n      - Hello!\n      - top of the day\n",
        encoding="utf-8")
    assert main(["data", "check", str(bot_dir), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] and [o["text"] for o in report["leaks"]] == ["Hello!"]
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    assert "invalid bot definition" in capsys.readouterr().err


def test_an_examples_flow_list_is_named_as_the_cause_of_its_split_example(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`[goodbye, bye, nothing else, bye, see you]`: unquoted, `nothing else, bye` became two
    examples and a duplicate `bye`; the warning names the list's file, line and field."""
    bot = Path(__file__).parent / "data" / "car_insurance"
    warning = (f"warning: {bot}/data/nlu.yml:8: intents[1].examples: examples written as a "
               "[...] list: a comma outside quotes splits an example in two")
    assert main(["data", "check", str(bot)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(warning)
    assert "'bye' (goodbye) | 'bye' (goodbye)" in out  # the duplicate it caused
    assert main(["data", "check", str(bot), "--json"]) == 0
    [found] = json.loads(capsys.readouterr().out)["warnings"]
    assert found.startswith(f"{bot}/data/nlu.yml:8: intents[1].examples: ")


def test_a_block_list_one_flow_item_or_quoted_flow_items_give_no_warning(tmp_path: Path) -> None:
    bot = write_bot(tmp_path / "bot", "b", [Example("hi", "greet"), Example("hello", "greet")])
    (bot / "data" / "more.yml").write_text(
        "intents:\n  - name: bye\n    examples: ['bye, then']\n  - name: bye\n"
        "    examples:\n      - see you\n  - name: thanks\n"
        "    examples: [\"thanks, bye\", 'ok, thank you',\n      \"cheers\"]\n",
        encoding="utf-8")
    assert load_bot(bot).warnings == ()
