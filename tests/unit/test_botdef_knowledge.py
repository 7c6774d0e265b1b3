"""bot.yml `knowledge:` settings and the flow step `search`: parsing, defaults and the
file:line:field errors of bad values."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from services.botdef import (
    BotDefinition,
    BotDefinitionError,
    KnowledgeSettings,
    MessageRef,
    Search,
    Variation,
    load_bot,
)

REPO = Path(__file__).resolve().parents[2]
DATA = """\
intents:
  - name: faq
    examples: [a question, another question]
  - name: docs
    examples: [look it up, search the docs]
"""
SLOTS = """\
slots:
  topic: text
  answered: boolean
  note: text
responses:
  utter_no_answer: "Nothing about {{ slots.topic }}."
"""


def write(root: Path, bot_yml: str, flows: str = "") -> Path:
    files = {"bot.yml": 'version: "1"\nname: kb\n' + textwrap.dedent(bot_yml),
             "data/nlu.yml": DATA, "domain/slots.yml": SLOTS}
    if flows:
        files["domain/flows.yml"] = textwrap.dedent(flows)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def load(root: Path, bot_yml: str, flows: str = "") -> BotDefinition:
    return load_bot(write(root, bot_yml, flows))


def issues(root: Path, bot_yml: str, flows: str = "") -> list[str]:
    with pytest.raises(BotDefinitionError) as caught:
        load(root, bot_yml, flows)
    return [str(issue) for issue in caught.value.issues]


def search_flow(step: str) -> str:
    return f"flows:\n  docs:\n    trigger: docs\n    steps:\n      - collect: {{slot: topic, " \
           f"ask: Which topic?}}\n      - {step}\n"


def test_no_section_means_no_settings(tmp_path: Path) -> None:
    assert load(tmp_path, "").knowledge is None


def test_an_empty_section_takes_the_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "knowledge: {}\n").knowledge == KnowledgeSettings(
        answer_threshold=0.5, faq_intent="faq", on_out_of_scope=True, max_sentences=2, k=5)


def test_every_setting_is_read(tmp_path: Path) -> None:
    bot = load(tmp_path, """\
        knowledge:
          answer_threshold: 0.62
          faq_intent: null
          on_out_of_scope: false
          max_sentences: 3
          k: 10
        """)
    assert bot.knowledge == KnowledgeSettings(0.62, None, False, 3, 10)


@pytest.mark.parametrize(("line", "field", "message"), [
    ("answer_threshold: 1.5", "knowledge.answer_threshold", "greater than the maximum of 1"),
    ("answer_threshold: -0.1", "knowledge.answer_threshold", "less than the minimum of 0"),
    ("k: 0", "knowledge.k", "less than the minimum of 1"),
    ("k: 51", "knowledge.k", "greater than the maximum of 50"),
    ("max_sentences: 11", "knowledge.max_sentences", "greater than the maximum of 10"),
    ("on_out_of_scope: maybe", "knowledge.on_out_of_scope", "is not of type 'boolean'"),
    ("answer_treshold: 0.5", "knowledge.answer_treshold", "unknown key 'answer_treshold'"),
])
def test_bad_values_name_file_line_and_field(tmp_path: Path, line: str, field: str,
                                             message: str) -> None:
    found = issues(tmp_path, f"knowledge:\n  faq_intent: faq\n  {line}\n")
    assert len(found) == 1
    assert found[0].startswith(f"{tmp_path / 'bot.yml'}:5: {field}: ")
    assert message in found[0]


def test_faq_intent_must_be_an_intent_of_the_bot(tmp_path: Path) -> None:
    found = issues(tmp_path, "knowledge:\n  faq_intent: questions\n")
    assert found == [f"{tmp_path / 'bot.yml'}:4: knowledge.faq_intent: unknown intent "
                     "'questions' (use null for no FAQ intent)"]


def test_search_step_forms(tmp_path: Path) -> None:
    flows = """\
        flows:
          docs:
            trigger: docs
            steps:
              - search:
              - search: {}
              - search: "{{ slots.topic }} fees"
              - search:
                  query: "{{ slots.topic }}"
                  not_found: utter_no_answer
                  save: answered
              - search: {not_found: "Sorry, I found nothing."}
        """
    steps = load(tmp_path, "", flows).conversation.flows["docs"].steps
    assert steps == (
        Search(),
        Search(),
        Search(query="{{ slots.topic }} fees"),
        Search(query="{{ slots.topic }}", not_found=MessageRef(response="utter_no_answer"),
               save="answered"),
        Search(not_found=MessageRef(inline=Variation("Sorry, I found nothing."))),
    )


@pytest.mark.parametrize(("step", "field", "message"), [
    ("search: {save: missing}", "search.save", "unknown slot 'missing'"),
    ("search: {save: note}", "search.save", "slot 'note' must be a boolean slot"),
    ("search: '{{ slots.nope }}'", "search", "template uses unknown slot 'nope'"),
    ("search: {query: '{{ slots.nope }}'}", "search.query", "template uses unknown slot"),
    ("search: {not_found: utter_missing}", "search.not_found", "unknown response"),
    ("search: {query: x, limit: 3}", "search.limit", "unknown key 'limit'"),
    ("search: ''", "search", "should be non-empty"),
])
def test_bad_search_steps(tmp_path: Path, step: str, field: str, message: str) -> None:
    found = issues(tmp_path, "", search_flow(step))
    flows = tmp_path / "domain" / "flows.yml"
    assert len(found) == 1, found
    assert found[0].startswith(f"{flows}:6: flows.docs.steps[1].{field}: ")
    assert message in found[0]


def test_the_demo_bot_answers_from_its_knowledge_base() -> None:
    knowledge = load_bot(REPO / "bots" / "banking").knowledge
    assert knowledge is not None and knowledge.faq_intent is None
    assert knowledge.on_out_of_scope and 0 < knowledge.answer_threshold < 1
