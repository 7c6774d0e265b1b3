"""The state of one conversation: slots, the flow stack, handoff and workflow waits.

Immutable: the engine returns a new Tracker from every call. `to_json` is the compact,
versioned form stored as the KV value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1
ENTRIES = ("trigger", "call", "digression")
"""How a frame was started: by its intent, by a `call` step, or as a digression that
interrupted the frame below it (which re-asks its question when the digression ends)."""


@dataclass(frozen=True)
class Frame:
    """A running flow: `pc` indexes its compiled steps; `attempts` counts invalid answers
    to the collect step at `pc`."""

    flow: str
    pc: int = 0
    attempts: int = 0
    entry: str = "trigger"

    def to_list(self) -> list[Any]:
        return [self.flow, self.pc, self.attempts, ENTRIES.index(self.entry)]

    @classmethod
    def from_list(cls, raw: list[Any]) -> Frame:
        flow, pc, attempts, entry = raw
        return cls(str(flow), int(pc), int(attempts), ENTRIES[int(entry)])


@dataclass(frozen=True)
class Tracker:
    """One conversation. Treat as immutable (`slots` is a plain dict for JSON's sake).

    `slots` holds the values set so far (a slot not in it has its initial value);
    `stack` the running flows, innermost last; `waiting_workflow` the run id the top flow
    waits for; `turn` counts handled calls; `session_expired` is set by
    `DialogueEngine.new_session` until the next turn reports it. `language`: the
    conversation's language once detected (a multilingual bot; None: the bot's default).
    """

    bot_id: str
    conversation_id: str
    slots: dict[str, Any] = field(default_factory=dict)
    stack: tuple[Frame, ...] = ()
    handed_off: bool = False
    fallback_streak: int = 0
    waiting_workflow: str | None = None
    turn: int = 0
    last_active: float = 0.0
    session_started: float = 0.0
    last_message_id: str = ""
    session_expired: bool = False
    language: str | None = None

    @classmethod
    def new(cls, bot_id: str, conversation_id: str, now: float) -> Tracker:
        return cls(bot_id, conversation_id, last_active=now, session_started=now)

    @property
    def active_flow(self) -> str | None:
        """The innermost running flow, None when no flow runs."""
        return self.stack[-1].flow if self.stack else None

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of `to_json` (for a record that embeds the tracker); `lang` only
        when a language was detected (older readers ignore it)."""
        language = {"lang": self.language} if self.language is not None else {}
        return {
            "v": FORMAT_VERSION,
            "bot": self.bot_id,
            "conv": self.conversation_id,
            "slots": self.slots,
            "stack": [frame.to_list() for frame in self.stack],
            "handoff": self.handed_off,
            "fallbacks": self.fallback_streak,
            "wf": self.waiting_workflow,
            "turn": self.turn,
            "active": self.last_active,
            "session": self.session_started,
            "msg": self.last_message_id,
            "expired": self.session_expired,
            **language,
        }

    @classmethod
    def from_json(cls, data: bytes | str) -> Tracker:
        return cls.from_dict(json.loads(data))

    @classmethod
    def from_dict(cls, raw: Any) -> Tracker:
        """The tracker of a `to_dict` object (ValueError: another format version)."""
        if not isinstance(raw, dict) or raw.get("v") != FORMAT_VERSION:
            version = raw.get("v") if isinstance(raw, dict) else None
            raise ValueError(f"unsupported tracker format version {version!r}")
        return cls(
            bot_id=str(raw["bot"]),
            conversation_id=str(raw["conv"]),
            slots=dict(raw.get("slots") or {}),
            stack=tuple(Frame.from_list(frame) for frame in raw.get("stack") or ()),
            handed_off=bool(raw.get("handoff", False)),
            fallback_streak=int(raw.get("fallbacks", 0)),
            waiting_workflow=raw.get("wf"),
            turn=int(raw.get("turn", 0)),
            last_active=float(raw.get("active", 0.0)),
            session_started=float(raw.get("session", 0.0)),
            last_message_id=str(raw.get("msg", "")),
            session_expired=bool(raw.get("expired", False)),
            language=str(raw["lang"]) if isinstance(raw.get("lang"), str) else None,
        )
