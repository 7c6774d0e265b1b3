"""The dialogue engine: pure functions from (tracker, input) to (new tracker, replies,
events, workflow jobs). No I/O; the dialogue service wraps it."""

from __future__ import annotations

from dataclasses import replace

from services.botdef import BotDefinition, Collect, RunWorkflow
from services.dialogue.engine.api import (
    Event,
    Knowledge,
    NluResult,
    Reply,
    TurnResult,
    WorkflowResult,
)
from services.dialogue.engine.compiled import CompiledBot
from services.dialogue.engine.knowledge import SearchNeeded
from services.dialogue.engine.policy import handle_user, note_language, payload_nlu
from services.dialogue.engine.runner import run
from services.dialogue.engine.tracker import Tracker
from services.dialogue.engine.turn import Turn
from services.dialogue.engine.values import coerce

DEFAULT_HANDOFF_AFTER = 2
DEFAULT_MAX_DEPTH = 5


class DialogueEngine:
    """Runs one bot's conversations. Build once per bot definition; every method returns
    a new tracker and never changes the one given, so an engine can be shared by threads.

    `handoff_after`: fallbacks in a row that hand the conversation to a human;
    `max_depth`: flows stacked at most (digressions and calls).
    """

    def __init__(
        self,
        bot: BotDefinition,
        *,
        handoff_after: int = DEFAULT_HANDOFF_AFTER,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.bot = bot
        self._bot = CompiledBot.build(bot, handoff_after=handoff_after, max_depth=max_depth)

    @property
    def name(self) -> str:
        return self.bot.name

    # -- turns -------------------------------------------------------------------------------

    def handle_message(
        self, tracker: Tracker, message_id: str, text: str, nlu: NluResult, now: float,
        *, knowledge: Knowledge | None = None,
    ) -> TurnResult:
        """A user message with its NLU result. A text `/intent` or `/intent{"e": "v"}`
        naming a known intent is taken as that intent (confidence 1.0), whatever `nlu` says.
        During a handoff the message gets no reply.

        `knowledge`: the knowledge-base results found so far for this message; a search
        still needed comes back as `TurnResult.search` (see its doc). None: the knowledge base
        is not consulted (as if it had no answer)."""
        turn = Turn(self._bot, tracker, message_id, text=text, knowledge=knowledge, now=now)
        turn.slots["sentiment"] = nlu.sentiment or None
        turn.slots["sentiment_score"] = nlu.sentiment_score if nlu.sentiment else None
        note_language(turn, text)
        try:
            handle_user(turn, text, nlu)
        except SearchNeeded as needed:
            return _pending(tracker, needed)
        return turn.result(now, message_id)

    def handle_nlu_unavailable(
        self, tracker: Tracker, message_id: str, text: str, now: float
    ) -> TurnResult:
        """NLU could not be reached: a polite "try again"; the flows are left as they are."""
        turn = Turn(self._bot, tracker, message_id)
        if not turn.handed_off:
            turn.say("utter_nlu_unavailable")
        return turn.result(now, message_id)

    def handle_workflow_result(
        self, tracker: Tracker, result: WorkflowResult, now: float,
        *, knowledge: Knowledge | None = None,
    ) -> TurnResult:
        """The result of the workflow the conversation waits for: saves its outputs, says
        the step's success or failure response and resumes (failure: the flow is cancelled).
        A result for another run (stale, or redelivered) changes nothing but is recorded.
        `knowledge`: as for `handle_message` (a `search` step may follow the workflow)."""
        turn = Turn(self._bot, tracker, result.run_id, knowledge=knowledge, now=now)
        try:
            return self._workflow_result(turn, tracker, result, now)
        except SearchNeeded as needed:
            return _pending(tracker, needed)

    def _workflow_result(
        self, turn: Turn, tracker: Tracker, result: WorkflowResult, now: float
    ) -> TurnResult:
        step = turn.current()
        finished = {"run_id": result.run_id, "workflow": result.workflow,
                    "status": result.status, "error": result.error, "message": result.message}
        if tracker.waiting_workflow != result.run_id:
            stale = Event("workflow_finished", {**finished, "stale": True})
            return TurnResult(replace(tracker), [], [stale], [])
        turn.waiting = None
        turn.event("workflow_finished", **finished)
        if not isinstance(step, RunWorkflow):  # the bot was redeployed without that step
            turn.cancel_task("definition_changed")
            run(turn)
            return turn.result(now)
        # the customer sees the author's message, never the technical error (docs/workflows.md)
        context: dict[str, object] = {"name": result.workflow, "status": result.status,
                   "error": result.message, "outputs": dict(result.outputs)}
        if result.status == "succeeded":
            self._succeeded(turn, step, result, context)
        else:
            turn.say(step.on_failure or "utter_workflow_failed", workflow=context)
            turn.cancel_task("workflow_failed")
        run(turn)
        return turn.result(now)

    def handle_workflow_progress(self, tracker: Tracker, run_id: str, now: float) -> TurnResult:
        """The run `run_id` is taking long (the runner says so once per run): the bot says
        its "still working" response (`utter_workflow_pending`, the one a message gets while
        a workflow runs) if the conversation still waits for that run; else nothing
        changes (a finished, stale or redelivered run's notice)."""
        if tracker.waiting_workflow != run_id:
            return TurnResult(replace(tracker), [], [], [])
        turn = Turn(self._bot, tracker, f"progress-{run_id}")
        turn.say("utter_workflow_pending")
        return turn.result(now)

    def _succeeded(
        self, turn: Turn, step: RunWorkflow, result: WorkflowResult, context: dict[str, object]
    ) -> None:
        for output, name in step.save:
            if output in result.outputs:
                parsed = coerce(self._bot.slot(name), result.outputs[output])
                turn.set_slot(name, parsed.value if parsed.problem is None else None)
        turn.streak = 0
        if step.on_success is not None:
            turn.say(step.on_success, workflow=context)
        turn.advance()

    def handle_agent_message(
        self, tracker: Tracker, message_id: str, text: str, now: float
    ) -> TurnResult:
        """A human agent's message: relayed as a reply with role "agent"."""
        turn = Turn(self._bot, tracker, message_id)
        turn.replies.append(Reply(text=text, buttons=[], role="agent"))
        return turn.result(now, message_id)

    def release_handoff(self, tracker: Tracker, now: float) -> TurnResult:
        """Back to the bot after a handoff (nothing happens when not handed off)."""
        if not tracker.handed_off:
            return TurnResult(replace(tracker), [], [], [])
        turn = Turn(self._bot, tracker, f"release-{tracker.turn}")
        turn.handed_off = False
        turn.streak = 0
        turn.event("handoff_released")
        turn.say("utter_handoff_released")
        return turn.result(now)

    # -- sessions ----------------------------------------------------------------------------

    def expired(self, tracker: Tracker, now: float, idle_seconds: float) -> bool:
        """Whether the conversation has been idle for longer than `idle_seconds`."""
        return now - tracker.last_active > idle_seconds

    def new_session(self, tracker: Tracker, now: float) -> Tracker:
        """A fresh session of the same conversation: no flows, slots at their initial values,
        no handoff; the next turn reports a `session_expired` event."""
        return replace(
            Tracker.new(tracker.bot_id, tracker.conversation_id, now),
            turn=tracker.turn,
            last_message_id=tracker.last_message_id,
            session_expired=True,
        )

    # -- reading -----------------------------------------------------------------------------

    def payload_nlu(self, text: str) -> NluResult | None:
        """The NLU result a button payload stands for (`/intent`, `/intent{"e": "v"}`), when
        `text` is one naming an intent this bot knows; else None."""
        return payload_nlu(self._bot, text)

    def position(self, tracker: Tracker) -> tuple[str, str]:
        """(innermost flow, its current step) of the conversation: the step as
        `collect:<slot>`, `run_workflow:<workflow>` or the step's kind (`say`, `handoff`, ...);
        ("", "") when no flow runs."""
        if tracker.active_flow is None:
            return "", ""
        step = Turn(self._bot, tracker, "").current()
        return tracker.active_flow, _step_name(step)

    def slot_values(self, tracker: Tracker) -> dict[str, object]:
        """Every slot of the bot with its current value (initial when never set)."""
        return Turn(self._bot, tracker, "").values()


def _step_name(step: object) -> str:
    if step is None:
        return "end"
    if isinstance(step, Collect):
        return f"collect:{step.slot}"
    if isinstance(step, RunWorkflow):
        return f"run_workflow:{step.name}"
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in type(step).__name__)[1:]


def _pending(tracker: Tracker, needed: SearchNeeded) -> TurnResult:
    """A call that waits for a knowledge-base search: nothing changed."""
    return TurnResult(replace(tracker), [], [], [], search=needed.query)
