"""`botfactory kb build|publish` and `botfactory test-kb`: the knowledge base of a bot
(docs/knowledge.md).

Bad input (a missing or invalid knowledge folder, bot.yml or test file, a base model that
cannot be loaded) exits 2 with `error: ...` on stderr (every problem, each naming its file);
a failed encoder export check exits 1. torch and transformers are imported only by `kb build`
and by `test-kb` without `--index`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_CHECK = 1
EXIT_USAGE = 2
DEFAULT_NATS = "nats://127.0.0.1:4222"
DEFAULT_CACHE = Path(".botfactory/cache/kb-encoder")  # = botfactory.kb.build.DEFAULT_CACHE


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `kb` (with `build` and `publish`) and `test-kb`."""
    kb = subparsers.add_parser("kb", help="build or publish a bot's knowledge-base index",
                               description="Knowledge base: build a search index from a bot's "
                                           "knowledge/ folder, or publish one to the store.")
    commands = kb.add_subparsers(dest="kb_command", required=True, metavar="KB_COMMAND")
    build = commands.add_parser("build", help="embed knowledge/ and write an index directory",
                                description="Embed every FAQ question and document passage of "
                                            "BOT_DIR/knowledge with the sentence encoder and "
                                            "write a versioned index directory (atomically).")
    build.add_argument("bot_dir", type=Path, metavar="BOT_DIR")
    _build_options(build)
    build.set_defaults(func=run_build)

    publish = commands.add_parser("publish", help="upload an index and make it active",
                                  description="Upload an index directory to the model store "
                                              "and activate it: NLU servers swap to it.")
    publish.add_argument("index_dir", type=Path, metavar="INDEX_DIR")
    publish.add_argument("--nats", default=os.environ.get("BOTFACTORY_NATS_URL", DEFAULT_NATS),
                         help="NATS URL (default: $BOTFACTORY_NATS_URL or %(default)s)")
    publish.add_argument("--no-activate", action="store_true", help="upload only")
    publish.set_defaults(func=run_publish)

    test = subparsers.add_parser(
        "test-kb", help="retrieval quality of a bot's knowledge base (tests/kb.yml)",
        description="Run BOT_DIR/tests/kb.yml (question -> expected document, faq:<id> or null) "
                    "against an index: recall@1, recall@5, MRR, unanswerable questions "
                    "declined and answerable ones answered (top score against bot.yml "
                    "knowledge.answer_threshold); --calibrate picks that threshold.")
    test.add_argument("bot_dir", type=Path, metavar="BOT_DIR")
    test.add_argument("--index", type=Path, default=None, metavar="DIR",
                      help="index to test (default: build one from BOT_DIR into a temp dir)")
    test.add_argument("--cases", type=Path, default=None, metavar="FILE",
                      help="test file (default: BOT_DIR/tests/kb.yml)")
    test.add_argument("--report", type=Path, default=None, metavar="FILE",
                      help="write the JSON report (metrics and every case) here")
    choice = test.add_mutually_exclusive_group()
    choice.add_argument("--threshold", type=float, default=None,
                        help="answer threshold (default: bot.yml knowledge.answer_threshold, "
                             "else 0.5)")
    choice.add_argument("--calibrate", action="store_true",
                        help="pick the answer threshold on a seeded half of the cases and "
                             "report the other half with it")
    test.add_argument("--seed", type=int, default=0,
                      help="seed of the --calibrate split (default %(default)s)")
    _build_options(test, with_out=False)
    test.set_defaults(func=run_test_kb)


def _build_options(parser: argparse.ArgumentParser, with_out: bool = True) -> None:
    if with_out:
        parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                            help="index directory (default: .botfactory/models/<bot>.kb)")
        parser.add_argument("--approx-min-vectors", type=_positive_int, default=20_000,
                            metavar="N", help="also write an HNSW graph from N vectors on "
                                              "(default %(default)s)")
    parser.add_argument("--base-model", default=None, metavar="PATH_OR_NAME",
                        help="sentence encoder base (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, metavar="DIR",
                        help="exported encoders, by base model hash (default %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run_build(args: argparse.Namespace) -> int:
    from botfactory.kb.build import BuildOptions, build_index

    options = BuildOptions(base_model=args.base_model, cache_dir=args.cache_dir,
                           approx_min_vectors=args.approx_min_vectors, progress=not args.quiet)
    started = time.perf_counter()
    result = _guarded(lambda: build_index(args.bot_dir, args.out, options))
    if isinstance(result, int):
        return result
    counts = result.metadata["counts"]
    print(f"built {result.metadata['bot']}@{result.metadata['version']}: "
          f"{counts['faq_entries']} FAQ entries, {counts['passages']} passages from "
          f"{counts['documents']} documents, {counts['vectors']} vectors -> {result.directory} "
          f"({time.perf_counter() - started:.1f} s, {len(result.warnings)} warnings)")
    return EXIT_OK


def _guarded(work: Any) -> Any:
    """`work()`, with bad input and failed checks turned into exit codes and messages."""
    from botfactory.training.errors import BaseModelError, TrainingError
    from services.knowledge.errors import KnowledgeError

    try:
        return work()
    except (KnowledgeError, BaseModelError) as exc:
        _error(exc)
        return EXIT_USAGE
    except TrainingError as exc:
        _error(exc)
        return EXIT_CHECK


def _error(exc: BaseException) -> None:
    lines = str(exc).splitlines() or [type(exc).__name__]
    print(f"error: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"error: {line}", file=sys.stderr)


def is_knowledge_index(directory: Path) -> bool:
    """Whether `directory` holds a knowledge index (metadata.json kind "knowledge")."""
    try:
        meta = json.loads((directory / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("kind") == "knowledge"


def run_publish(args: argparse.Namespace) -> int:
    return publish_index(args.index_dir, args.nats, activate=not args.no_activate)


def publish_index(index_dir: Path, nats_url: str, *, activate: bool) -> int:
    """Check that `index_dir` loads as a server would, then upload (and activate) it."""
    from services.common.modelstore import ModelStoreError
    from services.knowledge.errors import KnowledgeError
    from services.knowledge.search import Searcher, SearchOptions

    try:
        Searcher.load(index_dir, SearchOptions(approx_min_vectors=sys.maxsize))
    except KnowledgeError as exc:
        _error(exc)
        return EXIT_USAGE
    try:
        ref = asyncio.run(_publish(nats_url, index_dir, activate))
    except (ModelStoreError, OSError, TimeoutError) as exc:
        print(f"error: cannot publish to {nats_url}: {exc}", file=sys.stderr)
        return EXIT_CHECK
    print(f"published knowledge index {ref.bot}@{ref.version} "
          f"({'active' if activate else 'uploaded'})")
    return EXIT_OK


async def _publish(url: str, index_dir: Path, activate: bool) -> Any:
    from services.common.nats import connect, provision
    from services.knowledge.store import publish_kb

    bus = await connect(url, name="botfactory-cli")
    try:
        await provision(bus)
        return await publish_kb(bus, index_dir, make_active=activate)
    finally:
        await bus.drain()


def run_test_kb(args: argparse.Namespace) -> int:
    result = _guarded(lambda: _test_kb(args))
    return result if isinstance(result, int) else EXIT_OK


def _test_kb(args: argparse.Namespace) -> dict[str, Any]:
    from botfactory.kb.evaluate import CASES_FILE, calibrate, evaluate, load_cases
    from botfactory.kb.settings import read_bot_knowledge
    from services.knowledge.search import Searcher

    settings = read_bot_knowledge(args.bot_dir)
    cases = load_cases(args.cases or args.bot_dir / CASES_FILE)
    threshold = settings.answer_threshold if args.threshold is None else args.threshold
    with tempfile.TemporaryDirectory(prefix="kb-") as tmp:
        index = args.index or _build_temp(args, Path(tmp) / "index")
        searcher = Searcher.load(index)
        if args.calibrate:
            report = calibrate(searcher, cases, args.seed)
        else:
            report = evaluate(searcher, cases, threshold)
    report["index_version"] = searcher.version
    if args.calibrate:
        _print_calibration(report, settings.answer_threshold)
    else:
        _print_report(report)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                               encoding="utf-8")
        print(f"report: {args.report}")
    return report


def _build_temp(args: argparse.Namespace, out: Path) -> Path:
    from botfactory.kb.build import BuildOptions, build_index

    options = BuildOptions(base_model=args.base_model, cache_dir=args.cache_dir,
                           progress=not args.quiet)
    return build_index(args.bot_dir, out, options).directory


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _print_metrics(report: dict[str, Any]) -> None:
    print(f"recall@1 {_fmt(report['recall_at_1'])}  recall@5 {_fmt(report['recall_at_5'])}  "
          f"MRR {_fmt(report['mrr'])}  declined {_fmt(report['declined_share'])}  "
          f"answered {_fmt(report['answered_share'])}  correct {_fmt(report['correct_share'])}")


def _print_calibration(report: dict[str, Any], configured: float) -> None:
    print(f"calibrated answer threshold {report['answer_threshold']:g} (seed {report['seed']}; "
          f"bot.yml: {configured:g})")
    for half, name in (("calibration", "calibration half"), ("held_out", "held-out half")):
        part = report[half]
        print(f"{name}: {part['n_answerable']} answerable, {part['n_unanswerable']} "
              "unanswerable questions")
        _print_metrics(part)
    scores = report.get("score_calibration")
    if scores is not None:
        print(f"score calibration (knowledge.score_calibration): slope {scores['slope']:g}, "
              f"intercept {scores['intercept']:g}; held-out Brier "
              f"{_fmt(scores['held_out_brier'])} (raw score {_fmt(scores['held_out_brier_raw'])})")


def _print_report(report: dict[str, Any]) -> None:
    print(f"{report['n_answerable']} answerable, {report['n_unanswerable']} unanswerable "
          f"questions (answer threshold {report['answer_threshold']:g})")
    _print_metrics(report)
    for case in report["cases"]:
        if not case["passed"]:
            got = case["hits"][0] if case["hits"] else "nothing"
            print(f"  FAIL line {case['line']}: {case['question']!r}: expected "
                  f"{case['expect'] or 'decline'}, got {got} (score {case['top_score']})")
