"""Bot definition library: annotations, loading, validation, runtime config, writing."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from services.botdef import (
    BotDefinitionError,
    DefinitionIssue,
    EntityDef,
    EntitySpan,
    Example,
    NluSettings,
    format_annotated,
    load_bot,
    parse_annotated,
    write_bot,
)

REPO = Path(__file__).resolve().parents[2]
BANKING = REPO / "bots" / "banking"

BOT_YML = 'version: "1"\nname: demo\n'
ENTITIES_YML = """\
entities:
  - name: amount
  - name: recipient
"""
INTENTS_YML = """\
intents:
  - name: greet
    examples:
      - hi
      - hello
  - name: transfer
    examples:
      - send [50](amount) to [mom](recipient)
      - pay [Bob](recipient)
"""


def make_bot(root: Path, files: dict[str, str]) -> Path:
    """Write a bot folder: relative path -> YAML text (dedented)."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def valid_files() -> dict[str, str]:
    return {
        "bot.yml": BOT_YML,
        "data/entities.yml": ENTITIES_YML,
        "data/intents.yml": INTENTS_YML,
    }


def issues_of(root: Path) -> list[DefinitionIssue]:
    with pytest.raises(BotDefinitionError) as caught:
        load_bot(root)
    return caught.value.issues


def only_issue(root: Path) -> DefinitionIssue:
    issues = issues_of(root)
    assert len(issues) == 1, [str(i) for i in issues]
    return issues[0]


# -- annotations ------------------------------------------------------------------------------


def test_parse_short_annotations() -> None:
    example = parse_annotated("send [50](amount) to [mom](recipient)", intent="transfer")
    assert example == Example(
        "send 50 to mom",
        "transfer",
        (EntitySpan(5, 7, "amount"), EntitySpan(11, 14, "recipient")),
    )


def test_parse_long_annotation_gives_value() -> None:
    example = parse_annotated('my [current]{"entity": "account_type", "value": "checking"} one')
    assert example.text == "my current one"
    assert example.entities == (EntitySpan(3, 10, "account_type", "checking"),)
    assert example.intent == ""


def test_long_annotation_without_value_and_rasa_role_keys() -> None:
    example = parse_annotated('fly to [Rome]{"entity": "city", "role": "destination"}')
    assert example.entities == (EntitySpan(7, 11, "city", None),)


@pytest.mark.parametrize(
    ("annotated", "text", "spans"),
    [
        ("see [note] below", "see [note] below", ()),
        ("[a] [b](x)", "[a] b", (EntitySpan(4, 5, "x"),)),
        ("[a [b](x)", "[a b", (EntitySpan(3, 4, "x"),)),
        ("a ] b", "a ] b", ()),
        ("[unclosed", "[unclosed", ()),
        (r"\[50](amount)", "[50](amount)", ()),
        (r"[a\]b](x)", "a]b", (EntitySpan(0, 3, "x"),)),
        (r"C:\temp \\[x](e)", r"C:\temp \x", (EntitySpan(9, 10, "e"),)),
        ("[ATIS](fromloc.city_name)", "ATIS", (EntitySpan(0, 4, "fromloc.city_name"),)),
        ("zahle [10 €](betrag) an [Jürgen](empfänger_x)", None, None),
    ],
)
def test_parse_literal_brackets_and_escapes(
    annotated: str, text: str | None, spans: tuple[EntitySpan, ...] | None
) -> None:
    if text is None:
        with pytest.raises(ValueError, match="invalid entity name"):
            parse_annotated(annotated)
        return
    example = parse_annotated(annotated)
    assert example.text == text
    assert example.entities == spans


@pytest.mark.parametrize(
    ("annotated", "message"),
    [
        ("send [](amount)", "empty annotated text at column 6"),
        ("send [50](amount", "unclosed '(' at column 10"),
        ("send [50](the amount)", "invalid entity name 'the amount'"),
        ("send [50](9amount)", "invalid entity name '9amount'"),
        ("send [ 50](amount)", "starts or ends with whitespace"),
        ('send [50]{"entity": "amount"', "malformed JSON annotation at column 10"),
        ("send [50]{entity: amount}", "malformed JSON annotation"),
        ('send [50]{"value": "50"}', 'needs a valid "entity" name'),
        ('send [50]{"entity": "amount", "value": 50}', '"value" must be a string'),
        ('send [50]{"entity": "amount", "unit": "eur"}', "unknown key(s) unit"),
        ('send [50]["amount"]', None),
    ],
)
def test_parse_errors(annotated: str, message: str | None) -> None:
    if message is None:  # a bracket not followed by ( or { is literal
        assert parse_annotated(annotated).text == annotated
        return
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_annotated(annotated)


@pytest.mark.parametrize(
    "annotated",
    [
        "send [50](amount) to [mom](recipient)",
        '[current]{"entity": "account_type", "value": "checking"} balance',
        r"literal \[brackets\] and [x](e)",
        r"backslash at end \\",
        r"path C:\dir then \\[x](e)",
        "no annotations at all",
        '[Jürgen]{"entity": "name", "value": "Jürgen \\"J\\" M."}',
    ],
)
def test_format_inverts_parse(annotated: str) -> None:
    example = parse_annotated(annotated, intent="i")
    assert format_annotated(example) == annotated
    assert parse_annotated(format_annotated(example), intent="i") == example


@pytest.mark.parametrize(
    "example",
    [
        Example("a [b] \\ c \\", "i"),
        Example("[x](y) is text", "i", (EntitySpan(0, 3, "e"),)),
        Example("pay 5\\ now", "i", (EntitySpan(4, 6, "amount", "5"),)),
        Example('{"entity": 1}', "i", (EntitySpan(0, 1, "e", "a]b)c}"),)),
    ],
)
def test_parse_inverts_format(example: Example) -> None:
    assert parse_annotated(format_annotated(example), intent="i") == example


@pytest.mark.parametrize(
    ("spans", "message"),
    [
        ((EntitySpan(0, 3, "a"), EntitySpan(2, 5, "b")), "overlaps"),
        ((EntitySpan(5, 40, "a"),), "outside"),
        ((EntitySpan(3, 3, "a"),), "empty"),
        ((EntitySpan(3, 8, "a"),), "whitespace"),
        ((EntitySpan(0, 3, "bad name"),), "invalid entity name"),
    ],
)
def test_format_rejects_bad_spans(spans: tuple[EntitySpan, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        format_annotated(Example("pay 50 to mom", "i", spans))


# -- the demo bot -----------------------------------------------------------------------------

BANKING_INTENTS = {
    "greet",
    "inform",
    "goodbye",
    "thanks",
    "help",
    "affirm",
    "deny",
    "cancel",
    "check_balance",
    "transfer_money",
    "block_card",
    "find_branch",
    "faq_opening_hours",
    "faq_fees",
    "human_handoff",
    "out_of_scope",
}


def test_banking_bot_loads_with_all_intents() -> None:
    bot = load_bot(BANKING)
    assert bot.name == "banking"
    assert bot.path == BANKING
    assert {intent.name for intent in bot.intents} == BANKING_INTENTS
    assert bot.nlu.out_of_scope_intent == "out_of_scope"
    assert bot.nlu.base_model is None
    assert bot.nlu.language == "en" and bot.languages == ("en", "zh")
    for intent in bot.intents:
        english = [e for e in intent.examples if e.language == "en"]
        chinese = [e for e in intent.examples if e.language == "zh"]
        assert 20 <= len(english) <= 45 or intent.name == "transfer_money", intent.name
        assert 15 <= len(chinese) <= 45, intent.name
        texts = [example.text.lower() for example in intent.examples]
        assert len(set(texts)) == len(texts), f"duplicate example in {intent.name}"


def test_banking_bot_entities() -> None:
    bot = load_bot(BANKING)
    assert set(bot.entities) == {"amount", "recipient", "account_type", "card_type", "city", "iban"}
    transfer = next(intent for intent in bot.intents if intent.name == "transfer_money")
    assert len(transfer.examples) > 40
    amounts = {e.text[s.start : s.end] for e in transfer.examples for s in e.entities}
    assert {"50", "$120.50", "1,000 euros"} <= amounts
    recipients = {
        e.text[s.start : s.end]
        for e in transfer.examples
        for s in e.entities
        if s.entity == "recipient"
    }
    assert len(recipients) >= 30
    assert len(bot.entities["city"].lookup) >= 20
    config = bot.entities_runtime_config()
    assert config["synonyms"]["account_type"]["current account"] == "checking"
    assert config["synonyms"]["account_type"]["saving"] == "savings"
    assert config["synonyms"]["card_type"]["visa"] == "credit"
    (iban,) = config["regex"]["iban"]
    assert re.search(iban, "send it to DE89 3704 0044 0532 0130 00 please")
    assert re.search(iban, "GB29NWBK60161331926819")
    assert not re.search(iban, "send 50 euros to mom")


def test_banking_examples_are_intent_ordered() -> None:
    bot = load_bot(BANKING)
    examples = bot.examples()
    assert len(examples) == sum(len(intent.examples) for intent in bot.intents)
    order = [example.intent for example in examples]
    assert order == sorted(order, key=bot.intent_names().index)


# -- loading ----------------------------------------------------------------------------------


def test_minimal_bot_takes_defaults(tmp_path: Path) -> None:
    bot = load_bot(make_bot(tmp_path, valid_files()))
    assert bot.nlu == NluSettings()
    assert bot.description == ""
    assert bot.intent_names() == ["greet", "transfer"]
    assert bot.examples()[2] == parse_annotated(
        "send [50](amount) to [mom](recipient)", intent="transfer"
    )
    assert bot.entities["amount"] == EntityDef("amount", {}, (), ())
    assert bot.raw == {"version": "1", "name": "demo", "workflows": {}}


def test_nlu_settings_are_read(tmp_path: Path) -> None:
    files = valid_files()
    files["bot.yml"] = """\
        version: "1"
        name: demo
        description: A demo.
        language: de
        nlu:
          base_model: /models/encoder
          confidence_threshold: 0.7
          out_of_scope_intent: oos
          max_length: 128
          epochs: 3
          learning_rate: 0.0001
          batch_size: 16
          seed: 7
        """
    bot = load_bot(make_bot(tmp_path, files))
    assert bot.description == "A demo."
    assert bot.nlu == NluSettings("de", "/models/encoder", 0.7, "oos", 128, 3, 1e-4, 16, 7)
    assert type(bot.nlu.confidence_threshold) is float
    assert type(bot.raw["nlu"]["confidence_threshold"]) is float


def test_intents_merge_across_files_in_file_order(tmp_path: Path) -> None:
    files = valid_files()
    files["data/more/extra.yaml"] = """\
        intents:
          - name: greet
            examples: [hey there, good morning]
          - name: bye
            examples: [bye, see you]
        """
    bot = load_bot(make_bot(tmp_path, files))
    assert bot.intent_names() == ["greet", "transfer", "bye"]
    greet = bot.intents[0]
    assert [e.text for e in greet.examples] == ["hi", "hello", "hey there", "good morning"]


def test_raw_sections_and_workflows_are_kept(tmp_path: Path) -> None:
    files = valid_files()
    files["bot.yml"] = BOT_YML + "slots:\n  account: {type: text}\n"
    files["data/dialogue.yml"] = """\
        slots:
          amount: {type: float}
        responses:
          utter_greet: [{text: Hello!}]
        flows:
          - id: transfer
            steps: [ask_amount]
        """
    files["workflows/pay.yml"] = "name: payment\nsteps:\n  - call: core_banking\n"
    files["workflows/audit.yml"] = "steps: []\n"
    bot = load_bot(make_bot(tmp_path, files))
    assert bot.raw["slots"] == {"account": {"type": "text"}, "amount": {"type": "float"}}
    assert bot.raw["responses"] == {"utter_greet": [{"text": "Hello!"}]}
    assert bot.raw["flows"] == [{"id": "transfer", "steps": ["ask_amount"]}]
    assert bot.raw["workflows"] == {
        "audit": {"steps": []},
        "payment": {"name": "payment", "steps": [{"call": "core_banking"}]},
    }
    assert type(bot.raw["slots"]) is dict


def test_entities_runtime_config(tmp_path: Path) -> None:
    files = valid_files()
    files["data/entities.yml"] = """\
        entities:
          - name: amount
            regex: ['\\d+(?:\\.\\d\\d)?']
          - name: recipient
            lookup: [mom, dad]
            synonyms:
              Mom: [mum, Mother]
          - name: account
        """
    files["data/accounts.yml"] = """\
        intents:
          - name: balance
            examples:
              - 'my [current]{"entity": "account", "value": "checking"} balance'
              - '[savings]{"entity": "account", "value": "savings"} balance'
        """
    bot = load_bot(make_bot(tmp_path, files))
    assert bot.entities_runtime_config() == {
        "synonyms": {
            "recipient": {"mum": "Mom", "mother": "Mom", "mom": "Mom"},
            "account": {"current": "checking", "checking": "checking"},
        },
        "regex": {"amount": [r"\d+(?:\.\d\d)?"]},
        "lookup": {"recipient": ["mom", "dad"]},
    }


# -- validation -------------------------------------------------------------------------------


def test_unknown_entity_names_file_line_and_field(tmp_path: Path) -> None:
    files = valid_files()
    files["data/intents.yml"] = INTENTS_YML.replace("[mom](recipient)", "[mom](recipeint)")
    issue = only_issue(make_bot(tmp_path, files))
    assert issue == DefinitionIssue(
        str(tmp_path / "data" / "intents.yml"),
        8,
        "intents[1].examples[0]",
        "unknown entity 'recipeint' (declared: amount, recipient)",
    )
    assert str(issue) == (
        f"{tmp_path}/data/intents.yml:8: intents[1].examples[0]: "
        "unknown entity 'recipeint' (declared: amount, recipient)"
    )


def test_too_few_examples(tmp_path: Path) -> None:
    files = valid_files()
    files["data/intents.yml"] = INTENTS_YML.replace("      - hello\n", "")
    issue = only_issue(make_bot(tmp_path, files))
    assert (issue.line, issue.field) == (2, "intents[0]")
    assert "intent 'greet' has 1 example(s); at least 2 are needed" in issue.message


def test_malformed_annotation(tmp_path: Path) -> None:
    files = valid_files()
    files["data/intents.yml"] = INTENTS_YML.replace("[Bob](recipient)", "[Bob](recipient")
    issue = only_issue(make_bot(tmp_path, files))
    assert (issue.line, issue.field) == (9, "intents[1].examples[1]")
    assert issue.message == "malformed annotation: unclosed '(' at column 10"


def test_duplicate_entity_across_files(tmp_path: Path) -> None:
    files = valid_files()
    files["data/z_more.yml"] = "entities:\n  - name: zip\n  - name: amount\n"
    issue = only_issue(make_bot(tmp_path, files))
    assert (issue.file, issue.line, issue.field) == (
        str(tmp_path / "data" / "z_more.yml"),
        3,
        "entities[1]",
    )
    assert f"duplicate entity 'amount' (first at {tmp_path}/data/entities.yml:2)" in issue.message


def test_bad_regex(tmp_path: Path) -> None:
    files = valid_files()
    files["data/entities.yml"] = (
        ENTITIES_YML + "    regex:\n      - '[0-9]+'\n      - '(unclosed'\n"
    )
    issue = only_issue(make_bot(tmp_path, files))
    assert (issue.line, issue.field) == (6, "entities[1].regex[1]")
    assert issue.message.startswith("invalid regex '(unclosed': missing ), unterminated")


def test_synonym_variant_of_two_canonicals(tmp_path: Path) -> None:
    files = valid_files()
    files["data/entities.yml"] = ENTITIES_YML + (
        "    synonyms:\n      mom: [mum, ma]\n      mother: [Ma]\n"
    )
    issue = only_issue(make_bot(tmp_path, files))
    assert (issue.line, issue.field) == (6, "entities[1].synonyms.mother")
    assert issue.message == "variant 'Ma' is also a synonym of 'mom'"


@pytest.mark.parametrize(
    ("bot_yml", "line", "field", "message"),
    [
        ('version: "1"\nname: My Bot\n', 2, "name", "'My Bot' is not a valid bot name"),
        ("version: 1\nname: demo\n", 1, "version", "must be '1' (got 1)"),
        ("name: demo\n", 1, "", "'version' is a required property"),
        (
            BOT_YML + "nlu:\n  confidence_threshold: 1.5\n",
            4,
            "nlu.confidence_threshold",
            "1.5 is greater than the maximum of 1",
        ),
        (BOT_YML + "nlu:\n  max_length: 4\n", 4, "nlu.max_length", "4 is less than the minimum"),
        (
            BOT_YML + "nlu:\n  base_model: null\n  epoch: 3\n",
            5,
            "nlu.epoch",
            "unknown key 'epoch' (allowed: base_model, confidence_threshold",
        ),
        (BOT_YML + "intent: []\n", 3, "intent", "unknown key 'intent'"),
        (BOT_YML + "nlu:\n", 3, "nlu", "is empty (expected a mapping)"),
    ],
)
def test_schema_errors_in_bot_yml(
    tmp_path: Path, bot_yml: str, line: int, field: str, message: str
) -> None:
    files = valid_files()
    files["bot.yml"] = bot_yml
    issue = only_issue(make_bot(tmp_path, files))
    assert (issue.file, issue.line, issue.field) == (str(tmp_path / "bot.yml"), line, field)
    assert message in issue.message


def test_schema_error_in_one_item_keeps_checking_the_others(tmp_path: Path) -> None:
    files = valid_files()
    files["data/intents.yml"] = INTENTS_YML + (
        "  - name: broken\n    examples: [1, two]\n"
        "  - name: ok\n    examples: ['[5](amuont)', six]\n"
    )
    issues = issues_of(make_bot(tmp_path, files))
    assert [(i.line, i.field) for i in issues] == [
        (11, "intents[2].examples[0]"),
        (13, "intents[3].examples[0]"),
    ]
    assert issues[0].message == "1 is not of type 'string'"
    assert issues[1].message.startswith("unknown entity 'amuont'")


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    files = valid_files()
    files["data/broken.yml"] = "intents:\n  - name: x\n    examples: [a, b\n"
    issue = only_issue(make_bot(tmp_path, files))
    assert issue.file == str(tmp_path / "data" / "broken.yml")
    assert issue.line == 4
    assert issue.message.startswith("invalid YAML:")


def test_mixed_section_kinds_and_duplicate_keys(tmp_path: Path) -> None:
    files = valid_files()
    files["data/a.yml"] = "slots:\n  amount: {}\nflows: {a: {}}\n"
    files["data/b.yml"] = "slots:\n  other: {}\n  amount: {}\nflows: [x]\n"
    issues = issues_of(make_bot(tmp_path, files))
    assert [(Path(i.file).name, i.line, i.field) for i in issues] == [
        ("b.yml", 1, "slots"),
        ("b.yml", 4, "flows"),
    ]
    assert "duplicate slots entry 'amount' (first at" in issues[0].message
    assert "must be of the same kind (mapping or list)" in issues[1].message


def test_all_issues_are_collected(tmp_path: Path) -> None:
    files = valid_files()
    files["bot.yml"] = 'version: "1"\nname: Demo\n'
    files["data/intents.yml"] = INTENTS_YML.replace("[mom](recipient)", "[mom](mum)").replace(
        "      - hello\n", ""
    )
    with pytest.raises(BotDefinitionError) as caught:
        load_bot(make_bot(tmp_path, files))
    lines = str(caught.value).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{tmp_path}/bot.yml:2: name:")
    assert lines[1].startswith(f"{tmp_path}/data/intents.yml:2: intents[0]: intent 'greet'")
    assert lines[2].startswith(f"{tmp_path}/data/intents.yml:7: intents[1].examples[0]:")


def test_missing_folder_and_bot_yml(tmp_path: Path) -> None:
    issue = only_issue(tmp_path / "nope")
    assert issue.file == str(tmp_path / "nope")
    assert "no such directory" in issue.message
    issue = only_issue(tmp_path)
    assert (issue.file, issue.message) == (str(tmp_path / "bot.yml"), "missing bot.yml")
    assert str(issue) == f"{tmp_path}/bot.yml: missing bot.yml"


def test_no_intents_is_an_error(tmp_path: Path) -> None:
    issue = only_issue(make_bot(tmp_path, {"bot.yml": BOT_YML}))
    assert "defines no intents" in issue.message


# -- writing ----------------------------------------------------------------------------------

TRICKY = [
    parse_annotated("send [50](amount) to [mom](recipient)", intent="transfer"),
    parse_annotated("[$120.50](amount) to [Ann](recipient): now # really", intent="transfer"),
    Example("[literal] brackets & 'quotes' \"too\"", "misc"),
    Example("- looks like a list", "misc"),
    Example("yes", "misc"),
    Example("multi\nline", "misc"),
    parse_annotated('my [current]{"entity": "account", "value": "checking"} one', intent="bal"),
    parse_annotated("C:\\temp\\ [x](account)", intent="bal"),
]


def test_write_bot_round_trips(tmp_path: Path) -> None:
    entities = [
        EntityDef("account", {"checking": ["current", "cheque"]}, (r"\bacc\d+\b",), ()),
        EntityDef("city", {}, (), ("Berlin", "Paris")),
    ]
    nlu = NluSettings(language="fr", confidence_threshold=0.65, epochs=4, seed=1)
    out = write_bot(
        tmp_path / "bot", "tricky", TRICKY, description="d: x", entities=entities, nlu=nlu
    )
    assert out == tmp_path / "bot"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.yml")) == [
        "bot.yml",
        "data/entities.yml",
        "data/intents.yml",
    ]
    bot = load_bot(out)
    assert bot.name == "tricky"
    assert bot.description == "d: x"
    assert bot.nlu == nlu
    assert bot.examples() == sorted(
        TRICKY, key=lambda e: ["transfer", "misc", "bal"].index(e.intent)
    )
    assert list(bot.entities) == ["account", "city", "amount", "recipient"]
    assert bot.entities["account"] == entities[0]
    assert bot.entities["city"] == entities[1]


@pytest.mark.parametrize(
    ("name", "examples", "entities", "message"),
    [
        ("Bad Name", TRICKY, (), "bot name 'Bad Name'"),
        ("ok", [*TRICKY, Example("only one", "lonely")], (), "too few: lonely (1)"),
        ("ok", [Example("a b", "bad intent"), Example("c", "bad intent")], (), "invalid intent"),
        ("ok", [], (), "no examples"),
        ("ok", TRICKY, (EntityDef("x", {}, ("(",), ()),), "invalid regex"),
        ("ok", TRICKY, (EntityDef("x", {}, (r"(a)\1",), ()),), "backreference `\\1`"),
        ("ok", TRICKY, (EntityDef("x", {"a": ["b"], "c": ["B"]}, (), ()),), "synonym of both"),
        ("ok", TRICKY, (EntityDef("x", {}, (), ()),) * 2, "given twice"),
    ],
)
def test_write_bot_rejects_bad_input(
    tmp_path: Path,
    name: str,
    examples: list[Example],
    entities: tuple[EntityDef, ...],
    message: str,
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        write_bot(tmp_path / "out", name, examples, entities=entities)
    assert not (tmp_path / "out").exists()
