"""Conversations without the stack: a ChatClient (botfactory/conversation_tests.py) that drives
the dialogue engine in-process (`botfactory test-conversations BOT --offline`).

What NLU understands of a message, first match wins: the `nlu` map given to the client (exact
text), the test step's `nlu:` hint, a button payload (`/affirm`: the engine reads it), then a
training example of the bot with the same text (case and spacing ignored; its annotated
entities, synonyms applied); anything else is not understood (the bot's fallback). Workflows
complete at once with the step's or the test file's `workflow_result(s)` (default: succeeded
with no outputs): no RPA runner, no network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botfactory.conversation_tests import ConversationStep, ConversationTest, NluHint
from services.botdef import BotDefinition, Example
from services.dialogue.engine import (
    DialogueEngine,
    EntityValue,
    NluResult,
    Reply,
    Tracker,
    WorkflowResult,
)

NO_NLU = NluResult(intent="", confidence=0.0, ranking=[], entities=[], out_of_scope=False)


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def hint_nlu(hint: NluHint, text: str) -> NluResult:
    """The NluResult a test step's `nlu:` hint stands for."""
    entities = [_entity(text, entity, value, raw) for entity, value, raw in hint.entities]
    ranking = list(hint.ranking) or [(hint.intent, hint.confidence)]
    return NluResult(hint.intent, hint.confidence, ranking, entities, hint.out_of_scope)


def _entity(text: str, entity: str, value: str, raw: str) -> EntityValue:
    start = max(text.lower().find(raw.lower()), 0)
    return EntityValue(entity, value, raw, start, start + len(raw))


class ExampleNlu:
    """The bot's training examples as an exact-text lookup (case and spacing ignored)."""

    def __init__(self, bot: BotDefinition) -> None:
        self._synonyms: dict[str, dict[str, str]] = bot.entities_runtime_config()["synonyms"]
        self._out_of_scope = bot.nlu.out_of_scope_intent
        self._examples: dict[str, Example] = {}
        for example in bot.examples():
            self._examples.setdefault(_fold(example.text), example)

    def parse(self, text: str) -> NluResult | None:
        example = self._examples.get(_fold(text))
        if example is None:
            return None
        entities = [self._value(example, span.entity, span.start, span.end, span.value)
                    for span in example.entities]
        return NluResult(example.intent, 1.0, [(example.intent, 1.0)], entities,
                         example.intent == self._out_of_scope)

    def _value(self, example: Example, entity: str, start: int, end: int,
               value: str | None) -> EntityValue:
        raw = example.text[start:end]
        normal = value or self._synonyms.get(entity, {}).get(raw.lower(), raw)
        return EntityValue(entity, normal, raw, start, end)


class EngineClient:
    """A ChatClient (and ScriptedClient) that drives a DialogueEngine in-process."""

    def __init__(self, bot: BotDefinition, nlu: Mapping[str, NluResult] | None = None) -> None:
        self.engine = DialogueEngine(bot)
        self.nlu = dict(nlu or {})
        self.examples = ExampleNlu(bot)
        self.trackers: dict[str, Tracker] = {}
        self.tests: dict[str, ConversationTest] = {}
        self.sent: dict[str, int] = {}
        self.clock = 1000.0

    def bind(self, conversation_id: str, test: ConversationTest) -> None:
        self.tests[conversation_id] = test

    async def start(self, conversation_id: str) -> None:
        self.trackers[conversation_id] = Tracker.new(self.engine.bot.name, conversation_id,
                                                     self.clock)
        self.sent[conversation_id] = 0

    async def send(self, conversation_id: str, text: str) -> list[Reply]:
        step = self._step(conversation_id)
        self.clock += 1
        number = self.sent[conversation_id]
        result = self.engine.handle_message(self.trackers[conversation_id], f"m{number}", text,
                                            self.understand(step, text), self.clock)
        replies = list(result.replies)
        pending = list(result.workflows)
        tracker = result.tracker
        while pending:
            job = pending.pop(0)
            spec = self._result(conversation_id, step, job.workflow)
            done = self.engine.handle_workflow_result(
                tracker, WorkflowResult(job.run_id, job.workflow, spec["status"],
                                        dict(spec["outputs"]), spec["error"],
                                        spec.get("message", "")), self.clock)
            tracker = done.tracker
            replies.extend(done.replies)
            pending.extend(done.workflows)
        self.trackers[conversation_id] = tracker
        self.sent[conversation_id] = number + 1
        return replies

    def understand(self, step: ConversationStep | None, text: str) -> NluResult:
        """The NLU result of `text` (see the module docstring for the order)."""
        if text in self.nlu:
            return self.nlu[text]
        if step is not None and step.nlu is not None:
            return hint_nlu(step.nlu, text)
        return self.examples.parse(text) or NO_NLU

    async def state(self, conversation_id: str) -> dict[str, Any]:
        tracker = self.trackers[conversation_id]
        return {"slots": self.engine.slot_values(tracker), "active_flow": tracker.active_flow}

    def _step(self, conversation_id: str) -> ConversationStep | None:
        test = self.tests.get(conversation_id)
        number = self.sent[conversation_id]
        return test.steps[number] if test is not None and number < len(test.steps) else None

    def _result(self, conversation_id: str, step: ConversationStep | None,
                workflow: str) -> dict[str, Any]:
        test = self.tests.get(conversation_id)
        if test is None or step is None:
            return {"status": "succeeded", "outputs": {}, "error": None, "message": ""}
        return test.workflow_result(step, workflow)
