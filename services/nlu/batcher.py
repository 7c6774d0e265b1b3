"""Micro-batching: concurrent requests for one model are coalesced into one inference call.

A batch is formed when an inference slot is free: it takes the queued requests, up to
`max_batch_size` texts, waiting at most `max_wait` seconds for more. While every slot is busy,
requests queue up, so batches grow with load and an idle server answers at once (the caller
of an idle batcher runs its texts itself, without the queue). Inference
runs in a thread pool (onnxruntime releases the GIL), so the event loop never blocks; up to
`max_in_flight` batches run at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
_EMPTY = object()


class BatcherClosed(Exception):
    """The batcher no longer accepts work (its model was replaced or the server stops)."""


@dataclass
class _Request(Generic[T]):
    texts: Sequence[str]
    future: asyncio.Future[list[T]] = field(repr=False)


class MicroBatcher(Generic[T]):
    def __init__(self, predict: Callable[[Sequence[str]], list[T]], executor: Executor, *,
                 max_batch_size: int, max_wait: float, max_in_flight: int,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self._predict = predict
        self._executor = executor
        self._max_batch_size = max_batch_size
        self._max_wait = max_wait
        self._max_in_flight = max_in_flight
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queue: asyncio.Queue[_Request[T] | None] = asyncio.Queue()
        self._on_batch = on_batch
        self._closed = False
        self._running: set[asyncio.Task[None]] = set()
        self._collecting = False
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, texts: Sequence[str]) -> list[T]:
        """Predictions for `texts`, in order (batched with other callers' texts)."""
        if self._closed:
            raise BatcherClosed("model is being replaced")
        if not texts:
            return []
        if self._queue.empty() and not self._collecting and not self._slots.locked():
            return await self._run_now(texts)
        future: asyncio.Future[list[T]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(texts, future))
        return await future

    async def close(self) -> None:
        """Stop accepting; finish everything already submitted."""
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)
        await self._loop_task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        for _ in range(self._max_in_flight):  # and the batches run by their callers
            await self._slots.acquire()

    async def _run(self) -> None:
        pending: _Request[T] | None = None
        while True:
            first = pending or await self._queue.get()
            pending = None
            if first is None:
                return
            # Wait for a free inference thread first: while all are busy, requests pile up and
            # the next batch takes them all, so batches grow with load at no cost when idle.
            await self._slots.acquire()
            self._collecting = True
            try:
                batch, pending, stop = await self._collect(first)
            finally:
                self._collecting = False
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            if stop:
                return

    async def _collect(
        self, first: _Request[T],
    ) -> tuple[list[_Request[T]], _Request[T] | None, bool]:
        """Gather requests after `first` until the batch is full or the wait is over.

        Returns the batch, a request that did not fit (starts the next batch) and whether the
        close marker was seen."""
        batch, size = [first], len(first.texts)
        deadline = asyncio.get_running_loop().time() + self._max_wait
        while size < self._max_batch_size:
            item = await self._next(deadline - asyncio.get_running_loop().time())
            if item is _EMPTY:
                break
            if item is None:
                return batch, None, True
            assert isinstance(item, _Request)
            if size + len(item.texts) > self._max_batch_size:
                return batch, item, False
            assert isinstance(item, _Request)
            batch.append(item)
            size += len(item.texts)
        return batch, None, False

    async def _next(self, wait: float) -> _Request[T] | object | None:
        """The next queued item, or `_EMPTY` when none arrives within `wait` seconds.

        Never loses an item: a get that completes while being timed out is kept."""
        if wait <= 0 or not self._queue.empty():
            try:
                return self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return _EMPTY
        getter = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait({getter}, timeout=wait)
        if getter not in done:
            getter.cancel()
            try:
                return await getter
            except asyncio.CancelledError:
                return _EMPTY
        return getter.result()

    async def _run_now(self, texts: Sequence[str]) -> list[T]:
        """An idle batcher's path: a free slot and nothing queued, so the caller's texts are
        the whole batch and run at once, in the caller's task (no queue hop)."""
        await self._slots.acquire()  # a slot is free: returns without suspending
        job: Future[list[T]] | None = None
        try:
            if self._on_batch is not None:
                self._on_batch(len(texts))
            job = self._executor.submit(self._predict, texts)  # RuntimeError once shut down
            return await asyncio.wrap_future(job)
        finally:
            if job is None or job.done():
                self._slots.release()
            else:  # the caller gave up while its batch runs: free the slot when it ends
                loop = asyncio.get_running_loop()
                job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._slots.release))

    async def _execute(self, batch: list[_Request[T]]) -> None:
        texts = [text for request in batch for text in request.texts]
        try:
            if self._on_batch is not None:
                self._on_batch(len(texts))
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._executor, self._predict, texts)
        except Exception as exc:  # delivered to every waiting caller
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        finally:
            self._slots.release()
        offset = 0
        for request in batch:
            count = len(request.texts)
            if not request.future.done():
                request.future.set_result(results[offset:offset + count])
            offset += count

