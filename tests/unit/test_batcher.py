from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.nlu.batcher import BatcherClosed, MicroBatcher


class Recorder:
    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[int] = set()
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, texts: Sequence[str]) -> list[str]:
        self.batches.append(list(texts))
        self.threads.add(threading.get_ident())
        if self.fail_on in texts:
            raise RuntimeError("model exploded")
        time.sleep(self.delay)
        return [t.upper() for t in texts]


@pytest.fixture
def executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(2)


async def test_concurrent_requests_are_coalesced_and_answered_in_order(
        executor: ThreadPoolExecutor) -> None:
    predict = Recorder()
    batcher = MicroBatcher(predict, executor, max_batch_size=64, max_wait=0.05, max_in_flight=1)
    texts = [f"t{i}" for i in range(20)]
    results = await asyncio.gather(*(batcher.submit([t]) for t in texts))
    assert results == [[t.upper()] for t in texts]
    assert len(predict.batches) < 5
    assert threading.get_ident() not in predict.threads  # inference off the event loop
    await batcher.close()


async def test_batches_never_exceed_the_maximum(executor: ThreadPoolExecutor) -> None:
    predict = Recorder()
    batcher = MicroBatcher(predict, executor, max_batch_size=4, max_wait=0.05, max_in_flight=2)
    results = await asyncio.gather(*(batcher.submit([f"{i}a", f"{i}b"]) for i in range(10)))
    assert results == [[f"{i}A", f"{i}B"] for i in range(10)]
    assert max(len(b) for b in predict.batches) <= 4
    assert sum(len(b) for b in predict.batches) == 20
    await batcher.close()


async def test_failure_reaches_only_callers_of_that_batch(executor: ThreadPoolExecutor) -> None:
    predict = Recorder(fail_on="boom")
    batcher = MicroBatcher(predict, executor, max_batch_size=1, max_wait=0.0, max_in_flight=1)
    bad = batcher.submit(["boom"])
    good = batcher.submit(["fine"])
    results = await asyncio.gather(bad, good, return_exceptions=True)
    assert isinstance(results[0], RuntimeError) and results[1] == ["FINE"]
    await batcher.close()


async def test_close_finishes_queued_work_then_refuses(executor: ThreadPoolExecutor) -> None:
    predict = Recorder(delay=0.02)
    batcher = MicroBatcher(predict, executor, max_batch_size=2, max_wait=0.0, max_in_flight=1)
    pending = [asyncio.ensure_future(batcher.submit([f"x{i}"])) for i in range(6)]
    await asyncio.sleep(0)
    await batcher.close()
    assert [p.result() for p in pending] == [[f"X{i}"] for i in range(6)]
    with pytest.raises(BatcherClosed):
        await batcher.submit(["late"])


async def test_empty_submission_returns_immediately(executor: ThreadPoolExecutor) -> None:
    predict = Recorder()
    batcher = MicroBatcher(predict, executor, max_batch_size=8, max_wait=1.0, max_in_flight=1)
    assert await batcher.submit([]) == []
    assert predict.batches == []
    await batcher.close()
