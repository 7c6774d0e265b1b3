"""Load shedding: the gateway refuses new messages (503 + Retry-After, gRPC UNAVAILABLE with a
`retry-after` trailer) before publishing anything when the platform is behind.

Two bounds, both from GatewayConfig (docs/gateway.md, "Backpressure"):
- messages this replica accepted whose replies are not complete yet, in all and per bot
  (`max_pending`, `max_pending_per_bot`), keyed by the message id scoped by bot and conversation
  (`subjects.scoped_id`: ids are unique per conversation only); an entry leaves when the
  message's turn is over (its TurnSummary comes; a handed-off conversation's at once), or after
  `pending_expiry_s` (a message whose turn never ends, e.g. a dialogue that died);
- the dialogue's backlog: the messages its partition consumers have not finished
  (`num_pending + num_ack_pending` of the durable consumers `dialogue-p<N>` on CONV_IN), read in
  the background every `backlog_check_s` — never a JetStream API call per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.common.errors import Unavailable
from services.common.logging import get_logger
from services.common.nats import STREAM_CONV_IN

log = get_logger(__name__)

# The dialogue's durable consumer of inbound partition N (services/dialogue/worker.py).
DIALOGUE_CONSUMER = "dialogue-p{}"
Backlog = Callable[[], Awaitable[int]]


class RetryLater(Unavailable):
    """A retriable refusal: HTTP 503 with Retry-After, gRPC UNAVAILABLE with `retry-after`."""

    problem_type = "unavailable"

    def __init__(self, detail: str, retry_after_s: float, *, message_id: str = "") -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s
        self.message_id = message_id

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": self.retry_after_header}

    def extensions(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"retry_after": int(self.retry_after_header)}
        if self.message_id:  # retry with this id: a message that was stored is not sent twice
            extra["message_id"] = self.message_id
        return extra


class Overloaded(RetryLater):
    """Shed before publishing: too many messages in flight or the dialogue is behind."""

    problem_type = "overloaded"


@dataclass(frozen=True)
class Limits:
    max_pending: int = 1000
    max_pending_per_bot: int = 1000
    max_backlog: int = 5000
    backlog_check_s: float = 1.0
    pending_expiry_s: float = 60.0
    retry_after_s: float = 2.0


@dataclass
class _Metrics:
    shed: Counter
    pending: Gauge
    backlog: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> _Metrics:
        return cls(
            shed=Counter("botfactory_gateway_shed", "Messages refused before publishing "
                         "(503), by reason: pending, bot_pending, backlog, bus_unavailable.",
                         ["reason"], registry=registry),
            pending=Gauge("botfactory_gateway_pending_messages", "Messages this replica "
                          "accepted whose replies are not complete yet.", registry=registry),
            backlog=Gauge("botfactory_gateway_dialogue_backlog", "Inbound messages the "
                          "dialogue has not finished (last background check).",
                          registry=registry),
        )


class Backpressure:
    def __init__(self, limits: Limits, registry: CollectorRegistry,
                 backlog: Backlog | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._backlog_of = backlog
        self._clock = clock
        self._metrics = _Metrics.create(registry)
        # message id → (bot, expiry); insertion order is expiry order (one fixed expiry).
        self._pending: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._per_bot: dict[str, int] = {}
        self.backlog = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def pending_for(self, bot: str) -> int:
        return self._per_bot.get(bot, 0)

    async def start(self) -> None:
        if self._backlog_of is not None and self._task is None:
            await self._check_backlog()
            self._task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def admit(self, bot: str, message_id: str) -> bool:
        """Take a slot for `message_id` (scoped: `subjects.scoped_id`) or raise Overloaded;
        False: it already holds one (a retry of a message still in flight)."""
        self._expire()
        if message_id in self._pending:
            return False
        reason = self._refusal(bot)
        if reason is not None:
            self.refused(reason)
            raise Overloaded(f"the service is overloaded ({reason.replace('_', ' ')}); "
                             "retry later", self.limits.retry_after_s)
        self._pending[message_id] = (bot, self._clock() + self.limits.pending_expiry_s)
        self._per_bot[bot] = self._per_bot.get(bot, 0) + 1
        self._metrics.pending.set(len(self._pending))
        return True

    def refused(self, reason: str) -> None:
        self._metrics.shed.labels(reason=reason).inc()

    def release(self, message_id: str) -> None:
        """The message's replies are complete (or it was never published)."""
        entry = self._pending.pop(message_id, None)
        if entry is None:
            return
        bot = entry[0]
        left = self._per_bot.get(bot, 1) - 1
        if left > 0:
            self._per_bot[bot] = left
        else:
            self._per_bot.pop(bot, None)
        self._metrics.pending.set(len(self._pending))

    def _refusal(self, bot: str) -> str | None:
        if len(self._pending) >= self.limits.max_pending:
            return "pending"
        if self._per_bot.get(bot, 0) >= self.limits.max_pending_per_bot:
            return "bot_pending"
        if self.backlog >= self.limits.max_backlog:
            return "backlog"
        return None

    def _expire(self) -> None:
        now = self._clock()
        while self._pending:
            message_id, (_, expiry) = next(iter(self._pending.items()))
            if expiry > now:
                return
            self.release(message_id)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.limits.backlog_check_s)
            await self._check_backlog()

    async def _check_backlog(self) -> None:
        assert self._backlog_of is not None
        try:
            self.backlog = await self._backlog_of()
        except Exception as exc:  # the bus is down: publishing fails fast on its own
            log.debug("backlog_check_failed", error=repr(exc))
            return
        self._metrics.backlog.set(self.backlog)


def dialogue_backlog(js: JetStreamContext, partitions: int, timeout_s: float = 1.0) -> Backlog:
    """The dialogue's unfinished inbound messages: the sum over its partition consumers."""

    async def one(part: int) -> int:
        try:
            info = await js.consumer_info(STREAM_CONV_IN, DIALOGUE_CONSUMER.format(part),
                                          timeout=timeout_s)
        except NotFoundError:  # no dialogue worker has started yet
            return 0
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def total() -> int:
        return sum(await asyncio.gather(*(one(p) for p in range(partitions))))

    return total
