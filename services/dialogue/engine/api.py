"""The data the dialogue engine takes and gives: NLU results, replies, events, workflow jobs,
knowledge-base searches and their hits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.dialogue.engine.tracker import Tracker

EVENT_TYPES = (
    "user_message",
    "bot_message",
    "slot_set",
    "slot_rejected",
    "question_repeated",
    "flow_started",
    "flow_completed",
    "flow_cancelled",
    "fallback",
    "clarification",
    "handoff",
    "handoff_released",
    "workflow_started",
    "workflow_finished",
    "session_expired",
    "knowledge_answer",
)
"""Every event type. The engine itself emits all but user_message and bot_message, which
the service writes from the inbound message and from `TurnResult.replies`."""


@dataclass(frozen=True)
class EntityValue:
    """An entity found by NLU: `value` is normalised (synonyms applied), `raw` as written,
    `[start, end)` its char span in the text."""

    entity: str
    value: str
    raw: str = ""
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class NluResult:
    """What NLU understood of one message. `ranking`: (intent, confidence), best first."""

    intent: str
    confidence: float
    ranking: list[tuple[str, float]] = field(default_factory=list)
    entities: list[EntityValue] = field(default_factory=list)
    out_of_scope: bool = False
    sentiment: str = ""
    sentiment_score: float = 0.0
    model_version: str = ""
    variant: str = ""  # "active" or "canary" (docs/rollout.md)


@dataclass(frozen=True)
class Button:
    """A quick reply: show `title`; a click sends `payload` as the user's text."""

    title: str
    payload: str


@dataclass(frozen=True)
class Citation:
    """Where a knowledge-base answer came from: the document's title and path (relative to
    the bot's knowledge/ folder, "faq.yml" for an FAQ entry), the headings above the passage
    and the link given for it (empty when none)."""

    title: str
    document: str
    heading_path: tuple[str, ...] = ()
    url: str = ""


@dataclass(frozen=True)
class Reply:
    """One bot message; `role` is "bot", or "agent" for a human agent's relayed text.
    `citations`: the sources of a knowledge-base answer."""

    text: str
    buttons: list[Button] = field(default_factory=list)
    role: str = "bot"
    citations: list[Citation] = field(default_factory=list)


@dataclass(frozen=True)
class KnowledgeHit:
    """One search result (NLU `Search`): an FAQ entry (`kind` "faq", `id` "faq:<id>") or a
    document passage (`kind` "passage"). `snippet`: the passage's sentences most relevant to
    the query, or the FAQ answer. `buttons` and `url` come with FAQ entries that have them."""

    kind: str
    id: str
    score: float
    document: str
    title: str = ""
    heading_path: tuple[str, ...] = ()
    text: str = ""
    snippet: str = ""
    buttons: tuple[Button, ...] = ()
    url: str = ""


@dataclass(frozen=True)
class KnowledgeQuery:
    """A knowledge-base search the engine needs before it can finish the call."""

    query: str
    k: int


@dataclass(frozen=True)
class Knowledge:
    """The knowledge-base results one engine call may use: `hits` by query text. A query not
    in `hits` is asked for (`TurnResult.search`), unless `final`: then it has no answer."""

    hits: Mapping[str, tuple[KnowledgeHit, ...]] = field(default_factory=dict)
    final: bool = False


@dataclass(frozen=True)
class WorkflowRequest:
    """A job for the RPA runner. `run_id` is derived from the conversation, the message and
    the flow step, so a redelivered message asks for the same run."""

    run_id: str
    workflow: str
    inputs: dict[str, Any]


@dataclass(frozen=True)
class WorkflowResult:
    """The end of a workflow run: status is "succeeded", "failed" or "compensated".
    `error`: the failure's details (for logs, the run record and agents, never the customer);
    `message`: what the customer may be told (written by the bot's author: a `fail` step's
    text; "" when none)."""

    run_id: str
    workflow: str
    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    message: str = ""


@dataclass(frozen=True)
class Event:
    """A conversation event (one of EVENT_TYPES) for the transcript and analytics."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TurnResult:
    """What one call did: the new tracker (the input one is never changed), the replies to
    send, the events to record and the workflow jobs to start.

    `search` set: the call could not finish without that knowledge-base search; nothing else
    is set (the tracker is the input one, unchanged). Run the search and make the same call
    again with its hits added to `knowledge`."""

    tracker: Tracker
    replies: list[Reply]
    events: list[Event]
    workflows: list[WorkflowRequest]
    search: KnowledgeQuery | None = None
