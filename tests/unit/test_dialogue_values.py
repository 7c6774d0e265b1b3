"""Slot values the user names (issue 17 items 10-12): lookup lists that validate, close
spellings, accents, currencies kept apart from amounts, e-mail addresses kept whole; with
hand-built NLU results (no model)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from services.botdef import BotDefinitionError, EntityDef, SlotDef, load_bot
from services.common.textenc import Span
from services.dialogue.engine import DialogueEngine, EntityValue, NluResult
from services.dialogue.engine.values import (
    EntityMatcher,
    currency_context,
    fold,
    from_entity,
    from_text,
    named_currency,
)
from services.nlu.engine import whole_addresses
from tests.support.dialogue import ASK_AMOUNT, Chat, texts

BANKING = Path(__file__).resolve().parents[2] / "bots" / "banking"
ASK_CITY = "In which city are you looking for a branch?"
NO_BRANCH = "Sorry, we have no branch in that city."


@pytest.fixture(scope="module")
def banking() -> DialogueEngine:
    return DialogueEngine(load_bot(BANKING))


def city_chat(banking: DialogueEngine) -> Chat:
    chat = Chat(banking)
    assert texts(chat.say("is there a branch close by?", "find_branch")) == [ASK_CITY]
    return chat


# -- item 10: a slot with a lookup list validates against it ---------------------------------


def test_a_city_the_model_tags_but_the_lookup_list_lacks_is_asked_again(
        banking: DialogueEngine) -> None:
    chat = city_chat(banking)
    result = chat.say("Atlantis", "inform", entities={"city": "Atlantis"})
    assert texts(result)[0].startswith(NO_BRANCH)
    assert texts(result)[1] == ASK_CITY
    assert chat.slots()["city"] is None
    assert not any("Atlantis branch" in text for text in texts(result))


def test_a_close_spelling_of_a_lookup_value_is_taken_as_that_value(
        banking: DialogueEngine) -> None:
    chat = city_chat(banking)
    result = chat.say("berln", "inform", entities={"city": "berln"})
    assert texts(result) == ["Our Berlin branch is at 1 Main Street, open Monday to Friday, "
                             "9:00 to 17:00."]
    assert city_chat(banking).say("Frankfrut").replies[0].text.startswith("Our Frankfurt")


def test_lookup_matching_ignores_case_and_accents_and_is_configurable() -> None:
    matcher = EntityMatcher.of(EntityDef("city", lookup=("Zürich", "Paris", "Parma")), {})
    city = SlotDef("city", type="entity", entity="city")
    assert from_entity(city, "zurich", matcher).value == "Zürich"
    assert from_text(city, "I live in ZURICH", matcher).value == "Zürich"
    assert from_entity(city, "Pariss", matcher).value == "Paris"
    assert from_entity(city, "Par", matcher).problem == "Par is not a city I know"
    exact = SlotDef("city", type="entity", entity="city", fuzzy=1.0)
    assert from_entity(exact, "Pariss", matcher).problem == "Pariss is not a city I know"
    open_slot = SlotDef("city", type="entity", entity="city", lookup_only=False)
    assert from_entity(open_slot, "Atlantis", matcher).value == "Atlantis"
    assert fold("  Ça  VA ") == "ca va"


# -- item 11: a currency the user names is kept, not dropped ---------------------------------


def test_an_amount_in_another_currency_is_refused_not_converted(
        banking: DialogueEngine) -> None:
    chat = Chat(banking)
    result = chat.say("send 50 dollars to my mom", "transfer_money",
                      entities={"amount": "50 dollars", "recipient": "mom"})
    assert texts(result)[0].endswith("(only EUR amounts are possible, not USD).")
    assert texts(result)[1] in ASK_AMOUNT
    assert chat.slots()["amount"] is None
    assert chat.slots()["recipient"] == "mom"
    assert texts(chat.say("£20"))[0] == ("Sorry, I can only transfer amounts above 0 and up to "
                                         "10,000 EUR (only EUR amounts are possible, not GBP).")
    assert texts(chat.say("€50")) == ["Send 50.00 EUR to mom?"]


def test_a_currency_named_next_to_the_tagged_number_counts(banking: DialogueEngine) -> None:
    """The tagger may tag only "50" of "50 dollars" (or of "$50")."""
    for text, number in (("send 50 dollars to my mom", "50"), ("send $50 to my mom", "50")):
        start = text.index(number)
        amount = EntityValue("amount", number, number, start, start + len(number))
        message = NluResult("transfer_money", 0.95, [("transfer_money", 0.95)], [amount])
        engine_chat = Chat(banking)
        result = engine_chat.engine.handle_message(engine_chat.tracker, "m1", text, message, 1.0)
        assert texts(result)[0].endswith("(only EUR amounts are possible, not USD).")
    assert currency_context("pay 50 euros now", 4, 6) == " 50 euros"
    assert currency_context("pay €50", 5, 7) == "€50"


@pytest.mark.parametrize(("text", "code"), [
    ("50 dollars", "USD"), ("$20", "USD"), ("20 USD", "USD"), ("fifty euros", "EUR"),
    ("€1.000,50", "EUR"), ("£5", "GBP"), ("5 pounds", "GBP"), ("1,000", None),
    ("$5 or 5 euros", None),
])
def test_named_currency(text: str, code: str | None) -> None:
    assert named_currency(text) == code


# -- item 12: entity values: accents, word boundaries, e-mail addresses ----------------------


def test_a_word_the_model_tags_as_a_city_does_not_become_one(banking: DialogueEngine) -> None:
    """"héllo ça va": the tagger read "va" as a city; the dialogue no longer confirms it."""
    chat = city_chat(banking)
    result = chat.say("héllo ça va", "greet", entities={"city": "va"})
    assert chat.slots()["city"] is None
    assert not any("va branch" in text for text in texts(result))
    city = SlotDef("city", type="entity", entity="city", fuzzy=1.0)
    matcher = EntityMatcher.of(EntityDef("city", lookup=("A", "Llo", "Zürich")), {})
    assert from_text(city, "héllo ça va", matcher).value is None  # whole words, any script
    assert from_text(city, "héllo ça va, Zurich?", matcher).value == "Zürich"


def test_an_email_address_the_tagger_splits_is_kept_whole() -> None:
    text = "send 20 euros to jane.doe@example.com please"
    start = text.index("jane")
    spans = [Span(8, 13, "amount"), Span(start, start + 4, "recipient"),
             Span(start + 9, start + 16, "recipient")]
    widened = whole_addresses(text, spans)
    assert [(text[s.start:s.end], s.entity) for s in widened] == [
        ("euros", "amount"), ("jane.doe@example.com", "recipient")]
    assert whole_addresses("send 20 to jane", spans[:1]) == spans[:1]


def test_an_email_recipient_is_confirmed_whole(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    result = chat.say("send 20 euros to jane@example.com", "transfer_money",
                      entities={"amount": "20 euros", "recipient": "jane@example.com"})
    assert chat.slots()["recipient"] == "jane@example.com"
    assert texts(result) == ["Send 20.00 EUR to [EMAIL]?"]


# -- the definition: the new slot and knowledge keys are checked -------------------------------


def load_errors(root: Path, files: dict[str, str]) -> str:
    """The errors of a bot folder made of `files` (it must not load)."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(BotDefinitionError) as error:
        load_bot(root)
    return str(error.value)


INTENTS = {"data/nlu.yml": "intents:\n  - name: greet\n    examples: [hi there, hello]\n"}


def test_slot_and_knowledge_keys_are_validated_with_file_and_line(tmp_path: Path) -> None:
    schema = load_errors(tmp_path / "schema", {
        **INTENTS,
        "bot.yml": 'version: "1"\nname: bad\n'
                   "knowledge: {score_calibration: {slope: -1, intercept: 0}}\n",
        "domain/slots.yml": "slots:\n  sum: {type: number, currencies: [euro]}\n"
                            "  town: {type: text, fuzzy: 2}\n",
    })
    for expected in ("bot.yml:3: knowledge.score_calibration.slope",
                     "slots.yml:2: slots.sum.currencies[0]", "slots.yml:3: slots.town.fuzzy"):
        assert expected in schema, schema
    semantic = load_errors(tmp_path / "semantic", {
        **INTENTS,
        "bot.yml": 'version: "1"\nname: bad\nknowledge: {answer_intents: [greet, nope]}\n',
        "domain/slots.yml": "slots:\n  who: {type: text, currencies: [EUR]}\n",
    })
    for expected in ("bot.yml:3: knowledge.answer_intents[1]: unknown intent 'nope'",
                     "slots.yml:2: slots.who.currencies: currencies apply to number slots "
                     "only"):
        assert expected in semantic, semantic
