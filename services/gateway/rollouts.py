"""ModelRollouts (ports.py) over the model registry on the bus (tests: tests/support)."""

from __future__ import annotations

from services.common import modelstore
from services.common.modelstore import (
    Activation,
    ModelRef,
    Rollout,
    RolloutConflict,
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
