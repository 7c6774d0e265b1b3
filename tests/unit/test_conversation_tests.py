"""Conversation tests: the YAML format and its loader, the runner, and the demo bot's
conversations run offline through the dialogue engine with a fake NLU."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from botfactory.conversation_tests import (
    OTHER_TEST_FILES,
    ConversationStep,
    ConversationTest,
    ConversationTestError,
    NluHint,
    ReplyExpectation,
    check_replies,
    conversation_test_files,
    load_conversation_tests,
    other_test_file,
    run_conversation_tests,
    same_value,
)
from botfactory.offline_chat import EngineClient, hint_nlu
from services.botdef import BotDefinition, load_bot
from services.dialogue.engine import EntityValue, NluResult, Reply

REPO = Path(__file__).resolve().parents[2]
BANKING = REPO / "bots" / "banking"


@pytest.fixture(scope="module")
def banking() -> BotDefinition:
    return load_bot(BANKING)


# -- the demo bot's conversations ---------------------------------------------------------------


async def test_banking_conversations_pass_offline(banking: BotDefinition) -> None:
    tests = load_conversation_tests(BANKING)
    assert len(tests) >= 20
    report = await run_conversation_tests(tests, EngineClient(banking))
    assert report.passed, "\n" + report.render()
    assert len(report.results) == len(tests)
    assert all(r.steps_run == len(r.test.steps) for r in report.results)


def test_banking_conversations_cover_every_repair_case() -> None:
    tests = load_conversation_tests(BANKING / "tests" / "conversations.yml")
    names = " | ".join(test.name for test in tests)
    for case in ("digression", "correcting", "cancel", "low confidence", "out of scope",
                 "two fallbacks", "human", "greeting", "help", "thanks and goodbye",
                 "failed transfer", "invalid amounts"):
        assert case in names, case


# -- loading ----------------------------------------------------------------------------------

GOOD = """\
version: "1"
workflow_results:
  pay: {status: succeeded, outputs: {ref: R1}}
tests:
  - name: greets
    steps:
      - user: hi
        nlu: greet
        bot: hello
        flow: null
  - name: pays
    steps:
      - user: pay 5 to Al
        nlu: {intent: pay, confidence: 0.9, entities: {amount: 5, recipient: Al},
              ranking: {pay: 0.9, greet: 0.1}}
        bot: [{regex: '^Pay \\d+'}, {text: sure, buttons: ["Yes"]}]
        slots: {amount: 5, recipient: al}
        workflow_result: {status: failed, error: down}
      - user: quiet
        no_reply: true
"""


def write(tmp_path: Path, text: str, name: str = "tests.yml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_load_a_file(tmp_path: Path) -> None:
    greets, pays = load_conversation_tests(write(tmp_path, GOOD))
    assert (greets.name, greets.line) == ("greets", 5)
    step = greets.steps[0]
    assert step == ConversationStep("hi", 7, (ReplyExpectation("hello"),), flow=None,
                                    check_flow=True, nlu=NluHint("greet"))
    step = pays.steps[0]
    assert step.replies == (ReplyExpectation(regex="^Pay \\d+"),
                            ReplyExpectation("sure", buttons=("Yes",)))
    assert step.nlu == NluHint("pay", 0.9, (("amount", "5", "5"), ("recipient", "Al", "Al")),
                               (("pay", 0.9), ("greet", 0.1)))
    assert step.slots == {"amount": 5, "recipient": "al"} and not step.check_flow
    assert pays.workflow_result(step, "pay") == {"status": "failed", "outputs": {},
                                                 "error": "down", "message": ""}
    assert pays.workflow_result(pays.steps[1], "pay")["outputs"] == {"ref": "R1"}
    assert pays.workflow_result(pays.steps[1], "other")["status"] == "succeeded"
    assert pays.steps[1].no_reply


def test_load_a_folder_or_a_bot(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "bot/tests/a.yml")
    write(tmp_path, GOOD.replace("greets", "g2").replace("pays", "p2"), "bot/tests/sub/b.yaml")
    (tmp_path / "bot" / "bot.yml").write_text('version: "1"\nname: x\n', encoding="utf-8")
    names = [t.name for t in load_conversation_tests(tmp_path / "bot")]
    assert names == ["greets", "pays", "g2", "p2"]
    assert len(load_conversation_tests(tmp_path / "bot" / "tests")) == 4


def test_the_frozen_nlu_set_and_kb_questions_are_not_conversation_tests() -> None:
    """tests/nlu.yml (the frozen NLU test set, docs/improvement-loop.md) and tests/kb.yml sit
    beside the conversation tests; every other tests/*.yml is one (issue 18)."""
    bot = REPO / "tests" / "unit" / "data" / "car_insurance"
    assert (bot / "tests" / "nlu.yml").is_file()
    assert [t.name for t in load_conversation_tests(bot)] == ["filing a claim"]
    assert {"kb.yml", "nlu.yml"} == OTHER_TEST_FILES


def test_kb_question_files_per_language_are_not_conversation_tests(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "bot/tests/a.yml")
    write(tmp_path, "version: '1'\ncases:\n  - {question: 挂失, expect: null}\n",
          "bot/tests/kb_zh.yml")
    (tmp_path / "bot" / "bot.yml").write_text('version: "1"\nname: x\n', encoding="utf-8")
    assert [p.name for p in conversation_test_files(tmp_path / "bot" / "tests")] == ["a.yml"]
    assert other_test_file(Path("kb_zh.yml")) and other_test_file(Path("kb-fr.yaml"))
    assert not other_test_file(Path("kbank.yml"))


@pytest.mark.parametrize(("text", "line", "field", "message"), [
    ("tests:\n  - name: x\n    steps:\n      - {}\n", 4, "tests[0].steps[0]",
     "'user' is a required property"),
    ("tests:\n  - name: x\n    steps:\n      - {user: hi, colour: red}\n", 4,
     "tests[0].steps[0].colour", "unknown key 'colour'"),
    ("tests:\n  - name: x\n    steps:\n      - {user: hi, bot: {regex: '[a'}}\n", 4,
     "tests[0].steps[0].bot[0]", "invalid regex '[a'"),
    ("tests:\n  - name: x\n    steps:\n      - {user: hi, bot: a, no_reply: true}\n", 4,
     "tests[0].steps[0]", "`no_reply` and `bot` exclude each other"),
    ("tests:\n  - name: x\n    steps: []\n", 3, "tests[0].steps", "should be non-empty"),
    ("tests:\n  - name: x\n    steps:\n      - {user: hi, workflow_result: {status: ok}}\n",
     4, "tests[0].steps[0].workflow_result.status", "is not one of"),
    ("tests:\n  - name: x\n    steps: [{user: a}]\n  - name: x\n    steps: [{user: b}]\n",
     4, "name", "duplicate test name 'x' (first at"),
    ("tests: [\n", 2, "", "invalid YAML"),
])
def test_load_errors(tmp_path: Path, text: str, line: int, field: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConversationTestError) as caught:
        load_conversation_tests(path)
    [issue] = caught.value.issues
    assert (issue.file, issue.line, issue.field) == (str(path), line, field), str(issue)
    assert message in issue.message, str(issue)
    assert str(caught.value).startswith(f"{path}:{line}:")


def test_missing_tests(tmp_path: Path) -> None:
    with pytest.raises(ConversationTestError, match="no such file or folder"):
        load_conversation_tests(tmp_path / "nope")
    with pytest.raises(ConversationTestError, match="no YAML test files"):
        load_conversation_tests(tmp_path)


# -- running ----------------------------------------------------------------------------------

MINI = {
    "bot.yml": 'version: "1"\nname: mini\n',
    "data/nlu.yml": (
        "entities:\n  - name: amount\nintents:\n"
        + "".join(f"  - name: {n}\n    examples: [{n} a, {n} b]\n"
                  for n in ("greet", "affirm", "pay"))
    ),
    "domain/d.yml": textwrap.dedent("""\
        slots:
          amount: {type: number, entity: amount}
          ok: boolean
        responses:
          utter_ask_amount: How much?
        flows:
          pay:
            title: Pay
            trigger: pay
            steps:
              - collect: amount
              - collect:
                  slot: ok
                  ask:
                    text: "Pay {{ slots.amount }}?"
                    buttons: [{title: "Yes", payload: /affirm}]
              - workflow: {name: pay, save: {ref: amount}}
              - Paid.
        """),
}


@pytest.fixture
def mini(tmp_path: Path) -> BotDefinition:
    for name, text in MINI.items():
        write(tmp_path, text, name)
    return load_bot(tmp_path)


def mini_nlu() -> dict[str, NluResult]:
    return {
        "hi": NluResult("greet", 0.99, [("greet", 0.99)], [], False),
        "pay 5": NluResult("pay", 0.9, [("pay", 0.9)], [EntityValue("amount", "5", "5", 4, 5)],
                           False),
        "yes": NluResult("affirm", 0.95, [("affirm", 0.95)], [], False),
    }


def script(tmp_path: Path, text: str) -> list[ConversationTest]:
    return load_conversation_tests(write(tmp_path, text, "scripts/tests.yml"))


async def test_runner_passes_and_renders(mini: BotDefinition, tmp_path: Path) -> None:
    tests = script(tmp_path, """\
        tests:
          - name: pay flow
            steps:
              - user: hi
                bot: How can I help
              - user: pay 5
                bot: {text: "Pay 5?", buttons: ["yes"]}
                slots: {amount: 5, ok: null}
                flow: pay
              - user: "yes"
                bot: ["paid"]
                flow: null
        """)
    report = await run_conversation_tests(tests, EngineClient(mini, mini_nlu()))
    assert report.passed
    assert report.render().splitlines() == [
        "      test      steps",
        "PASS  pay flow  3/3",
        "1 passed, 0 failed, 1 total",
    ]


async def test_runner_reports_each_kind_of_failure(
    mini: BotDefinition, tmp_path: Path
) -> None:
    tests = script(tmp_path, """\
        tests:
          - name: wrong text
            steps:
              - {user: hi, bot: Goodbye}
          - name: wrong order
            steps:
              - {user: pay 5, bot: ["Pay 5?", "How much"]}
          - name: wrong button
            steps:
              - {user: pay 5, bot: {text: "Pay", buttons: [Maybe]}}
          - name: wrong regex
            steps:
              - {user: pay 5, bot: {regex: "^Paid"}}
          - name: wrong slot and flow
            steps:
              - {user: hi}
              - {user: pay 5, slots: {amount: 6, ok: false}, flow: other}
          - name: unexpected reply
            steps:
              - {user: hi, no_reply: true}
          - name: stops at the first failure
            steps:
              - {user: hi, bot: nope}
              - {user: pay 5}
        """)
    report = await run_conversation_tests(tests, EngineClient(mini, mini_nlu()))
    assert not report.passed
    failures = {r.test.name: r.failures for r in report.results}
    assert failures["wrong text"][1] == (
        "  expected a reply containing 'Goodbye'; got 'Hello! How can I help you today?'")
    assert failures["wrong order"][1].startswith("  expected a reply containing 'How much'")
    assert "with buttons ['Maybe']" in failures["wrong button"][1]
    assert "matching /^Paid/" in failures["wrong regex"][1]
    assert failures["wrong slot and flow"][0].startswith("step 2 (tests.yml:")
    assert failures["wrong slot and flow"][1:] == (
        "  slot amount: expected 6, got 5", "  slot ok: expected False, got None",
        "  active flow: expected 'other', got 'pay'")
    assert failures["unexpected reply"][1].startswith("  expected no reply; got 'Hello!")
    stopped = next(r for r in report.results if r.test.name == "stops at the first failure")
    assert stopped.steps_run == 1
    text = report.render()
    assert "FAIL  wrong text" in text and text.endswith("0 passed, 7 failed, 7 total")


TWO = "tests:\n  - {name: a, steps: [{user: hi}]}\n  - {name: b, steps: [{user: hi}]}\n"


class BrokenClient:
    async def start(self, conversation_id: str) -> None:
        if conversation_id.endswith("-1"):
            raise ConnectionError("gateway down")

    async def send(self, conversation_id: str, text: str) -> list[Reply]:
        raise TimeoutError("no reply")

    async def state(self, conversation_id: str) -> dict[str, Any]:
        return {}


async def test_client_errors_fail_the_test_not_the_run(tmp_path: Path) -> None:
    tests = script(tmp_path, TWO)
    report = await run_conversation_tests(tests, BrokenClient())
    assert report.results[0].failures == (
        "could not start the conversation: ConnectionError('gateway down')",)
    assert report.results[1].failures[1] == "  error: TimeoutError('no reply')"


async def test_each_test_gets_its_own_conversation(
    mini: BotDefinition, tmp_path: Path
) -> None:
    client = EngineClient(mini, mini_nlu())
    tests = script(tmp_path, TWO)
    await run_conversation_tests(tests, client, prefix="run")
    ids = list(client.trackers)
    assert len(ids) == 2 and all(i.startswith("run-") for i in ids)
    assert set(client.tests) == set(ids)


def test_matching_helpers() -> None:
    reply = Reply("Send 50.00 EUR to  Liam?", [])
    dict_buttons = type("R", (), {"text": "x", "buttons": [{"title": "Yes", "payload": "/a"}]})()
    assert ReplyExpectation("send 50.00 eur to liam").matches(reply)
    assert ReplyExpectation(buttons=("yes",)).matches(dict_buttons)
    assert not ReplyExpectation(regex="^Liam").matches(reply)
    assert check_replies(ConversationStep("u", 1, (ReplyExpectation("a"),)), []) == [
        "expected a reply containing 'a'; got no reply"]
    assert same_value(50, 50.0) and same_value("Credit", "credit") and same_value(None, None)
    assert not same_value(True, 1) and not same_value("5", 5)


def test_hint_nlu() -> None:
    hint = NluHint("pay", 0.8, (("amount", "5", "five"),), (("pay", 0.8),))
    result = hint_nlu(hint, "send five now")
    assert result.entities == [EntityValue("amount", "5", "five", 5, 9)]
    assert result.ranking == [("pay", 0.8)]


class StackLikeClient:
    """A client without `bind` (like the running stack's): it cannot use NLU hints."""

    def __init__(self, inner: EngineClient) -> None:
        self.inner = inner
        self.started: list[str] = []

    async def start(self, conversation_id: str) -> None:
        self.started.append(conversation_id)
        await self.inner.start(conversation_id)

    async def send(self, conversation_id: str, text: str) -> list[Reply]:
        return await self.inner.send(conversation_id, text)

    async def state(self, conversation_id: str) -> dict[str, Any]:
        return await self.inner.state(conversation_id)


OFFLINE = """\
    tests:
      - name: needs a low confidence
        offline: true
        steps:
          - {user: hm, nlu: {intent: pay, confidence: 0.3}, bot: "nothing to match"}
      - name: greets
        steps:
          - {user: hi, bot: How can I help}
    """


async def test_offline_tests_are_skipped_by_clients_without_hints(
    mini: BotDefinition, tmp_path: Path
) -> None:
    tests = script(tmp_path, OFFLINE)
    assert [t.offline for t in tests] == [True, False]
    client = StackLikeClient(EngineClient(mini, mini_nlu()))
    report = await run_conversation_tests(tests, client)
    assert report.passed and [r.mark for r in report.results] == ["SKIP", "PASS"]
    assert len(client.started) == 1  # the skipped test starts no conversation
    assert report.render().splitlines()[-1] == "1 passed, 0 failed, 1 skipped, 2 total"
    assert "offline only" in report.render()
    # a client with hints runs it (here: and it fails, its expectation being wrong)
    offline = await run_conversation_tests(tests, EngineClient(mini, mini_nlu()))
    assert [r.mark for r in offline.results] == ["FAIL", "PASS"] and not offline.skipped


def test_the_banking_tests_run_on_the_stack_but_one() -> None:
    """Only a test that needs a given confidence is offline-only: a failing workflow is a
    real failure on the stack (the demo bank's business ledger is down)."""
    tests = load_conversation_tests(BANKING)
    assert [t.name for t in tests if t.offline] == ["low confidence asks which intent was meant"]
    failing = next(t for t in tests if t.name == "balance lookup fails")
    assert failing.steps[0].user.startswith("/check_balance") and "business" in \
        failing.steps[0].user
