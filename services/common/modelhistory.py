"""The activation history of each bot's model (docs/rollout.md): every activation is appended
to a bounded JSON list in KV `bots`, key `history.<bot>` (compare-and-set), so that `rollback`
can return to the version active before."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from services.common.modelartifacts import ACTIVE_PREFIX, ModelStoreError, active_key
from services.common.nats import KV_BOTS, Bus

HISTORY_PREFIX = "history."
HISTORY_LIMIT = 50


@dataclass(frozen=True)
class Activation:
    """One change of the active version: to `version` from `previous` ("" for the first)."""

    version: str
    previous: str
    actor: str
    reason: str  # "activate", "rollback" or "promote"
    at_unix_ms: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def history_key(bot: str) -> str:
    return f"{HISTORY_PREFIX}{active_key(bot)[len(ACTIVE_PREFIX):]}"


async def history(bus: Bus, bot: str) -> list[Activation]:
    """The bot's activations, oldest first (the last HISTORY_LIMIT)."""
    records, _ = await read_history(bus, bot)
    return records


async def read_history(bus: Bus, bot: str) -> tuple[list[Activation], int]:
    kv = await bus.kv(KV_BOTS)
    try:
        entry = await kv.get(history_key(bot))
    except KeyNotFoundError:
        return [], 0
    try:
        records = [Activation(**item) for item in json.loads(entry.value or b"[]")]
    except (ValueError, TypeError):  # unreadable: start a new history
        records = []
    return records, entry.revision or 0


async def append_history(bus: Bus, bot: str, record: Activation) -> None:
    kv = await bus.kv(KV_BOTS)
    for _ in range(10):
        records, revision = await read_history(bus, bot)
        body = json.dumps([r.to_json() for r in [*records, record][-HISTORY_LIMIT:]]).encode()
        try:
            await kv.update(history_key(bot), body, last=revision)
            return
        except KeyWrongLastSequenceError:
            continue
    raise ModelStoreError(f"activation history of {bot!r} keeps changing; not recorded")
