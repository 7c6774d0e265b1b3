"""The dialogue engine: flows, slot filling, conversation repair and response rendering as
pure Python (no I/O). Imports only the standard library, jinja2, `services.botdef` and
`services.common`.

```python
engine = DialogueEngine(load_bot("bots/banking"))
tracker = Tracker.new("banking", "conv-1", now)
result = engine.handle_message(tracker, "m1", "hi", nlu, now)   # -> TurnResult
```
"""

from services.dialogue.engine.api import (
    EVENT_TYPES,
    Button,
    Citation,
    EntityValue,
    Event,
    Knowledge,
    KnowledgeHit,
    KnowledgeQuery,
    NluResult,
    Reply,
    TurnResult,
    WorkflowRequest,
    WorkflowResult,
)
from services.dialogue.engine.engine import DialogueEngine
from services.dialogue.engine.tracker import Frame, Tracker

__all__ = [
    "EVENT_TYPES",
    "Button",
    "Citation",
    "DialogueEngine",
    "EntityValue",
    "Event",
    "Frame",
    "Knowledge",
    "KnowledgeHit",
    "KnowledgeQuery",
    "NluResult",
    "Reply",
    "Tracker",
    "TurnResult",
    "WorkflowRequest",
    "WorkflowResult",
]
