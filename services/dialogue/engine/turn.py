"""The working state of one engine call: a mutable copy of the tracker plus the output.

A `Turn` is created per call, changed by the flow runner and the message policy, and
turned into a new, immutable Tracker and a TurnResult at the end.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from services.botdef import MessageRef, SlotDef, Variation
from services.dialogue.engine import zh
from services.dialogue.engine.api import Button, Event, Knowledge, TurnResult, WorkflowRequest
from services.dialogue.engine.compiled import CompiledBot
from services.dialogue.engine.dates import Clock
from services.dialogue.engine.program import Instruction, same
from services.dialogue.engine.tracker import Frame, Tracker


class Turn:
    """`text`: the user message being handled ("" for other calls); `knowledge`: the
    knowledge-base results this call may use (None: the knowledge base is not consulted);
    `now`: the call's time (unix seconds), which relative dates are read from."""

    def __init__(self, bot: CompiledBot, tracker: Tracker, key: str, *, text: str = "",
                 knowledge: Knowledge | None = None, now: float = 0.0) -> None:
        self.bot = bot
        self.detected = tracker.language
        """The conversation's language once known (stored in the tracker)."""
        self.language = tracker.language or bot.language
        """The language replies are said in: the conversation's, else the bot's default."""
        self.clock = Clock(now, bot.timezone, self.language)
        self.tracker = tracker
        self.key = key
        self.text = text
        self.knowledge = knowledge
        self.slots: dict[str, Any] = dict(tracker.slots)
        self.stack: list[Frame] = list(tracker.stack)
        self.handed_off = tracker.handed_off
        self.streak = tracker.fallback_streak
        self.waiting = tracker.waiting_workflow
        self.turn = tracker.turn + 1
        self.replies: list[Any] = []
        self.events: list[Event] = []
        self.workflows: list[WorkflowRequest] = []
        if tracker.session_expired:
            self.event("session_expired", session_started=tracker.session_started)

    def result(self, now: float, message_id: str | None = None) -> TurnResult:
        tracker = replace(
            self.tracker,
            slots=self.slots,
            stack=tuple(self.stack),
            handed_off=self.handed_off,
            fallback_streak=self.streak,
            waiting_workflow=self.waiting,
            turn=self.turn,
            last_active=now,
            last_message_id=self.tracker.last_message_id if message_id is None else message_id,
            session_expired=False,
            language=self.detected,
        )
        return TurnResult(tracker, self.replies, self.events, self.workflows)

    # -- output ------------------------------------------------------------------------------

    def event(self, kind: str, **data: Any) -> None:
        self.events.append(Event(kind, data))

    def say(
        self,
        message: MessageRef | str,
        *,
        slot: dict[str, Any] | None = None,
        workflow: dict[str, Any] | None = None,
        buttons: list[Button] | None = None,
    ) -> None:
        values = self.values()
        context = {"slots": values, "display": self.displayed(values), "slot": slot or {},
                   "workflow": workflow or {}}
        seed = f"{self.tracker.conversation_id}:{self.turn}:{len(self.replies)}"
        self.replies.append(self.bot.renderer.render(message, context, seed, buttons,
                                                     language=self.language))

    def set_language(self, language: str, confidence: float, method: str) -> None:
        """The conversation is in `language` from now on (event `language_set` when the
        replies change language: not for a first message in the bot's default language)."""
        if language != self.language:
            self.event("language_set", language=language, previous=self.language,
                       confidence=confidence, method=method)
        self.detected = self.language = language
        self.clock = Clock(self.clock.now, self.clock.timezone, language)

    def render_text(self, template: str) -> str:
        """A template (e.g. a search query) rendered with the slot values."""
        values = self.values()
        context = {"slots": values, "display": self.displayed(values), "slot": {},
                   "workflow": {}}
        reply = self.bot.renderer.render(MessageRef(inline=Variation(template)), context, "",
                                         language=self.language)
        return reply.text

    def displayed(self, values: dict[str, Any]) -> dict[str, Any]:
        """`display.NAME` of the templates: each slot's value as written in the conversation's
        language (EntityMatcher.written_in): the values themselves outside Chinese, the only
        language with a script of its own among the bots' today."""
        if self.language.split("-")[0] != "zh":
            return values
        shown = dict(values)
        for name, slot in self.bot.conversation.slots.items():
            matcher = self.bot.matcher(slot)
            if matcher is not None and shown.get(name) is not None:
                shown[name] = matcher.written_in(shown[name], self.language)
        return shown

    def slot_context(self, slot: SlotDef, problem: str | None = None) -> dict[str, Any]:
        label = slot.label_in(self.language)
        if problem and self.language.split("-")[0] == "zh":
            problem = zh.problem(problem, slot.label, label)
        return {"name": slot.name, "label": label, "value": self.value(slot.name),
                "problem": problem or ""}

    # -- slots -------------------------------------------------------------------------------

    def value(self, name: str) -> Any:
        if name in self.slots:
            return self.slots[name]
        slot = self.bot.conversation.slots.get(name)
        return slot.initial if slot is not None else None

    def values(self) -> dict[str, Any]:
        return {name: self.value(name) for name in self.bot.conversation.slots}

    def set_slot(self, name: str, value: Any, **data: Any) -> None:
        previous = self.value(name)
        self.slots[name] = value
        if not same(previous, value):
            self.event("slot_set", slot=name, value=value, **data)

    def reject(self, slot: SlotDef, value: object, problem: str | None, reason: str) -> None:
        """Record that `value` was refused for `slot` and why (`reason`: values.REASONS)."""
        self.event("slot_rejected", slot=slot.name, value=value, reason=reason,
                   problem=problem or "")

    def reset_slot(self, name: str) -> None:
        if name in self.slots:
            self.slots.pop(name)
            self.event("slot_set", slot=name, value=self.value(name), reset=True)

    # -- flow stack --------------------------------------------------------------------------

    @property
    def top(self) -> Frame | None:
        return self.stack[-1] if self.stack else None

    def current(self) -> Instruction | None:
        """The instruction the innermost flow is at (None past its end or with no flow)."""
        frame = self.top
        if frame is None:
            return None
        program = self.bot.programs.get(frame.flow, ())
        return program[frame.pc] if frame.pc < len(program) else None

    def update_top(self, **changes: Any) -> None:
        self.stack[-1] = replace(self.stack[-1], **changes)

    def advance(self) -> None:
        frame = self.stack[-1]
        self.stack[-1] = replace(frame, pc=frame.pc + 1, attempts=0)

    def push(self, flow: str, entry: str) -> None:
        """Start `flow`. Unless called by another flow, its slots are reset first (see
        CompiledBot.resets); a called flow uses the values its caller has."""
        if entry != "call":
            for name in sorted(self.bot.resets.get(flow, frozenset())):
                self.reset_slot(name)
        self.stack.append(Frame(flow, entry=entry))
        self.event("flow_started", flow=flow, entry=entry)

    def pop(self, cancelled: str | None = None) -> Frame:
        """End the innermost flow: completed, or cancelled for the reason given."""
        frame = self.stack.pop()
        if cancelled is None:
            self.event("flow_completed", flow=frame.flow)
        else:
            self.event("flow_cancelled", flow=frame.flow, reason=cancelled)
        return frame

    def cancel_task(self, reason: str) -> None:
        """Cancel the innermost flow and the flows that called it (a digression's
        interrupted flow stays, and asks its question again when the runner resumes it)."""
        while self.stack and self.stack[-1].entry == "call":
            self.pop(reason)
        if self.stack:
            self.pop(reason)

    def cancel_all(self, reason: str) -> None:
        while self.stack:
            self.pop(reason)

    def run_id(self) -> str:
        """The workflow run id of the current step: bot, conversation, message (or result)
        key, flow and step; the same again for a redelivered message. Message ids are unique
        per conversation only, so the bot and the conversation are part of it."""
        frame = self.stack[-1]
        text = (f"{self.tracker.bot_id}\n{self.tracker.conversation_id}\n{self.key}\n"
                f"{frame.flow}\n{frame.pc}")
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    # -- handoff -----------------------------------------------------------------------------

    def handoff(self, reason: str, message: MessageRef | None = None) -> None:
        self.cancel_all("handoff")
        self.waiting = None
        self.handed_off = True
        self.streak = 0
        self.event("handoff", reason=reason)
        self.say(message or "utter_handoff")
