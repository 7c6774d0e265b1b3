"""Trainings (ports.py) over the bus: KV `trainings`, the `TRAIN` queue and the deployed
definitions in KV `bots` (services/common/trainings.py; tests: tests/integration)."""

from __future__ import annotations

from nats.js.errors import KeyNotFoundError

from services.common import trainings
from services.common.definitions import DefinitionStore, definition_key
from services.common.errors import NotFound
from services.common.nats import KV_BOTS, Bus
from services.common.trainings import Options, Training, TrainingStore


class BusTrainings:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._store = TrainingStore(bus)

    async def start(self, bot: str, options: Options, files: dict[str, str] | None,
                    actor: str) -> Training:
        if files is not None:
            return await trainings.submit(self._bus, bot, files, options, requested_by=actor,
                                          source="request")
        deployed, revision = await self._deployed(bot)
        return await trainings.submit(self._bus, bot, deployed, options, requested_by=actor,
                                      source="deployed", revision=revision)

    async def _deployed(self, bot: str) -> tuple[dict[str, str], int]:
        kv = await self._bus.kv(KV_BOTS)
        try:
            entry = await kv.get(definition_key(bot))
        except KeyNotFoundError:
            entry = None
        if entry is None or not entry.value:
            raise NotFound(f"bot {bot!r} has no deployed definition to train: deploy it "
                           "(PUT /v1/admin/bots/{bot}/definition) or send its files")
        return DefinitionStore.decode(entry.value), int(entry.revision or 0)

    async def list(self, bot: str, limit: int) -> list[Training]:
        return await self._store.recent(bot, limit)

    async def get(self, bot: str, job_id: str) -> Training:
        return await self._store.get(bot, job_id)

    async def cancel(self, bot: str, job_id: str) -> Training:
        return await trainings.cancel(self._bus, bot, job_id)

    async def logs(self, bot: str, job_id: str) -> str:
        return await self._store.log(bot, job_id)
