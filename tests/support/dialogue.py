"""The dialogue engine driven without a model: hand-built NLU results, one conversation at a time
(tests/unit/test_dialogue_*.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from services.botdef import BotDefinition, load_bot
from services.dialogue.engine import (
    DialogueEngine,
    EntityValue,
    NluResult,
    Tracker,
    TurnResult,
    WorkflowResult,
)

ASK_AMOUNT = ("How much would you like to send?", "What amount should I transfer?")
"""The demo bot's (bots/banking) questions for a transfer's amount."""


def nlu(intent: str = "", confidence: float = 1.0, entities: dict[str, str] | None = None,
        ranking: list[tuple[str, float]] | None = None, oos: bool = False,
        sentiment: str = "", sentiment_score: float = 0.0) -> NluResult:
    values = [EntityValue(k, v, v, 0, len(v)) for k, v in (entities or {}).items()]
    return NluResult(intent, confidence, ranking or [(intent, confidence)], values, oos,
                     sentiment, sentiment_score)


def texts(result: TurnResult) -> list[str]:
    return [reply.text for reply in result.replies]


def kinds(result: TurnResult) -> list[str]:
    return [event.type for event in result.events]


class Chat:
    """One conversation driven through the engine."""

    def __init__(self, engine: DialogueEngine, conversation_id: str = "c1") -> None:
        self.engine = engine
        self.tracker = Tracker.new(engine.bot.name, conversation_id, 0.0)
        self.now = 0.0
        self.jobs: list[Any] = []

    def say(self, text: str, intent: str = "", confidence: float = 1.0, **kw: Any) -> TurnResult:
        message = nlu(intent, confidence, **kw)
        return self._keep(self.engine.handle_message(
            self.tracker, f"m{self.tracker.turn}", text, message, self._tick()))

    def finish(self, status: str = "succeeded", outputs: dict[str, Any] | None = None,
               error: str | None = None, message: str = "") -> TurnResult:
        job = self.jobs.pop()
        result = WorkflowResult(job.run_id, job.workflow, status, outputs or {}, error, message)
        return self._keep(self.engine.handle_workflow_result(self.tracker, result, self._tick()))

    def slots(self) -> dict[str, Any]:
        return self.engine.slot_values(self.tracker)

    def _tick(self) -> float:
        self.now += 1.0
        return self.now

    def _keep(self, result: TurnResult) -> TurnResult:
        self.tracker = result.tracker
        self.jobs.extend(result.workflows)
        return result


def make_bot(root: Path, files: dict[str, str]) -> BotDefinition:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_bot(root)
