"""Bot messages taken from a durable JetStream pull consumer and handled concurrently across
conversations but in order within one: the machinery the webhook relay and the channel
outbox share (services/gateway/webhook_relay.py, services/gateway/channels/outbox.py).

Up to `max_ack_pending` messages are held at once (a slot each). Each message gets a task; a
message of a conversation that already has one in progress waits for its turn (`Turn.wait`):
until the one before is settled, or released earlier by its handler (`Turn.release`: sent, its
ack still to come). Held messages get in-progress acks every third of the ack
wait, so none is redelivered while it waits for its turn or a retry. Stopping stops fetching
and gives the handlers `grace_s` to finish; the rest are handed back (nak) for redelivery."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from services.common.logging import get_logger
from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.pull import ContinuousPull, fetch_or_empty, settle

log = get_logger(__name__)
FETCH_MAX = 64
RETRY_DELAY_S = 1.0


@dataclass(frozen=True)
class Turn:
    """A message's place in its conversation's order."""

    previous: asyncio.Event | None  # set once the conversation's message before may be followed
    done: asyncio.Event  # this message's: set when released, at the latest once settled

    async def wait(self) -> None:
        """Until the conversation's message before is out of the way."""
        if self.previous is not None:
            await self.previous.wait()

    def release(self) -> None:
        """The conversation's next message may go now (this one is out; its ack may follow)."""
        self.done.set()


class OrderedPull:
    """Subclasses implement `deliver` (and may override `fetch_failed`, `stopping`)."""

    def __init__(self, name: str, *, max_ack_pending: int, ack_wait_s: float,
                 fetch_timeout_s: float) -> None:
        self._name = name
        self._max_ack_pending = max_ack_pending
        self._ack_wait = ack_wait_s
        self._fetch_timeout = fetch_timeout_s
        self._slots = asyncio.Semaphore(max_ack_pending)
        self._busy: dict[asyncio.Task[None], Msg] = {}
        # Per conversation, the last message taken: the next one waits for it to be settled.
        self._tails: dict[tuple[str, str], asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._source: Any = None
        self._running = False

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    async def deliver(self, msg: Msg, message: conversation_pb2.BotMessage,
                      turn: Turn) -> None:
        """Handle one message and settle it (ack, or nak for later); wait for the `turn` (the
        conversation's message before, when it is still in progress) before sending."""
        raise NotImplementedError

    def fetch_failed(self) -> None:
        """A fetch failed (e.g. the consumer was deleted): a hook to repair things."""

    async def stopping(self) -> None:
        """Fetching has stopped; the handlers in progress have not finished yet."""

    def begin(self, source: Any) -> None:
        """Start taking messages from `source`: a pull subscription (fetched in batches) or a
        `ContinuousPull` (each message as the server delivers it)."""
        self._running = True
        self._source = source
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._consume(source), name=self._name),
                       loop.create_task(self._heartbeat(), name=f"{self._name}-heartbeat")]

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop fetching; let handlers in progress finish for up to `grace_s`, then cancel the
        rest (their messages are handed back for redelivery)."""
        self._running = False
        consume, heartbeat = self._tasks if self._tasks else (None, None)
        self._tasks = []
        await _cancel(consume)
        if isinstance(self._source, ContinuousPull):  # delivered, not taken: redelivered later
            with contextlib.suppress(nats.errors.Error):
                await self._source.stop()
        await self.stopping()
        if self._busy:
            _, pending = await asyncio.wait(list(self._busy), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await _cancel(heartbeat)

    async def _receive(self, source: Any) -> list[Msg]:
        if isinstance(source, ContinuousPull):
            return [await source.next()]
        free = self._max_ack_pending - len(self._busy)
        return await fetch_or_empty(source, max(1, min(free, FETCH_MAX)), self._fetch_timeout)

    async def _consume(self, source: Any) -> None:
        while self._running:
            await self._slots.acquire()
            try:
                messages = await self._receive(source)
            except (nats.errors.ConnectionClosedError, nats.errors.DrainTimeoutError):
                self._slots.release()
                return
            except nats.errors.Error as exc:  # e.g. JetStream briefly unavailable
                self._slots.release()
                log.warning("pull_fetch_failed", consumer=self._name, error=repr(exc))
                self.fetch_failed()
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            except BaseException:  # cancelled while waiting: the slot is not held
                self._slots.release()
                raise
            if not messages:  # nothing within the fetch timeout
                self._slots.release()
                continue
            for index, msg in enumerate(messages):
                if index > 0:
                    await self._slots.acquire()
                self.take(msg)

    def take(self, msg: Msg) -> asyncio.Task[None]:
        """Start handling a fetched `msg` (it holds one of the `max_ack_pending` slots, the
        caller acquired it); messages of one conversation are handled in the order taken."""
        loop = asyncio.get_running_loop()
        try:
            message = conversation_pb2.BotMessage.FromString(msg.data)
        except Exception as exc:
            log.warning("pull_undecodable", consumer=self._name, subject=msg.subject,
                        error=repr(exc))
            task = loop.create_task(settle(msg.term()))
        else:
            task = self.in_turn(message, lambda turn: self._handle(msg, message, turn))
        self._busy[task] = msg
        task.add_done_callback(self._done)
        return task

    def in_turn(self, message: conversation_pb2.BotMessage,
                work: Callable[[Turn], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `work` for `message` in its conversation's order (it gets the message's Turn):
        after the conversation's messages taken before it (or released by them)."""
        key = (message.bot_id, message.conversation_id)
        turn = Turn(self._tails.get(key), asyncio.Event())
        self._tails[key] = turn.done

        async def run() -> None:
            try:
                await work(turn)
            finally:
                turn.done.set()
                if self._tails.get(key) is turn.done:
                    del self._tails[key]

        return asyncio.get_running_loop().create_task(run())

    def _done(self, task: asyncio.Task[None]) -> None:
        self._busy.pop(task, None)
        self._slots.release()

    async def _handle(self, msg: Msg, message: conversation_pb2.BotMessage,
                      turn: Turn) -> None:
        try:
            await self.deliver(msg, message, turn)
        except asyncio.CancelledError:  # stopping: another replica (or the next start) gets it
            await settle(msg.nak())
            raise
        except Exception as exc:  # e.g. a store unreachable: try again later, nothing is lost
            log.warning("pull_handle_deferred", consumer=self._name, bot=message.bot_id,
                        error=repr(exc))
            await settle(msg.nak(delay=RETRY_DELAY_S))

    async def _heartbeat(self) -> None:
        """In-progress acks for the messages held, so none is redelivered while it waits."""
        interval = max(0.2, self._ack_wait / 3)
        while True:
            await asyncio.sleep(interval)
            for msg in list(self._busy.values()):
                await settle(msg.in_progress())


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
