"""`botfactory validate` checks the whole bot folder (issue 18): the definition, the workflows
against rpa.yml, rpa.yml, the conversation tests, the frozen NLU test set, the knowledge-base
questions and the knowledge files; every problem names its file, line and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import botfactory.cli
from services.botdef.workflows import check_bot_workflows, parse_workflow

CAR = Path(__file__).parent / "data" / "car_insurance"


@pytest.fixture(autouse=True)
def only_validate_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(botfactory.cli, "COMMAND_MODULES", ("validate",))


def validate(capsys: pytest.CaptureFixture[str], bot_dir: Path) -> tuple[int, list[str], str]:
    code = botfactory.cli.main(["validate", str(bot_dir)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out.splitlines(), err


def test_the_car_insurance_bot_is_not_ok(capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's bot: `validate` said ok; the unknown step and the rpa.yml key were found by
    a `python -c` one-liner only, as a traceback."""
    code, lines, err = validate(capsys, CAR)
    assert code == 1
    assert lines[:2] == [
        f"{CAR}/rpa.yml:4: setings: unknown key 'setings' (allowed: version, allowed_hosts, "
        "settings)",
        f"{CAR}/workflows/create_claim.yml:4: outputs.claim_id: unknown step 'creat'",
    ]
    assert lines[2].startswith(f"warning: {CAR}/data/nlu.yml:8: intents[1].examples: ")
    assert len(lines) == 3 and err == f"error: 2 issue(s) in {CAR}\n"


def test_a_fixed_bot_is_ok_with_its_warnings_and_what_was_checked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bot = shutil.copytree(CAR, tmp_path / "car")
    rpa = bot / "rpa.yml"
    rpa.write_text(rpa.read_text().replace("setings", "settings"))
    flow = bot / "workflows" / "create_claim.yml"
    flow.write_text(flow.read_text().replace("steps.creat.", "steps.create."))
    code, lines, err = validate(capsys, bot)
    assert (code, err) == (0, "")
    assert lines[0].startswith("warning: ") and lines[1:] == [
        f"ok: bot 'car_insurance' ({bot}): 2 intents, 8 examples, 0 entities; 1 workflows; "
        "1 conversation tests; 2 frozen NLU test examples"]


def test_tests_and_knowledge_files_are_checked(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bot = shutil.copytree(CAR, tmp_path / "car")
    (bot / "rpa.yml").unlink()
    shutil.rmtree(bot / "workflows")
    (bot / "domain" / "flows.yml").write_text("responses:\n  utter_bye: Goodbye!\n")
    (bot / "tests" / "conversations.yml").write_text(
        'version: "1"\ntests:\n  - name: x\n    steps:\n      - user: hi\n        colour: red\n')
    (bot / "tests" / "nlu.yml").write_text(
        "intents:\n  - name: goodbye\n    examples:\n      - bye\n      - see you [later](when\n")
    (bot / "tests" / "kb.yml").write_text(
        "cases:\n  - question: hi?\n    expect: faq:hi\n  - question: ''\n    expect: null\n")
    (bot / "knowledge").mkdir()
    (bot / "knowledge" / "faq.yml").write_text(
        'version: "1"\nfaq:\n  - id: hi\n    questions: [hi?]\n    answer: Hello.\n'
        "    colour: blue\n")
    code, lines, _ = validate(capsys, bot)
    assert code == 1
    assert lines[:4] == [
        f"{bot}/tests/conversations.yml:6: tests[0].steps[0].colour: unknown key 'colour' "
        "(allowed: user, bot, no_reply, slots, flow, nlu, workflow_result)",
        f"{bot}/tests/nlu.yml:5: intents[0].examples[1]: unclosed '(' at column 16",
        f"{bot}/tests/kb.yml:4: cases[1].question: question must be a non-empty text",
        f"{bot}/knowledge/faq.yml:6: faq[0].colour: unknown key 'colour' "
        "(allowed: answer, buttons, id, questions, url)",
    ]


def test_workflow_issues_name_file_line_and_field(tmp_path: Path) -> None:
    (tmp_path / "workflows").mkdir()
    (tmp_path / "rpa.yml").write_text(
        'version: "1"\nallowed_hosts: [api.test]\ncolour: red\nsettings: {url: "https://api.test"}\n')
    (tmp_path / "workflows" / "pay.yml").write_text(
        "name: pay\n"
        "inputs: {amount: number}\n"
        "steps:\n"
        "  - id: call\n"
        "    http:\n"
        "      url: '{{ settings.url }}/pay'\n"
        "      json: {amount: '{{ inputs.amout }}'}\n"
        "    compensate:\n"
        "      http: {url: https://elsewhere.test/undo}\n"
        "  - id: route\n"
        "    branch:\n"
        "      - {if: steps.call.outputs.ok, goto: done}\n"
        "      - else: end\n"
        "  - id: sub\n"
        "    subworkflow: {name: refund}\n")
    found = [(i.line, i.field, i.message.split(" (")[0])
             for i in check_bot_workflows(tmp_path)]
    assert [i.file for i in check_bot_workflows(tmp_path)] == [
        str(tmp_path / "rpa.yml"), *[str(tmp_path / "workflows" / "pay.yml")] * 4]
    assert found == [
        (3, "colour", "unknown key 'colour'"),  # the valid settings still count: url is known
        (7, "steps[0].http.json", "unknown input 'amout'"),
        (9, "steps[0].compensate.http.url",
         "'https://elsewhere.test/undo' is not an http(s) URL on the bot's allow-list"),
        (12, "steps[1].branch[0]", "goto: unknown step 'done'"),
        (15, "steps[2].subworkflow", "unknown workflow 'refund'"),
    ]


def test_the_runtime_parse_of_plain_workflows_keeps_its_names() -> None:
    """The RPA runner parses the loader's plain workflows: file `workflows/<name>`, no line."""
    _, issues = parse_workflow("w", {"name": "w", "steps": [{"id": "a", "fail": "x"}],
                                     "outputs": {"x": "steps.b.outputs.y"}})
    assert [(i.file, i.line, i.field) for i in issues] == [("workflows/w", 0, "outputs.x")]


def test_unreadable_files_are_named_never_a_traceback(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bot = shutil.copytree(CAR, tmp_path / "car")
    (bot / "workflows" / "scan.yml").write_bytes(b"\xff\xfe name: scan")
    (bot / "tests" / "more.yml").write_bytes(b"\xff")
    code, lines, _ = validate(capsys, bot)
    assert code == 1
    for path in (bot / "workflows" / "scan.yml", bot / "tests" / "more.yml"):
        assert f"{path}: cannot read: 'utf-8' codec can't decode byte 0xff in position 0: " \
               "invalid start byte" in lines
