"""`botfactory run BOT_DIR`: the local stack (nats-server, NLU, dialogue, RPA runner, gateway)
serving one bot, trained on first run, with its own rpa.yml settings and secrets; the same as
`make run BOT=BOT_DIR` (botfactory/local/stack.py). Ctrl-C stops it.

Secrets: the workflows' {{ secrets.NAME }} come from BOT_DIR/secrets.env (NAME=value lines;
--secrets FILE for another file) or from BOTFACTORY_SECRET_NAME in the environment, which
wins. Settings: rpa.yml's, each --setting NAME=VALUE overriding one. The demo bank starts for
the demo bot only (--demo-bank / --no-demo-bank). --free-ports runs on free ports and prints
them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    from botfactory.local.options import add_arguments

    parser = subparsers.add_parser(
        "run", help="run a bot on the local stack (make run BOT=DIR)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bot", metavar="BOT_DIR", type=Path, help="the bot folder")
    add_arguments(parser)
    parser.set_defaults(func=run_bot)


def run_bot(args: argparse.Namespace) -> int:
    from botfactory.local.stack import run_stack

    return run_stack(args)
