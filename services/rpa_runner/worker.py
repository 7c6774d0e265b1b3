"""Consumes jobs from the `RPA` work-queue stream (one durable consumer shared by every runner
process): up to `concurrency` runs at once, in-progress acks (and lease renewals) while a run
holds its job, then ack / nak-with-delay / dead-letter as the engine decides."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.common.logging import bind_correlation_id, get_logger
from services.common.nats import Bus
from services.common.pull import fetch_or_empty
from services.rpa_runner.engine import Delivery, Engine, Verdict
from services.rpa_runner.jobs import JOB_SUBJECTS, START, STREAM, JobError, Publisher, decode_job
from services.rpa_runner.metrics import RunnerMetrics

log = get_logger(__name__)
DURABLE = "rpa-runner"
MAX_ERRORS = 5  # a job whose handling raised this often is dead-lettered
FETCH_TIMEOUT_S = 2.0
BUSY_FETCH_TIMEOUT_S = 0.02


class RunnerWorker:
    def __init__(self, bus: Bus, engine: Engine, publisher: Publisher, metrics: RunnerMetrics,
                 *, concurrency: int, ack_wait_s: float, max_ack_pending: int = 100_000) -> None:
        self._bus = bus
        self._engine = engine
        self._publisher = publisher
        self._metrics = metrics
        self._concurrency = concurrency
        self._ack_wait = ack_wait_s
        self._max_ack_pending = max_ack_pending
        self._slots = asyncio.Semaphore(concurrency)
        self._busy: dict[asyncio.Task[None], Msg] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._errors: dict[int, int] = {}
        self._sub: Any = None

    async def start(self) -> None:
        config = ConsumerConfig(
            durable_name=DURABLE, filter_subject=JOB_SUBJECTS, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, ack_wait=self._ack_wait, max_deliver=-1,
            max_ack_pending=self._max_ack_pending, max_waiting=512)
        # create or update: the shared consumer takes the ack wait of the last runner started
        await self._bus.js.add_consumer(STREAM, config)
        self._sub = await self._bus.js.pull_subscribe(JOB_SUBJECTS, durable=DURABLE,
                                                      stream=STREAM, config=config)
        self._running = True
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._consume(self._sub)),
                       loop.create_task(self._heartbeat())]

    async def stop(self) -> None:
        """Stop fetching; let the runs in progress reach their next stop (ack or park)."""
        self._running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sub is not None:
            # a pull request cut short leaves replies nobody reads: a drain would wait on them
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
        if self._busy:
            await asyncio.gather(*self._busy, return_exceptions=True)

    async def _consume(self, sub: Any) -> None:
        """Idle: a long poll for one job (it returns as soon as one arrives). Busy: batches of
        what is there (a long poll for a batch would hold early jobs until it fills up)."""
        loop = asyncio.get_running_loop()
        idle = True
        while self._running:
            await self._slots.acquire()
            free = 1 + self._free_slots()
            try:
                if idle:
                    messages = await fetch_or_empty(sub, 1, FETCH_TIMEOUT_S)
                else:
                    messages = await fetch_or_empty(sub, min(free, 64), BUSY_FETCH_TIMEOUT_S)
            except (nats.errors.ConnectionClosedError, nats.errors.DrainTimeoutError):
                self._slots.release()
                return
            except Exception as exc:  # e.g. a status the server answered the pull with
                self._slots.release()
                log.warning("fetch_failed", error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            idle = not messages
            if idle:  # nothing within the fetch timeout
                self._slots.release()
                continue
            for index, msg in enumerate(messages):
                if index > 0:
                    await self._slots.acquire()
                task = loop.create_task(self._guarded(msg))
                self._busy[task] = msg
                task.add_done_callback(self._done)

    def _free_slots(self) -> int:
        return self._concurrency - len(self._busy) - 1

    def _done(self, task: asyncio.Task[None]) -> None:
        self._busy.pop(task, None)
        self._slots.release()

    async def _guarded(self, msg: Msg) -> None:
        # shielded: a stop request lets the run reach its next stop
        await asyncio.shield(self.handle(msg))

    async def handle(self, msg: Msg) -> None:
        try:
            job = decode_job(msg)
        except JobError as exc:
            await self._dead_letter(msg, str(exc))
            return
        bind_correlation_id(job.correlation_id or job.run_id)
        delivered = msg.metadata.num_delivered if msg.metadata else 1
        try:
            verdict = await self._engine.process(
                job, Delivery(first=job.kind == START and delivered == 1))
        except Exception as exc:
            log.exception("job_failed", run_id=job.run_id, attempt=delivered)
            await self._errored(msg, repr(exc))
            return
        await self._settle(msg, verdict)

    async def _settle(self, msg: Msg, verdict: Verdict) -> None:
        with contextlib.suppress(nats.errors.Error):
            if verdict.action == "ack":
                await msg.ack()
            elif verdict.action == "nak":
                await msg.nak(delay=max(verdict.delay, 0.001))
            elif verdict.action == "dead_letter":
                await self._dead_letter(msg, "run stopped after repeated runner crashes")

    async def _errored(self, msg: Msg, error: str) -> None:
        """An unexpected error: retried with back-off, dead-lettered after MAX_ERRORS here
        (a run's own resume count stops errors that follow it across runners)."""
        seq = msg.metadata.sequence.stream if msg.metadata and msg.metadata.sequence else 0
        if len(self._errors) > 10_000:
            self._errors.clear()
        count = self._errors[seq] = self._errors.get(seq, 0) + 1
        if count >= MAX_ERRORS:
            self._errors.pop(seq, None)
            await self._dead_letter(msg, error)
            return
        with contextlib.suppress(nats.errors.Error):
            await msg.nak(delay=min(0.2 * 2 ** count, 10.0))

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        self._metrics.dead_letters.inc()
        log.error("job_dead_lettered", subject=msg.subject, reason=reason[:300])
        await self._publisher.dead_letter(msg, reason)
        with contextlib.suppress(nats.errors.Error):
            await msg.ack()

    async def _heartbeat(self) -> None:
        """In-progress acks for held jobs; lease renewals for runs in long steps."""
        interval = max(0.2, self._ack_wait / 4)
        while self._running:
            await asyncio.sleep(interval)
            started = time.monotonic()
            for msg in list(self._busy.values()):
                with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                    await msg.in_progress()
            for held in list(self._engine.held.values()):
                try:
                    await self._engine.renew(held)
                except Exception as exc:  # the run's own checkpoint will tell
                    log.warning("lease_renewal_failed", run_id=held.state.run_id,
                                error=repr(exc))
            if time.monotonic() - started > interval:
                log.warning("heartbeat_slow", seconds=round(time.monotonic() - started, 3))
