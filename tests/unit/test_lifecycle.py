"""services/common/lifecycle.Components: a service's parts stop in the reverse order of their
start, once, also when the start failed half-way."""

from __future__ import annotations

import pytest

from services.common.lifecycle import Components


class Part:
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    async def start(self) -> None:
        if self.fail:
            raise ConnectionError(f"{self.name} cannot start")
        self.log.append(f"start {self.name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")


async def test_parts_stop_last_first_and_once() -> None:
    log: list[str] = []
    parts = Components()
    parts.on_stop_sync(lambda: log.append("stop metrics"))
    first = await parts.start(Part("bus", log))
    assert first.name == "bus"
    await parts.start(Part("worker", log))
    await parts.stop()
    await parts.stop()
    assert log == ["start bus", "start worker", "stop worker", "stop bus", "stop metrics"]


async def test_a_failed_start_stops_what_had_started() -> None:
    log: list[str] = []
    parts = Components()
    await parts.start(Part("bus", log))
    with pytest.raises(ConnectionError):
        await parts.start(Part("worker", log, fail=True))
    await parts.stop()
    assert log == ["start bus", "stop bus"]


async def test_every_part_stops_even_when_one_fails_to() -> None:
    log: list[str] = []
    parts = Components()
    await parts.start(Part("bus", log))

    async def broken() -> None:
        raise RuntimeError("stuck")

    parts.on_stop(broken)
    with pytest.raises(RuntimeError, match="stuck"):
        await parts.stop()
    assert log == ["start bus", "stop bus"]
