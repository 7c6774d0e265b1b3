"""Consumes the `TRAIN` work queue (durable consumer `trainer`, shared by every trainer): at
most `concurrency` jobs at once on this worker, taken in queue order; a job is fetched only when
a slot is free, so the others wait in the queue (status queued) for whichever trainer frees
one first. While a job runs its message is kept with in-progress acks.

A delivery whose record says running is the job of a trainer that died (JetStream handed it
out again): it is failed as lost once its heartbeat is stale, never run a second time. A
sweep (every `sweep_s`) fails every lost running job, whichever trainer held it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.common.logging import get_logger
from services.common.nats import Bus
from services.common.pull import fetch_or_empty, settle
from services.common.trainings import (
    FAILED,
    JOB_SUBJECTS,
    QUEUED,
    STREAM,
    Training,
    TrainingStore,
    now_ms,
    publish_event,
)
from services.trainer.config import TrainerConfig
from services.trainer.jobs import JobRun, sleep_or
from services.trainer.metrics import TrainerMetrics

log = get_logger(__name__)
DURABLE = "trainer"
FETCH_TIMEOUT_S = 2.0
MAX_ACK_PENDING = 1000


def decode_job(msg: Msg) -> tuple[str, str] | None:
    """(bot, job id) of a queue message; None when it is not one."""
    try:
        raw = json.loads(msg.data)
        return str(raw["bot"]), str(raw["job_id"])
    except (ValueError, KeyError, TypeError):
        return None


class TrainerWorker:
    def __init__(self, bus: Bus, config: TrainerConfig, worker: str,
                 metrics: TrainerMetrics) -> None:
        self._bus = bus
        self._config = config
        self._worker = worker
        self._metrics = metrics
        self._store = TrainingStore(bus)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._runs: dict[asyncio.Task[None], JobRun | None] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._sub: Any = None

    @property
    def runs(self) -> list[JobRun]:
        """The jobs this worker runs now."""
        return [run for run in self._runs.values() if run is not None]

    @property
    def running_jobs(self) -> list[str]:
        return [run.job_id for run in self.runs]

    async def start(self) -> None:
        config = ConsumerConfig(
            durable_name=DURABLE, filter_subject=JOB_SUBJECTS, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, ack_wait=self._config.ack_wait_s,
            max_deliver=-1, max_ack_pending=MAX_ACK_PENDING, max_waiting=512)
        await self._bus.js.add_consumer(STREAM, config)
        self._sub = await self._bus.js.pull_subscribe(JOB_SUBJECTS, durable=DURABLE,
                                                      stream=STREAM, config=config)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._consume()), loop.create_task(self._sweep())]

    async def stop(self) -> None:
        """Stop taking jobs; the running ones stop their training and go back to the queue
        (another trainer starts them over)."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for run in self._runs.values():
            if run is not None:
                run.shutting_down = True
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            await self._slots.acquire()
            try:
                messages = await fetch_or_empty(self._sub, 1, FETCH_TIMEOUT_S)
            except (nats.errors.ConnectionClosedError, nats.errors.DrainTimeoutError):
                self._slots.release()
                return
            except Exception as exc:  # a status the server answered the pull with
                self._slots.release()
                log.warning("fetch_failed", error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            if not messages:
                self._slots.release()
                continue
            task = loop.create_task(self._guarded(messages[0]))
            self._runs[task] = None
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._runs.pop(task, None)
        self._slots.release()

    async def _guarded(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except Exception:
            log.exception("training_job_error", subject=msg.subject)
            await settle(msg.nak(delay=5.0))

    async def handle(self, msg: Msg) -> None:
        job = decode_job(msg)
        if job is None:
            log.error("training_job_invalid", subject=msg.subject)
            await settle(msg.term())
            return
        found = await self._store.read(*job)
        if found is None or found[0].final:
            await settle(msg.ack())  # cancelled while queued, expired, or already ended
            return
        record = found[0]
        if record.status != QUEUED:
            await self._redelivered(msg, record)
            return
        await self._run(msg, record)

    async def _redelivered(self, msg: Msg, record: Training) -> None:
        """A running job handed out again: its trainer died (or lost its connection)."""
        if record.lost():
            await self._fail_lost(record)
            await settle(msg.ack())
            return
        # still heartbeating (maybe alive): look again once it would count as lost
        beat = record.heartbeat_at_ms or record.started_at_ms or now_ms()
        lost_in_s = (beat - now_ms()) / 1000 + record.lost_after_s
        await settle(msg.nak(delay=min(max(1.0, lost_in_s + 0.5), record.lost_after_s)))

    async def _fail_lost(self, record: Training) -> None:
        after = await self._store.mark_lost(record)
        if after.status == FAILED:
            self._metrics.finished.labels(status=FAILED).inc()
            log.warning("training_lost", bot=after.bot, job_id=after.job_id,
                        worker=record.worker)
            await publish_event(self._bus, after, FAILED, {"error": after.error})

    async def _run(self, msg: Msg, record: Training) -> None:
        run = JobRun(self._bus, self._store, self._config, self._worker, record,
                     lambda: msg.in_progress())
        current = asyncio.current_task()
        assert current is not None
        self._runs[current] = run
        if not await run.claim():
            await settle(msg.ack())
            return
        self._metrics.running.inc()
        try:
            await run.run()
        finally:
            self._metrics.running.dec()
        self._metrics.finished.labels(status=run.record.status).inc()
        if run.record.status == QUEUED:
            await settle(msg.nak())  # given back on shutdown: the next trainer takes it
        else:
            await settle(msg.ack())

    async def _sweep(self) -> None:
        while not await sleep_or(self._stopping, self._config.sweep_s):
            try:
                for record in await self._store.sweep():
                    self._metrics.finished.labels(status=FAILED).inc()
                    log.warning("training_lost", bot=record.bot, job_id=record.job_id)
                    await publish_event(self._bus, record, FAILED, {"error": record.error})
            except Exception as exc:  # the next sweep tries again
                log.warning("training_sweep_failed", error=repr(exc))
