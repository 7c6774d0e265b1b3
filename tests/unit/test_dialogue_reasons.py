"""Issue 18 (part C), with hand-built NLU results (no model): a refused slot value is
recorded with the reason (`slot_rejected`), a question asked again says why
(`question_repeated`), an entity's regexes hold for what the learned tagger predicts, slots
only a workflow fills are not filled from entities, and date / datetime slots read what users
write in the bot's timezone, relative to the turn's time."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from services.botdef import BotDefinitionError
from services.dialogue.engine import DialogueEngine
from services.dialogue.engine.dates import Clock, parse_date
from tests.support.dialogue import Chat, kinds, make_bot, texts

CLAIMS_FILES = {
    "bot.yml": 'version: "1"\nname: claims\ntimezone: Europe/Berlin\n'
               "nlu: {confidence_threshold: 0.5}\n",
    "data/nlu.yml": """\
        entities:
          - name: claim_id
            regex: ['[A-Z]{2}[0-9]{6}']
          - name: date
        intents:
          - {name: check_claim, examples: [where is my claim, claim status]}
          - {name: file_claim, examples: [I had an accident, file a claim]}
          - {name: inform, examples: [it is AB123456, yesterday]}
        """,
    "domain/claims.yml": """\
        slots:
          claim_id: {type: text, entity: claim_id}
          case_ref: {type: text, entity: claim_id}
          incident_date: {type: date, entity: date, label: date of the accident}
          callback: {type: datetime, label: callback time}
        responses:
          utter_file_failed: >-
            Sorry, we could not file it{% if workflow.error %}:
            {{ workflow.error }}{% endif %}.
        flows:
          check_claim:
            trigger: check_claim
            steps:
              - collect: {slot: claim_id, ask: Your claim number?}
              - "Claim {{ slots.claim_id }}."
          file_claim:
            trigger: file_claim
            steps:
              - collect: {slot: incident_date, ask: When did it happen?}
              - collect: {slot: callback, ask: When may we call you?}
              - workflow:
                  name: file_claim
                  inputs: {date: incident_date, callback: callback}
                  save: {reference: case_ref}
                  on_failure: utter_file_failed
              - "Filed as {{ slots.case_ref }} for {{ slots.incident_date }}."
        """,
}
ASK_CLAIM = "Your claim number?"
ASK_DATE = "When did it happen?"
ASK_CALLBACK = "When may we call you?"
MORNING = dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.UTC).timestamp()
"""Monday 7 December 2026, 11:00 in Berlin."""
LATE = dt.datetime(2026, 12, 7, 23, 30, tzinfo=dt.UTC).timestamp()
"""Already Tuesday 8 December (00:30) in Berlin."""


@pytest.fixture(scope="module")
def claims(tmp_path_factory: pytest.TempPathFactory) -> DialogueEngine:
    return DialogueEngine(make_bot(tmp_path_factory.mktemp("claims"), CLAIMS_FILES))


def chat_at(engine: DialogueEngine, now: float) -> Chat:
    chat = Chat(engine)
    chat.now = now - 1.0  # each call ticks one second on
    return chat


def rejected(result: object) -> list[dict[str, object]]:
    return [e.data for e in result.events if e.type == "slot_rejected"]  # type: ignore[attr-defined]


# -- the tagger's predictions follow the entity's regexes ------------------------------------


def test_a_tagged_value_that_breaks_the_entity_regex_is_refused_with_the_reason(
        claims: DialogueEngine) -> None:
    chat = Chat(claims)
    assert texts(chat.say("where is my claim", "check_claim")) == [ASK_CLAIM]
    result = chat.say("12345", "inform", entities={"claim_id": "12345"})
    assert texts(result) == ["Sorry, that doesn't look like a valid claim id (12345 doesn't "
                             "look like a claim id).", ASK_CLAIM]
    assert rejected(result) == [{"slot": "claim_id", "value": "12345", "reason": "regex",
                                 "problem": "12345 doesn't look like a claim id"}]
    assert chat.slots()["claim_id"] is None


def test_a_refused_prefill_is_recorded_and_the_question_asked(claims: DialogueEngine) -> None:
    chat = Chat(claims)
    result = chat.say("status of claim 12345", "check_claim", entities={"claim_id": "12345"})
    assert kinds(result)[:2] == ["flow_started", "slot_rejected"]
    assert texts(result)[-1] == ASK_CLAIM


def test_a_mistagged_span_falls_back_to_the_regex_on_the_answer(
        claims: DialogueEngine) -> None:
    chat = Chat(claims)
    chat.say("where is my claim", "check_claim")
    result = chat.say("it is AB123456", "inform", entities={"claim_id": "123456"})
    assert texts(result) == ["Claim AB123456."]


def test_asking_again_for_the_same_intent_says_why(claims: DialogueEngine) -> None:
    chat = Chat(claims)
    chat.say("where is my claim", "check_claim")
    result = chat.say("my claim status please", "check_claim")
    assert texts(result) == [ASK_CLAIM]
    assert [e.data for e in result.events] == [
        {"slot": "claim_id", "reason": "same_intent", "intent": "check_claim"}]
    assert kinds(result) == ["question_repeated"]


# -- slots a workflow fills are not filled from entities --------------------------------------


def test_a_slot_only_a_workflow_saves_is_not_filled_from_an_entity(
        claims: DialogueEngine) -> None:
    chat = chat_at(claims, MORNING)
    result = chat.say("file a claim like AB123456", "file_claim",
                      entities={"claim_id": "AB123456"})
    assert texts(result) == [ASK_DATE]
    assert chat.slots()["case_ref"] is None
    chat.say("yesterday", "inform")
    chat.say("tomorrow at 5pm", "inform")
    done = chat.finish(outputs={"reference": "CL-1"})
    assert texts(done) == ["Filed as CL-1 for 2026-12-06."]


# -- dates ------------------------------------------------------------------------------------


def test_a_date_slot_reads_relative_dates_in_the_bots_timezone(claims: DialogueEngine) -> None:
    morning = chat_at(claims, MORNING)
    morning.say("I had an accident", "file_claim")
    result = morning.say("it happened yesterday", "inform")
    assert texts(result) == [ASK_CALLBACK]
    assert morning.slots()["incident_date"] == "2026-12-06"
    late = chat_at(claims, LATE)  # already the next day in Berlin
    late.say("I had an accident", "file_claim")
    late.say("yesterday", "inform")
    assert late.slots()["incident_date"] == "2026-12-07"


def test_a_datetime_slot_keeps_the_time_and_the_utc_offset(claims: DialogueEngine) -> None:
    chat = chat_at(claims, MORNING)
    chat.say("I had an accident", "file_claim")
    chat.say("on the 3rd of December", "inform")
    result = chat.say("tomorrow at 5pm", "inform")
    assert chat.slots()["callback"] == "2026-12-08T17:00:00+01:00"
    assert result.workflows[0].inputs == {"date": "2026-12-03",
                                          "callback": "2026-12-08T17:00:00+01:00"}


def test_a_date_entity_prefills_the_slot(claims: DialogueEngine) -> None:
    chat = chat_at(claims, MORNING)
    result = chat.say("I crashed my car last friday", "file_claim",
                      entities={"date": "last friday"})
    assert texts(result) == [ASK_CALLBACK]
    assert chat.slots()["incident_date"] == "2026-12-04"


def test_something_that_is_no_date_is_refused_as_such(claims: DialogueEngine) -> None:
    chat = chat_at(claims, MORNING)
    chat.say("I had an accident", "file_claim")
    result = chat.say("no idea", "inform")
    assert rejected(result) == [{"slot": "incident_date", "value": "no idea", "reason": "type",
                                 "problem": "it must be a date"}]
    assert texts(result)[-1] == ASK_DATE


@pytest.mark.parametrize(("text", "with_time", "expected"), [
    ("yesterday", False, "2026-12-06"),
    ("3 days ago", False, "2026-12-04"),
    ("2026-11-30", False, "2026-11-30"),
    ("on 3 March", False, "2026-03-03"),
    ("tomorrow at 17:30", True, "2026-12-08T17:30:00+01:00"),
    ("2026-12-01T09:00:00+00:00", True, "2026-12-01T10:00:00+01:00"),
    ("5", False, None),
    ("12345", False, None),
    ("hello", False, None),
    ("", False, None),
])
def test_parse_date(text: str, with_time: bool, expected: str | None) -> None:
    assert parse_date(text, with_time, Clock(MORNING, "Europe/Berlin", "en")) == expected


def test_dates_are_read_in_the_bots_language() -> None:
    clock = Clock(MORNING, "Europe/Berlin", "de")
    assert parse_date("gestern", False, clock) == "2026-12-06"
    assert parse_date("yesterday", False, Clock(MORNING, "UTC", "tlh")) == "2026-12-06"


def test_timezone_and_date_values_are_validated_with_file_and_line(tmp_path: Path) -> None:
    files = {**CLAIMS_FILES, "bot.yml": 'version: "1"\nname: claims\ntimezone: Mars/Olympus\n'}
    with pytest.raises(BotDefinitionError) as caught:
        make_bot(tmp_path / "zone", files)
    assert "bot.yml:3: timezone: unknown timezone 'Mars/Olympus'" in str(caught.value)
    files = {**CLAIMS_FILES, "domain/more.yml": "slots:\n  seen: {type: date, initial: soon}\n"}
    with pytest.raises(BotDefinitionError) as caught:
        make_bot(tmp_path / "initial", files)
    assert "more.yml:2: slots.seen.initial: invalid initial value 'soon': it must be an ISO " \
           "date" in str(caught.value)


# -- a failed workflow: the details are logged, the customer hears the author's message ------


def test_a_workflow_results_message_is_read_and_its_error_logged(
        capsys: pytest.CaptureFixture[str]) -> None:
    from services.dialogue.worker import workflow_result

    body = {"run_id": "r1", "workflow": "file_claim", "status": "failed",
            "error": "step 'assign': POST /claims/7/assign returned HTTP 422",
            "message": "the claim is already closed"}
    result = workflow_result(body, "claims", "c1")
    assert (result.error, result.message) == (body["error"], "the claim is already closed")
    logged = capsys.readouterr().out
    assert "workflow_failed" in logged and "returned HTTP 422" in logged
    older = workflow_result({**body, "message": None, "status": "succeeded"}, "claims", "c1")
    assert older.message == "" and "workflow_failed" not in capsys.readouterr().out


def test_the_customer_hears_the_fail_steps_text_not_the_details(
        claims: DialogueEngine) -> None:
    chat = chat_at(claims, MORNING)
    chat.say("I had an accident", "file_claim")
    chat.say("yesterday", "inform")
    chat.say("tomorrow at 5pm", "inform")
    error = "step 'assign': POST /claims/7/assign returned HTTP 422"
    result = chat.finish("failed", error=error)
    assert texts(result) == ["Sorry, we could not file it."]
    assert result.events[0].data["error"] == error
    chat.say("I had an accident", "file_claim")
    chat.say("yesterday", "inform")
    chat.say("tomorrow at 5pm", "inform")
    result = chat.finish("failed", error=f"step 'closed': {error}",
                         message="the claim is already closed")
    assert texts(result) == ["Sorry, we could not file it: the claim is already closed."]
