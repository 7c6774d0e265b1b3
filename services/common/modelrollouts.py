"""Rollouts of a candidate model version beside the active one (docs/rollout.md): the JSON
record in KV `bots`, key `rollout.<bot>`, followed by the NLU service and guarded by the
dialogue service (compare-and-set on its revision)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import grpc
from nats.js.errors import APIError, KeyNotFoundError

from services.common.errors import DomainError, InvalidArgument
from services.common.modelartifacts import (
    ACTIVE_PREFIX,
    VERSION_ID,
    ModelRef,
    ModelStoreError,
    active_key,
    active_version,
    now_ms,
    require_version,
)
from services.common.nats import KV_BOTS, Bus

ROLLOUT_PREFIX = "rollout."
MODES = ("shadow", "canary")
_WRONG_LAST_SEQUENCE = (10071, 10164)


class RolloutInvalid(ModelStoreError, InvalidArgument):
    """A rollout request with a bad value (mode, share, threshold, candidate)."""


class RolloutConflict(ModelStoreError, DomainError):
    """The bot's state does not allow this (no rollout, nothing to roll back to, ...)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


@dataclass(frozen=True)
class Rollout:
    """The rollout of a candidate version beside the active one (KV `rollout.<bot>`).

    shadow: the candidate parses live traffic off the critical path; the active model answers.
    canary: `share` of the conversations (sticky by conversation id) are answered by the
    candidate. The dialogue service aborts a canary once both variants have `min_samples`
    turns in its window and the candidate's fallback rate or negative-feedback rate (thumbs
    down per turn) exceeds the active one's by more than the given increase (absolute).
    """

    candidate: str
    mode: str
    share: float = 0.0
    baseline: str = ""
    started_at_unix_ms: int = 0
    actor: str = ""
    max_fallback_increase: float = 0.05
    max_negative_feedback_increase: float = 0.05
    min_samples: int = 50

    def validate(self) -> Rollout:
        problems = []
        if not VERSION_ID.match(self.candidate):
            problems.append(f"candidate {self.candidate!r} is not a version id")
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not _unit(self.share) or (self.mode == "canary" and self.share <= 0):
            problems.append("share must be a number in 0..1 (above 0 for a canary)")
        for name in ("max_fallback_increase", "max_negative_feedback_increase"):
            if not _unit(getattr(self, name)):
                problems.append(f"{name} must be a number in 0..1")
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int) \
                or self.min_samples < 1:
            problems.append("min_samples must be an integer >= 1")
        if problems:
            raise RolloutInvalid("; ".join(problems))
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Rollout:
        try:
            data = json.loads(raw)
            return cls(**data).validate()
        except (ValueError, TypeError) as exc:
            raise RolloutInvalid(f"unreadable rollout record: {exc}") from exc


def _unit(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and 0.0 <= value <= 1.0)


HASH_SPACE = float(2 ** 64)


def canary_point(bot: str, candidate: str, conversation_id: str) -> float:
    """Where a conversation falls in [0, 1) for a canary of `candidate` (a model version, or
    a bot version: services/common/botversions.py): stable across processes and hosts."""
    digest = hashlib.blake2b(f"{bot}\0{candidate}\0{conversation_id}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big") / HASH_SPACE


def rollout_key(bot: str) -> str:
    return f"{ROLLOUT_PREFIX}{active_key(bot)[len(ACTIVE_PREFIX):]}"


async def get_rollout(bus: Bus, bot: str) -> tuple[Rollout, int] | None:
    """The bot's rollout record and its KV revision (None when no rollout is under way)."""
    kv = await bus.kv(KV_BOTS)
    try:
        entry = await kv.get(rollout_key(bot))
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    return Rollout.from_bytes(entry.value), entry.revision or 0


async def start_rollout(bus: Bus, bot: str, rollout: Rollout) -> Rollout:
    """Start (or replace) the bot's rollout of `rollout.candidate` against its active version."""
    rollout.validate()
    await require_version(bus, ModelRef(bot, rollout.candidate))
    active = await active_version(bus, bot)
    if not active:
        raise RolloutConflict(f"bot {bot!r} has no active version to compare a candidate with")
    if active == rollout.candidate:
        raise RolloutInvalid(f"{rollout.candidate!r} is already the active version")
    record = replace(rollout, baseline=active, started_at_unix_ms=now_ms())
    kv = await bus.kv(KV_BOTS)
    await kv.put(rollout_key(bot), record.to_bytes())
    return record


async def abort_rollout(bus: Bus, bot: str, *, revision: int | None = None) -> Rollout | None:
    """End the bot's rollout without promoting it; the candidate stops serving. With
    `revision`, only if the record is still that revision (None when it is not). Raises
    RolloutConflict when there is no rollout."""
    current = await get_rollout(bus, bot)
    if current is None:
        raise RolloutConflict(f"bot {bot!r} has no rollout to abort")
    record, found = current
    if revision is not None and revision != found:
        return None
    return record if await delete_rollout(bus, bot, found) else None


async def delete_rollout(bus: Bus, bot: str, revision: int) -> bool:
    """Delete `rollout.<bot>` if it is still at `revision` (compare-and-set)."""
    kv = await bus.kv(KV_BOTS)
    try:
        await kv.delete(rollout_key(bot), last=revision)
    except APIError as exc:
        if exc.err_code in _WRONG_LAST_SEQUENCE:
            return False
        raise
    return True
