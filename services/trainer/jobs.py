"""Running one training job: claim the record, train in a child process while heartbeating
and reporting progress, then publish the model version and record the outcome.

Outcomes (docs/training.md): exit 0 → the model is uploaded to object store `models` (and
activated when the job asks) → succeeded; a non-zero exit or a signal → failed with the
training's `error:` lines; a cancel request (the record's `cancel_requested`, seen at the next
heartbeat) → the child is stopped → cancelled; the trainer shutting down → the child is
stopped and the job goes back to queued (it starts over on a trainer: training is a pure
function of the job's input, and a model version is named by its content).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from services.common import modelstore
from services.common.definitions import write_folder
from services.common.logging import get_logger
from services.common.modelstore import ModelRef
from services.common.nats import Bus
from services.common.trainings import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Training,
    TrainingStore,
    now_ms,
    publish_event,
)
from services.trainer.child import Paths, TrainingProcess, failure_reason
from services.trainer.config import TrainerConfig

log = get_logger(__name__)
REPORT_TRAINING_FIELDS = ("epochs", "epochs_run", "best_epoch", "stopped_early", "n_train",
                          "n_heldout", "seconds_per_epoch", "duration_s", "seed")
REPORT_FIELDS = ("version", "kind", "created_at", "base_model", "metrics", "serving",
                 "calibration", "confidence_threshold", "checks")
MAX_HISTORY = 200


@dataclass
class Progress:
    """The record's `progress`: the stage, the last epoch's figures and every epoch so far."""

    stage: str = "starting"
    history: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)

    def apply(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Fold one event in; the epoch entry when it was an epoch."""
        if event.get("event") == "stage":
            self.stage = str(event.get("stage", self.stage))
            return None
        if event.get("event") != "epoch":
            return None
        entry = {k: v for k, v in event.items() if k != "event"}
        heldout = entry.get("heldout") or {}
        self.last = {"epoch": entry.get("epoch"), "epochs": entry.get("epochs"),
                     "train_loss": entry.get("train_loss"),
                     "heldout_loss": entry.get("heldout_loss"),
                     "intent_accuracy": heldout.get("intent_accuracy"),
                     "entity_f1": heldout.get("entity_micro_f1")}
        self.history = [*self.history, entry][-MAX_HISTORY:]
        return entry

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, **self.last, "history": self.history}


def report_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """What the job record keeps of the model's metadata.json (the whole file is in the
    model's archive in the object store, `object`)."""
    report = {name: metadata[name] for name in REPORT_FIELDS if name in metadata}
    training = metadata.get("training") or {}
    report["training"] = {name: training[name] for name in REPORT_TRAINING_FIELDS
                          if name in training}
    ref = ModelRef(str(metadata["bot"]), str(metadata["version"]))
    report["object"] = f"models/{modelstore.object_name(ref)}"
    return report


class JobRun:
    """One job on this trainer, from claim to outcome."""

    def __init__(self, bus: Bus, store: TrainingStore, config: TrainerConfig, worker: str,
                 record: Training, in_progress: Callable[[], Awaitable[None]]) -> None:
        self.bus = bus
        self.store = store
        self.config = config
        self.worker = worker
        self.record = record
        self.in_progress = in_progress
        self.paths = Paths(config.work_dir / record.job_id)
        self.progress = Progress()
        self.child: TrainingProcess | None = None
        self.shutting_down = False
        self._last_log = ""

    @property
    def bot(self) -> str:
        return self.record.bot

    @property
    def job_id(self) -> str:
        return self.record.job_id

    async def claim(self) -> bool:
        """queued → running on this worker; False when it is no longer queued."""
        def start(current: Training) -> Training | None:
            if current.status != QUEUED:
                return None
            return current.moved_to(RUNNING, worker=self.worker, cancel_requested=False,
                                    lost_after_s=self.config.lost_after_s,
                                    progress=self.progress.to_json())

        self.record = await self.store.update(self.bot, self.job_id, start)
        claimed = self.record.status == RUNNING and self.record.worker == self.worker
        if claimed:
            await publish_event(self.bus, self.record, RUNNING, {"worker": self.worker,
                                                                  "attempt": self.record.attempts})
        return claimed

    async def run(self) -> None:
        """Train and record the outcome (never raises for the job's own failures)."""
        log.info("training_started", bot=self.bot, job_id=self.job_id)
        try:
            outcome, changes = await self._train()
        except Exception as exc:  # the bus or the disk failed us: the job fails, said why
            log.exception("training_error", bot=self.bot, job_id=self.job_id)
            outcome, changes = FAILED, {"error": f"trainer error: {exc!r}"[:2000]}
        finally:
            if self.child is not None and self.child.process.returncode is None:
                await self.child.stop()
        await self._finish(outcome, changes)

    async def _train(self) -> tuple[str, dict[str, Any]]:
        files = await self.store.input_files(self.bot, self.job_id)
        shutil.rmtree(self.paths.root, ignore_errors=True)
        self.paths.root.mkdir(parents=True)
        write_folder(files, self.paths.bot_dir)
        command = [*self.config.command(), str(self.paths.bot_dir), "--out",
                   str(self.paths.model_dir), "--events", str(self.paths.events),
                   *self.record.options.train_args()]
        self.child = await TrainingProcess.start(command, self.paths,
                                                 stop_grace_s=self.config.stop_grace_s,
                                                 nice=self.config.nice)
        log.info("training_process", bot=self.bot, job_id=self.job_id, pid=self.child.pid)
        code = await self._supervise(self.child)
        if self.shutting_down:
            return QUEUED, {"error": None}
        if self.record.cancel_requested and self.child.stopped:
            return CANCELLED, {"error": "cancelled by request"}
        if not self._still_ours():
            return FAILED, {}
        if code != 0:
            return FAILED, {"error": failure_reason(code, self.child.log_tail(16 * 1024))}
        return SUCCEEDED, await self._publish()

    async def _supervise(self, child: TrainingProcess) -> int:
        """Heartbeat until the child ends; stop it on a cancel request, on shutdown, or when
        the record is no longer this worker's running job."""
        while True:
            code = await child.wait(self.config.heartbeat_s)
            await self._beat(child)
            if code is not None:
                return code
            if self.shutting_down or self.record.cancel_requested or not self._still_ours():
                return await child.stop()

    def _still_ours(self) -> bool:
        return self.record.status == RUNNING and self.record.worker == self.worker

    async def _beat(self, child: TrainingProcess) -> None:
        epochs = [entry for event in child.new_events()
                  if (entry := self.progress.apply(event)) is not None]
        progress = self.progress.to_json()

        def beat(current: Training) -> Training | None:
            if current.status != RUNNING or current.worker != self.worker:
                return None
            return replace(current, heartbeat_at_ms=now_ms(), progress=progress)

        try:
            self.record = await self.store.update(self.bot, self.job_id, beat)
            with contextlib.suppress(Exception):
                await self.in_progress()
            for entry in epochs:
                await publish_event(self.bus, self.record, "epoch", entry)
            await self._save_log(child)
        except Exception as exc:  # a bus outage: train on; a long one makes the job lost
            log.warning("training_heartbeat_failed", bot=self.bot, job_id=self.job_id,
                        error=repr(exc))

    async def _save_log(self, child: TrainingProcess) -> None:
        tail = child.log_tail(self.config.log_tail_bytes)
        if tail != self._last_log:
            await self.store.put_log(self.bot, self.job_id, tail)
            self._last_log = tail

    async def _publish(self) -> dict[str, Any]:
        metadata = json.loads((self.paths.model_dir / "metadata.json").read_text("utf-8"))
        ref = await modelstore.upload(self.bus, self.paths.model_dir)
        activated = False
        if self.record.options.activate:
            await modelstore.activate(self.bus, ref, actor=f"training {self.job_id}")
            activated = True
        self.progress.stage = "published"
        return {"model_version": ref.version, "activated": activated,
                "report": report_of(metadata), "progress": self.progress.to_json()}

    async def _finish(self, outcome: str, changes: dict[str, Any]) -> None:
        if self.child is not None:
            with contextlib.suppress(Exception):
                await self._save_log(self.child)

        def end(current: Training) -> Training | None:
            if current.status != RUNNING or current.worker != self.worker:
                return None  # failed as lost meanwhile: that stands
            return current.moved_to(outcome, **changes)

        self.record = await self.store.update(self.bot, self.job_id, end)
        log.info("training_ended", bot=self.bot, job_id=self.job_id, status=self.record.status,
                 model_version=self.record.model_version, error=self.record.error)
        extra = {"model_version": self.record.model_version, "error": self.record.error}
        await publish_event(self.bus, self.record, self.record.status, extra)
        shutil.rmtree(self.paths.root, ignore_errors=True)


async def sleep_or(event: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` unless `event` is set first; whether it was set."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True
