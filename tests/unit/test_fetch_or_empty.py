"""fetch_or_empty: a pull fetch that found nothing is an empty list, however nats-py says so."""

from __future__ import annotations

import nats.errors
import pytest

from services.common.pull import fetch_or_empty


class Sub:
    def __init__(self, outcome: object) -> None:
        self.outcome = outcome
        self.asked: list[tuple[int, float]] = []

    async def fetch(self, batch: int, **options: float) -> list[object]:
        self.asked.append((batch, options["timeout"]))
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        assert isinstance(self.outcome, list)
        return self.outcome


@pytest.mark.parametrize("error", [
    nats.errors.TimeoutError(),
    TimeoutError(),  # asyncio's: what nats-py raises when its deadline runs out between requests
])
async def test_a_fetch_that_times_out_is_empty(error: BaseException) -> None:
    sub = Sub(error)
    assert await fetch_or_empty(sub, 256, 0.5) == []
    assert sub.asked == [(256, 0.5)]


async def test_messages_come_back_and_other_errors_pass_through() -> None:
    assert await fetch_or_empty(Sub(["m1", "m2"]), 2, 1.0) == ["m1", "m2"]
    with pytest.raises(nats.errors.ConnectionClosedError):
        await fetch_or_empty(Sub(nats.errors.ConnectionClosedError()), 1, 1.0)
