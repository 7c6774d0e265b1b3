"""The conversation part of a bot definition: slots, responses and flows, typed and checked."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from services.botdef import (
    CONVERSATION_SCHEMA,
    BotDefinitionError,
    Branch,
    ButtonDef,
    Call,
    Collect,
    Condition,
    DefinitionIssue,
    End,
    Handoff,
    MessageRef,
    RunWorkflow,
    Say,
    SetSlots,
    SlotDef,
    Validation,
    Variation,
    WorkflowInput,
    load_bot,
    parse_payload,
    template_environment,
    value_problem,
)

REPO = Path(__file__).resolve().parents[2]
BANKING = REPO / "bots" / "banking"

BOT_YML = 'version: "1"\nname: demo\n'
DATA_YML = """\
entities:
  - name: amount
  - name: city
    lookup: [London, Paris]
intents:
  - name: greet
    examples: [hi, hello]
  - name: pay
    examples: ["pay [5](amount)", "send money"]
  - name: where
    examples: ["branch in [Paris](city)", "where are you"]
  - name: affirm
    examples: ["yes", "sure"]
"""
SLOTS_YML = """\
slots:
  amount: {type: number, entity: amount, gt: 0, max: 100}
  city: {type: entity, entity: city}
  ok: boolean
  note: {type: text, regex: '[a-z ]+', initial: none}
"""
RESPONSES_YML = """\
responses:
  utter_ask_amount: How much?
  utter_confirm:
    text: "Pay {{ slots.amount }}?"
    buttons:
      - {title: "Yes", payload: /affirm}
  utter_done:
    - Paid.
    - All paid.
  utter_where:
    variations:
      - "In {{ slots.city }}."
"""
FLOWS_YML = """\
flows:
  pay:
    trigger: pay
    steps:
      - collect: amount
      - collect: {slot: ok, ask: utter_confirm, max_attempts: 2}
      - branch:
          - if: {slot: ok, equals: true}
            then: [utter_done]
          - else: [end]
  where:
    title: Find us
    trigger: [where]
    steps:
      - collect: {slot: city, ask: "Which city?"}
      - say: utter_where
"""


def make_bot(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def files(**overrides: str) -> dict[str, str]:
    base = {
        "bot.yml": BOT_YML,
        "data/nlu.yml": DATA_YML,
        "domain/slots.yml": SLOTS_YML,
        "domain/responses.yml": RESPONSES_YML,
        "domain/flows.yml": FLOWS_YML,
    }
    base.update({name.replace("__", "/").replace("_yml", ".yml"): text
                 for name, text in overrides.items()})
    return base


def issues_of(root: Path) -> list[DefinitionIssue]:
    with pytest.raises(BotDefinitionError) as caught:
        load_bot(root)
    return caught.value.issues


def only_issue(root: Path) -> DefinitionIssue:
    issues = issues_of(root)
    assert len(issues) == 1, [str(i) for i in issues]
    return issues[0]


def with_flows(tmp_path: Path, flows: str, **more: str) -> Path:
    return make_bot(tmp_path, files(domain__flows_yml=flows, **more))


# -- loading ----------------------------------------------------------------------------------


def test_domain_folder_is_loaded_and_typed(tmp_path: Path) -> None:
    bot = load_bot(make_bot(tmp_path, files()))
    conv = bot.conversation
    assert conv.slots["amount"] == SlotDef(
        "amount", "number", "amount", Validation(gt=0.0, max=100.0), label="amount"
    )
    assert conv.slots["ok"].type == "boolean"
    assert conv.slots["note"].initial == "none"
    assert conv.responses["utter_confirm"].variations == (
        Variation("Pay {{ slots.amount }}?", (ButtonDef("Yes", "/affirm"),)),
    )
    assert [v.text for v in conv.responses["utter_done"].variations] == ["Paid.", "All paid."]
    assert conv.responses["utter_where"].variations == (Variation("In {{ slots.city }}."),)
    assert conv.triggers == {"pay": "pay", "where": "where"}
    assert conv.flow_for_intent("where") is conv.flows["where"]
    assert conv.flow_for_intent("greet") is None
    assert conv.flows["where"].title == "Find us"
    assert conv.flows["pay"].title == "Pay"


def test_steps_are_typed(tmp_path: Path) -> None:
    bot = load_bot(make_bot(tmp_path, files()))
    pay = bot.conversation.flows["pay"].steps
    assert pay[0] == Collect("amount", MessageRef(response="utter_ask_amount"))
    assert pay[1] == Collect("ok", MessageRef(response="utter_confirm"), max_attempts=2)
    assert pay[2] == Branch(
        ((Condition("equals", "ok", True), (Say(MessageRef(response="utter_done")),)),),
        (End(),),
    )
    where = bot.conversation.flows["where"].steps
    assert where[0] == Collect("city", MessageRef(inline=Variation("Which city?")))


def test_all_step_kinds(tmp_path: Path) -> None:
    flows = """\
        flows:
          pay:
            trigger: pay
            steps:
              - set: {ok: null, note: "a b"}
              - call: helper
              - workflow:
                  name: charge
                  inputs: {sum: amount, kind: {value: card}}
                  save: {confirmation: note}
                  started: Working...
                  on_success: {text: "Done", buttons: [{title: Again, payload: /pay}]}
                  on_failure: utter_done
              - workflow: audit
              - handoff: Bye for now
              - handoff
              - end
          helper:
            steps:
              - say: "Helping with {{ slots.amount }}"
        """
    steps = load_bot(with_flows(tmp_path, flows)).conversation.flows["pay"].steps
    assert steps[0] == SetSlots((("ok", None), ("note", "a b")))
    assert steps[1] == Call("helper")
    assert steps[2] == RunWorkflow(
        "charge",
        (WorkflowInput("sum", slot="amount"), WorkflowInput("kind", value="card")),
        (("confirmation", "note"),),
        MessageRef(inline=Variation("Working...")),
        MessageRef(inline=Variation("Done", (ButtonDef("Again", "/pay"),))),
        MessageRef(response="utter_done"),
    )
    assert steps[3] == RunWorkflow("audit")
    assert steps[4] == Handoff(MessageRef(inline=Variation("Bye for now")))
    assert steps[5:] == (Handoff(), End())


def test_conditions(tmp_path: Path) -> None:
    flows = """\
        flows:
          pay:
            trigger: pay
            steps:
              - branch:
                  - if:
                      all:
                        - {slot: amount, gt: 10}
                        - any: [{slot: note, in: [x, y]}, {not: {slot: city, present: true}}]
                    then: [utter_done]
        """
    step = load_bot(with_flows(tmp_path, flows)).conversation.flows["pay"].steps[0]
    assert isinstance(step, Branch)
    condition = step.cases[0][0]
    assert condition.op == "all"
    assert condition.children[0] == Condition("gt", "amount", 10)
    assert condition.children[1].children[0] == Condition("in", "note", ["x", "y"])
    assert condition.children[1].children[1] == Condition(
        "not", children=(Condition("present", "city", True),))


def test_expression_conditions_read_slots(tmp_path: Path) -> None:
    from services.dialogue.engine.program import holds

    guarded = "slots.amount != null and slots.amount > 10 and slots.city in ['Paris', 'Rome']"
    flows = ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - branch:\n"
             f'          - {{if: "{guarded} or not slots.ok", then: [utter_done]}}\n'
             '          - {if: "slots.amount > 10 or true", then: [utter_done]}\n')
    step = load_bot(with_flows(tmp_path, flows)).conversation.flows["pay"].steps[0]
    assert isinstance(step, Branch)
    condition = step.cases[0][0]
    assert (condition.op, condition.reads) == ("expression", ("amount", "city", "ok"))
    cases: list[tuple[dict[str, object], bool]] = [
        ({"amount": 20, "city": "Rome", "ok": True}, True),
        ({"amount": 5, "city": "Rome", "ok": True}, False),
        ({"amount": None, "city": None, "ok": False}, True),
        ({"amount": None, "city": None, "ok": True}, False)]
    for values, expected in cases:
        assert holds(condition, values.get) is expected, values
    failing = step.cases[1][0]  # cannot be evaluated (null > 10): false, as `gt` of unset is
    assert holds(failing, {"amount": None}.get) is False
    assert holds(failing, {"amount": 1}.get) is True


@pytest.mark.parametrize("values", [{"ok": True}, {"ok": False}, {"ok": None}, {}])
def test_the_banking_expressions_mean_what_the_structured_conditions_meant(
        values: dict[str, object]) -> None:
    from services.dialogue.engine.program import holds

    conversation = load_bot(BANKING).conversation
    for flow, slot, equals in [("transfer_money", "transfer_confirmed", True),
                               ("block_card", "block_confirmed", False)]:
        branch = next(s for s in conversation.flows[flow].steps if isinstance(s, Branch))
        expression = branch.cases[0][0]
        assert expression.op == "expression" and expression.reads == (slot,)
        value_of = {slot: values.get("ok")}.get
        assert holds(expression, value_of) == holds(Condition("equals", slot, equals), value_of)


def test_list_forms_and_shorthands(tmp_path: Path) -> None:
    flows = """\
        flows:
          - name: pay
            trigger: pay
            steps: [utter_done, "Inline {{ slots.amount }}", end]
          - id: other
            steps: [handoff]
        """
    bot = load_bot(with_flows(tmp_path, flows))
    assert list(bot.conversation.flows) == ["pay", "other"]
    assert bot.conversation.flows["pay"].steps == (
        Say(MessageRef(response="utter_done")),
        Say(MessageRef(inline=Variation("Inline {{ slots.amount }}"))),
        End(),
    )


def test_builtin_responses_can_be_named(tmp_path: Path) -> None:
    flows = "flows:\n  pay:\n    trigger: pay\n    steps: [utter_greet, utter_handoff]\n"
    steps = load_bot(with_flows(tmp_path, flows)).conversation.flows["pay"].steps
    assert steps == (Say(MessageRef(response="utter_greet")),
                     Say(MessageRef(response="utter_handoff")))


def test_raw_keeps_the_sections_and_schema_matches(tmp_path: Path) -> None:
    bot = load_bot(make_bot(tmp_path, files()))
    assert bot.raw["slots"]["ok"] == "boolean"
    sections = {key: bot.raw[key] for key in ("slots", "responses", "flows")}
    Draft202012Validator(CONVERSATION_SCHEMA).validate(sections)


def test_banking_bot_conversation() -> None:
    bot = load_bot(BANKING)
    conv = bot.conversation
    assert set(conv.flows) >= {"check_balance", "transfer_money", "block_card", "find_branch",
                               "faq_opening_hours", "faq_fees", "human_handoff"}
    assert conv.slots["amount"].validation == Validation(gt=0.0, max=10000.0)
    assert conv.slots["card_type"].validation.choices == ("credit", "debit")
    assert set(conv.triggers) <= set(bot.intent_names())
    sections = {key: bot.raw[key] for key in ("slots", "responses", "flows")}
    Draft202012Validator(CONVERSATION_SCHEMA).validate(sections)


def test_bot_without_conversation_has_an_empty_one(tmp_path: Path) -> None:
    bot = load_bot(make_bot(tmp_path, {"bot.yml": BOT_YML, "data/nlu.yml": DATA_YML}))
    assert bot.conversation.flows == {}
    assert "slots" not in bot.raw


# -- errors -----------------------------------------------------------------------------------


def test_schema_error_has_file_line_and_field(tmp_path: Path) -> None:
    slots = "slots:\n  amount:\n    type: number\n    colour: red\n"
    issue = only_issue(make_bot(tmp_path, files(domain__slots_yml=slots)))
    assert issue.file == str(tmp_path / "domain" / "slots.yml")
    assert (issue.line, issue.field) == (4, "slots.amount.colour")
    assert issue.message.startswith("unknown key 'colour'")


def test_step_with_two_kinds(tmp_path: Path) -> None:
    flows = "flows:\n  pay:\n    trigger: pay\n    steps:\n      - {say: hi, end: null}\n"
    issue = only_issue(with_flows(tmp_path, flows))
    assert (issue.line, issue.field) == (5, "flows.pay.steps[0]")
    assert "several keys (say, end)" in issue.message


def test_unknown_slot_in_collect(tmp_path: Path) -> None:
    flows = "flows:\n  pay:\n    trigger: pay\n    steps:\n      - collect: amuont\n"
    issue = only_issue(with_flows(tmp_path, flows))
    assert issue.file == str(tmp_path / "domain" / "flows.yml")
    assert (issue.line, issue.field) == (5, "flows.pay.steps[0].collect")
    assert issue.message == ("unknown slot 'amuont' (defined: amount, city, note, ok; built in: "
                             "sentiment, sentiment_score)")


@pytest.mark.parametrize(
    ("flows", "line", "field", "message"),
    [
        ("flows:\n  pay:\n    trigger: pay\n    steps: [utter_nope]\n",
         4, "flows.pay.steps[0]", "unknown response 'utter_nope'"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - call: nowhere\n",
         5, "flows.pay.steps[0].call", "unknown flow 'nowhere'"),
        ("flows:\n  pay:\n    trigger: payy\n    steps: [end]\n",
         3, "flows.pay.trigger", "unknown intent 'payy'"),
        ("flows:\n  pay:\n    trigger: pay\n    steps: []\n",
         2, "flows.pay", "flow 'pay' has no steps"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - collect: note\n",
         5, "flows.pay.steps[0].collect", "no question to ask for slot 'note'"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - set: {amount: lots}\n",
         5, "flows.pay.steps[0].set.amount", "invalid value 'lots': it must be a number"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - set: {amount: 500}\n",
         5, "flows.pay.steps[0].set.amount", "invalid value 500: it must be at most 100"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - branch:\n"
         "          - if: {slot: ok, equals: true, present: true}\n            then: [end]\n",
         6, "flows.pay.steps[0].branch[0].if", "a condition needs `slot` and exactly one of"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - branch:\n"
         "          - else: [end]\n          - if: {slot: ok, equals: true}\n"
         "            then: [end]\n",
         6, "flows.pay.steps[0].branch[0]", "`else` must be alone, in the last case"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - say: 'Hi {{ slots.nme }}'\n",
         5, "flows.pay.steps[0].say", "template uses unknown slot 'nme'"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - say: 'In {{ display.cty }}'\n",
         5, "flows.pay.steps[0].say", "template uses unknown slot 'cty'"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - say: 'Hi {{ user }}'\n",
         5, "flows.pay.steps[0].say", "unknown template variable 'user'"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - say: 'Hi {{ slots.amount'\n",
         5, "flows.pay.steps[0].say", "template error:"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - say: \"{% include 'x' %}\"\n",
         5, "flows.pay.steps[0].say", "`include` is not allowed in a template"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - say: '{{ slots.amount|nof }}'\n",
         5, "flows.pay.steps[0].say", "template error:"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - say:\n          text: Hi\n"
         "          buttons: [{title: Go, payload: /nowhere}]\n",
         7, "flows.pay.steps[0].say.buttons[0].payload", "payload names unknown intent"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - branch:\n"
         "          - if: {slot: ok, gt: 1, lt: 2}\n            then: [end]\n",
         6, "flows.pay.steps[0].branch[0].if", "exactly one of"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - branch:\n"
         "          - if: slots.amnt > 1\n            then: [end]\n",
         6, "flows.pay.steps[0].branch[0].if", "unknown slot 'amnt'"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - branch:\n"
         "          - if: amount > 1\n            then: [end]\n",
         6, "flows.pay.steps[0].branch[0].if", "reads slots as `slots.NAME`, not 'amount'"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - branch:\n"
         "          - if: slots.amount >\n            then: [end]\n",
         6, "flows.pay.steps[0].branch[0].if", "invalid expression 'slots.amount >'"),
        ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - branch:\n"
         "          - if: {slot: ok, eq: true}\n            then: [end]\n",
         6, "flows.pay.steps[0].branch[0].if", "eq"),
    ],
)
def test_flow_errors(tmp_path: Path, flows: str, line: int, field: str, message: str) -> None:
    issue = only_issue(with_flows(tmp_path, flows))
    assert (issue.line, issue.field) == (line, field), str(issue)
    assert message in issue.message, str(issue)


@pytest.mark.parametrize(
    ("slots", "line", "field", "message"),
    [
        ("slots:\n  kind: {type: categorical}\n", 2, "slots.kind", "needs `choices`"),
        ("slots:\n  place: entity\n", 2, "slots.place", "needs `entity`"),
        ("slots:\n  place: {type: text, entity: town}\n", 2, "slots.place.entity",
         "unknown entity 'town' (declared: amount, city)"),
        ("slots:\n  code: {type: text, regex: '[a-'}\n", 2, "slots.code.regex", "invalid regex"),
        ("slots:\n  code: {type: text, max: 3}\n", 2, "slots.code.max",
         "a range applies to number slots only"),
        ("slots:\n  n: {type: number, min: 5, max: 1}\n", 2, "slots.n", "empty range: 5 > 1"),
        ("slots:\n  n: {type: number, initial: x}\n", 2, "slots.n.initial",
         "invalid initial value 'x'"),
        ("slots:\n  n: {type: float2}\n", 2, "slots.n.type", "is not one of"),
        ("slots:\n  n: {type: number, ask: utter_missing}\n", 2, "slots.n.ask",
         "unknown response 'utter_missing'"),
    ],
)
def test_slot_errors(tmp_path: Path, slots: str, line: int, field: str, message: str) -> None:
    extra = SLOTS_YML.replace("slots:\n", "")
    root = make_bot(tmp_path, files(domain__slots_yml=slots + extra))
    issue = only_issue(root)
    assert (issue.line, issue.field) == (line, field), str(issue)
    assert message in issue.message, str(issue)


def test_response_errors(tmp_path: Path) -> None:
    responses = RESPONSES_YML + "  utter_bad: {buttons: []}\n"
    issue = only_issue(make_bot(tmp_path / "a", files(domain__responses_yml=responses)))
    assert (issue.line, issue.field) == (13, "responses.utter_bad")
    assert issue.message == "a response needs `text` or `variations`"
    responses = RESPONSES_YML + "  utter_worse: [{text: ''}]\n"
    issue = only_issue(make_bot(tmp_path / "b", files(domain__responses_yml=responses)))
    assert (issue.line, issue.field) == (13, "responses.utter_worse[0].text")


def test_call_cycle(tmp_path: Path) -> None:
    flows = """\
        flows:
          a:
            trigger: pay
            steps: [{call: b}]
          b:
            steps: [{call: a}]
        """
    issues = issues_of(with_flows(tmp_path, flows))
    assert [i.message for i in issues] == ["call cycle: a -> b -> a", "call cycle: b -> a -> b"]


def test_intent_triggers_one_flow(tmp_path: Path) -> None:
    flows = "flows:\n  a: {trigger: pay, steps: [end]}\n  b: {trigger: [greet, pay], steps: [x]}\n"
    issue = only_issue(with_flows(tmp_path, flows))
    assert (issue.line, issue.field) == (3, "flows.b.trigger")
    assert issue.message == "intent 'pay' already triggers flow 'a'"


def test_duplicate_names_across_files_and_lists(tmp_path: Path) -> None:
    more = "flows:\n  pay: {steps: [end]}\n"
    issues = issues_of(with_flows(tmp_path, FLOWS_YML, domain__more_yml=more))
    assert len(issues) == 1
    assert issues[0].message.startswith("duplicate flows entry 'pay'")
    flows = "flows:\n  - {name: x, steps: [end]}\n  - {id: x, steps: [end]}\n  - {steps: [end]}\n"
    issues = issues_of(with_flows(tmp_path / "list", flows))
    assert [(i.line, i.message.split(" (")[0]) for i in issues] == [
        (3, "duplicate flow 'x'"),
        (4, "an item of the `flows` list needs a `name`"),
    ]


def test_workflow_names_are_checked_when_workflows_exist(tmp_path: Path) -> None:
    flows = "flows:\n  pay:\n    trigger: pay\n    steps:\n      - workflow: charge\n"
    assert load_bot(with_flows(tmp_path, flows)).conversation.flows["pay"].steps
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "refund.yml").write_text("steps: []\n", encoding="utf-8")
    issue = only_issue(tmp_path)
    assert issue.field == "flows.pay.steps[0].workflow"
    assert issue.message == "unknown workflow 'charge' (defined: refund)"


def test_schema_errors_skip_reference_checks(tmp_path: Path) -> None:
    flows = "flows:\n  pay:\n    trigger: pay\n    steps:\n      - collect: {slot: nope, x: 1}\n"
    issue = only_issue(with_flows(tmp_path, flows))
    assert issue.message.startswith("unknown key 'x'")


def test_categorical_branch_values_are_checked(tmp_path: Path) -> None:
    slots = SLOTS_YML + "  kind: {type: categorical, choices: [a, b]}\n"
    flows = ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - branch:\n"
             "          - if: {slot: kind, in: [a, c]}\n            then: [end]\n")
    issue = only_issue(with_flows(tmp_path, flows, domain__slots_yml=slots))
    assert issue.message == "'c' is not a choice of slot 'kind'"


# -- helpers ----------------------------------------------------------------------------------


def test_parse_payload() -> None:
    assert parse_payload("/greet") == ("greet", {})
    assert parse_payload(' /block_card{"card_type": "credit"} ') == (
        "block_card", {"card_type": "credit"})
    assert parse_payload("/x{not json}") is None
    assert parse_payload("/x[1]") is None
    assert parse_payload("hello") is None


def test_value_problem() -> None:
    amount = SlotDef("amount", "number", validation=Validation(gt=0, max=10000))
    assert value_problem(amount, 5) is None
    assert value_problem(amount, 0) == "it must be more than 0"
    assert value_problem(amount, 10001) == "it must be at most 10,000"
    assert value_problem(amount, "5") == "it must be a number"
    assert value_problem(amount, True) == "it must be a number"
    kind = SlotDef("kind", "categorical", validation=Validation(choices=("credit", "debit")))
    assert value_problem(kind, "Credit") is None
    assert value_problem(kind, "gold") == "it must be one of: credit, debit"
    code = SlotDef("code", validation=Validation(regex=r"\d{4}"))
    assert value_problem(code, "1234") is None
    assert value_problem(code, "12345") == "it doesn't have the expected format"
    assert value_problem(code, None) is None


def test_template_sandbox() -> None:
    from jinja2.exceptions import SecurityError

    env = template_environment()
    render = lambda source: env.from_string(source).render(slots={"a": 1, "n": None})  # noqa: E731
    assert render("{{ slots.n }}|{{ slots.missing.deeper }}|{{ slots.a * 3 }}") == "||3"
    assert render("{{ 1234.5 | money }} {{ true }} {{ 2.0 }}") == "1,234.50 yes 2"
    assert render("{{ ''.__class__ }}") == ""
    for source in ("{{ slots.pop('a') }}", "{{ 'x' * 10**6 }}", "{{ 2 ** 1000 }}"):
        with pytest.raises(SecurityError):
            render(source)


@pytest.mark.parametrize(("value", "written"), [
    ("12", "12.00"), (12, "12.00"), (12.5, "12.50"), (1234.5, "1,234.50"), (None, ""),
    ("abc", None), (True, None), ([1], None), ("nan", None)])
def test_one_money_for_templates_and_expressions(value: object, written: str | None) -> None:
    from services.botdef.expressions import ExpressionError, evaluate_source

    template = template_environment().from_string("{{ slots.v | money }}")
    if written is None:
        with pytest.raises(ExpressionError):
            evaluate_source("money(inputs.v)", {"inputs": {"v": value}})
        with pytest.raises(ExpressionError):
            template.render(slots={"v": value})
        return
    assert evaluate_source("money(inputs.v)", {"inputs": {"v": value}}) == written
    assert template.render(slots={"v": value}) == written


# -- built-in sentiment slots -----------------------------------------------------------------


def test_conditions_and_templates_can_read_the_sentiment_slots(tmp_path: Path) -> None:
    flows = ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - branch:\n"
             "          - if: {all: [{slot: sentiment, equals: negative},\n"
             "                       {slot: sentiment_score, gte: 0.8}]}\n"
             "            then: [{handoff: 'Let me get a person, {{ slots.sentiment }}.'}]\n"
             "      - collect: amount\n")
    bot = load_bot(with_flows(tmp_path, flows))
    slots = bot.conversation.slots
    assert slots["sentiment"].keep and not slots["sentiment"].from_text
    assert slots["sentiment_score"].type == "number"


@pytest.mark.parametrize(("flows", "slots", "message"), [
    ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - collect: sentiment\n", None,
     "slot 'sentiment' is built in and read-only (set from the sentiment of the user's last "
     "message)"),
    ("flows:\n  pay:\n    trigger: pay\n    steps:\n      - set: {sentiment_score: 1}\n", None,
     "slot 'sentiment_score' is built in and read-only (set from the sentiment of the user's "
     "last message)"),
    (FLOWS_YML, SLOTS_YML + "  sentiment: text\n",
     "slot name 'sentiment' is reserved: the built-in slot set from the sentiment of the "
     "user's last message"),
])
def test_the_sentiment_slots_are_read_only_and_reserved(
        tmp_path: Path, flows: str, slots: str | None, message: str) -> None:
    more = {} if slots is None else {"domain__slots_yml": slots}
    issue = only_issue(with_flows(tmp_path, flows, **more))
    assert issue.message == message
