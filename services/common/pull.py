"""Continuous pull from a durable JetStream consumer: one long-lived pull request at a time.

`fetch(1)` sends a pull request per message. A consumer that keeps one message in flight
(`max_ack_pending=1`, the dialogue's per-partition ordering) then pays a round trip to the
server for every message on top of the ack. `ContinuousPull` instead keeps one pull request
for up to `batch` messages open for `expires_s`: the server hands over the next message as
soon as the previous one is acked, and a new request goes out only when the open one is used
up, expires (status 408) or goes quiet.

Liveness: the request asks for idle heartbeats (status 100) every `heartbeat_s`; hearing
nothing for `LOST_AFTER_HEARTBEATS` of them (a restarted server forgot the request, a
reconnect dropped it) sends a new request, so delivery resumes within seconds of an outage.
A stale request that turns out to be alive only adds deliveries to the same inbox: harmless.

Deliveries arrive through a callback into a queue of our own: the client's `next_msg` costs a
uuid4, two tasks and a `wait_for` per message, a tenth of the dialogue's CPU under load.
`next_batch` also takes the messages already delivered behind the next one, for consumers that
handle events in bulk (analytics, review).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from services.common.logging import get_logger
from services.common.nats import Bus

log = get_logger(__name__)

STATUS_HEADER = "Status"
HEARTBEAT = "100"
# Statuses that end a pull request in the normal course: expired (408), no messages (404).
# Any other (409: a server limit, a leadership change, a shutdown) is logged and backed off.
ROUTINE_END = frozenset({"404", "408"})
LOST_AFTER_HEARTBEATS = 2.5
RETRY_DELAY_S = 0.5
STALE_MARGIN_S = 1.0
NS = 1_000_000_000


class ContinuousPull:
    """Messages of the durable `durable` on `stream`, in delivery order (ack them as usual)."""

    def __init__(self, nc: Any, stream: str, durable: str, *, batch: int = 1000,
                 expires_s: float = 30.0, heartbeat_s: float = 1.0) -> None:
        if heartbeat_s * LOST_AFTER_HEARTBEATS >= expires_s:
            raise ValueError("expires_s must be well above the heartbeat period")
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._request = json.dumps({"batch": batch, "expires": int(expires_s * NS),
                                    "idle_heartbeat": int(heartbeat_s * NS)}).encode()
        self._batch = batch
        self._expires_s = expires_s
        self._expires_at = 0.0  # when the open request expires (monotonic clock)
        self._quiet_s = heartbeat_s * LOST_AFTER_HEARTBEATS
        self._inbox = ""
        self._sub: Any = None
        self._left = 0  # messages the open request may still deliver (0: none open)
        self._delivered: deque[Msg] = deque()
        self._waiter: asyncio.Future[bool] | None = None

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._deliver)

    async def stop(self) -> None:
        """Stop listening: messages delivered but not taken are redelivered after ack wait."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()
        self._wake(False)

    async def next(self) -> Msg:
        """The next message; waits as long as it takes (cancel to stop waiting).

        Raises nats.errors.ConnectionClosedError once the connection is closed."""
        while True:
            msg = await self._receive()
            if msg is not None:
                return msg

    async def next_batch(self, limit: int) -> list[Msg]:
        """The next message and those already delivered behind it, `limit` at most."""
        batch = [await self.next()]
        while len(batch) < limit and self._delivered:
            msg = await self._receive()
            if msg is not None:
                batch.append(msg)
        return batch

    async def _deliver(self, msg: Msg) -> None:
        self._delivered.append(msg)
        self._wake(True)

    def _wake(self, delivered: bool) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(delivered)

    async def _receive(self) -> Msg | None:
        """One delivery: a message, or None for a status or a quiet spell (handled here)."""
        if self._sub is None or self._nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if self._left <= 0:
            await self._ask()
        if not self._delivered and not await self._wait():
            self._left = 0  # the request went quiet: presumed lost, ask again
            return None
        msg = self._delivered.popleft()
        status = (msg.headers or {}).get(STATUS_HEADER)
        if status is None:
            self._left -= 1
            if self._left <= 0:  # used up: ask now so the next message is ready on ack
                await self._ask()
            return msg
        if status != HEARTBEAT:
            await self._ended(status, msg)
        return None

    async def _wait(self) -> bool:
        """Whether something was delivered within the quiet period."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(self._quiet_s, self._wake, False)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def _ask(self) -> None:
        await self._nc.publish(self._subject, self._request, reply=self._inbox)
        self._left = self._batch
        self._expires_at = time.monotonic() + self._expires_s

    async def _ended(self, status: str, msg: Msg) -> None:
        """The open request ended (expired, refused): a new one is sent on the next wait.

        A 408 well before the open request's expiry belongs to an older request that was
        presumed lost: ignored, so stale requests do not keep breeding new ones."""
        if status == "408" and time.monotonic() < self._expires_at - STALE_MARGIN_S:
            return
        self._left = 0
        if status not in ROUTINE_END:
            description = (msg.headers or {}).get("Description", "")
            log.info("pull_request_ended", subject=self._subject, status=status,
                     description=description)
            await asyncio.sleep(RETRY_DELAY_S)  # e.g. too many waiting requests: back off


async def open_pull(bus: Bus, stream: str, config: ConsumerConfig) -> ContinuousPull:
    """Create (or find, unchanged) the durable consumer `config` on `stream`; its pull."""
    assert config.durable_name, "a continuous pull needs a durable consumer"
    await bus.js.add_consumer(stream, config)
    pull = ContinuousPull(bus.nc, stream, config.durable_name)
    await pull.start()
    return pull


async def pulled_batches(pull: ContinuousPull, size: int,
                         running: Callable[[], bool]) -> AsyncIterator[list[Msg]]:
    """Batches of up to `size` messages (the next one and those delivered behind it) while
    `running()`; ends when the connection closes or drains."""
    while running():
        try:
            yield await pull.next_batch(size)
        except (nats.errors.ConnectionClosedError, nats.errors.DrainTimeoutError):
            return


async def fetch_or_empty(sub: Any, batch: int, wait_s: float) -> list[Msg]:
    """`sub.fetch(batch, timeout=wait_s)` of a pull subscription; [] when nothing came in
    time. nats-py says so with its own TimeoutError, or with asyncio's when its deadline runs
    out between its two pull requests: both are a TimeoutError."""
    try:
        messages: list[Msg] = await sub.fetch(batch, timeout=wait_s)
    except TimeoutError:  # nats.errors.TimeoutError is one too
        return []
    return messages


async def settle(action: Any) -> None:
    """Await an ack / nak / term / in-progress, ignoring a closed connection or a message
    already settled (JetStream redelivers whatever was not acknowledged)."""
    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
        await action


KV_LIST_WAIT_S = 1.0
KV_LIST_DEADLINE_S = 30.0


async def kv_keys(kv: KeyValue, prefix: str) -> list[str]:
    """The keys of `kv` that start with `prefix` (which ends with ".", or "" for all keys),
    sorted; deleted ones left out.

    The server filters them: a pull consumer on `$KV.<bucket>.<prefix>>` delivering the last
    message of each key, headers only, read until a message says nothing is pending. (nats-py's
    `keys(filters=...)` matches filters as substrings on the client, so `bot.>` never matched;
    and its watcher's "no more keys" marker can come before a key delivered at the same time.)
    """
    if prefix and not prefix.endswith("."):
        raise ValueError(f"a key prefix ends with '.', got {prefix!r}")
    # nats-py's KeyValue has no public accessor for its stream and subject prefix
    js, stream, subjects = kv._js, kv._stream, kv._pre
    config = ConsumerConfig(ack_policy=AckPolicy.NONE,
                            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                            headers_only=True, inactive_threshold=5.0)
    sub = await js.pull_subscribe(f"{subjects}{prefix}>", stream=stream, config=config)
    keys: list[str] = []
    try:
        if (await sub.consumer_info()).num_pending == 0:
            return []
        deadline = time.monotonic() + KV_LIST_DEADLINE_S
        while time.monotonic() < deadline:
            batch = await fetch_or_empty(sub, 256, KV_LIST_WAIT_S)
            keys.extend(msg.subject[len(subjects):] for msg in batch
                        if (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"))
            if batch and batch[-1].metadata.num_pending == 0:
                return sorted(keys)
        raise TimeoutError(f"listing the keys {prefix}* took over {KV_LIST_DEADLINE_S:.0f} s")
    finally:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await sub.unsubscribe()
