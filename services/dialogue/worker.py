"""Consumes inbound conversation messages, one partition consumer at a time per message.

For each message: load the tracker (KV), call NLU, advance the engine (running at once the
knowledge-base searches it asks for: services/dialogue/knowledge.py), write the tracker back
with compare-and-set (the record carries the turn's outbox), publish the replies (to the
waiting gateway's inbox and to `conv.out`), events and workflow jobs, and only then ack.

Messages come through `ContinuousPull` (one long-lived pull request per partition, not one
per message). Privacy (docs/security.md): `conv.in` is the work-queue stream CONV_IN, so a
handled message leaves the store when it is acked (the transcript's user side is the
`user_message` event), and unless the bot turns it off (`privacy: {redact_pii: false}`) the
events' strings are stored with PII masked; the replies and events of such a bot carry
`Bf-Pii: keep` so that readers leave them as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.common.events import encode_events
from services.common.logging import bind_correlation_id, get_logger
from services.common.nats import KV_HANDOFFS, STREAM_CONV_IN, Bus
from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.pii import redact, redact_value
from services.common.pull import ContinuousPull, open_pull
from services.common.subjects import (
    HEADER_CORRELATION,
    HEADER_KIND,
    HEADER_MSG_ID,
    HEADER_PII,
    HEADER_REPLY_INBOX,
    HEADER_RUN_ID,
    KIND_AGENT,
    KIND_EVENTS,
    KIND_MESSAGE,
    KIND_NOTIFY,
    KIND_RELAYED_USER,
    KIND_RELEASE,
    KIND_TURN,
    KIND_WORKFLOW_PROGRESS,
    KIND_WORKFLOW_RESULT,
    PII_KEEP,
    events,
    inbound_filter,
    outbound,
    parse_inbound,
    scoped_id,
    tracker_key,
    unscoped_id,
)
from services.dialogue.bots import BotRegistry
from services.dialogue.engine import (
    DialogueEngine,
    Knowledge,
    KnowledgeQuery,
    NluResult,
    Reply,
    Tracker,
    TurnResult,
    WorkflowResult,
)
from services.dialogue.knowledge import Hits, KnowledgeSearcher, complete
from services.dialogue.metrics import DialogueMetrics
from services.dialogue.nlu_client import NluClient, NluUnavailable
from services.dialogue.store import (
    ConcurrentUpdate,
    Origin,
    Outgoing,
    RecentRecords,
    Record,
    TrackerStore,
)
from services.dialogue.versions import Serving, VersionedBots, WrongEnvironment

log = get_logger(__name__)
MAX_ATTEMPTS_BEFORE_DEAD_LETTER = 5
CAS_RETRIES = 5
UNKNOWN_BOT_TEXT = "Sorry, this assistant is not available right now."
WRONG_ENVIRONMENT_TEXT = "Sorry, this conversation belongs to another environment of this bot."
BROKEN_TEXT = "Sorry, something went wrong on our side. Your message was kept; please try again."
# Event fields that are identifiers, never redacted (a digit-only id would read as a phone).
EVENT_IDS = frozenset({"message_id", "run_id", "in_reply_to"})
# The subject of an Outgoing that goes only to the waiting gateway's reply inbox (the turn's
# TurnSummary), never to JetStream.
INBOX_ONLY = ""


@dataclass(frozen=True)
class Inbound:
    bot_id: str
    conversation_id: str
    kind: str
    message_id: str
    correlation_id: str
    reply_inbox: str | None
    user: conversation_pb2.UserMessage | None
    workflow: WorkflowResult | None
    progress_run_id: str = ""  # a `workflow_progress` notice: the run that is taking long
    notify_run_id: str = ""  # a `notify` message: the run that sent it (header Bf-Run-Id)
    environment: str = ""  # the sender's key's environment (UserMessage; "": the default)

    @property
    def run_id(self) -> str:
        """The workflow run whose result, progress notice or notify message this is ("" for
        a user or agent message)."""
        if self.workflow is not None:
            return self.workflow.run_id
        return self.progress_run_id or self.notify_run_id

    def origin(self, record: Record) -> Origin:
        """Whom the turn's replies answer and where the waiting gateway is: the user (or
        agent) message itself; for a workflow's result, progress notice or notify message, the
        message whose turn started the run (unknown run, e.g. started before origins were
        recorded: none)."""
        if self.run_id:
            return record.origin(self.run_id) or Origin("")
        answered = self.message_id if self.kind in (KIND_MESSAGE, KIND_AGENT) else ""
        return Origin(answered, self.reply_inbox or "")


def workflow_result(raw: dict[str, Any], bot_id: str, conversation_id: str) -> WorkflowResult:
    """A run's result body (docs/workflows.md); a failure's details are logged here (the
    customer hears only the author's message: WorkflowResult.message)."""
    result = WorkflowResult(run_id=raw["run_id"], workflow=raw["workflow"],
                            status=raw["status"], outputs=raw.get("outputs", {}),
                            error=raw.get("error"), message=raw.get("message") or "")
    if result.status != "succeeded":
        log.warning("workflow_failed", bot=bot_id, conversation=conversation_id,
                    run_id=result.run_id, workflow=result.workflow, status=result.status,
                    error=result.error)
    return result


def decode(msg: Msg) -> Inbound:
    bot_id, conversation_id = parse_inbound(msg.subject)
    headers = msg.headers or {}
    kind = headers.get(HEADER_KIND, KIND_MESSAGE)
    user, workflow, progress = None, None, ""
    if kind == KIND_WORKFLOW_PROGRESS:
        progress = str(json.loads(msg.data)["run_id"])
        message_id = f"progress-{progress}"
    elif kind == KIND_WORKFLOW_RESULT:
        workflow = workflow_result(json.loads(msg.data), bot_id, conversation_id)
        message_id = f"wf-{workflow.run_id}"
    else:
        user = conversation_pb2.UserMessage.FromString(msg.data)
        message_id = user.message_id or unscoped_id(headers.get(HEADER_MSG_ID, ""))
    notify_run = headers.get(HEADER_RUN_ID, "") if kind == KIND_NOTIFY else ""
    return Inbound(bot_id, conversation_id, kind, message_id,
                   headers.get(HEADER_CORRELATION, ""), headers.get(HEADER_REPLY_INBOX), user,
                   workflow, progress, notify_run, user.environment if user is not None else "")


class DialogueWorker:
    def __init__(self, bus: Bus, registry: BotRegistry, nlu: NluClient, store: TrackerStore,
                 metrics: DialogueMetrics, *, partitions: int, ack_wait_s: float,
                 session_idle_s: float, tracker_memory: int = 0,
                 versions: VersionedBots | None = None) -> None:
        self._bus = bus
        self._registry = registry
        self._versions = versions
        self._nlu = nlu
        self._knowledge = KnowledgeSearcher(nlu, metrics)
        self._store = store
        self._recent = RecentRecords(tracker_memory)
        self._metrics = metrics
        self._partitions = partitions
        self._ack_wait = ack_wait_s
        self._idle = session_idle_s
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[ContinuousPull] = []
        self._running = False
        self._busy: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._running = True
        for part in range(self._partitions):
            sub = await self._subscribe(part)
            self._subs.append(sub)
            self._tasks.append(asyncio.get_running_loop().create_task(self._consume(sub)))

    async def _subscribe(self, part: int) -> ContinuousPull:
        durable = f"dialogue-p{part}"
        config = ConsumerConfig(
            durable_name=durable, filter_subject=inbound_filter(part),
            ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=1, ack_wait=self._ack_wait, max_waiting=512,
        )
        return await open_pull(self._bus, STREAM_CONV_IN, config)

    async def stop(self) -> None:
        """Stop fetching, let the messages being handled finish (they are acked)."""
        self._running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._busy:
            await asyncio.gather(*self._busy, return_exceptions=True)
        for sub in self._subs:  # pending pull requests would hold up the drain
            with contextlib.suppress(Exception):
                await sub.stop()

    async def _consume(self, sub: ContinuousPull) -> None:
        while self._running:
            try:
                msg = await sub.next()
            except (nats.errors.ConnectionClosedError, nats.errors.DrainTimeoutError):
                return
            # shielded: a stop request lets the message finish and be acked
            task = asyncio.get_running_loop().create_task(self.handle(msg))
            self._busy.add(task)
            task.add_done_callback(self._busy.discard)
            await asyncio.shield(task)

    async def handle(self, msg: Msg) -> None:
        started = time.perf_counter()
        part = self._received(msg)
        try:
            inbound = decode(msg)
        except Exception as exc:  # undecodable: keep it in the dead-letter subject, move on
            await self._dead_letter(msg, f"undecodable: {exc}")
            return
        bind_correlation_id(inbound.correlation_id or inbound.message_id)
        outcome = "ok"
        try:
            outcome = await self._process(inbound, part)
            await msg.ack()
        except Exception as exc:
            outcome = "error"
            self._recent.forget_partition(part)
            await self._failed(msg, inbound, exc)
        finally:
            seconds = time.perf_counter() - started
            self._metrics.messages.labels(bot=inbound.bot_id, kind=inbound.kind,
                                          outcome=outcome).inc()
            self._metrics.latency.observe(seconds)
            log.info("turn", bot=inbound.bot_id, conversation=inbound.conversation_id,
                     kind=inbound.kind, message_id=inbound.message_id, outcome=outcome,
                     duration_ms=round(seconds * 1000, 1))

    def _received(self, msg: Msg) -> int:
        """The message's partition, its delivery noted for the tracker memory (-1: unknown)."""
        try:
            part = int(msg.subject.split(".")[2])
            meta = msg.metadata
        except (ValueError, IndexError, nats.errors.NotJSMessageError):
            return -1
        self._recent.receive(part, meta.sequence.consumer, meta.num_delivered)
        return part

    async def _load(self, key: str, part: int, first_try: bool) -> Record | None:
        """The conversation's record: from memory on a first try when still current (no retry
        after a conflict: that reads KV), else from KV."""
        record = self._recent.get(part, key) if first_try else None
        self._metrics.tracker_reads.labels(source="kv" if record is None else "memory").inc()
        return record or await self._store.load(key)

    async def _process(self, inbound: Inbound, part: int) -> str:
        key = tracker_key(inbound.bot_id, inbound.conversation_id)
        found: dict[str, Hits] = {}  # knowledge-base searches of this message
        understood: dict[str, NluResult | None] = {}  # its parse, by model version
        for attempt in range(CAS_RETRIES):
            loaded = await self._load(key, part, attempt == 0)
            record = loaded or Record(
                Tracker.new(inbound.bot_id, inbound.conversation_id, time.time()), None)
            origin = inbound.origin(record)
            if record.seen(inbound.message_id):
                if record.outbox_for == inbound.message_id:
                    await self._publish(record.outbox, origin.reply_inbox)
                return "duplicate"
            try:
                serving = await self._serving(inbound, loaded)
            except WrongEnvironment:
                await self._reply_unavailable(inbound, WRONG_ENVIRONMENT_TEXT)
                return "wrong_environment"
            if serving is None:
                await self._reply_unavailable(inbound)
                return "unknown_bot"
            engine = serving.engine
            if serving.model not in understood:
                understood[serving.model] = await self._understand(inbound, serving.model)
            nlu = understood[serving.model]
            result = await self._searching_turn(engine, record.tracker, inbound, nlu, found,
                                                serving.kb)
            outbox = self._outgoing(inbound, result, nlu, origin, engine,
                                    relay=record.tracker.handed_off and result.tracker.handed_off,
                                    bot_version=serving.version)
            written = record.after_turn(result.tracker, inbound.message_id, outbox,
                                        {job.run_id: origin for job in result.workflows})
            if serving.version:
                written = dataclasses.replace(written, version=serving.version,
                                              environment=serving.environment)
            try:
                revision = await self._store.save(key, written)
            except ConcurrentUpdate:
                self._metrics.cas_conflicts.inc()
                continue
            self._recent.put(part, key, dataclasses.replace(written, revision=revision))
            await self._side_effects(inbound, record.tracker, result.tracker)
            await self._publish(outbox, origin.reply_inbox)
            return "ok"
        raise ConcurrentUpdate(key)

    async def _serving(self, inbound: Inbound, record: Record | None) -> Serving | None:
        """What runs the turn: the conversation's pinned bot version while its session lasts,
        else its environment's version (docs/versions.md), else the deployed definition."""
        if self._versions is None:
            engine = self._registry.get(inbound.bot_id)
            return Serving(engine) if engine is not None else None
        pinned = None
        if record is not None and record.version and \
                time.time() - record.tracker.last_active <= self._idle:
            pinned = (record.version, record.environment)
        sender_env = inbound.environment if inbound.kind == KIND_MESSAGE else None
        return await self._versions.serving(inbound.bot_id, inbound.conversation_id,
                                            sender_env, pinned)

    async def _understand(self, inbound: Inbound, model_version: str = "") -> NluResult | None:
        if inbound.kind != KIND_MESSAGE or inbound.user is None:
            return None
        if inbound.user.text.startswith("/"):
            return None  # a button payload names its intent: no NLU needed
        try:
            return await self._nlu.parse(inbound.bot_id, inbound.user.text,
                                         inbound.correlation_id, inbound.conversation_id,
                                         model_version)
        except NluUnavailable as exc:
            self._metrics.nlu_failures.inc()
            log.warning("nlu_unavailable", error=str(exc))
            return None

    async def _searching_turn(self, engine: DialogueEngine, tracker: Tracker,
                              inbound: Inbound, nlu: NluResult | None,
                              found: dict[str, Hits], kb_version: str = "") -> TurnResult:
        """The turn, with the knowledge-base searches it needs run on the way (knowledge.py),
        in `kb_version` of the bot's index (the conversation's bot version's; "": the active
        one)."""
        async def search(query: KnowledgeQuery) -> Hits:
            return await self._knowledge.search(inbound.bot_id, query, inbound.correlation_id,
                                                kb_version)

        return await complete(
            lambda knowledge: self._turn(engine, tracker, inbound, nlu, knowledge), search, found)

    def _turn(self, engine: DialogueEngine, tracker: Tracker, inbound: Inbound,
              nlu: NluResult | None, knowledge: Knowledge) -> TurnResult:
        now = time.time()
        if engine.expired(tracker, now, self._idle):
            tracker = engine.new_session(tracker, now)
        if inbound.workflow is not None:
            return engine.handle_workflow_result(tracker, inbound.workflow, now,
                                                 knowledge=knowledge)
        if inbound.kind == KIND_WORKFLOW_PROGRESS:
            return engine.handle_workflow_progress(tracker, inbound.progress_run_id, now)
        assert inbound.user is not None
        text = inbound.user.text
        if inbound.kind == KIND_RELEASE:
            return engine.release_handoff(tracker, now)
        if inbound.kind == KIND_AGENT:
            return engine.handle_agent_message(tracker, inbound.message_id, text, now)
        if inbound.kind == KIND_NOTIFY:  # a workflow's message: relayed, no state change
            return TurnResult(tracker, [Reply(text=text, buttons=[])], [], [])
        if nlu is None and not text.startswith("/"):
            return engine.handle_nlu_unavailable(tracker, inbound.message_id, text, now)
        return engine.handle_message(tracker, inbound.message_id, text,
                                     nlu or payload_nlu(text), now, knowledge=knowledge)

    def _outgoing(self, inbound: Inbound, result: TurnResult, nlu: NluResult | None,
                  origin: Origin, engine: DialogueEngine, *, relay: bool = False,
                  bot_version: str = "") -> tuple[Outgoing, ...]:
        """The turn's outbox: replies (conv.out), a user message relayed to the human agent
        when `relay` (the conversation was handed off), the turn's events, workflow jobs (with
        the `bot_version` the turn ran on: the runner runs that version's workflow) and, last,
        the TurnSummary for the waiting gateway. Every `Nats-Msg-Id` is scoped by bot and
        conversation (subjects.scoped_id): message ids are unique per conversation only."""
        bot, conv = inbound.bot_id, inbound.conversation_id
        redact_pii = engine.bot.redacts_pii
        headers = {HEADER_CORRELATION: inbound.correlation_id} if inbound.correlation_id else {}
        if not redact_pii:
            headers[HEADER_PII] = PII_KEEP
        now_ms = int(time.time() * 1000)
        out: list[Outgoing] = []
        for index, reply in enumerate(result.replies):
            message = bot_message(bot, conv, inbound.message_id, origin.message_id, index,
                                  len(result.replies), reply, now_ms)
            out.append(Outgoing(outbound(bot, conv), scoped_id(bot, conv, message.message_id),
                                message.SerializeToString(), headers))
        if relay and inbound.kind == KIND_MESSAGE and inbound.user is not None:
            out.append(relayed_user_message(inbound, now_ms, headers, redact_pii=redact_pii))
        turn_events = [
            conversation_pb2.ConversationEvent(
                bot_id=bot, conversation_id=conv, type=kind, at_unix_ms=now_ms,
                correlation_id=inbound.correlation_id,
                data_json=json.dumps(redact_value(data, keep=EVENT_IDS) if redact_pii else data,
                                     default=str))
            for kind, data in self._events(inbound, result, nlu)]
        if turn_events:  # one message for the whole turn (services/common/events.py)
            out.append(Outgoing(events(bot, conv), scoped_id(bot, conv, f"{inbound.message_id}:e"),
                                encode_events(turn_events), {**headers, HEADER_KIND: KIND_EVENTS}))
        for job in result.workflows:
            body = {"run_id": job.run_id, "workflow": job.workflow, "inputs": job.inputs,
                    "bot_id": bot, "conversation_id": conv,
                    "correlation_id": inbound.correlation_id}
            if bot_version:
                body["bot_version"] = bot_version
            out.append(Outgoing(f"rpa.jobs.{bot}", scoped_id(bot, conv, job.run_id),
                                json.dumps(body, default=str).encode(), headers))
        if origin.reply_inbox:
            understood = nlu if nlu is not None or inbound.user is None or \
                inbound.kind != KIND_MESSAGE else engine.payload_nlu(inbound.user.text)
            out.append(turn_summary(inbound, result, understood, origin,
                                    engine.position(result.tracker)))
        return tuple(out)

    @staticmethod
    def _events(inbound: Inbound, result: TurnResult,
                nlu: NluResult | None) -> list[tuple[str, dict[str, Any]]]:
        found: list[tuple[str, dict[str, Any]]] = []
        if inbound.user is not None and inbound.kind in (KIND_MESSAGE, KIND_AGENT):
            found.append(("user_message" if inbound.kind == KIND_MESSAGE else "agent_message", {
                "message_id": inbound.message_id, "text": inbound.user.text,
                "nlu": nlu_json(nlu), "sent_at_unix_ms": inbound.user.sent_at_unix_ms}))
        found.extend((e.type, e.data) for e in result.events)
        found.extend(("bot_message", {"text": r.text, "role": r.role}) for r in result.replies)
        return found

    async def _side_effects(self, inbound: Inbound, before: Tracker, after: Tracker) -> None:
        if before.handed_off == after.handed_off:
            return
        kv = await self._bus.kv(KV_HANDOFFS)
        key = tracker_key(inbound.bot_id, inbound.conversation_id)
        if after.handed_off:
            await kv.put(key, json.dumps({"since": time.time()}).encode())
        else:
            await kv.delete(key)

    async def _publish(self, outbox: tuple[Outgoing, ...], inbox: str | None) -> None:
        """The replies and then the TurnSummary to the waiting gateway's inbox (in order, one
        connection), then everything but the summary to JetStream (a reply that went to the
        inbox too says so in `Bf-Reply-Inbox`: the gateway's channel outbox sends it from
        there first)."""
        if inbox:
            for item in outbox:
                if item.subject == INBOX_ONLY:
                    await self._bus.nc.publish(f"{inbox}.{KIND_TURN}", item.data,
                                               headers=item.headers)
                elif _to_inbox(item):
                    await self._bus.nc.publish(inbox, item.data)
        await asyncio.gather(*(
            self._bus.js.publish(item.subject, item.data,
                                 headers=_stream_headers(item, inbox))
            for item in outbox if item.subject != INBOX_ONLY))

    async def _reply_unavailable(self, inbound: Inbound, text: str = UNKNOWN_BOT_TEXT) -> None:
        bot, conv = inbound.bot_id, inbound.conversation_id
        reply = Reply(text=text, buttons=[])
        message = bot_message(bot, conv, inbound.message_id, inbound.message_id, 0, 1, reply,
                              int(time.time() * 1000))
        item = Outgoing(outbound(bot, conv), scoped_id(bot, conv, message.message_id),
                        message.SerializeToString())
        summary = conversation_pb2.TurnSummary(in_reply_to=inbound.message_id, replies=1)
        done = Outgoing(INBOX_ONLY, "", summary.SerializeToString(), {HEADER_KIND: KIND_TURN})
        await self._publish((item, done), inbound.reply_inbox)

    async def _failed(self, msg: Msg, inbound: Inbound, exc: Exception) -> None:
        delivered = msg.metadata.num_delivered if msg.metadata else 1
        log.error("message_failed", bot=inbound.bot_id, conversation=inbound.conversation_id,
                  attempt=delivered, error=repr(exc))
        if delivered < MAX_ATTEMPTS_BEFORE_DEAD_LETTER:
            await msg.nak(delay=min(0.2 * 2 ** delivered, 5.0))
            return
        await self._reply_unavailable(inbound, BROKEN_TEXT)
        await self._dead_letter(msg, repr(exc))

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        """Keep the message on EVENTS (`events.deadletter.dialogue`) and ack it."""
        self._metrics.dead_letters.inc()
        headers = {**(msg.headers or {}), "Bf-Original-Subject": msg.subject,
                   "Bf-Reason": reason[:500]}
        await self._bus.js.publish("events.deadletter.dialogue", msg.data, headers=headers)
        await msg.ack()


def payload_nlu(text: str) -> NluResult:
    """A button payload `/intent` is that intent with full confidence."""
    intent = text[1:].split("{", 1)[0].strip()
    return NluResult(intent=intent, confidence=1.0, ranking=[(intent, 1.0)], entities=[],
                     out_of_scope=False)


def nlu_json(nlu: NluResult | None) -> dict[str, Any] | None:
    if nlu is None:
        return None
    return {"intent": nlu.intent, "confidence": round(nlu.confidence, 4),
            "entities": [{"entity": e.entity, "value": e.value} for e in nlu.entities],
            "out_of_scope": nlu.out_of_scope, "sentiment": nlu.sentiment,
            "model_version": nlu.model_version, "variant": nlu.variant}


def turn_nlu(nlu: NluResult | None, position: tuple[str, str]) -> conversation_pb2.TurnNlu | None:
    if nlu is None:
        return None
    return conversation_pb2.TurnNlu(
        intent=nlu.intent, confidence=nlu.confidence,
        ranking=[conversation_pb2.TurnIntent(name=n, confidence=c) for n, c in nlu.ranking],
        entities=[conversation_pb2.TurnEntity(entity=e.entity, value=e.value, raw=e.raw,
                                              start=e.start, end=e.end) for e in nlu.entities],
        out_of_scope=nlu.out_of_scope, sentiment=nlu.sentiment,
        model_version=nlu.model_version, flow=position[0], step=position[1])


def turn_summary(inbound: Inbound, result: TurnResult, nlu: NluResult | None, origin: Origin,
                 position: tuple[str, str]) -> Outgoing:
    """The end of the turn for the gateway waiting on `origin`: how many replies, the workflow
    runs still to answer (the run of a progress notice or notify message included while the
    conversation waits for it), whether a human has the conversation, and the NLU result with
    the flow step."""
    awaiting = [job.run_id for job in result.workflows]
    running = inbound.progress_run_id or inbound.notify_run_id
    if running and result.tracker.waiting_workflow == running:
        awaiting.append(running)
    summary = conversation_pb2.TurnSummary(
        in_reply_to=origin.message_id, replies=len(result.replies), awaiting_runs=awaiting,
        run_id=inbound.run_id,
        handoff=inbound.kind == KIND_MESSAGE and result.tracker.handed_off,
        nlu=turn_nlu(nlu, position))
    return Outgoing(INBOX_ONLY, "", summary.SerializeToString(), {HEADER_KIND: KIND_TURN})


def relayed_user_message(inbound: Inbound, now_ms: int, headers: dict[str, str], *,
                         redact_pii: bool) -> Outgoing:
    """A user's message in a handed-off conversation, for the human agent: on conv.out with
    role "user" (webhooks, agent desks), PII masked unless the bot keeps it."""
    assert inbound.user is not None
    bot, conv = inbound.bot_id, inbound.conversation_id
    text = redact(inbound.user.text) if redact_pii else inbound.user.text
    message = conversation_pb2.BotMessage(
        bot_id=bot, conversation_id=conv, message_id=inbound.message_id, text=text, index=0,
        last=True, sent_at_unix_ms=inbound.user.sent_at_unix_ms or now_ms, role="user")
    return Outgoing(outbound(bot, conv), scoped_id(bot, conv, f"{inbound.message_id}:u"),
                    message.SerializeToString(), {**headers, HEADER_KIND: KIND_RELAYED_USER})


def _to_inbox(item: Outgoing) -> bool:
    """A bot message for the waiting gateway (not a user's message relayed to an agent)."""
    return item.subject.startswith("conv.out.") and \
        item.headers.get(HEADER_KIND) != KIND_RELAYED_USER


def _stream_headers(item: Outgoing, inbox: str | None) -> dict[str, str]:
    headers = {**item.headers, HEADER_MSG_ID: item.msg_id}
    if inbox and _to_inbox(item):
        headers[HEADER_REPLY_INBOX] = inbox
    return headers


def bot_message(bot: str, conv: str, message_id: str, in_reply_to: str, index: int, count: int,
                reply: Reply, now_ms: int) -> conversation_pb2.BotMessage:
    return conversation_pb2.BotMessage(
        bot_id=bot, conversation_id=conv, message_id=f"{message_id}:{index}",
        in_reply_to=in_reply_to, text=reply.text,
        buttons=[conversation_pb2.Button(title=b.title, payload=b.payload) for b in reply.buttons],
        index=index, last=index == count - 1, sent_at_unix_ms=now_ms, role=reply.role,
        citations=[conversation_pb2.Citation(title=c.title, document=c.document,
                                             heading_path=list(c.heading_path), url=c.url)
                   for c in reply.citations])
