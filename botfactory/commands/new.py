"""`botfactory new NAME`: scaffold a bot folder (botfactory/scaffold.py) that validates,
trains and passes its conversation test offline as written; then make it yours
(docs/build-your-own-bot.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "new", help="create a new bot folder to start from", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", metavar="NAME", help="the bot's name: lowercase letters, "
                                                     "digits, '_' and '-'")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="the folder to create (default: bots/NAME)")
    parser.set_defaults(func=run_new)


def run_new(args: argparse.Namespace) -> int:
    from botfactory.scaffold import ScaffoldError, create_bot

    folder: Path = args.out if args.out is not None else Path("bots") / args.name
    try:
        written = create_bot(args.name, folder)
    except (ScaffoldError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"created {folder} ({len(written)} files). Next:\n"
          f"  botfactory validate {folder}\n"
          f"  botfactory train {folder} --out .botfactory/models/{args.name}\n"
          f"  botfactory test-conversations {folder} --offline\n"
          f"  make run BOT={folder}    (or: botfactory run {folder})")
    return 0
