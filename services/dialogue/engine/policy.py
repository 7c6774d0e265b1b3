"""What a user message does: start a flow, answer a question, digress, correct, cancel,
clarify, fall back or hand off. The rules are documented in docs/bot-definition.md
("Dialogue behaviour")."""

from __future__ import annotations

import dataclasses
import re

from services.botdef import Collect, SlotDef, Validation, parse_payload
from services.common import langid
from services.dialogue.engine import zh
from services.dialogue.engine.api import Button, EntityValue, NluResult
from services.dialogue.engine.compiled import (
    AFFIRM,
    BUILTIN_REPLIES,
    CANCEL,
    CANCEL_TEXTS,
    DENY,
    GOODBYE,
    HANDOFF,
    CompiledBot,
)
from services.dialogue.engine.knowledge import answer_instead, try_answer
from services.dialogue.engine.program import same
from services.dialogue.engine.runner import ask, run
from services.dialogue.engine.turn import Turn
from services.dialogue.engine.values import Parsed, currency_context, from_entity, from_text

CLARIFY_OPTIONS = 2


def payload_nlu(bot: CompiledBot, text: str) -> NluResult | None:
    """A button payload `/intent` or `/intent{"entity": "value"}` naming an intent the bot
    knows: that intent with confidence 1.0 and those entities (no NLU needed)."""
    parsed = parse_payload(text)
    if parsed is None or parsed[0] not in bot.intents:
        return None
    intent, entities = parsed
    values = [EntityValue(name, value, value) for name, value in entities.items()]
    return NluResult(intent, 1.0, [(intent, 1.0)], values, False)


def understood(bot: CompiledBot, nlu: NluResult) -> bool:
    """Confident enough to act on, and not out of scope."""
    return (bool(nlu.intent) and not nlu.out_of_scope and nlu.intent != bot.out_of_scope_intent
            and nlu.confidence >= bot.threshold)


def note_language(turn: Turn, text: str) -> None:
    """A multilingual bot: the conversation's language from the user's message. The first
    message whose language is decided sets it (until then: the bot's default); afterwards
    only a message clearly in another of the bot's languages switches it (`Detection.clear`:
    "谢谢" or "Li Wei" keep it, "我想转账" switches). Event `language_set`."""
    if len(turn.bot.languages) < 2:
        return
    found = langid.detect(text, turn.bot.languages)
    if found.language is None:
        return
    if turn.detected is None or (found.language != turn.detected and found.clear()):
        turn.set_language(found.language, found.confidence, found.method)


def handle_user(turn: Turn, text: str, nlu: NluResult) -> None:
    if turn.handed_off:
        return
    nlu = payload_nlu(turn.bot, text) or _without_counting_words(text, nlu)
    if turn.waiting is not None:
        _while_waiting(turn, nlu)
    elif _is_cancel(turn.bot, text, nlu):
        _cancel(turn, text, nlu)
    elif isinstance(turn.current(), Collect):
        _answer(turn, text, nlu)
    else:
        _idle(turn, nlu)


def _without_counting_words(text: str, nlu: NluResult) -> NluResult:
    """`nlu` without the entities that only count things (`一` of 一笔钱: zh.counts_things)."""
    kept = [e for e in nlu.entities if not zh.counts_things(text, e.start, e.end)]
    return nlu if len(kept) == len(nlu.entities) else dataclasses.replace(nlu, entities=kept)


def _is_cancel(bot: CompiledBot, text: str, nlu: NluResult) -> bool:
    return _said_cancel(text) or (understood(bot, nlu) and nlu.intent in CANCEL)


def _said_cancel(text: str) -> bool:
    return " ".join(re.sub(r"[^\w' ]+", " ", text.lower()).split()) in CANCEL_TEXTS


def _while_waiting(turn: Turn, nlu: NluResult) -> None:
    """A workflow is running: small talk is answered, anything else gets "still working"."""
    if understood(turn.bot, nlu) and nlu.intent in BUILTIN_REPLIES:
        turn.say(BUILTIN_REPLIES[nlu.intent])
    turn.say("utter_workflow_pending")


def _cancel(turn: Turn, text: str, nlu: NluResult) -> None:
    """Cancel the current task. With nothing to cancel, a message only classified as the
    cancel intent ("how do I close my account?") may be answered from the knowledge base
    (`knowledge.answer_intents`); "cancel", "stop", ... never are."""
    if not turn.stack:
        if _said_cancel(text) or not answer_instead(turn, nlu.intent, nlu.confidence):
            turn.streak = 0
            turn.say("utter_nothing_to_cancel")
        return
    turn.streak = 0
    turn.cancel_task("user")
    turn.say("utter_cancelled")
    run(turn)


def _idle(turn: Turn, nlu: NluResult) -> None:
    """No question is pending: start the intent's flow or answer it, else fall back. Out of
    scope / low confidence and the FAQ intent try the knowledge base first; an answer intent
    is arbitrated against it (bot.yml `knowledge:`)."""
    bot = turn.bot
    if not understood(bot, nlu):
        reason = "out_of_scope" if _out_of_scope(bot, nlu) else "low_confidence"
        knowledge_first = bot.knowledge_policy and bot.knowledge.on_out_of_scope
        if not (knowledge_first and try_answer(turn, turn.text, reason)):
            fallback(turn, reason, nlu)
        return
    if _faq_question(bot, nlu) and try_answer(turn, turn.text, "faq_intent"):
        return
    if answer_instead(turn, nlu.intent, nlu.confidence):
        return
    flow = bot.flow_for(nlu.intent)
    if flow is not None:
        turn.streak = 0
        start_flow(turn, flow.name, "trigger", nlu)
    elif not _builtin(turn, nlu.intent):
        fallback(turn, "no_handler", nlu)


def _faq_question(bot: CompiledBot, nlu: NluResult) -> bool:
    """The message is (confidently) the bot's FAQ intent and the bot answers from its
    knowledge base."""
    faq = bot.knowledge.faq_intent
    return bot.knowledge_policy and faq is not None and nlu.intent == faq


def _out_of_scope(bot: CompiledBot, nlu: NluResult) -> bool:
    return nlu.out_of_scope or nlu.intent == bot.out_of_scope_intent


def _builtin(turn: Turn, intent: str) -> bool:
    """Answer greet / goodbye / thanks / help, or hand off; False for other intents."""
    if intent in HANDOFF:
        turn.handoff("requested")
        return True
    if intent not in BUILTIN_REPLIES:
        return False
    turn.streak = 0
    if intent in GOODBYE:
        turn.cancel_all("goodbye")
    turn.say(BUILTIN_REPLIES[intent])
    return True


def fallback(turn: Turn, reason: str, nlu: NluResult | None) -> None:
    """The bot did not understand: clarify with the best intents as buttons (or ask to
    rephrase); the Nth fallback in a row (N = handoff_after) hands off instead."""
    turn.streak += 1
    turn.event("fallback", reason=reason, intent=nlu.intent if nlu else "",
               confidence=round(nlu.confidence, 4) if nlu else 0.0)
    if turn.streak >= turn.bot.handoff_after:
        turn.handoff("fallbacks")
        return
    understandable = nlu is not None and reason != "no_handler"
    options = _options(turn.bot, nlu, turn.language) if nlu is not None and understandable else []
    if not options:
        turn.say("utter_default")
        return
    turn.event("clarification", intents=[button.payload[1:] for button in options])
    name = "utter_out_of_scope" if reason == "out_of_scope" else "utter_clarify"
    turn.say(name, buttons=options)


def _options(bot: CompiledBot, nlu: NluResult, language: str | None = None) -> list[Button]:
    ranking = sorted(nlu.ranking or [(nlu.intent, nlu.confidence)], key=lambda r: -r[1])
    intents: list[str] = []
    for intent, _ in ranking:
        if intent != bot.out_of_scope_intent and bot.handles(intent) and intent not in intents:
            intents.append(intent)
    return [Button(bot.title(intent, language), f"/{intent}")
            for intent in intents[:CLARIFY_OPTIONS]]


def start_flow(turn: Turn, flow: str, entry: str, nlu: NluResult) -> None:
    """Push `flow`, fill its slots from the message's entities, and run it."""
    turn.push(flow, entry)
    filled: set[str] = set()
    for entity in nlu.entities:
        for slot in _slots_of(turn, entity.entity, flow):
            if slot.name not in filled:
                filled.add(slot.name)
                _fill(turn, slot, entity)
    run(turn)


def _slots_of(turn: Turn, entity: str, flow: str) -> list[SlotDef]:
    names = turn.bot.fillable.get(flow, frozenset())
    return [slot for name, slot in turn.bot.conversation.slots.items()
            if slot.entity == entity and name in names]


def _entity_value(turn: Turn, slot: SlotDef, entity: EntityValue) -> str:
    """What an entity gives `slot`: its value; for an amount (a number slot with
    `currencies`), also the currency named right around it in the message."""
    spans_raw = 0 <= entity.start < entity.end and turn.text[entity.start:entity.end] == entity.raw
    if slot.type != "number" or not slot.currencies or not spans_raw:
        return entity.value
    return currency_context(turn.text, entity.start, entity.end)


def _parse_tagged(turn: Turn, slot: SlotDef, value: str,
                  rules: Validation | None = None) -> Parsed:
    """`slot`'s value from an entity NLU tagged. A mis-tagged span (one the entity's regexes
    refuse, or in Chinese, whose spans a tagger cuts less well, one that is no number, date
    or choice: 公司 of 公司账户) is read again from the whole text, when that finds one value."""
    matcher = turn.bot.matcher(slot)
    parsed = from_entity(slot, value, matcher, rules, clock=turn.clock)
    cut = parsed.reason in ("type", "missing") and zh.has_cjk(turn.text)
    if (parsed.reason == "regex" or cut) and slot.from_text:
        found = from_text(slot, turn.text, matcher, rules, clock=turn.clock)
        return found if found.ok else parsed
    return parsed


def _fill(turn: Turn, slot: SlotDef, entity: EntityValue) -> bool:
    value = _entity_value(turn, slot, entity)
    parsed = _parse_tagged(turn, slot, value)
    if not parsed.ok:
        turn.reject(slot, value, parsed.problem, parsed.reason)
        turn.say(slot.invalid or "utter_invalid", slot=turn.slot_context(slot, parsed.problem))
        return False
    turn.set_slot(slot.name, parsed.value)
    return True


# -- answering a question ---------------------------------------------------------------------


def _answer(turn: Turn, text: str, nlu: NluResult) -> None:
    """A question (collect step) is pending. In order: the entity of the asked slot; for a
    boolean slot, entities correcting the flow's other slots (a correction never answers a
    confirmation, even worded as a no), then yes/no intents; another flow's intent
    (digression); entities of other slots of the flow (filling or correcting them: a message
    carrying them is information, not small talk, whatever its intent); the FAQ intent
    answered from the knowledge base (then the question is asked again); a value of the slot
    named by a message read as small talk ("Berln"); small talk; the raw text. An answer
    intent the knowledge base wins is answered from it before the digression (then the
    question is asked again)."""
    step = turn.current()
    assert isinstance(step, Collect)
    bot = turn.bot
    slot = bot.slot(step.slot)
    confident = understood(bot, nlu)
    own = [e for e in nlu.entities if slot.entity is not None and e.entity == slot.entity]
    if own:
        _other_entities(turn, nlu, skip=slot.name)
        value = _entity_value(turn, slot, own[0])
        _take(turn, step, _parse_tagged(turn, slot, value, step.validation), value)
        return
    if slot.type == "boolean" and _other_entities(turn, nlu, skip=slot.name):
        run(turn)  # a correction ("no, make it 50") is no answer: the question is asked again
        return
    if confident and slot.type == "boolean" and nlu.intent in AFFIRM | DENY:
        _accept(turn, nlu.intent in AFFIRM)
        return
    if confident and answer_instead(turn, nlu.intent, nlu.confidence):
        run(turn)  # answered: the question is asked again
        return
    if confident and _digress(turn, nlu):
        return
    if _other_entities(turn, nlu, skip=slot.name):
        run(turn)
        return
    if confident and _faq_question(bot, nlu) and try_answer(turn, text, "faq_intent"):
        run(turn)  # answered: the question is asked again
        return
    if confident and nlu.intent in BUILTIN_REPLIES and _named_value(turn, step, slot, text):
        return  # "Berln" read as a greeting, but it names one of the slot's values
    if confident and _smalltalk(turn, nlu.intent):
        return
    _by_text(turn, step, slot, text, nlu)


def _named_value(turn: Turn, step: Collect, slot: SlotDef, text: str) -> bool:
    """Take the answer when the whole text names a value of the slot's entity (its lookup,
    synonyms or close spellings of them): True when it was taken."""
    matcher = turn.bot.matcher(slot)
    if matcher is None or not slot.from_text:
        return False
    parsed = from_text(slot, text, matcher, step.validation, clock=turn.clock)
    if parsed.ok:
        _accept(turn, parsed.value)
    return parsed.ok


def _by_text(turn: Turn, step: Collect, slot: SlotDef, text: str, nlu: NluResult) -> None:
    parsed = Parsed(None, "I couldn't find it in your answer", "missing")
    if slot.from_text:
        parsed = from_text(slot, text, turn.bot.matcher(slot), step.validation, clock=turn.clock)
    flow = turn.bot.flow_for(nlu.intent) if understood(turn.bot, nlu) else None
    if not parsed.ok and flow is not None and turn.top is not None and flow.name == turn.top.flow:
        # the flow's own intent again, without an answer: just ask again
        turn.event("question_repeated", slot=slot.name, reason="same_intent", intent=nlu.intent)
        ask(turn, step)
        return
    _take(turn, step, parsed, text)


def _take(turn: Turn, step: Collect, parsed: Parsed, tried: str) -> None:
    """Accept the answer `tried` to the question, or say why it is refused and ask again."""
    if parsed.ok:
        _accept(turn, parsed.value)
    else:
        turn.reject(turn.bot.slot(step.slot), tried, parsed.problem, parsed.reason)
        _invalid(turn, step, parsed.problem)


def _accept(turn: Turn, value: object) -> None:
    step = turn.current()
    assert isinstance(step, Collect)
    turn.streak = 0
    turn.set_slot(step.slot, value)
    turn.advance()
    run(turn)


def _invalid(turn: Turn, step: Collect, problem: str | None) -> None:
    frame = turn.top
    assert frame is not None
    attempts = frame.attempts + 1
    if attempts >= step.max_attempts:
        _give_up(turn, step)
        return
    turn.update_top(attempts=attempts)
    slot = turn.bot.slot(step.slot)
    turn.say(step.invalid or "utter_invalid", slot=turn.slot_context(slot, problem))
    ask(turn, step)


def _give_up(turn: Turn, step: Collect) -> None:
    """Too many invalid answers: a fallback; the flow is cancelled."""
    turn.cancel_task("max_attempts")
    if turn.streak + 1 >= turn.bot.handoff_after:
        fallback(turn, "max_attempts", None)
        return
    turn.say(step.fallback or "utter_collect_failed")
    turn.streak += 1
    turn.event("fallback", reason="max_attempts", intent="", confidence=0.0)
    run(turn)


def _digress(turn: Turn, nlu: NluResult) -> bool:
    """Another flow's intent while a question is pending: run that flow on top (the
    interrupted flow asks again when it ends). A flow already running (lower in the stack)
    is not started again, nor one past `max_depth` flows: the question is asked again."""
    flow = turn.bot.flow_for(nlu.intent)
    top = turn.top
    if flow is None or top is None or flow.name == top.flow:
        return False
    step = turn.current()
    running = any(frame.flow == flow.name for frame in turn.stack)
    if running or len(turn.stack) >= turn.bot.max_depth:
        assert isinstance(step, Collect)
        turn.event("question_repeated", slot=step.slot, intent=nlu.intent,
                   reason="flow_running" if running else "max_depth")
        ask(turn, step)
        return True
    turn.streak = 0
    start_flow(turn, flow.name, "digression", nlu)
    return True


def _smalltalk(turn: Turn, intent: str) -> bool:
    """Greet / thanks / help while a question is pending: answer, then ask again. Goodbye
    and handoff leave the flows."""
    if intent not in BUILTIN_REPLIES and intent not in HANDOFF:
        return False
    _builtin(turn, intent)
    if intent not in GOODBYE and intent not in HANDOFF:
        run(turn)
    return True


def _other_entities(turn: Turn, nlu: NluResult, skip: str) -> bool:
    """Fill or correct the innermost flow's slots (other than `skip`) from the message's
    entities. A correction (a filled slot given a new value) is confirmed. True when
    anything changed or was rejected."""
    frame = turn.top
    if frame is None:
        return False
    changed = False
    for entity in nlu.entities:
        for slot in _slots_of(turn, entity.entity, frame.flow):
            if slot.name != skip:
                changed = _correct(turn, slot, entity) or changed
    return changed


def _correct(turn: Turn, slot: SlotDef, entity: EntityValue) -> bool:
    current = turn.value(slot.name)
    value = _entity_value(turn, slot, entity)
    parsed = _parse_tagged(turn, slot, value)
    if parsed.ok and same(current, parsed.value):
        return False
    if current is None or not parsed.ok:
        return _fill(turn, slot, entity) or not parsed.ok
    turn.set_slot(slot.name, parsed.value, correction=True, previous=current)
    turn.say("utter_corrected", slot=turn.slot_context(slot))
    return True
