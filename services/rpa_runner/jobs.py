"""What the runner reads from and writes to the bus: jobs (`rpa.jobs.<bot>`), results and
progress notices into the conversation, `notify` messages, approval events and dead letters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg

from services.common.botversions import BOT_VERSION_ID
from services.common.nats import Bus
from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.subjects import (
    HEADER_CORRELATION,
    HEADER_KIND,
    HEADER_MSG_ID,
    HEADER_RUN_ID,
    KIND_NOTIFY,
    KIND_WORKFLOW_PROGRESS,
    KIND_WORKFLOW_RESULT,
    check_id,
    inbound,
    scoped_id,
)
from services.rpa_runner.state import COMPENSATED, SUCCEEDED, RunState

JOB_SUBJECTS = "rpa.jobs.>"
STREAM = "RPA"
DEAD_LETTER_SUBJECT = "events.deadletter.rpa"
START = "start"
WAKE = "wake"


class JobError(ValueError):
    """A job message that cannot be read."""


@dataclass(frozen=True)
class Job:
    """A request to run (`start`) or to look at a run again (`wake`: approval, cancel,
    retry)."""

    run_id: str
    bot_id: str
    kind: str = START
    workflow: str = ""
    inputs: dict[str, Any] | None = None
    conversation_id: str = ""
    correlation_id: str = ""
    bot_version: str = ""  # the bot version whose workflows run ("": the deployed `def.<bot>`)


def job_subject(bot_id: str) -> str:
    return f"rpa.jobs.{bot_id}"


def decode_job(msg: Msg) -> Job:
    try:
        raw = json.loads(msg.data)
        if not isinstance(raw, dict):
            raise JobError("a job must be a JSON object")
        bot = check_id(str(raw.get("bot_id") or msg.subject.rsplit(".", 1)[-1]), "bot_id")
        run_id = check_id(str(raw["run_id"]), "run_id")
        kind = str(raw.get("kind", START))
        inputs = raw.get("inputs") or {}
        if kind not in (START, WAKE) or not isinstance(inputs, dict):
            raise JobError(f"bad job kind {kind!r} or inputs")
        if kind == START and not raw.get("workflow"):
            raise JobError("a job needs a workflow")
        version = str(raw.get("bot_version") or "")
        if version and not BOT_VERSION_ID.match(version):
            raise JobError(f"bad bot_version {version[:40]!r}")
        return Job(run_id, bot, kind, str(raw.get("workflow") or ""), inputs,
                   str(raw.get("conversation_id") or ""), str(raw.get("correlation_id") or ""),
                   version)
    except JobError:
        raise
    except Exception as exc:
        raise JobError(f"undecodable job: {exc}") from exc


def encode_job(job: Job) -> bytes:
    return json.dumps({"run_id": job.run_id, "kind": job.kind, "workflow": job.workflow,
                       "inputs": job.inputs or {}, "bot_id": job.bot_id,
                       "conversation_id": job.conversation_id,
                       "correlation_id": job.correlation_id,
                       "bot_version": job.bot_version}, default=str).encode()


def conversation_msg_id(state: RunState, message_id: str) -> str:
    """The `Nats-Msg-Id` of a message into the run's conversation: scoped by bot and
    conversation like every id of the conversation's stream (subjects.scoped_id)."""
    return scoped_id(state.bot, state.conversation, message_id)


def result_status(state: RunState) -> str:
    """The status the conversation sees: succeeded, compensated or failed."""
    if state.status in (SUCCEEDED, COMPENSATED):
        return state.status
    return "failed"


class Publisher:
    def __init__(self, bus: Bus, partitions: int) -> None:
        self.bus = bus
        self.partitions = partitions

    async def job(self, job: Job, msg_id: str) -> None:
        await self.bus.js.publish(job_subject(job.bot_id), encode_job(job),
                                  headers={HEADER_MSG_ID: msg_id})

    async def result(self, state: RunState) -> None:
        """The result into the conversation that started the run, else an event on
        `events.rpa.finished.<bot>` (also published for conversation runs' observers)."""
        body = {"run_id": state.run_id, "workflow": state.workflow,
                "status": result_status(state), "outputs": state.outputs,
                "error": state.error if state.status != SUCCEEDED else None,
                "message": state.message if state.status != SUCCEEDED else None}
        data = json.dumps(body, default=str).encode()
        headers = {HEADER_MSG_ID: f"wf-{state.run_id}"}
        if state.correlation:
            headers[HEADER_CORRELATION] = state.correlation
        if state.conversation:
            subject = inbound(state.bot, state.conversation, self.partitions)
            headers[HEADER_MSG_ID] = conversation_msg_id(state, headers[HEADER_MSG_ID])
            await self.bus.js.publish(subject, data,
                                      headers={**headers, HEADER_KIND: KIND_WORKFLOW_RESULT})
        else:
            await self.bus.js.publish(f"events.rpa.finished.{state.bot}", data, headers=headers)

    async def progress(self, state: RunState, elapsed_s: float) -> None:
        """Tell the conversation that waits for the run that it is still going (`Bf-Kind:
        workflow_progress`, on the conversation's inbound subject like the result)."""
        body = {"run_id": state.run_id, "workflow": state.workflow,
                "elapsed_s": round(elapsed_s, 3)}
        headers = {HEADER_KIND: KIND_WORKFLOW_PROGRESS,
                   HEADER_MSG_ID: conversation_msg_id(state, f"progress-{state.run_id}")}
        if state.correlation:
            headers[HEADER_CORRELATION] = state.correlation
        await self.bus.js.publish(inbound(state.bot, state.conversation, self.partitions),
                                  json.dumps(body).encode(), headers=headers)

    async def notify(self, state: RunState, step_key: str, text: str) -> None:
        message_id = f"notify-{state.run_id}-{step_key}".replace("#", "-")
        message = conversation_pb2.UserMessage(bot_id=state.bot,
                                               conversation_id=state.conversation,
                                               message_id=message_id, text=text, role="bot")
        headers = {HEADER_KIND: KIND_NOTIFY, HEADER_RUN_ID: state.run_id,
                   HEADER_MSG_ID: conversation_msg_id(state, message_id)}
        if state.correlation:
            headers[HEADER_CORRELATION] = state.correlation
        await self.bus.js.publish(inbound(state.bot, state.conversation, self.partitions),
                                  message.SerializeToString(), headers=headers)

    async def event(self, kind: str, state: RunState, msg_id: str, **data: Any) -> None:
        """An event on `events.rpa.<kind>.<bot>` (EVENTS stream), deduplicated by `msg_id`."""
        body = {"run_id": state.run_id, "root_run_id": state.root, "bot_id": state.bot,
                "workflow": state.workflow, "conversation_id": state.conversation, **data}
        await self.bus.js.publish(f"events.rpa.{kind}.{state.bot}",
                                  json.dumps(body, default=str).encode(),
                                  headers={HEADER_MSG_ID: msg_id})

    async def dead_letter(self, msg: Msg, reason: str) -> None:
        headers = {**(msg.headers or {}), "Bf-Original-Subject": msg.subject,
                   "Bf-Reason": reason[:500]}
        await self.bus.js.publish(DEAD_LETTER_SUBJECT, msg.data, headers=headers)

