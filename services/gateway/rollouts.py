"""ModelRollouts (ports.py) over the model registry on the bus, and in process memory (tests)."""

from __future__ import annotations

import time
from dataclasses import replace

from services.common import modelstore
from services.common.modelstore import (
    Activation,
    ModelRef,
    ModelVersionNotFound,
    Rollout,
    RolloutConflict,
    RolloutInvalid,
    VersionInfo,
)
from services.common.nats import Bus


class BusModelRollouts:
    """Object store `models` + KV `bots` (services/common/modelstore.py)."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def versions(self, bot: str) -> list[VersionInfo]:
        return await modelstore.list_versions(self._bus, bot)

    async def active(self, bot: str) -> str | None:
        return await modelstore.active_version(self._bus, bot)

    async def history(self, bot: str) -> list[Activation]:
        return await modelstore.history(self._bus, bot)

    async def rollout(self, bot: str) -> Rollout | None:
        found = await modelstore.get_rollout(self._bus, bot)
        return found[0] if found is not None else None

    async def activate(self, bot: str, version: str, actor: str) -> Activation:
        return await modelstore.activate(self._bus, ModelRef(bot, version), actor=actor)

    async def rollback(self, bot: str, actor: str) -> Activation:
        return await modelstore.rollback(self._bus, bot, actor=actor)

    async def start_rollout(self, bot: str, rollout: Rollout) -> Rollout:
        return await modelstore.start_rollout(self._bus, bot, rollout)

    async def promote(self, bot: str, actor: str) -> Activation:
        return await modelstore.promote(self._bus, bot, actor=actor)

    async def abort(self, bot: str) -> Rollout:
        record = await modelstore.abort_rollout(self._bus, bot)
        if record is None:
            raise RolloutConflict(f"the rollout of {bot!r} changed meanwhile; read it and retry")
        return record


class MemoryModelRollouts:
    """ModelRollouts in process memory (tests): every bot has the versions given."""

    def __init__(self, versions: tuple[str, ...] = ("v1", "v2")) -> None:
        self._versions = versions
        self._history: dict[str, list[Activation]] = {}
        self._rollouts: dict[str, Rollout] = {}

    async def versions(self, bot: str) -> list[VersionInfo]:
        return [VersionInfo(v, 1, "", "", "nlu", {}) for v in self._versions]

    async def active(self, bot: str) -> str | None:
        entries = self._history.get(bot)
        return entries[-1].version if entries else None

    async def history(self, bot: str) -> list[Activation]:
        return list(self._history.get(bot, []))

    async def rollout(self, bot: str) -> Rollout | None:
        return self._rollouts.get(bot)

    async def activate(self, bot: str, version: str, actor: str,
                       reason: str = "activate") -> Activation:
        if version not in self._versions:
            raise ModelVersionNotFound(f"bot {bot!r} has no model version {version!r}")
        record = Activation(version, await self.active(bot) or "", actor, reason,
                            int(time.time() * 1000))
        self._history.setdefault(bot, []).append(record)
        if bot in self._rollouts and self._rollouts[bot].candidate == version:
            del self._rollouts[bot]
        return record

    async def rollback(self, bot: str, actor: str) -> Activation:
        entries = self._history.get(bot, [])
        if not entries or not entries[-1].previous:
            raise RolloutConflict(f"bot {bot!r} has no earlier active version to roll back to")
        return await self.activate(bot, entries[-1].previous, actor, "rollback")

    async def start_rollout(self, bot: str, rollout: Rollout) -> Rollout:
        rollout.validate()
        if rollout.candidate not in self._versions:
            raise ModelVersionNotFound(f"bot {bot!r} has no model version {rollout.candidate!r}")
        active = await self.active(bot)
        if active is None:
            raise RolloutConflict(f"bot {bot!r} has no active version")
        if active == rollout.candidate:
            raise RolloutInvalid(f"{rollout.candidate!r} is already the active version")
        self._rollouts[bot] = replace(rollout, baseline=active,
                                      started_at_unix_ms=int(time.time() * 1000))
        return self._rollouts[bot]

    async def promote(self, bot: str, actor: str) -> Activation:
        if bot not in self._rollouts:
            raise RolloutConflict(f"bot {bot!r} has no rollout to promote")
        return await self.activate(bot, self._rollouts[bot].candidate, actor, "promote")

    async def abort(self, bot: str) -> Rollout:
        if bot not in self._rollouts:
            raise RolloutConflict(f"bot {bot!r} has no rollout to abort")
        return self._rollouts.pop(bot)
