"""`botfactory gate CANDIDATE_DIR --active ACTIVE_DIR --bot-dir BOT_DIR`: the regression gate.

Evaluates both models through the serving engine (int8, as served) on the bot's frozen test
set (BOT_DIR/tests/nlu.yml) and on the new annotations (--annotations, default
BOT_DIR/data/nlu/reviewed.yml when it exists), compares intent accuracy, entity F1 and
out-of-scope recall (botfactory/evaluation/gate.py), prints the comparison and writes it to
CANDIDATE_DIR/reports/gate.json (and --report DIR: gate.json + gate.html).
Exit status: 0 passed, 1 the candidate is worse beyond the tolerance, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


def _tolerance(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be 0..1, got {value}")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("gate", help="compare a candidate model with the active one",
                                   description=__doc__)
    parser.add_argument("candidate", type=Path, metavar="CANDIDATE_DIR")
    parser.add_argument("--active", type=Path, required=True, metavar="ACTIVE_DIR")
    parser.add_argument("--bot-dir", type=Path, required=True, metavar="BOT_DIR")
    parser.add_argument("--annotations", type=Path, default=None, metavar="FILE",
                        help="intents file of new annotations (default: BOT_DIR/data/nlu/"
                             "reviewed.yml when present)")
    parser.add_argument("--tolerance", type=_tolerance, default=0.01,
                        help="allowed drop of every metric (default 0.01)")
    for metric in ("intent-accuracy", "entity-f1", "oos-recall"):
        parser.add_argument(f"--tolerance-{metric}", type=_tolerance, default=None,
                            help=f"allowed drop of {metric.replace('-', ' ')} "
                                 "(default: --tolerance)")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR",
                        help="also write gate.json and gate.html there")
    parser.set_defaults(func=run_gate)


class GateInputError(Exception):
    pass


def run_gate(args: argparse.Namespace) -> int:
    from botfactory.commands.evaluate import UsageError

    try:
        result = evaluate_gate(args)
    except (UsageError, GateInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print_result(result)
    return 0 if result["passed"] else 1


def _sets(args: argparse.Namespace) -> dict[str, Sequence[Any]]:
    from botfactory.evaluation.frozen import FrozenSetError, frozen_path, load_examples
    from botfactory.evaluation.reviewed import REVIEWED_FILE

    frozen = frozen_path(args.bot_dir)
    if not frozen.is_file():
        raise GateInputError(f"{frozen} not found: the gate needs the bot's frozen test set "
                             "(docs/improvement-loop.md)")
    annotations = args.annotations or args.bot_dir / REVIEWED_FILE
    if args.annotations is not None and not annotations.is_file():
        raise GateInputError(f"--annotations {annotations}: no such file")
    try:
        sets = {"frozen": load_examples(frozen)}
        if annotations.is_file():
            sets["annotations"] = load_examples(annotations)
    except FrozenSetError as exc:
        raise GateInputError(str(exc)) from None
    return {name: examples for name, examples in sets.items() if examples}


def evaluate_gate(args: argparse.Namespace) -> dict[str, Any]:
    from botfactory.commands.evaluate import load_model, predict_samples
    from botfactory.evaluation import gate
    from botfactory.evaluation.metrics import DEFAULT_OUT_OF_SCOPE, evaluate

    sets = _sets(args)
    models = {"active": load_model(args.active, quantized=True),
              "candidate": load_model(args.candidate, quantized=True)}
    oos = models["active"].out_of_scope_intent or DEFAULT_OUT_OF_SCOPE
    found = {}
    for name, examples in sets.items():
        old, new = (gate.scores(evaluate(predict_samples(m, examples, 64, oos), oos))
                    for m in models.values())
        found[name] = (old, new, len(examples))
    tolerance = gate.Tolerance(
        intent_accuracy=_pick(args.tolerance_intent_accuracy, args.tolerance),
        entity_f1=_pick(args.tolerance_entity_f1, args.tolerance),
        oos_recall=_pick(args.tolerance_oos_recall, args.tolerance))
    active = {"version": models["active"].version, "path": str(args.active)}
    candidate = {"version": models["candidate"].version, "path": str(args.candidate)}
    result = gate.decide(active, candidate, found, tolerance)
    gate.write(result, args.candidate, *([args.report] if args.report else []))
    if args.report:
        (args.report / "gate.html").write_text(gate.render_html(result), encoding="utf-8")
    return result


def _pick(specific: float | None, default: float) -> float:
    return default if specific is None else specific


def print_result(result: dict[str, Any]) -> None:
    print(f"candidate {result['candidate']['version']} vs active {result['active']['version']}")
    for name, found in result["sets"].items():
        for metric, row in found["metrics"].items():
            mark = "ok" if row["passed"] else "WORSE"
            print(f"  {name:<12} {metric:<16} {row['active']:.4f} -> {row['candidate']:.4f} "
                  f"({row['delta']:+.4f}, tolerance {row['tolerance']})  {mark}")
    print("gate passed" if result["passed"] else f"gate FAILED: {', '.join(result['failed'])}")
