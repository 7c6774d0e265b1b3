"""End-to-end load: the local stack (nats-server, NLU, dialogue, gateway as separate processes,
benchmarks/stack.py) driven through the HTTP API by a light asyncio generator.

    python benchmarks/e2e_load.py [--quick] [--shapes users,telegram,saturation,step,soak]
        [--users 50] [--connections 10] [--duration 30] [--rounds 4]
        [--steps 25,50,100,200,400] [--step-seconds 30] [--soak-minutes 10]

Shapes: `users` (N conversations, each waits for the reply then thinks ~Exp(200 ms), and thinks
once before its first message so that the users do not start in lockstep), `telegram` (the
users shape through the Telegram channel: each user is a Telegram chat that POSTs updates to
the gateway's webhook and waits for the bot's reply at a fake Telegram Bot API in this process;
latency from the update's POST to the reply's arrival at the fake, and `added_p50_ms_vs_users`
against the users shape of the same run; with both, the two take turns in `--rounds` rounds
each, so that a slow spell of a shared host weighs on both alike), `saturation` (C
connections sending back to back), `step` (the users shape at 25 -> 400 conversations; the knee
is the highest message rate whose p99 is still <= 100 ms) and `soak` (the users shape held for
minutes while each process's RSS, open file descriptors and threads are sampled; memory growth
after the warm-up). Reports p50/p99 latency, messages/s, errors, lost replies (answered 200
without its replies; the message ids repeat in every conversation, so a message deduplicated
across conversations counts as lost; telegram: no reply at the fake within 10 s), late ones
(202: accepted, replies after the gateway's sync wait), handed-off ones (answered at once
without replies: a human agent has the conversation, which a model that falls back often brings
about), duplicated and out-of-order replies (telegram: more replies than the HTTP API gives the
text, and a reply to a chat's earlier message arriving while its next one waits), the CPU
milliseconds per message of every process, the host's speed just before the shape
(`host_yardstick`: fixed Python and memory workloads, benchmarks/stack.py; lower = faster) and
the generator's own CPU share; writes benchmarks/results/e2e_load.json (shapes not run keep
their earlier figures, each with its `measured_at`), then regenerates docs/reliability.md.
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
import secrets
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.fake_telegram import (  # noqa: E402
    TELEGRAM_SECRET_HEADER,
    FakeBotApi,
    bot_token,
    set_up_telegram,
    telegram_update,
)
from benchmarks.nlu_latency import percentile  # noqa: E402
from benchmarks.reliability_doc import write_doc  # noqa: E402
from benchmarks.stack import (  # noqa: E402
    ProcessStack,
    StackOptions,
    bench_workdir,
    client_key,
    cpu_seconds,
    discard_workdir,
    ensure_model,
    host_yardstick,
)

RESULTS = ROOT / "benchmarks" / "results" / "e2e_load.json"
SHAPES = ("users", "telegram", "saturation", "step", "soak")
LOSS_KEYS = ("errors", "lost", "late", "duplicated", "out_of_order")
P99_TARGET_MS = 100.0
WARMUP_SHARE = 0.2  # of the soak, before memory is compared
FLAT_PCT = 10.0
# Intents whose flows answer at once (no workflow), so every message has a synchronous reply.
TEXTS = ["hello", "hi there", "good morning", "what are your opening hours?",
         "when are you open on saturday", "what are the fees for a transfer",
         "how much does a card cost", "thanks a lot", "thank you", "what can you do?",
         "help me please", "bye", "goodbye", "are you open on sundays", "do you charge fees"]
THINK_S = 0.2  # the users' mean think time
# The telegram shape: a reply not at the fake within this long after its update is lost; after
# the last update, replies still arriving within the grace are counted (duplicates).
LOST_AFTER_S = 10.0
GRACE_S = 0.5
CALIBRATION_ROUNDS = 4  # fresh HTTP conversations per text: the replies each text gets


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    lost: int = 0
    late: int = 0  # 202: accepted, the replies came after the gateway's sync wait
    handed_off: int = 0  # answered at once without replies: a human agent has the conversation
    duplicated: int = 0
    out_of_order: int = 0

    def merge(self, other: Tally) -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        self.lost += other.lost
        self.late += other.late
        self.handed_off += other.handed_off
        self.duplicated += other.duplicated
        self.out_of_order += other.out_of_order


async def send(session: Any, url: str, key: str, text: str, message_id: str,
               tally: Tally) -> None:
    started = time.perf_counter()
    try:
        async with session.post(url, json={"text": text, "message_id": message_id},
                                headers={"Authorization": f"Bearer {key}"}) as response:
            body = await response.json()
            status = response.status
    except Exception:  # connection errors count as errors, the run goes on
        tally.errors += 1
        return
    tally.latencies.append(time.perf_counter() - started)
    if status not in (200, 202):
        tally.errors += 1
        return
    replies = body.get("replies", [])
    if status == 202:
        tally.late += 1
    elif body.get("handoff") and not replies:
        tally.handed_off += 1
    elif not body.get("complete") or not replies or body.get("duplicate"):
        tally.lost += 1
    ids = [r["message_id"] for r in replies]
    tally.duplicated += len(ids) - len(set(ids))
    tally.out_of_order += sum(1 for r in replies if r.get("in_reply_to") != message_id)
    tally.out_of_order += sum(1 for a, b in itertools.pairwise(ids)
                              if int(a.rsplit(":", 1)[1]) > int(b.rsplit(":", 1)[1]))


async def user(session: Any, base: str, key: str, name: str, deadline: float, think: float,
               rng: random.Random) -> Tally:
    """One conversation: send, wait for the reply, think ~Exp(`think`), again. With a think
    time the user also thinks before its first message, as if it had just read a reply:
    users that all sent their first message in the same instant would measure a burst that
    no population of real users makes, not the steady state."""
    tally = Tally()
    url = f"{base}/v1/bots/banking/conversations/{name}/messages"
    n = 0
    if think > 0:
        await asyncio.sleep(rng.expovariate(1 / think))
    while time.perf_counter() < deadline:
        # ids unique per conversation only: every conversation uses m-0, m-1, ... (as
        # messaging platforms number messages per chat), so they collide across conversations
        await send(session, url, key, rng.choice(TEXTS), f"m-{n}", tally)
        n += 1
        if think > 0:
            await asyncio.sleep(rng.expovariate(1 / think))
    return tally


@dataclass
class Measured:
    """What one or more rounds of a shape measured, before it is summed up (`figures`)."""

    total: Tally = field(default_factory=Tally)
    messages: int = 0
    elapsed: float = 0.0

    def add(self, other: Measured) -> None:
        self.total.merge(other.total)
        self.messages += other.messages
        self.elapsed += other.elapsed

    def figures(self) -> dict[str, Any]:
        return figures(self.total, self.messages, self.elapsed)


async def shape(base: str, key: str, concurrency: int, duration: float, think: float,
                label: str) -> dict[str, Any]:
    return (await measure_users(base, key, concurrency, duration, think, label)).figures()


async def measure_users(base: str, key: str, concurrency: int, duration: float, think: float,
                        label: str) -> Measured:
    import aiohttp

    rng = random.Random(7)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        deadline = began + duration
        tallies = await asyncio.gather(*(
            user(session, base, key, f"{label}{secrets.token_hex(3)}{i}", deadline, think,
                 random.Random(rng.random())) for i in range(concurrency)))
        elapsed = time.perf_counter() - began
    total = Tally()
    for tally in tallies:
        total.merge(tally)
    return Measured(total, len(total.latencies), elapsed)


def figures(total: Tally, messages: int, elapsed: float) -> dict[str, Any]:
    ms = [v * 1000 for v in total.latencies] or [0.0]
    return {"messages": messages, "messages_per_s": round(messages / elapsed, 1),
            "p50_ms": round(percentile(ms, 50), 2), "p99_ms": round(percentile(ms, 99), 2),
            "errors": total.errors, "lost": total.lost, "late": total.late,
            "handed_off": total.handed_off,
            "duplicated": total.duplicated,
            "out_of_order": total.out_of_order, "duration_s": round(elapsed, 1)}


# --- the telegram shape ------------------------------------------------------------------------


@dataclass
class Chat:
    """One Telegram chat of the telegram shape, as the fake Bot API sees its replies."""

    awaited: str = ""  # the text whose replies are awaited
    previous: str = ""  # the text the chat sent before it
    remaining: int = 0  # replies of the awaited text still to come
    done: asyncio.Future[float] | None = None  # the arrival of its last reply
    owed: int = 0  # replies of messages given up on (lost, errors): theirs if they still come
    duplicated: int = 0
    out_of_order: int = 0


class FakeTelegram(FakeBotApi):
    """The fake Telegram Bot API (benchmarks/fake_telegram.py) that hands each reply, with its
    arrival time, to the chat waiting for it.

    `replies` (text sent -> the reply texts the HTTP API gives it) tells a reply to the chat's
    earlier message (out of order) from one to the message awaited; `expected` how many
    replies each text gets."""

    def __init__(self, token: str, replies: dict[str, set[str]],
                 expected: dict[str, int]) -> None:
        super().__init__(token)
        self.replies = replies
        self.expected = expected
        self.chats: dict[str, Chat] = {}

    def received(self, chat_id: str, text: str, at: float) -> None:
        chat = self.chats.get(chat_id)
        if chat is not None:
            self._arrived(chat, at, text)

    def _arrived(self, chat: Chat, at: float, text: str) -> None:
        waiting = chat.done is not None and not chat.done.done()
        earlier = (text in self.replies.get(chat.previous, ())
                   and text not in self.replies.get(chat.awaited, ()))
        if waiting and not earlier:
            chat.remaining -= 1
            if chat.remaining <= 0 and chat.done is not None:
                chat.done.set_result(at)
        elif chat.owed > 0:
            chat.owed -= 1  # the late reply of a message already counted
        elif waiting:
            chat.out_of_order += 1  # an earlier message's reply after the next was sent
        else:
            chat.duplicated += 1  # more replies than the message gets


async def calibrate(base: str, key: str) -> tuple[dict[str, set[str]], dict[str, int]]:
    """Through the HTTP API, in fresh conversations: the reply texts of each of TEXTS (their
    variants) and how many replies it gets (the most seen)."""
    import aiohttp

    replies: dict[str, set[str]] = {text: set() for text in TEXTS}
    expected = dict.fromkeys(TEXTS, 0)

    async def ask(session: Any, text: str, conversation: str) -> None:
        async with session.post(
                f"{base}/v1/bots/banking/conversations/{conversation}/messages",
                json={"text": text, "message_id": "m-0"},
                headers={"Authorization": f"Bearer {key}"}) as response:
            body = await response.json()
        found = [r["text"] for r in body.get("replies", [])]
        replies[text].update(found)
        expected[text] = max(expected[text], len(found))

    run = secrets.token_hex(3)
    async with aiohttp.ClientSession() as session:
        for round_ in range(CALIBRATION_ROUNDS):
            await asyncio.gather(*(ask(session, text, f"cal{run}r{round_}t{index}")
                                   for index, text in enumerate(TEXTS)))
    silent = [text for text, count in expected.items() if count == 0]
    if silent:
        raise RuntimeError(f"no reply through the HTTP API to {silent}: the telegram shape "
                           "waits for each message's replies")
    return families(replies), expected


def families(replies: dict[str, set[str]]) -> dict[str, set[str]]:
    """Each text's replies joined with those of every text that shares one with it (texts of
    one intent: a variant seen for one of them is one of all of theirs)."""
    joined = {text: set(found) for text, found in replies.items()}
    changed = True
    while changed:
        changed = False
        for found in joined.values():
            for more in joined.values():
                if found & more and not more <= found:
                    found |= more
                    changed = True
    return joined


@dataclass
class TelegramRun:
    """What the users of one telegram shape share."""

    session: Any
    url: str
    secret: str
    fake: FakeTelegram
    update_ids: Iterator[int]


async def send_update(run: TelegramRun, chat_id: int, chat: Chat, text: str,
                      tally: Tally) -> bool:
    """POST one update and wait for its replies at the fake; whether the gateway took it."""
    chat.previous, chat.awaited = chat.awaited, text
    chat.remaining = run.fake.expected[text]
    done = chat.done = asyncio.get_running_loop().create_future()
    started = time.perf_counter()
    try:
        async with run.session.post(
                run.url, json=telegram_update(next(run.update_ids), chat_id, text),
                headers={TELEGRAM_SECRET_HEADER: run.secret}) as response:
            await response.read()
            status = response.status
    except Exception:  # connection errors count as errors, the run goes on
        status = 0
    if status != 200:
        tally.errors += 1
        done.cancel()
        chat.owed += chat.remaining  # it may have been taken all the same
        return False
    try:
        arrived = await asyncio.wait_for(done, LOST_AFTER_S - (time.perf_counter() - started))
    except TimeoutError:
        tally.lost += 1
        chat.owed += chat.remaining
        return True
    tally.latencies.append(arrived - started)
    return True


async def chat_user(run: TelegramRun, chat_id: int, deadline: float, think: float,
                    rng: random.Random) -> tuple[Tally, int]:
    """The users shape's user as a Telegram chat: an update, its reply at the fake, think."""
    tally, taken = Tally(), 0
    chat = run.fake.chats[str(chat_id)] = Chat()
    if think > 0:
        await asyncio.sleep(rng.expovariate(1 / think))
    while time.perf_counter() < deadline:
        taken += await send_update(run, chat_id, chat, rng.choice(TEXTS), tally)
        if think > 0:
            await asyncio.sleep(rng.expovariate(1 / think))
    return tally, taken


async def measure_telegram(base: str, fake: FakeTelegram, secret: str, concurrency: int,
                           duration: float, think: float) -> Measured:
    import aiohttp

    rng = random.Random(7)
    # a chat per user, fresh every shape (the warm-up's included): a chat's update ids are its
    # message ids, taken once per conversation
    first_chat = 10**9 + secrets.randbelow(10**9)
    update_ids = itertools.count(10**8 + secrets.randbelow(10**8))
    chats = [first_chat + i for i in range(concurrency)]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        run = TelegramRun(session, f"{base}/v1/channels/telegram/banking", secret, fake,
                          update_ids)
        began = time.perf_counter()
        deadline = began + duration
        done = await asyncio.gather(*(
            chat_user(run, chat_id, deadline, think, random.Random(rng.random()))
            for chat_id in chats))
        elapsed = time.perf_counter() - began
    await asyncio.sleep(GRACE_S)  # a duplicate of a last reply still counts
    total = Tally()
    for tally, _ in done:
        total.merge(tally)
    for chat_id in chats:
        chat = fake.chats.pop(str(chat_id))
        total.duplicated += chat.duplicated
        total.out_of_order += chat.out_of_order
    return Measured(total, sum(taken for _, taken in done), elapsed)


async def drive(stack: ProcessStack, args: argparse.Namespace) -> dict[str, Any]:
    key = await client_key(stack.base_url, stack.admin_key)
    await shape(stack.base_url, key, 4, 2.0, 0.0, "warm")
    results: dict[str, Any] = {}
    meter = CpuMeter(stack)
    fake = await start_telegram(stack, key) if "telegram" in args.shapes else None
    try:
        results.update(await paired_shapes(stack, key, args, meter, fake))
    finally:
        if fake is not None:
            await fake[0].stop()
    if "telegram" in results and "users" in results:
        for figure in ("p50", "p99"):
            results["telegram"][f"added_{figure}_ms_vs_users"] = round(
                results["telegram"][f"{figure}_ms"] - results["users"][f"{figure}_ms"], 2)
        print(f"  telegram: added p50 {results['telegram']['added_p50_ms_vs_users']} ms, "
              f"p99 {results['telegram']['added_p99_ms_vs_users']} ms over the users shape",
              flush=True)
    if "saturation" in args.shapes:
        yardstick = host_yardstick()
        before = per_process_cpu(stack)
        with meter:
            results["saturation"] = await shape(stack.base_url, key, args.connections,
                                                args.duration, 0.0, "saturation")
        results["saturation"].update(
            connections=args.connections, host_yardstick=yardstick,
            cpu_ms_per_message=cpu_per_message(before, per_process_cpu(stack),
                                               results["saturation"]["messages"]))
        report("saturation", results["saturation"])
    if "step" in args.shapes:
        with meter:
            results["step"] = await step_load(stack.base_url, key, args.steps, args.step_seconds)
    if "soak" in args.shapes:
        with meter:
            results["soak"] = await soak(stack, key, args.users, args.soak_minutes * 60,
                                         args.sample_s)
    results.update(meter.figures())
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for label in SHAPES:
        if label in results:
            results[label]["measured_at"] = now
    return results


async def paired_shapes(stack: ProcessStack, key: str, args: argparse.Namespace,
                        meter: CpuMeter, fake: tuple[FakeTelegram, str] | None
                        ) -> dict[str, Any]:
    """The users and telegram shapes. Both selected, they take turns in `args.rounds` rounds
    each (users, telegram, users, ...; `--duration` split between the rounds), so that a
    shared host's slow spell weighs on both alike: their difference is the figure."""
    labels = [label for label in ("users", "telegram") if label in args.shapes]
    rounds = args.rounds if len(labels) == 2 else 1
    measured = {label: Measured() for label in labels}
    cpu: dict[str, dict[str, float]] = {label: {} for label in labels}
    yardsticks: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    for _ in range(rounds):
        for label in labels:
            yardsticks[label].append(host_yardstick())
            before = per_process_cpu(stack)
            with meter:
                if label == "telegram" and fake is not None:
                    got = await measure_telegram(stack.base_url, *fake, args.users,
                                                 args.duration / rounds, THINK_S)
                else:
                    got = await measure_users(stack.base_url, key, args.users,
                                              args.duration / rounds, THINK_S, label)
            measured[label].add(got)
            after = per_process_cpu(stack)
            for name in after:
                if name in before:
                    cpu[label][name] = cpu[label].get(name, 0.0) + after[name] - before[name]
    results = {}
    for label in labels:
        figures_ = results[label] = measured[label].figures()
        figures_["conversations"] = args.users
        figures_["rounds"] = rounds
        figures_["host_yardstick"] = {
            k: round(statistics.median(y[k] for y in yardsticks[label]), 2)
            for k in yardsticks[label][0]}
        figures_["cpu_ms_per_message"] = {
            name: round(seconds * 1000 / max(figures_["messages"], 1), 2)
            for name, seconds in cpu[label].items()}
        report(label, figures_)
    return results


def report(label: str, figures_: dict[str, Any]) -> None:
    print(f"{label:>10}: " + ", ".join(f"{k}={v}" for k, v in figures_.items()), flush=True)


async def start_telegram(stack: ProcessStack, key: str) -> tuple[FakeTelegram, str]:
    """The fake Bot API, the bot's telegram channel pointed at it, and a short warm-up of the
    channel's path (its KV buckets, the outbox's connection to the fake)."""
    replies, expected = await calibrate(stack.base_url, key)
    fake = FakeTelegram(bot_token(), replies, expected)
    api_base = await fake.start()
    secret = secrets.token_hex(16)
    try:
        await set_up_telegram(stack.base_url, stack.admin_key, fake.token, api_base, secret)
        warm = (await measure_telegram(stack.base_url, fake, secret, 4, 2.0, 0.0)).total
    except BaseException:
        await fake.stop()
        raise
    if warm.errors or warm.lost:
        print(f"  telegram warm-up: {warm.errors} errors, {warm.lost} lost", flush=True)
    return fake, secret


def keep_unmeasured(results: dict[str, Any], previous_file: Path) -> None:
    """Shapes not run this time keep their figures from `previous_file` (each shape says when
    it was measured), so one shape can be re-measured without the 10-minute soak."""
    if not previous_file.is_file():
        return
    previous = json.loads(previous_file.read_text())
    for label in SHAPES:
        if label not in results and isinstance(previous.get(label), dict):
            results[label] = {**previous[label],
                              "measured_at": previous[label].get("measured_at",
                                                                 previous.get("created_at"))}


def per_process_cpu(stack: ProcessStack) -> dict[str, float]:
    found = {}
    for name, pid in stack.pids().items():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            found[name] = cpu_seconds(pid)
    return found


def cpu_per_message(before: dict[str, float], after: dict[str, float],
                    messages: int) -> dict[str, float]:
    """Where the CPU of one message goes: milliseconds per message by process."""
    return {name: round((after[name] - before[name]) * 1000 / max(messages, 1), 2)
            for name in after if name in before}


class CpuMeter:
    """CPU seconds of this generator and of the stack's processes over the measured shapes."""

    def __init__(self, stack: ProcessStack) -> None:
        self.stack = stack
        self.gen_cpu = self.stack_cpu = 0.0
        self._cpu0 = self._stack0 = 0.0

    def __enter__(self) -> None:
        self._cpu0, self._stack0 = time.process_time(), self.stack.cpu_seconds()

    def __exit__(self, *_: object) -> None:
        self.gen_cpu += time.process_time() - self._cpu0
        self.stack_cpu += self.stack.cpu_seconds() - self._stack0

    def figures(self) -> dict[str, float]:
        return {"generator_cpu_share": round(self.gen_cpu / max(self.gen_cpu + self.stack_cpu,
                                                                1e-9), 3),
                "generator_cpu_s": round(self.gen_cpu, 2),
                "stack_cpu_s": round(self.stack_cpu, 2)}


async def step_load(base: str, key: str, steps: Sequence[int], seconds: float) -> dict[str, Any]:
    """The users shape at growing concurrency; the knee is the highest message rate whose p99
    still meets the target."""
    levels = []
    for concurrency in steps:
        figures = await shape(base, key, concurrency, seconds, 0.2, f"step{concurrency}-")
        figures["conversations"] = concurrency
        levels.append(figures)
        print(f"      step: {concurrency} conversations: {figures['messages_per_s']} msg/s, "
              f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
              f"errors {figures['errors']}", flush=True)
    meeting = [lv for lv in levels if lv["p99_ms"] <= P99_TARGET_MS and lv["errors"] == 0
               and lv["lost"] == 0 and lv["late"] == 0]
    knee = max(meeting, key=lambda lv: lv["messages_per_s"]) if meeting else None
    return {"p99_target_ms": P99_TARGET_MS, "seconds_per_step": seconds, "levels": levels,
            "knee_messages_per_s": knee["messages_per_s"] if knee else None,
            "knee_conversations": knee["conversations"] if knee else None,
            **{k: sum(int(lv[k]) for lv in levels) for k in LOSS_KEYS}}


async def soak(stack: ProcessStack, key: str, users: int, seconds: float,
               sample_s: float) -> dict[str, Any]:
    """The users shape held for `seconds`, sampling each process's RSS / fds / threads."""
    samples: list[tuple[float, dict[str, dict[str, float]]]] = []
    began = time.perf_counter()

    async def sample() -> None:
        while True:
            samples.append((time.perf_counter() - began, stack.stats()))
            await asyncio.sleep(sample_s)

    sampler = asyncio.create_task(sample())
    try:
        figures = await shape(stack.base_url, key, users, seconds, 0.2, "soak")
    finally:
        sampler.cancel()
    figures["conversations"] = users
    figures["services"] = growth(samples, warmup_s=seconds * WARMUP_SHARE)
    figures["warmup_s"] = round(seconds * WARMUP_SHARE, 1)
    figures["memory_flat"] = all(abs(s["rss_growth_pct"]) <= FLAT_PCT
                                 for s in figures["services"].values())
    print("      soak: " + ", ".join(f"{k}={v}" for k, v in figures.items()
                                     if k != "services"), flush=True)
    for name, s in figures["services"].items():
        print(f"            {name}: " + ", ".join(f"{k}={v}" for k, v in s.items()), flush=True)
    return figures


def growth(samples: Sequence[tuple[float, dict[str, dict[str, float]]]],
           warmup_s: float) -> dict[str, dict[str, float]]:
    """Per process: RSS / fds / threads just after the warm-up and at the end, and the RSS
    growth between them (means over the first and last quarter of the post-warm-up samples)."""
    after = [stats for at, stats in samples if at >= warmup_s] or [samples[-1][1]]
    quarter = max(1, len(after) // 4)
    result = {}
    for name in after[-1]:
        first = [s[name] for s in after[:quarter] if name in s]
        last = [s[name] for s in after[-quarter:] if name in s]
        if not first or not last:
            continue
        start = statistics.fmean(s["rss_mb"] for s in first)
        end = statistics.fmean(s["rss_mb"] for s in last)
        result[name] = {"rss_start_mb": round(start, 1), "rss_end_mb": round(end, 1),
                        "rss_growth_pct": round((end - start) / start * 100, 1),
                        "fds_start": first[0]["fds"], "fds_end": last[-1]["fds"],
                        "threads_start": first[0]["threads"], "threads_end": last[-1]["threads"]}
    return result


def totals(results: dict[str, Any]) -> dict[str, int]:
    shapes: Sequence[dict[str, Any]] = [results[s] for s in SHAPES if s in results]
    return {k: sum(int(s[k]) for s in shapes) for k in LOSS_KEYS}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="every shape shortened: the whole run in under a minute")
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help=f"comma list of shapes to run (of {', '.join(SHAPES)})")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds of the users, telegram and saturation shapes")
    parser.add_argument("--rounds", type=int, default=4,
                        help="users and telegram both run: the turns each takes, alternating")
    parser.add_argument("--steps", default="25,50,100,200,400",
                        help="conversations of each step of the step shape")
    parser.add_argument("--step-seconds", type=float, default=30.0)
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--sample-s", type=float, default=5.0, help="soak sampling period")
    parser.add_argument("--model", type=Path, default=ROOT / ".botfactory" / "models" / "banking")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = sorted(set(args.shapes) - set(SHAPES))
    if unknown:
        parser.error(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    args.steps = [int(n) for n in args.steps.split(",")]
    if args.quick:
        args.duration, args.step_seconds = 5.0, 2.5
        args.soak_minutes, args.sample_s = 8 / 60, 1.0
    return args


def main() -> int:
    args = parse_args()
    ensure_model(args.model)
    workdir = bench_workdir("e2e")
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    stack = ProcessStack(workdir, StackOptions(model=args.model))
    ok = False
    try:
        stack.start()
        results = asyncio.run(drive(stack, args))
        ok = True
    finally:
        stack.stop()
        discard_workdir(workdir, ok)
    if args.out == RESULTS and not args.quick:
        keep_unmeasured(results, RESULTS)
    results.update(totals(results))
    results.update(benchmark="e2e_load", quick=args.quick, cpus=os.cpu_count(),
                   shapes=args.shapes,
                   created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    print(f"errors={results['errors']} lost={results['lost']} "
          f"duplicated={results['duplicated']} out_of_order={results['out_of_order']} "
          f"generator_cpu_share={results['generator_cpu_share']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.out == RESULTS:
        print(f"wrote {write_doc()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
