"""`botfactory data check BOT_DIR`: duplicates, near duplicates, conflicting labels and frozen
test set leaks across all of a bot's data files (botfactory/evaluation/datacheck.py), after the
definition's warnings (file:line: field: message; e.g. an examples list written as `[...]`,
where an unquoted comma splits an example in two).

Exit status: 0 clean (duplicates and near duplicates are warnings), 1 on conflicting labels or
leaks (also on near duplicates with different intents under `--strict`), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

EXIT_USAGE = 2
SHOWN = 20


def _threshold(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("data", help="check a bot's training data",
                                   description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="duplicates, conflicts and leaks",
                               description=__doc__)
    check.add_argument("bot_dir", type=Path, metavar="BOT_DIR")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--threshold", type=_threshold, default=0.8,
                       help="word-set Jaccard similarity of near duplicates (default 0.8)")
    check.add_argument("--strict", action="store_true",
                       help="near duplicates with different intents fail the check too")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from botfactory.evaluation.datacheck import check
    from botfactory.evaluation.frozen import FrozenSetError, load_frozen
    from services.botdef import BotDefinitionError, load_bot

    try:
        bot = load_bot(args.bot_dir)
        frozen = load_frozen(args.bot_dir) or []
    except BotDefinitionError as exc:
        print(f"error: invalid bot definition in {args.bot_dir}:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except FrozenSetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = check(bot.examples(), frozen=frozen, threshold=args.threshold)
    warnings = [str(warning) for warning in bot.warnings]
    if args.json:
        print(json.dumps({**report.to_json(), "warnings": warnings}, indent=2,
                         ensure_ascii=False))
    else:
        for warning in warnings:
            print(f"warning: {warning}")
        print_report(report, sys.stdout)
    strict_fail = args.strict and any(p.conflicting for p in report.near)
    return 1 if report.failed or strict_fail else 0


def print_report(report: Any, out: TextIO) -> None:
    near_conflicts = sum(p.conflicting for p in report.near)
    print(f"{report.examples} examples: {len(report.conflicts)} conflicts, "
          f"{len(report.leaks)} frozen-set leaks, {len(report.duplicates)} duplicate groups, "
          f"{len(report.near)} near-duplicate pairs ({near_conflicts} with different intents)",
          file=out)
    for title, groups in (("conflicting labels", report.conflicts),
                          ("duplicates", report.duplicates)):
        if groups:
            print(f"\n{title}:", file=out)
        for group in groups[:SHOWN]:
            print("  " + " | ".join(_label(o) for o in group), file=out)
    if report.leaks:
        print("\nfrozen test set texts also in the training data:", file=out)
        for occurrence in report.leaks[:SHOWN]:
            print(f"  {_label(occurrence)}", file=out)
    if report.near:
        print("\nnear duplicates:", file=out)
        for pair in report.near[:SHOWN]:
            mark = "!" if pair.conflicting else " "
            print(f" {mark}{pair.similarity:.2f}  {_label(pair.a)} ~ {_label(pair.b)}", file=out)


def _label(occurrence: Any) -> str:
    entities = "".join(f" {e}={w!r}" for e, w in occurrence.entities)
    return f"{occurrence.text!r} ({occurrence.intent}{entities})"
