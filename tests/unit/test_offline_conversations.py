"""`botfactory test-conversations BOT --offline`: conversation tests without the stack (NLU from
hints, button payloads and the bot's examples; workflows completed at once), and values
matched by regex."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from botfactory.cli import main as botfactory
from botfactory.conversation_tests import ConversationTestError, load_conversation_tests
from botfactory.offline_chat import ExampleNlu
from botfactory.scaffold import create_bot
from services.botdef import load_bot
from services.dialogue.engine import EntityValue

BANKING = Path(__file__).resolve().parents[2] / "bots" / "banking"


@pytest.fixture()
def bot_dir(tmp_path: Path) -> Path:
    create_bot("orders", tmp_path / "orders")
    return tmp_path / "orders"


def write_tests(bot_dir: Path, body: str) -> None:
    (bot_dir / "tests" / "conversations.yml").write_text(textwrap.dedent(body))


def test_offline_needs_no_stack_nor_key(bot_dir: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("BOTFACTORY_API_KEY", raising=False)
    report = tmp_path / "report.json"
    assert botfactory(["test-conversations", str(bot_dir), "--offline",
                       "--report", str(report)]) == 0
    assert "1 passed, 0 failed, 1 total" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["gateway"] == "offline" and data["tests"][0]["conversation_id"]
    # without --offline the key is still required
    assert botfactory(["test-conversations", str(bot_dir)]) == 2
    assert "--offline" in capsys.readouterr().err


def test_offline_failure_exits_1_with_the_step(bot_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    write_tests(bot_dir, """\
        tests:
          - name: wrong expectation
            steps:
              - {user: hi, bot: something the bot never says}
        """)
    assert botfactory(["test-conversations", str(bot_dir), "--offline"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  wrong expectation" in out and "conversations.yml:4" in out


def test_examples_are_understood_with_their_entities(bot_dir: Path) -> None:
    nlu = ExampleNlu(load_bot(bot_dir))
    result = nlu.parse("  Where is order AB-1234? ")
    assert result is not None and result.intent == "check_order"
    assert result.entities == [EntityValue("order_id", "AB-1234", "AB-1234", 15, 22)]
    assert nlu.parse("something never seen") is None
    banking = ExampleNlu(load_bot(BANKING))
    found = banking.parse("my checking account")  # an annotated synonym, normalised
    assert found is not None and found.entities[0].value == "checking"


def test_unknown_messages_get_the_fallback_and_payloads_work(bot_dir: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    write_tests(bot_dir, """\
        workflow_results:
          get_order_status: {status: failed, error: down}
        tests:
          - name: fallback
            steps:
              - {user: qwertyuiop, bot: "didn't understand"}
          - name: buttons
            steps:
              - {user: /check_order, bot: order number}
              - user: '/inform{"order_id": "XY-1234"}'
                bot: Shall I look up order XY-1234
              - {user: /affirm, bot: "couldn't look up", flow: null}
        """)
    assert botfactory(["test-conversations", str(bot_dir), "--offline"]) == 0, \
        capsys.readouterr().out


def test_slot_values_by_regex(bot_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tests(bot_dir, """\
        tests:
          - name: matches
            steps:
              - {user: track RS-1010, slots: {order_id: {regex: "^RS-[0-9]{4}$"}}}
          - name: does not match
            steps:
              - {user: track RS-1010, slots: {order_id: {regex: "^CLM-"}}}
          - name: unset never matches
            steps:
              - {user: hi, slots: {order_id: {regex: ".*"}}}
        """)
    assert botfactory(["test-conversations", str(bot_dir), "--offline"]) == 1
    out = capsys.readouterr().out
    assert "PASS  matches" in out and "FAIL  does not match" in out
    assert "slot order_id: expected a value matching /^CLM-/, got 'RS-1010'" in out
    assert "FAIL  unset never matches" in out


def test_a_bad_slot_regex_is_an_error_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.yml"
    path.write_text("tests:\n  - name: x\n    steps:\n      - user: hi\n"
                    "        slots: {a: {regex: '(('}}\n")
    with pytest.raises(ConversationTestError, match=r"t.yml:4: tests\[0\].steps\[0\].slots.a"):
        load_conversation_tests(path)
