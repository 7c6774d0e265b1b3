"""The dialogue engine: flows, every step kind, slot filling and every repair case, with
hand-built NLU results (no model)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.botdef import EntityDef, SlotDef, Validation, load_bot
from services.dialogue.engine import (
    Button,
    DialogueEngine,
    EntityValue,
    NluResult,
    Reply,
    Tracker,
    WorkflowResult,
)
from services.dialogue.engine.values import (
    EntityMatcher,
    from_text,
    match_choice,
    parse_boolean,
    parse_number,
)
from tests.support.dialogue import ASK_AMOUNT, Chat, kinds, make_bot, nlu, texts

REPO = Path(__file__).resolve().parents[2]
BANKING = REPO / "bots" / "banking"
ASK_RECIPIENT = ("Who should I send the money to?", "Who is the recipient?")

LAB_FILES = {
    "bot.yml": 'version: "1"\nname: lab\nnlu: {confidence_threshold: 0.6}\n',
    "data/nlu.yml": (
        "entities:\n  - name: amount\n  - name: color\n"
        "    synonyms: {red: [crimson, scarlet]}\nintents:\n" + "".join(
            f"  - name: {name}\n    examples: [{name} one, {name} two]\n"
            for name in ("greet", "goodbye", "thanks", "help", "affirm", "deny", "cancel",
                         "order", "stop_early", "escalate", "fetch", "many", "unsafe", "weird",
                         "chain", "out_of_scope"))
    ),
    "domain/lab.yml": """\
        slots:
          amount: {type: number, entity: amount, min: 1, max: 100}
          color: {type: categorical, choices: [red, blue], entity: color}
          name: {type: text, regex: '[A-Za-z ]+'}
          vip: {type: boolean, initial: false}
          count: {type: number, keep: true}
          code: text
          result: text
        responses:
          utter_greet: "Welcome to the lab, {{ slots.name }}!"
          utter_ask_amount: How many?
          utter_many: [A, B, C, D]
        flows:
          order:
            trigger: order
            steps:
              - collect:
                  slot: amount
                  validation: {max: 10}
                  max_attempts: 2
                  fallback: Giving up on the order.
              - collect:
                  slot: color
                  ask:
                    text: Which color?
                    buttons: [{title: Red, payload: '/order{"color": "red"}'}]
              - set: {vip: true}
              - branch:
                  - if: {all: [{slot: amount, gte: 5}, {slot: color, equals: red}]}
                    then: ["Big red order of {{ slots.amount }}."]
                  - if: {slot: color, in: [blue]}
                    then: [Blue order.]
                  - else: [Small order.]
              - call: sign
              - "Thanks {{ slots.name }}."
          sign:
            steps:
              - collect: {slot: name, ask: Your name?}
              - "Signed by {{ slots.name }}."
          stop_early:
            trigger: stop_early
            steps: [One., end, Never said.]
          escalate:
            trigger: escalate
            steps: [{handoff: Passing you to a colleague.}]
          fetch:
            trigger: fetch
            steps:
              - collect: {slot: code, ask: Code?}
              - workflow:
                  name: lookup
                  inputs: {code: code, fixed: {value: 7}}
                  save: {answer: result, n: count}
                  started: "Looking up {{ slots.code }}..."
                  on_success: Found it.
                  on_failure: "Lookup failed: {{ workflow.error }}"
              - "Result: {{ slots.result }} ({{ slots.count }})"
          many:
            trigger: many
            steps: [utter_many]
          unsafe:
            trigger: unsafe
            steps: ["[{{ slots.code.__class__ }}][{{ slots.name.upper() }}]"]
          chain:
            trigger: chain
            steps:
              - collect: {slot: name, ask: Chain name?}
        """,
}


@pytest.fixture(scope="module")
def banking() -> DialogueEngine:
    return DialogueEngine(load_bot(BANKING))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> DialogueEngine:
    return DialogueEngine(make_bot(tmp_path_factory.mktemp("lab"), LAB_FILES))


# -- flows and slot filling ---------------------------------------------------------------------


def test_intent_starts_its_flow_and_collect_asks(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    result = chat.say("send money", "transfer_money")
    assert texts(result)[0] in ASK_AMOUNT
    assert kinds(result) == ["flow_started"]
    assert result.events[0].data == {"flow": "transfer_money", "entry": "trigger"}
    assert chat.tracker.active_flow == "transfer_money"


def test_entities_prefill_slots_and_skip_their_questions(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    result = chat.say("send €1,200 to mom", "transfer_money",
                      entities={"amount": "€1,200", "recipient": "mom"})
    assert texts(result) == ["Send 1,200.00 EUR to mom?"]
    assert result.replies[0].buttons == [Button("Yes", "/affirm"), Button("No", "/deny")]
    assert chat.slots()["amount"] == 1200
    assert chat.slots()["recipient"] == "mom"


def test_invalid_prefilled_entity_is_explained(banking: DialogueEngine) -> None:
    result = Chat(banking).say("send 20000", "transfer_money", entities={"amount": "20000"})
    assert "it must be at most 10,000" in texts(result)[0]
    assert texts(result)[1] in ASK_AMOUNT


def test_answers_are_converted_and_validated(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("send money", "transfer_money")
    result = chat.say("lots")
    assert "(it must be a number)" in texts(result)[0]
    assert texts(result)[1] in ASK_AMOUNT
    assert chat.tracker.stack[-1].attempts == 1
    result = chat.say("0")
    assert "(it must be more than 0)" in texts(result)[0]
    result = chat.say("fifty euros")
    assert texts(result)[0] in ASK_RECIPIENT
    assert chat.slots()["amount"] == 50
    assert chat.tracker.stack[-1].attempts == 0
    assert [e.data for e in result.events] == [{"slot": "amount", "value": 50}]


def test_max_attempts_falls_back_and_leaves_the_flow(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("send money", "transfer_money")
    chat.say("a lot")
    chat.say("loads")
    result = chat.say("heaps")
    assert texts(result) == ["Sorry, I still didn't get that, so let's leave it there. "
                             "What else can I do for you?"]
    assert kinds(result) == ["slot_rejected", "flow_cancelled", "fallback"]
    assert result.events[0].data == {"slot": "amount", "value": "heaps", "reason": "type",
                                      "problem": "it must be a number"}
    assert result.events[1].data == {"flow": "transfer_money", "reason": "max_attempts"}
    assert chat.tracker.active_flow is None
    assert chat.tracker.fallback_streak == 1


def test_boolean_from_intents_and_words(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("pay Sarah 30", "transfer_money", entities={"amount": "30", "recipient": "Sarah"})
    result = chat.say("nope")
    assert texts(result) == ["OK, I won't send anything."]
    assert chat.slots()["transfer_confirmed"] is False
    chat.say("pay Sarah 30", "transfer_money", entities={"amount": "30", "recipient": "Sarah"})
    assert chat.slots()["transfer_confirmed"] is None  # reset when the flow starts again
    result = chat.say("sure thing", "affirm", 0.9)
    assert texts(result) == ["Sending the money now..."]


def test_entity_slot_from_lookup_text(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("find a branch", "find_branch")
    result = chat.say("new york please")
    assert texts(result) == [
        "Our New York branch is at 1 Main Street, open Monday to Friday, 9:00 to 17:00."]
    chat.say("find a branch", "find_branch")
    result = chat.say("Atlantis")
    assert texts(result)[0].startswith("Sorry, we have no branch in that city.")


def test_categorical_from_synonym_and_button_payload(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("block my card", "block_card")
    assert texts(chat.say("my atm card"))[0].startswith("Block your debit card?")
    assert texts(chat.say("no"))[0] == "OK, your card stays active."
    chat.say("block my card", "block_card")
    result = chat.say('/block_card{"card_type": "credit"}', "", 0.0)
    assert texts(result)[0].startswith("Block your credit card?")


# -- workflows --------------------------------------------------------------------------------


def test_workflow_pauses_and_resumes_with_outputs(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    result = chat.say("balance of savings", "check_balance", entities={"account_type": "savings"})
    assert texts(result) == ["One moment, I'm looking up your savings balance."]
    [job] = result.workflows
    assert (job.workflow, job.inputs) == ("get_balance", {"account_type": "savings"})
    assert chat.tracker.waiting_workflow == job.run_id
    assert kinds(result) == ["flow_started", "slot_set", "workflow_started"]
    waiting = chat.say("hello?", "greet")
    assert texts(waiting)[-1] == "I'm still working on your previous request, one moment please."
    assert chat.say("send money", "transfer_money").replies[0].text.startswith("I'm still")
    done = chat.finish(outputs={"balance": "2,000.5"})
    assert texts(done) == ["Your savings balance is 2,000.50 EUR."]
    assert kinds(done) == ["workflow_finished", "slot_set", "flow_completed"]
    assert chat.tracker.waiting_workflow is None and chat.tracker.active_flow is None


def test_run_id_is_derived_from_the_message(banking: DialogueEngine) -> None:
    tracker = Tracker.new("banking", "c1", 0.0)
    first = banking.handle_message(tracker, "m-1", "balance", nlu("check_balance"), 1.0)
    again = banking.handle_message(tracker, "m-1", "balance", nlu("check_balance"), 2.0)
    other = banking.handle_message(tracker, "m-2", "balance", nlu("check_balance"), 1.0)
    elsewhere = banking.handle_message(Tracker.new("banking", "c2", 0.0), "m-1", "balance",
                                       nlu("check_balance"), 1.0)
    assert first.workflows[0].run_id == again.workflows[0].run_id
    assert first.workflows[0].run_id != other.workflows[0].run_id
    assert first.workflows[0].run_id != elsewhere.workflows[0].run_id
    other_bot = banking.handle_message(Tracker.new("otherbot", "c1", 0.0), "m-1", "balance",
                                       nlu("check_balance"), 1.0)
    assert first.workflows[0].run_id != other_bot.workflows[0].run_id  # issue 17 item 1


def test_position_names_the_flow_and_step(banking: DialogueEngine) -> None:
    tracker = Tracker.new("banking", "c1", 0.0)
    assert banking.position(tracker) == ("", "")
    started = banking.handle_message(tracker, "m-1", "balance", nlu("check_balance"), 1.0)
    flow, step = banking.position(started.tracker)
    assert flow == started.tracker.active_flow and step.startswith("run_workflow:")


def test_workflow_failure_says_so_and_cancels_the_flow(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("send 75 to Bob", "transfer_money", entities={"amount": "75", "recipient": "Bob"})
    chat.say("yes", "affirm")
    result = chat.finish("failed", error="step 'insufficient': insufficient funds",
                         message="insufficient funds")
    assert texts(result) == [
        "Sorry, the transfer didn't go through: insufficient funds. No money was sent."]
    assert kinds(result) == ["workflow_finished", "flow_cancelled"]
    assert result.events[0].data["error"] == "step 'insufficient': insufficient funds"
    assert result.events[1].data["reason"] == "workflow_failed"
    assert chat.tracker.active_flow is None


def test_a_workflows_technical_error_never_reaches_the_customer(
        banking: DialogueEngine) -> None:
    """Issue 18: the details of a failed step go to the workflow_finished event (agents, the
    transcript with ?include=events), the customer hears only the author's message."""
    chat = Chat(banking)
    chat.say("send 75 to Bob", "transfer_money", entities={"amount": "75", "recipient": "Bob"})
    chat.say("yes", "affirm")
    error = "step 'book': POST /transfers returned HTTP 422"
    result = chat.finish("failed", error=error)
    assert texts(result) == ["Sorry, the transfer didn't go through. No money was sent."]
    assert result.events[0].data == {"run_id": result.events[0].data["run_id"],
                                     "workflow": "transfer_funds", "status": "failed",
                                     "error": error, "message": ""}


def test_stale_workflow_result_changes_nothing(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("balance", "check_balance")
    before = chat.tracker
    result = banking.handle_workflow_result(
        before, WorkflowResult("other-run", "get_balance", "succeeded", {"balance": 1}), 9.0)
    assert result.tracker == before and result.tracker is not before
    assert result.replies == [] and result.events[0].data["stale"] is True


def test_result_for_a_step_gone_after_a_redeploy(lab: DialogueEngine) -> None:
    tracker = Tracker.new("lab", "c1", 0.0)
    tracker = Tracker.from_json(tracker.to_json().replace(b'"wf":null', b'"wf":"r1"')
                                .replace(b'"stack":[]', b'"stack":[["many",0,0,0]]'))
    result = lab.handle_workflow_result(tracker, WorkflowResult("r1", "x", "succeeded"), 1.0)
    assert kinds(result) == ["workflow_finished", "flow_cancelled"]
    assert result.events[1].data["reason"] == "definition_changed"
    assert result.tracker.waiting_workflow is None and result.tracker.stack == ()


def test_workflow_step_inputs_saves_and_messages(lab: DialogueEngine) -> None:
    chat = Chat(lab)
    chat.say("fetch", "fetch")
    result = chat.say("X1")
    assert texts(result) == ["Looking up X1..."]
    assert result.workflows[0].inputs == {"code": "X1", "fixed": 7}
    done = chat.finish(outputs={"answer": "forty-two", "n": "3", "ignored": 1})
    assert texts(done) == ["Found it.", "Result: forty-two (3)"]
    chat.say("fetch", "fetch")
    chat.say("X2")
    assert texts(chat.finish("compensated", error="step 'get': timeout",
                             message="timeout")) == ["Lookup failed: timeout"]


# -- repair -----------------------------------------------------------------------------------


def test_digression_runs_the_other_flow_then_asks_again(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("send money", "transfer_money")
    result = chat.say("what's my balance?", "check_balance")
    assert kinds(result) == ["flow_started", "workflow_started"]
    assert result.events[0].data == {"flow": "check_balance", "entry": "digression"}
    assert [f.flow for f in chat.tracker.stack] == ["transfer_money", "check_balance"]
    done = chat.finish(outputs={"balance": 10})
    assert texts(done)[0] == "Your checking balance is 10.00 EUR."
    assert texts(done)[1] in ASK_AMOUNT
    assert chat.tracker.active_flow == "transfer_money"
    chat.say("40")
    faq = chat.say("when are you open", "faq_opening_hours")
    assert texts(faq)[0].startswith("Our branches are open")
    assert texts(faq)[1] in ASK_RECIPIENT


def test_digression_into_a_running_flow_just_asks_again(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("send money", "transfer_money")
    chat.say("block my card", "block_card")
    result = chat.say("and transfer money", "transfer_money")
    assert texts(result) == ["Which card should I block?"]
    assert [f.flow for f in chat.tracker.stack] == ["transfer_money", "block_card"]


def test_digressions_are_bounded(lab: DialogueEngine, tmp_path: Path) -> None:
    engine = DialogueEngine(lab.bot, max_depth=1)
    chat = Chat(engine)
    chat.say("order", "order")
    result = chat.say("fetch", "fetch")
    assert texts(result) == ["How many?"]
    assert chat.tracker.active_flow == "order"


def test_correction_updates_a_filled_slot_and_confirms(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("send 100 to Liam", "transfer_money", entities={"amount": "100", "recipient": "Liam"})
    result = chat.say("actually make it 50", "transfer_money", 0.8, entities={"amount": "50"})
    assert texts(result) == ["OK, I've changed the amount to 50.", "Send 50.00 EUR to Liam?"]
    assert [e.data for e in result.events] == [
        {"slot": "amount", "value": 50, "correction": True, "previous": 100}]
    assert chat.tracker.active_flow == "transfer_money"
    result = chat.say("make it 20000", "transfer_money", 0.8, entities={"amount": "20000"})
    assert "it must be at most 10,000" in texts(result)[0]
    assert chat.slots()["amount"] == 50


def test_a_correction_worded_as_a_no_at_the_confirmation_never_cancels(
        banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("send 100 to Liam", "transfer_money", entities={"amount": "100", "recipient": "Liam"})
    result = chat.say("no, make it 50", "deny", 0.95, entities={"amount": "50"})
    assert texts(result) == ["OK, I've changed the amount to 50.", "Send 50.00 EUR to Liam?"]
    assert chat.tracker.active_flow == "transfer_money"
    assert chat.slots()["amount"] == 50 and chat.slots().get("transfer_confirmed") is None
    # the same value again is no correction: the yes answers the question
    result = chat.say("yes, 50", "affirm", 0.95, entities={"amount": "50"})
    assert texts(result) == ["Sending the money now..."]
    assert chat.slots()["transfer_confirmed"] is True


def test_a_numeral_that_counts_things_is_no_amount(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    said = NluResult("transfer_money", 0.98, [("transfer_money", 0.98)],
                     [EntityValue("amount", "一", "一", 3, 4)])
    result = chat._keep(banking.handle_message(chat.tracker, "m0", "我想转一笔钱", said, 1.0))
    assert texts(result)[0] in ("您想转多少钱？", "请问转账金额是多少？")  # not the recipient
    assert chat.slots().get("amount") is None


def test_a_misspelt_value_taken_for_small_talk_still_answers_the_question(
        banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("find a branch", "find_branch")
    result = chat.say("Berln", "greet", 0.62)
    assert texts(result)[0].startswith("Our Berlin branch")
    assert chat.slots()["city"] == "Berlin"
    chat.say("find a branch", "find_branch")
    assert texts(chat.say("hello", "greet", 0.9))[-1] == (
        "In which city are you looking for a branch?")


def test_chinese_replies_show_the_chinese_name_of_a_value(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("我想找离我最近的分行", "find_branch")
    result = chat.say("柏林", "inform", 0.9, entities={"city": "柏林"})
    assert chat.slots()["city"] == "Berlin"  # flows and workflows keep the canonical value
    assert texts(result)[0].startswith("我们的柏林分行")
    english = Chat(banking)
    english.say("find a branch", "find_branch")
    assert texts(english.say("Berlin", "inform", 0.9, entities={"city": "Berlin"}))[0].startswith(
        "Our Berlin branch")


def test_a_chinese_span_cut_short_is_read_again_from_the_whole_text(
        banking: DialogueEngine) -> None:
    chat = Chat(banking)
    said = NluResult("check_balance", 0.98, [("check_balance", 0.98)],
                     [EntityValue("account_type", "公司", "公司", 3, 5)])
    result = chat._keep(banking.handle_message(chat.tracker, "m0", "查一下公司账户的余额", said,
                                               1.0))
    assert chat.slots()["account_type"] == "business"  # 公司账户 is a synonym, 公司 is not
    assert texts(result) == ["请稍等，正在为您查询企业账户余额。"]


def test_a_plain_no_at_the_confirmation_still_cancels(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("send 100 to Liam", "transfer_money", entities={"amount": "100", "recipient": "Liam"})
    assert texts(chat.say("no", "deny", 0.95)) == ["OK, I won't send anything."]
    assert chat.tracker.active_flow is None


def test_entities_for_other_empty_slots_fill_them(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("send money", "transfer_money")
    result = chat.say("to John", "transfer_money", 0.7, entities={"recipient": "John"})
    assert texts(result)[0] in ASK_AMOUNT
    assert chat.slots()["recipient"] == "John"
    assert texts(chat.say("30")) == ["Send 30.00 EUR to John?"]


def test_cancel_by_intent_or_text(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("send money", "transfer_money")
    result = chat.say("cancel that please", "cancel", 0.9)
    assert texts(result) == ["OK, I've cancelled that."]
    assert result.events[0].data == {"flow": "transfer_money", "reason": "user"}
    chat.say("find a branch", "find_branch")
    assert texts(chat.say("Stop!")) == ["OK, I've cancelled that."]
    assert chat.tracker.active_flow is None
    assert texts(chat.say("cancel", "cancel")) == ["OK. What can I do for you?"]


def test_cancelling_a_digression_resumes_the_interrupted_flow(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("send money", "transfer_money")
    chat.say("I lost my card", "block_card")
    result = chat.say("never mind")
    assert texts(result)[0] == "OK, I've cancelled that."
    assert texts(result)[1] in ASK_AMOUNT
    assert chat.tracker.active_flow == "transfer_money"


def test_cancel_leaves_a_called_flow_with_its_caller(lab: DialogueEngine) -> None:
    chat = Chat(lab)
    chat.say("order", "order")
    chat.say("5")
    chat.say("blue")
    assert chat.tracker.active_flow == "sign"
    result = chat.say("cancel", "cancel")
    assert [e.data["flow"] for e in result.events] == ["sign", "order"]
    assert chat.tracker.stack == ()


def test_low_confidence_clarifies_with_the_top_two_intents(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    result = chat.say("money stuff", "check_balance", 0.3,
                      ranking=[("check_balance", 0.3), ("out_of_scope", 0.25),
                               ("transfer_money", 0.2), ("greet", 0.1)])
    assert texts(result) == ["Sorry, I'm not sure I understood. Did you mean one of these?"]
    assert result.replies[0].buttons == [Button("Check my balance", "/check_balance"),
                                         Button("Transfer money", "/transfer_money")]
    assert kinds(result) == ["fallback", "clarification"]
    assert result.events[1].data == {"intents": ["check_balance", "transfer_money"]}
    clicked = chat.say("/transfer_money", "", 0.0)
    assert texts(clicked)[0] in ASK_AMOUNT
    assert chat.tracker.fallback_streak == 0


def test_out_of_scope_clarifies(banking: DialogueEngine) -> None:
    result = Chat(banking).say("weather?", "out_of_scope", 0.9,
                               ranking=[("out_of_scope", 0.9), ("faq_fees", 0.05),
                                        ("find_branch", 0.03)])
    assert texts(result) == ["Sorry, I can't help with that. Maybe one of these?"]
    assert [b.title for b in result.replies[0].buttons] == ["Fees", "Find a branch"]
    result = Chat(banking).say("weather?", "check_balance", 0.9, oos=True)
    assert result.events[0].data["reason"] == "out_of_scope"


def test_clarification_without_options_asks_to_rephrase(lab: DialogueEngine) -> None:
    result = Chat(lab).say("blorp", "weird", 0.2)
    assert texts(result) == ["Sorry, I didn't understand that. Could you rephrase it?"]
    result = Chat(lab).say("weird one", "weird", 0.9)  # understood, but nothing handles it
    assert result.events[0].data["reason"] == "no_handler"


def test_two_fallbacks_hand_off_and_the_bot_goes_quiet(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("blorp", "", 0.0)
    result = chat.say("zzz", "", 0.0)
    assert texts(result) == ["Let me connect you with a human agent. Please wait a moment."]
    assert kinds(result) == ["fallback", "handoff"]
    assert result.events[1].data == {"reason": "fallbacks"}
    assert chat.tracker.handed_off
    silent = chat.say("hello?", "greet")
    assert silent.replies == [] and silent.events == []
    assert chat.tracker.turn == 3
    agent = banking.handle_agent_message(chat.tracker, "a1", "Hi, I'm Ann.", 5.0)
    assert agent.replies == [Reply("Hi, I'm Ann.", [], "agent")]
    released = banking.release_handoff(agent.tracker, 6.0)
    assert texts(released) == ["You're back with the assistant. How can I help?"]
    assert kinds(released) == ["handoff_released"]
    assert not released.tracker.handed_off and released.tracker.fallback_streak == 0
    again = banking.release_handoff(released.tracker, 7.0)
    assert again.replies == [] and again.tracker == released.tracker


def test_an_understood_message_resets_the_fallback_streak(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("blorp", "", 0.0)
    chat.say("hi", "greet")
    result = chat.say("zzz", "", 0.0)
    assert "handoff" not in kinds(result)
    assert chat.tracker.fallback_streak == 1


def test_a_collect_give_up_counts_as_a_fallback(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("blorp", "", 0.0)
    chat.say("find a branch", "find_branch")  # understood: the streak restarts
    chat.say("Atlantis")
    chat.say("El Dorado")
    assert chat.tracker.fallback_streak == 1
    chat.say("find a branch", "find_branch")
    chat.say("Atlantis")
    chat.say("Narnia")
    assert chat.tracker.handed_off is False  # the flow start reset the streak
    chat.say("xx", "", 0.0)
    assert chat.tracker.handed_off


def test_handoff_intent_and_step(banking: DialogueEngine, lab: DialogueEngine) -> None:
    result = Chat(banking).say("a human please", "human_handoff")
    assert texts(result) == ["Let me connect you with a human agent. Please wait a moment."]
    assert result.tracker.handed_off
    result = Chat(lab).say("escalate", "escalate")
    assert texts(result) == ["Passing you to a colleague."]
    # A flow that reaches its handoff step completed (its completion rate is not 0 %).
    assert kinds(result) == ["flow_started", "flow_completed", "handoff"]
    assert result.tracker.handed_off and result.tracker.stack == ()


def test_payload_is_taken_as_its_intent(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    result = chat.say('/transfer_money{"amount": "25"}', "out_of_scope", 0.99)
    assert texts(result)[0] in ASK_RECIPIENT
    assert banking.payload_nlu("/greet") == NluResult("greet", 1.0, [("greet", 1.0)], [], False)
    assert banking.payload_nlu("/unknown_intent") is None
    assert banking.payload_nlu("hello") is None


# -- out of the box ---------------------------------------------------------------------------


def test_greeting_goodbye_help_thanks_out_of_the_box(tmp_path: Path) -> None:
    bot = make_bot(tmp_path, {
        "bot.yml": 'version: "1"\nname: bare\n',
        "data/nlu.yml": "intents:\n" + "".join(
            f"  - name: {n}\n    examples: [{n} a, {n} b]\n"
            for n in ("greet", "goodbye", "help", "thanks")),
    })
    chat = Chat(DialogueEngine(bot))
    assert texts(chat.say("hi", "greet")) == ["Hello! How can I help you today?"]
    assert texts(chat.say("thanks", "thanks")) == ["You're welcome!"]
    assert texts(chat.say("help", "help")) == ["Here is what I can help you with:"]
    assert texts(chat.say("bye", "goodbye")) == ["Goodbye, have a nice day!"]


def test_without_a_configured_threshold_the_models_out_of_scope_mark_decides(
        tmp_path: Path) -> None:
    bot = make_bot(tmp_path, {
        "bot.yml": 'version: "1"\nname: bare\n',
        "data/nlu.yml": "intents:\n" + "".join(
            f"  - name: {n}\n    examples: [{n} a, {n} b]\n" for n in ("greet", "thanks")),
    })
    assert bot.nlu.confidence_threshold is None  # chosen when the model is trained
    chat = Chat(DialogueEngine(bot))
    # 0.3 is above the model's own threshold (the NLU did not mark it): acted on
    assert texts(chat.say("hi", "greet", 0.3)) == ["Hello! How can I help you today?"]
    # below it the NLU marks the parse out of scope: the fallback
    fallback = chat.say("hi", "greet", 0.3, oos=True)
    assert texts(fallback) != ["Hello! How can I help you today?"]
    assert "fallback" in kinds(fallback)


def test_a_flow_hands_off_on_a_strongly_negative_message(tmp_path: Path) -> None:
    bot = make_bot(tmp_path, {
        "bot.yml": 'version: "1"\nname: care\n',
        "data/nlu.yml": "intents:\n" + "".join(
            f"  - name: {n}\n    examples: [{n} a, {n} b]\n" for n in ("complain", "greet")),
        "domain/flows.yml": (
            "flows:\n  complaint:\n    trigger: complain\n    steps:\n      - branch:\n"
            "          - if: {all: [{slot: sentiment, equals: negative},\n"
            "                       {slot: sentiment_score, gte: 0.8}]}\n"
            "            then: [{handoff: 'I am sorry. A colleague takes over now.'}]\n"
            "          - else: [{say: 'Sorry to hear that ({{ slots.sentiment }}).'}]\n"),
    })
    calm = Chat(DialogueEngine(bot))
    result = calm.say("the app is slow", "complain", sentiment="negative", sentiment_score=0.6)
    assert texts(result) == ["Sorry to hear that (negative)."]
    assert not calm.tracker.handed_off
    assert calm.tracker.slots["sentiment_score"] == 0.6
    angry = Chat(DialogueEngine(bot))
    result = angry.say("this is outrageous", "complain", sentiment="negative",
                       sentiment_score=0.93)
    assert texts(result) == ["I am sorry. A colleague takes over now."]
    assert angry.tracker.handed_off
    assert "slot_set" not in kinds(result)  # set on every message, not an event
    none = Chat(DialogueEngine(bot))  # no sentiment model: the slots stay unset
    assert texts(none.say("meh", "complain")) == ["Sorry to hear that ()."]
    assert none.tracker.slots["sentiment"] is None


def test_bot_responses_override_the_built_in_ones(lab: DialogueEngine) -> None:
    chat = Chat(lab)
    assert texts(chat.say("hi", "greet")) == ["Welcome to the lab, !"]  # missing slot: empty
    help_reply = chat.say("help", "help").replies[0]
    assert [b.payload for b in help_reply.buttons][:3] == ["/order", "/stop_early", "/escalate"]


def test_small_talk_during_a_question_then_asks_again(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("block my card", "block_card")
    result = chat.say("thank you", "thanks")
    assert texts(result) == ["You're welcome!", "Which card should I block?"]
    result = chat.say("bye", "goodbye")
    assert texts(result) == ["Goodbye, have a nice day!"]
    assert result.events[0].data == {"flow": "block_card", "reason": "goodbye"}


# -- step kinds -------------------------------------------------------------------------------


def test_order_flow_runs_every_step_kind(lab: DialogueEngine) -> None:
    chat = Chat(lab)
    assert texts(chat.say("order", "order")) == ["How many?"]
    assert "it must be at most 10" in texts(chat.say("50"))[0]  # step validation override
    result = chat.say("7")
    assert texts(result) == ["Which color?"]
    assert result.replies[0].buttons == [Button("Red", '/order{"color": "red"}')]
    result = chat.say('/order{"color": "red"}')
    assert texts(result) == ["Big red order of 7.", "Your name?"]
    assert chat.slots()["vip"] is True
    assert [f.entry for f in chat.tracker.stack] == ["trigger", "call"]
    assert texts(chat.say("12 monkeys")) == ["Sorry, that doesn't look like a valid name "
                                             "(it doesn't have the expected format).",
                                             "Your name?"]
    result = chat.say("Ada")
    assert texts(result) == ["Signed by Ada.", "Thanks Ada."]
    assert kinds(result) == ["slot_set", "flow_completed", "flow_completed"]


@pytest.mark.parametrize(("amount", "color", "said"), [
    ("2", "crimson", "Small order."), ("9", "blue", "Blue order."), ("9", "red", "Big red order"),
])
def test_branches(lab: DialogueEngine, amount: str, color: str, said: str) -> None:
    chat = Chat(lab)
    chat.say("order", "order")
    chat.say(amount)
    assert texts(chat.say(color))[0].startswith(said)


def test_collect_fallback_response_of_the_step(lab: DialogueEngine) -> None:
    chat = Chat(lab)
    chat.say("order", "order")
    chat.say("zero")
    assert texts(chat.say("none")) == ["Giving up on the order."]


def test_end_stops_the_flow(lab: DialogueEngine) -> None:
    result = Chat(lab).say("stop early", "stop_early")
    assert texts(result) == ["One."]
    assert kinds(result) == ["flow_started", "flow_completed"]


def test_keep_slots_survive_a_flow_restart(lab: DialogueEngine) -> None:
    chat = Chat(lab)
    chat.say("fetch", "fetch")
    chat.say("A")
    chat.finish(outputs={"answer": "x", "n": 4})
    chat.say("fetch", "fetch")
    assert chat.slots()["count"] == 4 and chat.slots()["code"] is None


def test_templates_are_sandboxed(lab: DialogueEngine) -> None:
    chat = Chat(lab)
    chat.say("chain", "chain")
    chat.say("Ada")
    chat.say("fetch", "fetch")
    chat.say("abc")
    chat.finish()
    assert texts(chat.say("unsafe", "unsafe")) == ["[][ADA]"]


def test_variation_choice_is_reproducible(lab: DialogueEngine) -> None:
    said = {Chat(lab, f"c{n}").say("many", "many").replies[0].text for n in range(40)}
    assert said == {"A", "B", "C", "D"}
    one = Chat(lab, "same").say("many", "many").replies[0].text
    assert all(Chat(lab, "same").say("many", "many").replies[0].text == one for _ in range(5))


# -- tracker, sessions, robustness ------------------------------------------------------------


def test_the_input_tracker_is_never_changed(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("send money", "transfer_money")
    before = chat.tracker
    frozen = before.to_json()
    result = banking.handle_message(before, "x", "50", nlu(), 9.0)
    banking.handle_workflow_result(before, WorkflowResult("r", "w", "failed"), 9.0)
    banking.handle_nlu_unavailable(before, "y", "hi", 9.0)
    assert before.to_json() == frozen
    assert result.tracker is not before and result.tracker.slots is not before.slots


def test_tracker_json_round_trip(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("send 5 to Al", "transfer_money", entities={"amount": "5", "recipient": "Al"})
    data = chat.tracker.to_json()
    assert Tracker.from_json(data) == chat.tracker
    raw = json.loads(data)
    assert raw["v"] == 1 and raw["stack"] == [["transfer_money", 2, 0, 0]]
    assert b" " not in data.replace(b"Al", b"")
    with pytest.raises(ValueError, match="version 99"):
        Tracker.from_json(json.dumps({**raw, "v": 99}))


def test_nlu_unavailable_keeps_the_flow(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("send money", "transfer_money")
    before = chat.tracker
    result = banking.handle_nlu_unavailable(before, "m9", "50", 5.0)
    assert texts(result) == ["Sorry, I'm having trouble understanding right now. "
                             "Please try again in a moment."]
    assert result.tracker.stack == before.stack and result.tracker.slots == before.slots
    assert result.tracker.last_message_id == "m9"


def test_session_expiry(banking: DialogueEngine) -> None:
    chat = Chat(banking)
    chat.say("send 5", "transfer_money", entities={"amount": "5"})
    assert not banking.expired(chat.tracker, chat.now + 60, idle_seconds=600)
    assert banking.expired(chat.tracker, chat.now + 601, idle_seconds=600)
    fresh = banking.new_session(chat.tracker, 1000.0)
    assert (fresh.conversation_id, fresh.stack, fresh.slots) == ("c1", (), {})
    assert fresh.session_started == 1000.0 and fresh.turn == chat.tracker.turn
    result = banking.handle_message(fresh, "m", "hi", nlu("greet"), 1001.0)
    assert kinds(result) == ["session_expired"]
    assert not result.tracker.session_expired


def test_one_engine_serves_many_threads(banking: DialogueEngine) -> None:
    def conversation(n: int) -> list[str]:
        chat = Chat(banking, f"t{n}")
        out = texts(chat.say("send money", "transfer_money"))
        out += texts(chat.say(str(n + 1)))
        out += texts(chat.say("Bob"))
        return out

    expected = [conversation(n) for n in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(conversation, range(16))) == expected


# -- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "number"), [
    ("50", 50), ("$120.50", 120.5), ("1,000 euros", 1000), ("€1,000", 1000),
    ("1.000,00 €", 1000), ("10k", 10000), ("fifty", 50), ("a hundred dollars", 100),
    ("two thousand five hundred", 2500), ("one hundred and twenty", 120), ("120,50", 120.5),
    ("make it 75 please", 75), ("1'000", 1000), ("seventy-five", 75),
    ("send 5 to 2 people", None), ("nothing", None), ("", None),
])
def test_parse_number(text: str, number: float | None) -> None:
    assert parse_number(text) == number


@pytest.mark.parametrize(("text", "value"), [
    ("yes", True), ("Yes please!", True), ("of course", True), ("ok", True), ("no", False),
    ("nope.", False), ("not really", False), ("maybe", None), ("", None),
])
def test_parse_boolean(text: str, value: bool | None) -> None:
    assert parse_boolean(text) is value


def test_choices_and_entity_matching() -> None:
    entity = EntityDef("card", {"credit": ["visa", "credit card"]}, (), ("gold",))
    matcher = EntityMatcher.of(entity, {"visa": "credit", "credit card": "credit",
                                        "credit": "credit"})
    slot = SlotDef("card", "categorical", "card", Validation(choices=("credit", "debit")))
    assert match_choice(slot, "my VISA", matcher) == "credit"
    assert match_choice(slot, "Debit", matcher) == "debit"
    assert match_choice(slot, "credit or debit", matcher) is None
    assert matcher.find("the gold one") == "gold"
    place = SlotDef("place", "entity", "card")
    assert from_text(place, "my visa", matcher).value == "credit"
    assert from_text(place, "paper", matcher).problem == "I don't know that place"
    iban = EntityMatcher.of(EntityDef("iban", regex=(r"\bDE\d{4}\b",)), {})
    assert iban.find("to DE1234 please") == "DE1234"


# -- workflow progress notices -----------------------------------------------------------------


def test_progress_of_the_awaited_run_says_still_working(banking: DialogueEngine,
                                                        tmp_path: Path) -> None:
    chat = Chat(banking)
    [job] = chat.say("balance", "check_balance").workflows
    before = chat.tracker
    result = banking.handle_workflow_progress(before, job.run_id, 5.0)
    assert texts(result) == ["I'm still working on your previous request, one moment please."]
    assert result.workflows == [] and result.events == []
    assert result.tracker.waiting_workflow == job.run_id
    assert result.tracker.stack == before.stack and result.tracker.slots == before.slots
    assert chat.tracker is before  # the input tracker is never changed
    # a run the conversation does not wait for (stale, or already finished): nothing changes
    for tracker, run_id in ((before, "other-run"), (chat.finish(outputs={"balance": 1}).tracker,
                                                   job.run_id)):
        quiet = banking.handle_workflow_progress(tracker, run_id, 6.0)
        assert quiet.tracker == tracker and quiet.tracker is not tracker
        assert (quiet.replies, quiet.events, quiet.workflows) == ([], [], [])
    # the bot's own utter_workflow_pending replaces the built-in one
    custom = DialogueEngine(make_bot(tmp_path, {
        **LAB_FILES, "domain/pending.yml": "responses:\n  utter_workflow_pending: Still on it.\n"}))
    fetching = Chat(custom)
    fetching.say("fetch", "fetch")
    [lab_job] = fetching.say("X1").workflows
    assert texts(custom.handle_workflow_progress(fetching.tracker, lab_job.run_id, 9.0)) == [
        "Still on it."]


@pytest.mark.parametrize("source", [
    "Plain text.", "Two\r\nlines\n", "Braces { alone }", "Hello {{ name }}!",
    "{% if name %}Hi {{ name }}{% else %}Hi{% endif %}", "{# note #}Done", "  padded  \n\n",
])
def test_a_response_renders_as_its_jinja_template_would(source: str) -> None:
    from services.botdef import (
        ButtonDef,
        ConversationDefinition,
        ResponseDef,
        Variation,
        template_environment,
    )
    from services.dialogue.engine.render import Renderer

    variation = Variation(source, (ButtonDef(source, "/x"),))
    conversation = ConversationDefinition(responses={"utter_x": ResponseDef("utter_x",
                                                                            (variation,))})
    renderer = Renderer(conversation, [])
    template = template_environment().from_string(source)
    for context in ({}, {"name": "Ada"}):
        reply = renderer.render("utter_x", context, "seed")
        assert reply.text == template.render(context).strip()
        assert reply.buttons[0].title == template.render(context)
