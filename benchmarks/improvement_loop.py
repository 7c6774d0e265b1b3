"""The improvement loop end to end on Banking77: production traffic → review queue → labels →
warm-start retraining → regression gate → rollout under load, round after round.

    python benchmarks/improvement_loop.py [--data DIR] [--rounds 3] [--seed 13] [--quick]
        [--base-model PATH] [--out FILE]

1. A bot folder from a stratified, seeded share (`--initial-share`, 20%) of DIR/train.csv,
   through `botfactory import csv`; `--frozen-per-intent` more examples per intent become its
   frozen test set (tests/nlu.yml, for the gate); the rest of train.csv is the traffic pool.
2. `botfactory train`, then nats-server, NLU (following the model store), dialogue and gateway
   as processes (benchmarks/stack.py) and `botfactory publish` of the first model.
3. Each round replays a slice of the pool through the gateway's HTTP API (each utterance a new
   conversation), waits for the dialogue's review collector to queue them, decides the queued
   items from the gold labels through the review API (a simulated reviewer, highest priority
   first, at most `--label-budget` a round), runs `botfactory review apply` into the bot folder,
   retrains with `--from` the active model, runs `botfactory gate` against it and, when the gate
   passes, `botfactory publish --gate` while clients keep sending messages through the gateway
   and parsing on the NLU server: every failed request is counted.
4. Accuracy on DIR/test.csv is measured through the serving engine (int8) for every model.

Writes `--out` (default benchmarks/results/improvement_loop.json): `rounds` (round 0 is the
first model; each with `train_examples` and `accuracy`) and `failed_requests`. Without the data
it exits 2 with a message; `--if-data` (or BOTFACTORY_BENCH_IF_DATA=1, set by `make bench`)
prints "skipped: ..." and exits 0 instead.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import aiohttp  # noqa: E402

from benchmarks.paths import shown  # noqa: E402
from benchmarks.stack import ProcessStack, StackOptions, client_key  # noqa: E402
from services.botdef import Example  # noqa: E402
from services.common.nats import without_passwords  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "improvement_loop.json"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "banking77"
BOT = "banking77"
NOT_UNDERSTOOD = ("trouble understanding", "something went wrong on our side")
REQUEST_TIMEOUT_S = 30.0
QUEUE_TIMEOUT_S = 120.0
SWITCH_TIMEOUT_S = 120.0
EXIT_NO_DATA = 2


class LoopError(RuntimeError):
    """A step of the loop failed; the message says which and why."""


@dataclass(frozen=True)
class Split:
    initial: list[Example]
    frozen: list[Example]
    pool: list[Example]
    test: list[Example]


@dataclass
class Tally:
    sent: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


# --- data -----------------------------------------------------------------------------------


def load_data(data: Path, intents: int | None, per_intent: int | None,
              test_per_intent: int | None, seed: int) -> tuple[list[Example], list[Example]]:
    from services.botdef import import_csv

    train, test = import_csv(data / "train.csv"), import_csv(data / "test.csv")
    names = sorted({e.intent for e in train})
    if intents is not None:
        names = sorted(random.Random(seed).sample(names, min(intents, len(names))))
    return (_capped(train, set(names), per_intent, seed),
            _capped(test, set(names), test_per_intent, seed))


def _capped(examples: Sequence[Example], names: set[str], cap: int | None,
            seed: int) -> list[Example]:
    grouped = _by_intent([e for e in examples if e.intent in names], seed)
    return [e for group in grouped.values() for e in group[:cap]]


def _by_intent(examples: Sequence[Example], seed: int) -> dict[str, list[Example]]:
    grouped: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        grouped[example.intent].append(example)
    rng = random.Random(seed)
    for name in sorted(grouped):
        rng.shuffle(grouped[name])
    return dict(sorted(grouped.items()))


def split(train: Sequence[Example], test: list[Example], share: float, frozen: int,
          seed: int) -> Split:
    """Stratified: per intent `share` of the examples (at least 2) to start with, `frozen` for
    the gate's frozen set, the rest (shuffled across intents) as traffic."""
    initial, frozen_set, pool = [], [], []
    for group in _by_intent(train, seed).values():
        first = max(2, round(share * len(group)))
        initial += group[:first]
        frozen_set += group[first:first + frozen]
        pool += group[first + frozen:]
    random.Random(seed).shuffle(pool)
    return Split(initial, frozen_set, pool, test)


def write_csv(path: Path, examples: Sequence[Example]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["text", "category"])
        writer.writerows([e.text, e.intent] for e in examples)
    return path


def write_frozen(bot_dir: Path, examples: Sequence[Example]) -> None:
    from services.botdef import format_annotated
    from services.botdef.yamlio import dump_yaml

    grouped: dict[str, list[str]] = defaultdict(list)
    for example in examples:
        grouped[example.intent].append(format_annotated(example))
    document = {"intents": [{"name": n, "examples": t} for n, t in grouped.items()]}
    (bot_dir / "tests").mkdir(parents=True, exist_ok=True)
    (bot_dir / "tests" / "nlu.yml").write_text(dump_yaml(document), encoding="utf-8")


def train_examples(bot_dir: Path) -> int:
    from services.botdef import load_bot

    return len(load_bot(bot_dir).examples())


def accuracy(model_dir: Path, test: Sequence[Example]) -> float:
    """Intent accuracy on `test` through the serving engine (int8, as served)."""
    from botfactory.commands.evaluate import load_model
    from botfactory.evaluation.metrics import accuracy as intent_accuracy

    model = load_model(model_dir, quantized=True)
    predicted = [p.intent for p in model.predict([e.text for e in test], batch_size=64)]
    return round(intent_accuracy([e.intent for e in test], predicted), 4)


def model_version(model_dir: Path) -> str:
    return str(json.loads((model_dir / "metadata.json").read_text())["version"])


# --- the CLI ----------------------------------------------------------------------------------


def botfactory(log: Path, *args: str, ok: tuple[int, ...] = (0,)) -> int:
    """Run `botfactory ARGS` (output appended to `log`); LoopError unless its status is ok."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ botfactory {without_passwords(' '.join(args))}\n")
        out.flush()
        code = subprocess.run([sys.executable, "-m", "botfactory", *args], cwd=ROOT, env=env,
                              stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code not in ok:
        tail = "\n".join(log.read_text(encoding="utf-8").splitlines()[-15:])
        raise LoopError(f"botfactory {args[0]} exited {code}:\n{tail}")
    return code


def train(log: Path, bot_dir: Path, out: Path, args: argparse.Namespace,
          parent: Path | None) -> float:
    began = time.perf_counter()
    extra = ["--from", str(parent)] if parent is not None else (
        ["--base-model", args.base_model] if args.base_model else [])
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    botfactory(log, "train", str(bot_dir), "--out", str(out), "--seed", str(args.seed),
               "--quiet", *epochs, *extra)
    return round(time.perf_counter() - began, 1)


# --- traffic, review, rollout --------------------------------------------------------------


class Gateway:
    """The gateway's HTTP API with a client key (messages) and the admin key (review)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, client: str,
                 admin: str) -> None:
        self.session, self.base_url = session, base_url
        self.client = {"Authorization": f"Bearer {client}"}
        self.admin = {"Authorization": f"Bearer {admin}"}

    async def say(self, text: str, tally: Tally) -> None:
        """One message in a new conversation; a failure is counted, never raised."""
        url = f"{self.base_url}/v1/bots/{BOT}/conversations/{uuid.uuid4().hex[:16]}/messages"
        tally.sent += 1
        try:
            async with self.session.post(url, json={"text": text}, headers=self.client,
                                         timeout=aiohttp.ClientTimeout(REQUEST_TIMEOUT_S)) as r:
                body = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            tally.fail(type(exc).__name__)
            return
        replies = " ".join(str(m.get("text", "")) for m in (body or {}).get("replies", []))
        if r.status not in (200, 202):
            tally.fail(f"http {r.status}")
        elif any(marker in replies.lower() for marker in NOT_UNDERSTOOD):
            tally.fail("nlu unavailable")

    async def admin_call(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.base_url}/v1/admin/bots/{BOT}/review{path}"
        async with self.session.request(method, url, json=body, headers=self.admin) as r:
            found = await r.json(content_type=None)
            if r.status >= 300:
                raise LoopError(f"{method} {url}: HTTP {r.status}: {found}")
            return found


async def replay(gateway: Gateway, texts: Sequence[str], concurrency: int) -> Tally:
    tally = Tally()
    queue = list(reversed(texts))

    async def worker() -> None:
        while queue:
            await gateway.say(queue.pop(), tally)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


async def collector_drained(nats_url: str) -> None:
    """Wait until the dialogue's review collector has processed every conversation event."""
    from services.common.nats import connect

    bus = await connect(nats_url, name="improvement-loop")
    try:
        deadline = time.monotonic() + QUEUE_TIMEOUT_S
        while time.monotonic() < deadline:
            info = await bus.js.consumer_info("CONV", "review")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.3)
        raise LoopError(f"the review collector did not catch up within {QUEUE_TIMEOUT_S:.0f}s")
    finally:
        await bus.drain()


async def auto_label(gateway: Gateway, gold: dict[str, str], budget: int | None) -> dict[str, int]:
    """Decide pending items from the gold labels (highest priority first): items whose text is
    not from the traffic are skipped. Returns counts of labelled, skipped and queued items."""
    from services.common.reviewqueue import item_id

    labels = {item_id(text): intent for text, intent in gold.items()}
    counts = {"queued": 0, "labelled": 0, "skipped": 0}
    while budget is None or counts["labelled"] < budget:
        items = (await gateway.admin_call("GET", "?status=pending&limit=500"))["items"]
        if not items:
            break
        counts["queued"] += len(items)
        for item in items:
            if budget is not None and counts["labelled"] >= budget:
                break
            intent = labels.get(item["id"])
            if intent is None:
                await gateway.admin_call("POST", "/skips", {"item": item["id"]})
                counts["skipped"] += 1
                continue
            await gateway.admin_call("POST", "/decisions", {"item": item["id"], "intent": intent})
            counts["labelled"] += 1
    return counts


class Load:
    """Clients sending messages through the gateway and parsing on the NLU server."""

    def __init__(self, gateway: Gateway, stub: Any, texts: Sequence[str], clients: int) -> None:
        self.gateway, self.stub, self.texts, self.clients = gateway, stub, texts, clients
        self.tally = Tally()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(n)) for n in range(self.clients)]

    async def stop(self) -> Tally:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.tally

    async def _client(self, n: int) -> None:
        turn = n
        while not self._stop.is_set():
            text = self.texts[turn % len(self.texts)]
            turn += self.clients
            await self.gateway.say(text, self.tally)
            await parse(self.stub, text, self.tally)


async def parse(stub: Any, text: str, tally: Tally) -> str:
    """Parse `text` on the NLU server; the version that answered ("" on failure, counted)."""
    import grpc

    from services.common.pb.botfactory.v1 import nlu_pb2

    tally.sent += 1
    try:
        reply = await stub.Parse(nlu_pb2.ParseRequest(bot_id=BOT, text=text), timeout=10)
    except grpc.aio.AioRpcError as exc:
        tally.fail(f"grpc {exc.code().name}")
        return ""
    return str(reply.model_version)


async def rollout(stack: ProcessStack, gateway: Gateway, stub: Any, model_dir: Path,
                  texts: Sequence[str], log: Path, clients: int) -> dict[str, Any]:
    """`botfactory publish --gate` under load; waits until NLU serves the new version."""
    version = model_version(model_dir)
    load = Load(gateway, stub, texts, clients)
    load.start()
    await asyncio.sleep(1.0)
    began = time.perf_counter()
    await asyncio.to_thread(botfactory, log, "publish", str(model_dir), "--gate",
                            "--nats", stack.nats.url)
    probe = Tally()
    while await parse(stub, texts[0], probe) != version:
        if time.perf_counter() - began > SWITCH_TIMEOUT_S:
            await load.stop()
            raise LoopError(f"NLU did not serve {version} within {SWITCH_TIMEOUT_S:.0f}s")
        await asyncio.sleep(0.1)
    switch_s = time.perf_counter() - began
    await asyncio.sleep(1.0)
    tally = await load.stop()
    return {"version": version, "switch_s": round(switch_s, 2), "requests": tally.sent,
            "failed": tally.failed + probe.failed, "failures": tally.reasons}


# --- the loop ---------------------------------------------------------------------------------


@dataclass
class Loop:
    args: argparse.Namespace
    data: Split
    workdir: Path
    bot_dir: Path
    log: Path
    rounds: list[dict[str, Any]] = field(default_factory=list)
    active: Path | None = None

    def model(self, number: int) -> Path:
        return self.workdir / "models" / f"round-{number}"


def prepare(args: argparse.Namespace, data: Split, workdir: Path) -> Loop:
    """The bot folder and its first model (round 0)."""
    loop = Loop(args, data, workdir, workdir / "bot", workdir / "botfactory.log")
    source = write_csv(workdir / "initial.csv", data.initial)
    botfactory(loop.log, "import", "csv", str(source), "--out", str(loop.bot_dir),
               "--name", BOT)
    write_frozen(loop.bot_dir, data.frozen)
    seconds = train(loop.log, loop.bot_dir, loop.model(0), args, None)
    loop.active = loop.model(0)
    loop.rounds.append({"round": 0, "train_examples": train_examples(loop.bot_dir),
                        "accuracy": accuracy(loop.model(0), data.test),
                        "model_version": model_version(loop.model(0)), "train_s": seconds})
    print(f"round 0: {loop.rounds[0]['train_examples']} examples, "
          f"accuracy {loop.rounds[0]['accuracy']:.4f}", flush=True)
    return loop


async def one_round(loop: Loop, number: int, stack: ProcessStack, gateway: Gateway,
                    stub: Any) -> dict[str, Any]:
    args, before = loop.args, loop.rounds[-1]
    traffic = loop.data.pool[(number - 1) * args.traffic:number * args.traffic]
    began = time.perf_counter()
    sent = await replay(gateway, [e.text for e in traffic], args.concurrency)
    await collector_drained(stack.nats.url)
    labels = await auto_label(gateway, {e.text: e.intent for e in traffic}, args.label_budget)
    apply_code = await asyncio.to_thread(
        botfactory, loop.log, "review", "apply", BOT, "--gateway", stack.base_url, "--api-key",
        stack.admin_key, "--bot-dir", str(loop.bot_dir), ok=(0, 1))
    replay_s = time.perf_counter() - began
    assert loop.active is not None
    train_s = await asyncio.to_thread(train, loop.log, loop.bot_dir, loop.model(number), args,
                                      loop.active)
    gate_code = await asyncio.to_thread(
        botfactory, loop.log, "gate", str(loop.model(number)), "--active", str(loop.active),
        "--bot-dir", str(loop.bot_dir), "--tolerance", str(args.gate_tolerance), ok=(0, 1))
    result: dict[str, Any] = {
        "round": number, "traffic": sent.sent, "traffic_failed": sent.failed, **labels,
        "apply_conflicts": apply_code == 1, "train_examples": train_examples(loop.bot_dir),
        "accuracy_before": before["accuracy"] if before["round"] == 0 or before["rolled_out"]
        else before["accuracy_before"],
        "accuracy": accuracy(loop.model(number), loop.data.test),
        "model_version": model_version(loop.model(number)), "gate_passed": gate_code == 0,
        "rolled_out": False, "rollout": None, "failed_requests": 0,
        "seconds": {"replay_and_review": round(replay_s, 1), "train": train_s}}
    if gate_code == 0:
        texts = [e.text for e in loop.data.frozen] or [e.text for e in traffic]
        result["rollout"] = await rollout(stack, gateway, stub, loop.model(number), texts,
                                          loop.log, args.concurrency)
        result["rolled_out"], loop.active = True, loop.model(number)
        result["failed_requests"] = result["rollout"]["failed"]
    return result


async def run_rounds(loop: Loop) -> None:
    import grpc

    from services.common.pb.botfactory.v1 import nlu_pb2_grpc

    options = StackOptions(model=loop.model(0), bot_dir=loop.bot_dir, nlu_follows_store=True)
    stack = ProcessStack(loop.workdir / "stack", options)
    try:
        stack.start()
        botfactory(loop.log, "publish", str(loop.model(0)), "--nats", stack.nats.url)
        nlu = f"127.0.0.1:{stack.components['nlu'].env['BOTFACTORY_NLU_GRPC_PORT']}"
        key = await client_key(stack.base_url, stack.admin_key, bots=(BOT,))
        async with aiohttp.ClientSession() as session, grpc.aio.insecure_channel(nlu) as channel:
            gateway = Gateway(session, stack.base_url, key, stack.admin_key)
            stub = nlu_pb2_grpc.NluServiceStub(channel)
            for number in range(1, loop.args.rounds + 1):
                loop.rounds.append(await one_round(loop, number, stack, gateway, stub))
                shown = loop.rounds[-1]
                print(f"round {number}: {shown['train_examples']} examples, accuracy "
                      f"{shown['accuracy_before']:.4f} -> {shown['accuracy']:.4f}, gate "
                      f"{'passed' if shown['gate_passed'] else 'failed'}, failed requests "
                      f"{shown['failed_requests']}", flush=True)
    finally:
        stack.stop()


def result_of(loop: Loop, data_dir: Path) -> dict[str, Any]:
    args, data = loop.args, loop.data
    return {
        "benchmark": "improvement_loop", "data": shown(data_dir), "quick": args.quick,
        "seed": args.seed, "intents": len({e.intent for e in data.initial}),
        "initial_share": args.initial_share, "frozen_examples": len(data.frozen),
        "pool_examples": len(data.pool), "test_examples": len(data.test),
        "traffic_per_round": args.traffic, "label_budget": args.label_budget,
        "base_model": args.base_model or "packaged all-MiniLM-L6-v2",
        "rounds": loop.rounds,
        "failed_requests": sum(r.get("failed_requests", 0) for r in loop.rounds),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--data", type=Path, default=DEFAULT_DATA,
        help="Banking77 folder with train.csv and test.csv (text,category)")
    add("--rounds", type=int, default=None, help="improvement rounds (default 3; --quick 1)")
    add("--seed", type=int, default=13)
    add("--quick", action="store_true",
        help="tiny: 10 intents, 40 train and 20 test examples each, 1 round, 2 epochs")
    add("--base-model", default=None, help="base encoder of the first model (path or name)")
    add("--epochs", type=int, default=None, help="training epochs (default: the bot's)")
    add("--initial-share", type=float, default=0.2, help="share of train.csv to start with")
    add("--frozen-per-intent", type=int, default=None,
        help="examples per intent in the frozen gate set (default 5; --quick 2)")
    add("--traffic", type=int, default=None,
        help="utterances replayed per round (default: the pool split over the rounds)")
    add("--label-budget", type=int, default=None, help="items a round's reviewer decides")
    add("--gate-tolerance", type=float, default=0.01, help="`botfactory gate --tolerance`")
    add("--concurrency", type=int, default=8, help="concurrent clients")
    add("--intents", type=int, default=None, help="use this many intents (seeded choice)")
    add("--per-intent", type=int, default=None, help="at most this many train examples each")
    add("--test-per-intent", type=int, default=None, help="at most this many test examples each")
    add("--workdir", type=Path, default=None, help="keep the run's files here")
    add("--if-data", action="store_true",
        help="exit 0 with 'skipped: ...' when the data is missing (make bench)")
    add("--out", type=Path, default=RESULTS, help="results JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, full, small in (("rounds", 3, 1), ("frozen_per_intent", 5, 2),
                              ("intents", None, 10), ("per_intent", None, 40),
                              ("test_per_intent", None, 20), ("epochs", None, 2)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.rounds < 1 or not 0 < args.initial_share < 1:
        parser.error("--rounds must be >= 1 and --initial-share in (0, 1)")
    return args


def missing_data(data: Path) -> str | None:
    absent = [name for name in ("train.csv", "test.csv") if not (data / name).is_file()]
    return None if not absent else f"Banking77 not found at {data} (no {', '.join(absent)})"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = missing_data(args.data)
    if problem is not None:
        if args.if_data or os.environ.get("BOTFACTORY_BENCH_IF_DATA") == "1":
            print(f"skipped: {problem}")
            return 0
        print(f"error: {problem}; pass --data DIR (train.csv and test.csv with columns "
              "text,category)", file=sys.stderr)
        return EXIT_NO_DATA
    try:
        train_set, test = load_data(args.data, args.intents, args.per_intent,
                                    args.test_per_intent, args.seed)
        data = split(train_set, test, args.initial_share, args.frozen_per_intent, args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_DATA
    args.traffic = args.traffic or max(1, len(data.pool) // args.rounds)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="improvement-loop-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        loop = prepare(args, data, workdir)
        asyncio.run(run_rounds(loop))
    except LoopError as exc:
        print(f"error: {exc}\n(files in {workdir})", file=sys.stderr)
        return 1
    result = result_of(loop, args.data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: failed requests {result['failed_requests']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
