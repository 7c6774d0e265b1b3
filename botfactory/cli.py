"""`botfactory` command line: a thin layer over the libraries and the services' APIs.

Each sub-command lives in `botfactory.commands.<module>` and exposes
`register(subparsers) -> None`, which adds its parser and sets `func` to a callable taking the
parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = ("importers", "validate", "train", "evaluate", "models", "chat", "report",
                   "conversations", "review", "data", "gate", "kb", "new", "run", "channels",
                   "bots", "versions")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="botfactory", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"botfactory.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
