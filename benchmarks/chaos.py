"""Chaos: the local process stack under a steady conversation load while, at random moments,
one component at a time is killed with SIGKILL and restarted on the same port (nats-server on
the same JetStream store): a dialogue worker (of two), the NLU server, the gateway, the RPA
runner and nats-server.

    python benchmarks/chaos.py [--quick] [--users 50] [--telegram-users 10] [--minutes 5]
        [--seed 7] [--telegram-fault-share 0.04]

Each simulated user runs transfer conversations through slot filling (`/transfer_money`, amount,
recipient, then `/affirm` - a transfer_funds workflow against the demo bank - or `/deny`). Every
message has a client-chosen id, unique only within its conversation (`m<step>-<attempt>`: every
conversation uses the same ids, as a messaging platform numbers messages per chat, so the ids
collide across conversations); retriable answers (503/429 with Retry-After, refused connections,
timeouts) are retried with the same id; a message counts as accepted once the gateway answered
200/202. When the bot answers "trouble understanding" (NLU down) the user types the message
again (a new id). At the end (after a drain) the run checks, from the CONV stream, the trackers
(dialogue admin gRPC), the runs (KV rpa_runs) and the bank's counters: every accepted message
answered exactly once and in order, the slots equal what each user set, every run finished and
each bank side effect happened once.

A share of the users (`--telegram-users`, a fifth by default; 0: none) talks through the
Telegram channel instead: each transfer conversation is a Telegram chat that POSTs updates to
the gateway's webhook and, like Telegram, sends the same update (same `update_id`) again, with
backoff, until it is answered 200 (refused connections, 5xx, 503 with Retry-After, timeouts);
it reads the bot's replies at a fake Bot API in this process (benchmarks/fake_telegram.py),
which outlives the gateway's restarts and refuses a few calls (429 retry_after 1, 500) so the
channel outbox retries. Their check, after the drain: every update the gateway accepted has a
reply on the CONV stream, and every bot message of the chat's conversation on the stream
(`conv.out.banking.telegram-<chat>`) reached the fake exactly once and in the stream's order.

Writes benchmarks/results/chaos.json (exit 1 if anything was lost, duplicated or reordered)
and regenerates docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import resource
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp  # noqa: E402

from benchmarks.fake_telegram import (  # noqa: E402
    TELEGRAM_SECRET_HEADER,
    FakeBotApi,
    Faults,
    bot_token,
    set_up_telegram,
    telegram_update,
)
from benchmarks.stack import (  # noqa: E402
    ProcessStack,
    StackOptions,
    bench_workdir,
    client_key,
    discard_workdir,
    ensure_model,
)

RESULTS = ROOT / "benchmarks" / "results" / "chaos.json"
BOT = "banking"
RECIPIENTS = ("Anna", "John", "Maria", "Peter", "Laura", "David")
RETRIABLE = frozenset({429, 502, 503, 504})
NOT_UNDERSTOOD = ("trouble understanding", "something went wrong on our side")
REQUEST_TIMEOUT_S = 15.0
MESSAGE_DEADLINE_S = 90.0
RETYPES = 8
PROBE_TEXT = "what are your opening hours?"
TELEGRAM_BACKOFF_S = (0.5, 4.0)  # a re-sent update's first and longest wait (no Retry-After)
TELEGRAM_MAX_TEXT = 4096  # a longer reply reaches the platform in pieces
TELEGRAM_GRACE_S = 3.0  # after the replies are all there: late duplicates still count


@dataclass
class Plan:
    """One transfer conversation: what the user sets."""

    conversation: str
    amount: int
    recipient: str
    confirm: bool
    completed: bool = False
    diverged: str = ""

    def steps(self) -> list[tuple[str, str]]:
        """(text, a fragment the reply to it must contain)."""
        final = ("/affirm", "Sending the money") if self.confirm else ("/deny", "won't send")
        return [("/transfer_money", "?"), (str(self.amount), "Who"),
                (self.recipient, f"Send {self.amount:.2f} EUR to {self.recipient}?"), final]

    def expected_slots(self) -> dict[str, str]:
        return {"amount": str(self.amount), "recipient": self.recipient,
                "transfer_confirmed": "true" if self.confirm else "false"}


@dataclass
class Tally:
    # (conversation, message id) -> conversation: message ids are unique per conversation
    accepted: dict[tuple[str, str], str] = field(default_factory=dict)
    order: dict[str, list[str]] = field(default_factory=dict)  # conversation -> accepted ids
    retried: Counter[str] = field(default_factory=Counter)  # by cause
    hard_errors: Counter[str] = field(default_factory=Counter)
    abandoned: int = 0
    retyped: int = 0
    plans: list[Plan] = field(default_factory=list)
    sync_duplicates: int = 0


@dataclass
class TelegramTally(Tally):
    """The Telegram users': message ids are `telegram-<update_id>` (the gateway's), the
    conversations `telegram-<chat>`."""

    updates: int = 0  # distinct updates (update_id) sent
    redeliveries: int = 0  # the same update sent again after an answer other than 200


@dataclass
class Kill:
    component: str
    at_s: float
    ready_s: float | None = None
    recovery_s: float | None = None
    recovered: bool = False
    error: str = ""


class Client:
    """The gateway's HTTP API with the retry rules of a well-behaved client."""

    def __init__(self, session: aiohttp.ClientSession, base: str, key: str, tally: Tally) -> None:
        self.session = session
        self.base = base
        self.headers = {"Authorization": f"Bearer {key}"}
        self.tally = tally

    async def send(self, conversation: str, text: str, message_id: str) -> dict[str, Any] | None:
        """POST (retrying with the same id) until the gateway accepts it (200/202); None when
        it refused it for good or never took it."""
        url = f"{self.base}/v1/bots/{BOT}/conversations/{conversation}/messages"
        deadline = time.monotonic() + MESSAGE_DEADLINE_S
        while time.monotonic() < deadline:
            outcome = await self._attempt(url, text, message_id)
            if outcome is None or isinstance(outcome, dict):
                return outcome
            await asyncio.sleep(outcome)
        return None

    async def _attempt(self, url: str, text: str, message_id: str) -> dict[str, Any] | float | None:
        """The body when accepted, the seconds to wait before a retry, or None (refused for
        good)."""
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        try:
            async with self.session.post(url, json={"text": text, "message_id": message_id},
                                         headers=self.headers, timeout=timeout) as response:
                if response.status in (200, 202):
                    body: dict[str, Any] = await response.json()
                    return body
                await response.read()
                if response.status in RETRIABLE:
                    self.tally.retried[str(response.status)] += 1
                    return min(float(response.headers.get("Retry-After", "1") or 1), 5.0)
                self.tally.hard_errors[str(response.status)] += 1
                return None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            self.tally.retried[type(exc).__name__] += 1
        except TimeoutError:
            self.tally.retried["timeout"] += 1
        return 0.5

    async def first_reply(self, conversation: str, message_id: str, limit_s: float) -> str | None:
        """The text of the first reply to `message_id`, read from the transcript."""
        url = f"{self.base}/v1/bots/{BOT}/conversations/{conversation}/transcript"
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with self.session.get(url, headers=self.headers,
                                            timeout=aiohttp.ClientTimeout(total=10)) as response:
                    if response.status == 200:
                        for entry in (await response.json())["entries"]:
                            if entry.get("in_reply_to") == message_id:
                                return str(entry["text"])
            await asyncio.sleep(0.5)
        return None


class Users:
    """The simulated users: each runs transfer conversations one after the other."""

    def __init__(self, client: Client, tally: Tally, rng: random.Random, think_s: float,
                 confirm_share: float) -> None:
        self.client = client
        self.tally = tally
        self.rng = rng
        self.think_s = think_s
        self.confirm_share = confirm_share
        self.stopping = asyncio.Event()
        self.tag = uuid.uuid4().hex[:6]

    async def run(self, count: int) -> None:
        await asyncio.gather(*(self.user(i, random.Random(self.rng.random()))
                               for i in range(count)))

    async def user(self, index: int, rng: random.Random) -> None:
        n = 0
        while not self.stopping.is_set():
            plan = Plan(f"chaos-{self.tag}-{index}-{n}", rng.randint(1, 9),
                        rng.choice(RECIPIENTS), rng.random() < self.confirm_share)
            self.tally.plans.append(plan)
            await self.converse(plan, rng)
            n += 1

    async def converse(self, plan: Plan, rng: random.Random) -> None:
        for step, (text, expected) in enumerate(plan.steps()):
            reply = await self.say(plan.conversation, text, step)
            if reply is None:
                return  # stopping, or never accepted
            if expected not in reply:
                plan.diverged = f"{text!r} -> {reply!r}"
                return
            await asyncio.sleep(rng.expovariate(1 / self.think_s))
        plan.completed = True

    async def say(self, conversation: str, text: str, step: int) -> str | None:
        """Send until the bot understood (typing it again after "trouble understanding");
        the first reply's text, or None. The ids repeat in every conversation."""
        for attempt in range(RETYPES):
            message_id = f"m{step}-{attempt}"
            body = await self.client.send(conversation, text, message_id)
            if body is None:
                self.tally.abandoned += 1
                return None
            self.accept(conversation, message_id, body)
            replies = [r for r in body.get("replies", []) if r.get("in_reply_to") == message_id]
            first = str(replies[0]["text"]) if replies else \
                await self.client.first_reply(conversation, message_id, MESSAGE_DEADLINE_S)
            if first is None:
                return None
            if not any(marker in first for marker in NOT_UNDERSTOOD):
                return first
            self.tally.retyped += 1
            await asyncio.sleep(1.0)
        return None

    def accept(self, conversation: str, message_id: str, body: dict[str, Any]) -> None:
        self.tally.accepted[(conversation, message_id)] = conversation
        self.tally.order.setdefault(conversation, []).append(message_id)
        ids = [r["message_id"] for r in body.get("replies", [])]
        self.tally.sync_duplicates += len(ids) - len(set(ids))


class Inbox:
    """What the fake Bot API took (answered 200), per chat, in arrival order, with the
    arrival times (perf_counter)."""

    def __init__(self) -> None:
        self.texts: dict[str, list[str]] = {}
        self.times: dict[str, list[float]] = {}
        self._arrived: dict[str, asyncio.Event] = {}

    def __call__(self, chat_id: str, text: str, at: float) -> None:
        self.texts.setdefault(chat_id, []).append(text)
        self.times.setdefault(chat_id, []).append(at)
        event = self._arrived.get(chat_id)
        if event is not None:
            event.set()

    def count(self, chat_id: str) -> int:
        return len(self.texts.get(chat_id, ()))

    async def after(self, chat_id: str, cursor: int, limit_s: float) -> str | None:
        """The chat's first message after its first `cursor` ones (waiting for it)."""
        deadline = time.monotonic() + limit_s
        event = self._arrived.setdefault(chat_id, asyncio.Event())
        while self.count(chat_id) <= cursor:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), left)
        return self.texts[chat_id][cursor]


class TelegramUsers:
    """Users as Telegram chats (one chat per transfer conversation): updates POSTed to the
    webhook, re-sent with the same update_id until answered 200; replies read at the fake."""

    def __init__(self, session: aiohttp.ClientSession, base: str, secret: str, inbox: Inbox,
                 tally: TelegramTally, rng: random.Random, think_s: float,
                 confirm_share: float, stopping: asyncio.Event) -> None:
        self.session = session
        self.url = f"{base}/v1/channels/telegram/{BOT}"
        self.headers = {TELEGRAM_SECRET_HEADER: secret}
        self.inbox = inbox
        self.tally = tally
        self.rng = rng
        self.think_s = think_s
        self.confirm_share = confirm_share
        self.stopping = stopping
        self.chats = itertools.count(10**9 + rng.randrange(10**9))
        self.update_ids = itertools.count(10**8 + rng.randrange(10**8))

    async def run(self, count: int) -> None:
        await asyncio.gather(*(self.user(random.Random(self.rng.random()))
                               for _ in range(count)))

    async def user(self, rng: random.Random) -> None:
        while not self.stopping.is_set():
            chat = next(self.chats)
            plan = Plan(f"telegram-{chat}", rng.randint(1, 9), rng.choice(RECIPIENTS),
                        rng.random() < self.confirm_share)
            self.tally.plans.append(plan)
            await self.converse(plan, chat, rng)

    async def converse(self, plan: Plan, chat: int, rng: random.Random) -> None:
        for text, expected in plan.steps():
            reply = await self.say(plan.conversation, chat, text)
            if reply is None:
                return
            if expected not in reply:
                plan.diverged = f"{text!r} -> {reply!r}"
                return
            await asyncio.sleep(rng.expovariate(1 / self.think_s))
        plan.completed = True

    async def say(self, conversation: str, chat: int, text: str) -> str | None:
        """Send until the bot understood; the first reply at the fake, or None."""
        for _ in range(RETYPES):
            update_id = next(self.update_ids)
            cursor = self.inbox.count(str(chat))
            if not await self.deliver(update_id, chat, text):
                self.tally.abandoned += 1
                return None
            message_id = f"telegram-{update_id}"
            self.tally.accepted[(conversation, message_id)] = conversation
            self.tally.order.setdefault(conversation, []).append(message_id)
            first = await self.inbox.after(str(chat), cursor, MESSAGE_DEADLINE_S)
            if first is None:
                return None
            if not any(marker in first for marker in NOT_UNDERSTOOD):
                return first
            self.tally.retyped += 1
            await asyncio.sleep(1.0)
        return None

    async def deliver(self, update_id: int, chat: int, text: str) -> bool:
        """POST the update until the gateway answers 200, as Telegram does: the same
        update_id every time, a growing wait between tries (Retry-After when given)."""
        body = telegram_update(update_id, chat, text)
        self.tally.updates += 1
        deadline = time.monotonic() + MESSAGE_DEADLINE_S
        backoff, tries = TELEGRAM_BACKOFF_S[0], 0
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        while time.monotonic() < deadline:
            tries += 1
            if tries > 1:
                self.tally.redeliveries += 1
            wait = backoff
            try:
                async with self.session.post(self.url, json=body, headers=self.headers,
                                             timeout=timeout) as response:
                    await response.read()
                    if response.status == 200:
                        return True
                    self.tally.retried[str(response.status)] += 1
                    if response.status not in RETRIABLE and response.status < 500:
                        self.tally.hard_errors[str(response.status)] += 1
                    with contextlib.suppress(ValueError):  # without it: the backoff
                        wait = min(float(response.headers.get("Retry-After", "")), 5.0)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                self.tally.retried[type(exc).__name__] += 1
            except TimeoutError:
                self.tally.retried["timeout"] += 1
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, TELEGRAM_BACKOFF_S[1])
        return False


async def probe(client: Client, tag: str, limit_s: float) -> float | None:
    """Seconds until a free-text message gets a real (understood) reply end to end."""
    began = time.perf_counter()
    n = 0
    while time.perf_counter() - began < limit_s:
        n += 1
        body = await client.send(f"probe-{tag}-{n}", PROBE_TEXT, uuid.uuid4().hex)
        replies = (body or {}).get("replies") or []
        if body is not None and body.get("complete") and replies and \
                not any(m in replies[0]["text"] for m in NOT_UNDERSTOOD):
            return time.perf_counter() - began
        await asyncio.sleep(0.2)
    return None


class RunWatch:
    """Times of the workflow results the RPA runner publishes into conversations (`conv.in`,
    `Bf-Kind: workflow_result`): the runner's end-to-end signal."""

    def __init__(self) -> None:
        self.finished: list[float] = []
        self.bus: Any = None

    async def start(self, nats_url: str) -> None:
        from services.common.nats import connect
        from services.common.subjects import HEADER_KIND, KIND_WORKFLOW_RESULT

        self.bus = await connect(nats_url, name="chaos-watch")

        async def seen(msg: Any) -> None:
            if (msg.headers or {}).get(HEADER_KIND) == KIND_WORKFLOW_RESULT:
                self.finished.append(time.perf_counter())

        await self.bus.nc.subscribe("conv.in.>", cb=seen)

    async def first_after(self, moment: float, limit_s: float) -> float | None:
        deadline = time.perf_counter() + limit_s
        while time.perf_counter() < deadline:
            later = [t for t in self.finished if t > moment]
            if later:
                return later[0]
            await asyncio.sleep(0.2)
        return None


class Chaos:
    """Kills one component at a time, restarts it and measures the recovery."""

    def __init__(self, stack: ProcessStack, client: Client, watch: RunWatch,
                 rng: random.Random, began: float) -> None:
        self.stack = stack
        self.client = client
        self.watch = watch
        self.rng = rng
        self.began = began
        self.kills: list[Kill] = []

    def schedule(self, rounds: int) -> list[str]:
        dialogues = [n for n in self.stack.components if n.startswith("dialogue-")]
        order: list[str] = []
        for _ in range(rounds):
            batch = ["nats", "nlu", "gateway", "rpa_runner", self.rng.choice(dialogues)]
            self.rng.shuffle(batch)
            order += batch
        return order

    async def run(self, order: list[str], gap_s: tuple[float, float],
                  until: float | None = None) -> None:
        for component in order:
            if until is not None and time.perf_counter() > until:
                break
            await asyncio.sleep(self.rng.uniform(*gap_s))
            kill = await self.kill_and_recover(component)
            self.kills.append(kill)
            print(f"  kill {component}: ready {kill.ready_s} s, recovered in "
                  f"{kill.recovery_s} s {kill.error}", flush=True)

    async def kill_and_recover(self, component: str) -> Kill:
        killed = time.perf_counter()
        kill = Kill(component, round(killed - self.began, 1))
        await asyncio.to_thread(self.stack.kill, component)
        try:
            await asyncio.to_thread(self.stack.start_component, component)
        except (AssertionError, RuntimeError) as exc:
            kill.error = f"restart failed: {exc}"[:300]
            return kill
        ready = time.perf_counter()
        kill.ready_s = round(ready - killed, 2)
        if component == "rpa_runner":
            finished = await self.watch.first_after(ready, 60)
            recovered_at = finished
        else:
            took = await probe(self.client, f"{component}-{len(self.kills)}", 60)
            recovered_at = None if took is None else ready + took
        if recovered_at is not None:
            kill.recovery_s = round(recovered_at - killed, 2)
            kill.recovered = True
        return kill


async def read_replies(nats_url: str) -> list[Any]:
    """Every bot message of the bot on the CONV stream, in stream order."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from services.common.nats import connect
    from services.common.pb.botfactory.v1 import conversation_pb2
    from services.common.pull import fetch_or_empty

    bus = await connect(nats_url, name="chaos-check")
    subject = f"conv.out.{BOT}.>"
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
                            filter_subject=subject, inactive_threshold=30.0)
    found = []
    try:
        sub = await bus.js.pull_subscribe(subject, stream="CONV", config=config)
        while True:
            batch = await fetch_or_empty(sub, 1024, 2)
            if not batch:
                break
            found += [conversation_pb2.BotMessage.FromString(m.data) for m in batch]
            if batch[-1].metadata.num_pending == 0:
                break
    finally:
        await bus.drain()
    return found


def check_replies(tally: Tally, replies: list[Any]) -> dict[str, int]:
    """Lost: accepted with no reply; duplicated: a bot message id twice; out of order: the
    replies of a conversation not in the order its messages were accepted."""
    ids = Counter((r.conversation_id, r.message_id) for r in replies)
    by_conversation: dict[str, list[Any]] = {}
    for reply in replies:
        by_conversation.setdefault(reply.conversation_id, []).append(reply)
    answered = {(r.conversation_id, r.in_reply_to) for r in replies}
    out_of_order = 0
    for conversation, sent in tally.order.items():
        rank = {m: i for i, m in enumerate(sent)}
        seen = [(rank[r.in_reply_to], r.index) for r in by_conversation.get(conversation, [])
                if r.in_reply_to in rank]
        out_of_order += sum(1 for a, b in itertools.pairwise(seen) if b < a)
    return {"lost": sum(1 for m in tally.accepted if m not in answered),
            "duplicated": sum(n - 1 for n in ids.values() if n > 1) + tally.sync_duplicates,
            "out_of_order": out_of_order}


async def wait_answered(tallies: list[Tally], nats_url: str, limit_s: float) -> list[Any]:
    """Drain: read the replies until every accepted message has one (or the time is up)."""
    deadline = time.monotonic() + limit_s
    while True:
        replies = await read_replies(nats_url)
        answered = {(r.conversation_id, r.in_reply_to) for r in replies}
        if all(m in answered for t in tallies for m in t.accepted) or \
                time.monotonic() > deadline:
            return replies
        await asyncio.sleep(1.0)


def pieces(text: str) -> list[str]:
    """A reply as the platform gets it: split at Telegram's limit, as the channel splits it."""
    from services.gateway.channels.base import split_text

    return split_text(text, TELEGRAM_MAX_TEXT)


def lcs(a: list[str], b: list[str]) -> int:
    """The length of the longest common subsequence of `a` and `b`."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b):
            diagonal, row[j + 1] = row[j + 1], (diagonal + 1 if x == y
                                                else max(row[j + 1], row[j]))
    return row[-1]


def check_delivery(conversations: list[str], replies: list[Any],
                   inbox: Inbox) -> dict[str, Any]:
    """Each Telegram conversation's bot messages on the CONV stream (what the outbox sends:
    every role but the user's), in stream order, against what the fake took for its chat, in
    arrival order. Lost: on the stream, never at the fake; duplicated: at the fake more often
    than on the stream; out of order: taken once each, but not in the stream's order (the
    taken ones not on their longest common subsequence)."""
    wanted: dict[str, list[str]] = {c: [] for c in conversations}
    for reply in replies:
        if reply.conversation_id in wanted and reply.role != "user":
            wanted[reply.conversation_id] += pieces(reply.text)
    lost = duplicated = out_of_order = 0
    examples: list[dict[str, Any]] = []
    for conversation, want in wanted.items():
        chat = conversation.removeprefix("telegram-")
        got = inbox.texts.get(chat, [])
        want_n, got_n = Counter(want), Counter(got)
        lost += sum(max(0, n - got_n[t]) for t, n in want_n.items())
        extra = {t: n - want_n[t] for t, n in got_n.items() if n > want_n[t]}
        duplicated += sum(extra.values())
        matched = sum(min(n, got_n[t]) for t, n in want_n.items())
        out_of_order += matched - lcs(want, got)
        for text in extra:
            examples.append({"conversation": conversation, "text": text[:80],
                             "arrived_at": [at for t, at in zip(got, inbox.times[chat],
                                                                strict=True) if t == text]})
    return {"replies": sum(len(w) for w in wanted.values()),
            "delivered": sum(inbox.count(c.removeprefix("telegram-")) for c in wanted),
            "lost": lost, "duplicated": duplicated, "out_of_order": out_of_order,
            "duplicate_examples": examples}


async def wait_delivered(conversations: list[str], nats_url: str, inbox: Inbox,
                         limit_s: float) -> dict[str, Any]:
    """Drain the outbox: until every stream message (read again each time: a workflow's
    result comes late) reached the fake, or the time is up; then a grace for late
    duplicates, and the stream read once more."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not check_delivery(conversations, await read_replies(nats_url), inbox)["lost"]:
            break
        await asyncio.sleep(1.0)
    await asyncio.sleep(TELEGRAM_GRACE_S)
    return check_delivery(conversations, await read_replies(nats_url), inbox)


async def check_trackers(stack: ProcessStack, plans: list[Plan],
                         limit_s: float) -> tuple[int, list[str]]:
    """Completed conversations whose slots differ from what the user set (after the
    conversation's workflow, if any, has finished)."""
    import grpc

    from services.common.pb.botfactory.v1 import dialogue_pb2, dialogue_pb2_grpc

    mismatches: list[str] = []
    targets = stack.dialogue_targets()
    async with grpc.aio.insecure_channel(targets[0]) as channel:
        stub = dialogue_pb2_grpc.DialogueAdminStub(channel)
        for plan in (p for p in plans if p.completed):
            view = await _settled_tracker(stub, dialogue_pb2, plan, limit_s)
            slots = dict(view.slots) if view is not None else {}
            wanted = plan.expected_slots()
            got = {k: slots.get(k) for k in wanted}
            if got != wanted or (plan.confirm and "transfer_reference" not in slots
                                 and view is not None and view.active_flow):
                mismatches.append(f"{plan.conversation}: want {wanted}, got {got}")
    return len(mismatches), mismatches[:20]


async def _settled_tracker(stub: Any, pb: Any, plan: Plan, limit_s: float) -> Any:
    deadline = time.monotonic() + limit_s
    view = None
    while time.monotonic() < deadline:
        request = pb.GetTrackerRequest(bot_id=BOT, conversation_id=plan.conversation)
        with contextlib.suppress(Exception):
            view = await stub.GetTracker(request, timeout=5)
            if not plan.confirm or not view.active_flow:
                return view
        await asyncio.sleep(0.5)
    return view


async def check_runs(stack: ProcessStack, plans: list[Plan]) -> dict[str, Any]:
    """The runs of this chaos run: all finished; the bank saw each side effect once."""
    from services.common.nats import KV_RPA_RUNS, connect
    from services.rpa_runner.state import TERMINAL, RunStore

    conversations = {p.conversation for p in plans}
    bus = await connect(stack.nats.url, name="chaos-runs")
    try:
        runs = [r for r in await RunStore(await bus.kv(KV_RPA_RUNS)).all()
                if r.conversation in conversations]
    finally:
        await bus.drain()
    async with aiohttp.ClientSession() as session, \
            session.get(f"{stack.bank_url}/_stats") as response:
        bank = await response.json()
    statuses = Counter(r.status for r in runs)
    succeeded = statuses.get("succeeded", 0)
    return {"rpa_runs": len(runs), "rpa_runs_by_status": dict(statuses),
            "rpa_unfinished": sum(1 for r in runs if r.status not in TERMINAL),
            "rpa_duplicate_side_effects": int(bank["duplicates"]),
            "rpa_missing_side_effects": max(0, succeeded - int(bank["effects"].get("confirm", 0))),
            "bank_effects": bank["effects"]}


async def wait_runs_finished(stack: ProcessStack, plans: list[Plan], limit_s: float
                             ) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while True:
        figures = await check_runs(stack, plans)
        if figures["rpa_unfinished"] == 0 or time.monotonic() > deadline:
            return figures
        await asyncio.sleep(1.0)


@dataclass
class Telegram:
    """The Telegram side of a run: the fake Bot API, what it took, the users' tally."""

    fake: FakeBotApi
    inbox: Inbox
    tally: TelegramTally
    secret: str
    began: float = 0.0


async def start_telegram(stack: ProcessStack, args: argparse.Namespace) -> Telegram:
    """The fake Bot API (refusing a share of the calls) and the bot's channel pointed at it."""
    inbox = Inbox()
    share = args.telegram_fault_share
    fake = FakeBotApi(bot_token(), Faults(share / 2, share / 2, 1, random.Random(args.seed)),
                      on_message=inbox)
    api_base = await fake.start()
    secret = uuid.uuid4().hex
    try:
        await set_up_telegram(stack.base_url, stack.admin_key, fake.token, api_base, secret,
                              BOT)
    except BaseException:
        await fake.stop()
        raise
    return Telegram(fake, inbox, TelegramTally(), secret)


async def chaos_run(stack: ProcessStack, args: argparse.Namespace) -> dict[str, Any]:
    """The load, the kills, the drain and every check; the figures of chaos.json."""
    rng = random.Random(args.seed)
    tally = Tally()
    key = await client_key(stack.base_url, stack.admin_key)
    watch = RunWatch()
    await watch.start(stack.nats.url)
    telegram = await start_telegram(stack, args) if args.telegram_users else None
    connector = aiohttp.TCPConnector(limit=args.users + 8)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            client = Client(session, stack.base_url, key, tally)
            users = Users(client, tally, rng, args.think_s, args.confirm_share)
            began = time.perf_counter()
            load = [asyncio.create_task(users.run(args.users - args.telegram_users))]
            if telegram is not None:
                telegram.began = began
                chats = TelegramUsers(session, stack.base_url, telegram.secret, telegram.inbox,
                                      telegram.tally, random.Random(rng.random()),
                                      args.think_s, args.confirm_share, users.stopping)
                load.append(asyncio.create_task(chats.run(args.telegram_users)))
            chaos = Chaos(stack, client, watch, rng, began)
            await asyncio.sleep(args.warmup_s)
            rounds = 1 if args.quick else 100
            until = None if args.quick else began + args.minutes * 60
            await chaos.run(chaos.schedule(rounds), args.gap_s, until)
            await asyncio.sleep(args.tail_s)
            users.stopping.set()
            await asyncio.gather(*load)
            duration = time.perf_counter() - began
        print(f"load stopped after {duration:.0f} s; draining", flush=True)
        with contextlib.suppress(Exception):
            await watch.bus.drain()
        return await verdict(stack, tally, chaos.kills, args, duration, telegram)
    finally:
        if telegram is not None:
            await telegram.fake.stop()


async def verdict(stack: ProcessStack, tally: Tally, kills: list[Kill],
                  args: argparse.Namespace, duration: float,
                  telegram: Telegram | None = None) -> dict[str, Any]:
    tallies = [tally] if telegram is None else [tally, telegram.tally]
    replies = await wait_answered(tallies, stack.nats.url, args.drain_s)
    # the HTTP users' check as before, on every conversation but the Telegram chats'
    figures: dict[str, Any] = {"accepted": len(tally.accepted), **check_replies(
        tally, [r for r in replies if not r.conversation_id.startswith("telegram-")])}
    # the bank's counters are the whole run's: every conversation's runs are checked
    plans = tally.plans + (telegram.tally.plans if telegram is not None else [])
    runs = await wait_runs_finished(stack, plans, args.drain_s)
    mismatches, examples = await check_trackers(stack, tally.plans, args.drain_s)
    if telegram is not None:
        figures["telegram"] = await telegram_verdict(stack, telegram, replies, kills, args)
    plans = tally.plans
    figures.update(
        tracker_mismatches=mismatches, tracker_mismatch_examples=examples, **runs,
        conversations=len(plans), completed_conversations=sum(p.completed for p in plans),
        diverged_conversations=sum(bool(p.diverged) for p in plans),
        diverged_examples=[p.diverged for p in plans if p.diverged][:10],
        retried=sum(tally.retried.values()), retried_by_cause=dict(tally.retried),
        hard_errors=sum(tally.hard_errors.values()), hard_errors_by_status=dict(tally.hard_errors),
        retyped_after_not_understood=tally.retyped, abandoned_at_stop=tally.abandoned,
        kills=[vars(k) for k in kills], users=args.users,
        http_users=args.users - args.telegram_users, duration_s=round(duration, 1))
    return figures


async def telegram_verdict(stack: ProcessStack, telegram: Telegram, replies: list[Any],
                           kills: list[Kill], args: argparse.Namespace) -> dict[str, Any]:
    """The Telegram users' figures: on the stream (every accepted update answered, once, in
    order), their trackers, and at the fake (every stream message taken once, in order)."""
    tally = telegram.tally
    conversations = [p.conversation for p in tally.plans]
    stream = check_replies(tally, [r for r in replies if r.conversation_id in tally.order])
    mismatches, examples = await check_trackers(stack, tally.plans, args.drain_s)
    delivery = await wait_delivered(conversations, stack.nats.url, telegram.inbox,
                                    args.drain_s)
    for example in delivery["duplicate_examples"]:
        example["arrived_at_s"] = [round(at - telegram.began, 1)
                                   for at in example.pop("arrived_at")]
        first = example["arrived_at_s"][0]
        before = [k for k in kills if k.at_s <= first + 1.0]
        example["last_kill_before"] = f"{before[-1].component} at {before[-1].at_s} s" \
            if before else None
    plans = tally.plans
    return {
        "users": args.telegram_users, "conversations": len(plans),
        "completed_conversations": sum(p.completed for p in plans),
        "diverged_conversations": sum(bool(p.diverged) for p in plans),
        "diverged_examples": [p.diverged for p in plans if p.diverged][:10],
        "updates": tally.updates, "accepted": len(tally.accepted),
        "redeliveries": tally.redeliveries, "redelivered_by_cause": dict(tally.retried),
        "replies": delivery["replies"], "delivered": delivery["delivered"],
        "lost": delivery["lost"], "duplicated": delivery["duplicated"],
        "out_of_order": delivery["out_of_order"],
        "duplicate_examples": delivery["duplicate_examples"][:20],
        "unanswered": stream["lost"], "stream_duplicated": stream["duplicated"],
        "stream_out_of_order": stream["out_of_order"],
        "tracker_mismatches": mismatches, "tracker_mismatch_examples": examples,
        "retyped_after_not_understood": tally.retyped, "abandoned": tally.abandoned,
        "platform_429s": telegram.fake.refused[429], "platform_500s": telegram.fake.refused[500]}


FAILURE_KEYS = ("lost", "duplicated", "out_of_order", "tracker_mismatches",
                "rpa_duplicate_side_effects", "rpa_unfinished", "rpa_missing_side_effects")
TELEGRAM_FAILURE_KEYS = ("lost", "duplicated", "out_of_order", "unanswered",
                         "stream_duplicated", "stream_out_of_order", "tracker_mismatches")


def failures(result: dict[str, Any]) -> list[str]:
    """What went wrong: the non-zero loss counters and the kills that never recovered."""
    found = [f"{k}={result[k]}" for k in FAILURE_KEYS if result.get(k)]
    telegram = result.get("telegram") or {}
    found += [f"telegram.{k}={telegram[k]}" for k in TELEGRAM_FAILURE_KEYS if telegram.get(k)]
    found += [f"{k['component']} did not recover" for k in result["kills"] if not k["recovered"]]
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="each component killed once, the whole run under two minutes")
    parser.add_argument("--users", type=int, default=50, help="concurrent conversations")
    parser.add_argument("--telegram-users", type=int, default=None,
                        help="of --users, those talking through the Telegram channel "
                             "(default: a fifth; 0: none)")
    parser.add_argument("--telegram-fault-share", type=float, default=0.04,
                        help="the share of the fake Bot API's sendMessage calls refused "
                             "(half 429 retry_after 1, half 500)")
    parser.add_argument("--minutes", type=float, default=5.0, help="load time (full run)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", type=Path, default=ROOT / ".botfactory" / "models" / "banking")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.telegram_users is None:
        args.telegram_users = args.users // 5
    if not 0 <= args.telegram_users <= args.users:
        parser.error("--telegram-users: from 0 to --users")
    args.think_s, args.confirm_share = 0.5, 0.3
    args.warmup_s, args.tail_s, args.drain_s = (4.0, 3.0, 45.0) if args.quick else \
        (15.0, 15.0, 90.0)
    args.gap_s = (2.0, 4.0) if args.quick else (10.0, 30.0)
    return args


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start the stack, run the chaos, stop the stack; the result (not written)."""
    ensure_model(args.model)
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    stack = ProcessStack(workdir, StackOptions(
        model=args.model, dialogues=2, with_rpa=True, dialogue_ack_wait_s=5.0,
        rpa_ack_wait_s=5.0, sync_wait_s=5.0))
    started = time.perf_counter()
    try:
        stack.start()
        result = asyncio.run(chaos_run(stack, args))
    finally:
        stack.stop()
    result.update(benchmark="chaos", quick=args.quick, cpus=os.cpu_count(), seed=args.seed,
                  wall_s=round(time.perf_counter() - started, 1),
                  created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    result["failures"] = failures(result)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = bench_workdir("chaos")
    result = run(args, workdir)
    discard_workdir(workdir, not result["failures"])
    keys = ("accepted", "lost", "duplicated", "out_of_order", "tracker_mismatches",
            "rpa_runs", "rpa_duplicate_side_effects", "retried", "hard_errors", "wall_s")
    print(" ".join(f"{k}={result[k]}" for k in keys))
    if "telegram" in result:
        print("telegram: " + " ".join(
            f"{k}={result['telegram'][k]}" for k in (
                "users", "updates", "accepted", "redeliveries", "replies", "delivered", "lost",
                "duplicated", "out_of_order", "unanswered", "tracker_mismatches",
                "platform_429s", "platform_500s")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.out == RESULTS:
        from benchmarks.reliability_doc import write_doc

        print(f"wrote {write_doc()}")
    if result["failures"]:
        print("FAILED: " + "; ".join(result["failures"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
