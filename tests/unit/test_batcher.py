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


class Overlap(Recorder):
    """Records how many predictions ran at the same time."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> list[str]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return super().__call__(texts)
        finally:
            with self.lock:
                self.running -= 1


async def test_an_idle_batcher_runs_a_lone_request_at_once_off_the_loop(
        executor: ThreadPoolExecutor) -> None:
    predict = Recorder()
    batcher = MicroBatcher(predict, executor, max_batch_size=8, max_wait=1.0, max_in_flight=1)
    started = time.perf_counter()
    assert await batcher.submit(["alone"]) == ["ALONE"]
    assert time.perf_counter() - started < 0.5  # did not wait max_wait for company
    assert predict.batches == [["alone"]]
    assert threading.get_ident() not in predict.threads
    await batcher.close()


async def test_close_waits_for_a_request_its_caller_runs(executor: ThreadPoolExecutor) -> None:
    predict = Recorder(delay=0.05)
    batcher = MicroBatcher(predict, executor, max_batch_size=8, max_wait=0.0, max_in_flight=1)
    running = asyncio.ensure_future(batcher.submit(["slow"]))
    await asyncio.sleep(0.01)
    assert predict.batches == [["slow"]]  # it runs, not queued
    await batcher.close()
    assert running.done() and running.result() == ["SLOW"]


async def test_a_caller_that_gives_up_keeps_its_slot_until_its_inference_ends(
        executor: ThreadPoolExecutor) -> None:
    predict = Overlap(delay=0.1)
    batcher = MicroBatcher(predict, executor, max_batch_size=8, max_wait=0.0, max_in_flight=1)
    abandoned = asyncio.ensure_future(batcher.submit(["first"]))
    await asyncio.sleep(0.02)
    abandoned.cancel()
    await asyncio.sleep(0)
    assert await batcher.submit(["second"]) == ["SECOND"]
    assert predict.batches == [["first"], ["second"]]
    assert predict.most == 1  # the second did not run beside the first one's thread
    assert abandoned.cancelled()
    await batcher.close()


async def test_a_caller_run_that_cannot_start_frees_its_slot() -> None:
    executor = ThreadPoolExecutor(1)
    batcher = MicroBatcher(Recorder(), executor, max_batch_size=8, max_wait=0.0,
                           max_in_flight=1)
    executor.shutdown()
    with pytest.raises(RuntimeError):
        await batcher.submit(["late"])
    await asyncio.wait_for(batcher.close(), timeout=5)  # the slot came back: close ends
