"""The options of the local stack (`make run`, `botfactory run`), kept apart from
botfactory/local/stack.py so that the CLI adds them without importing the stack."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO_BOT = ROOT / "bots" / "banking"
SENTIMENT_DATA = ROOT.parent / "shared" / "data" / "goemotions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `make run` / `botfactory run` (the bot itself is added by the caller)."""
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".botfactory")
    parser.add_argument("--free-ports", action="store_true",
                        help="run every service on a free port (printed) instead of the "
                             "defaults; any --*-port 0 does the same for that port")
    for name, default, what in (("nats", 4222, "nats-server"), ("nlu", 50051, "NLU gRPC"),
                                ("http", 8080, "gateway HTTP (web chat, API)")):
        parser.add_argument(f"--{name}-port", type=int, default=default,
                            help=f"{what} port (default %(default)s; 0: a free one)")
    parser.add_argument("--bank-port", type=int, default=8099,
                        help="the demo core-banking service the demo bot's workflows call")
    parser.add_argument("--demo-bank", action=argparse.BooleanOptionalAction, default=None,
                        help="start the demo bank (default: only for the demo bot)")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="override a setting of the bot's rpa.yml (repeatable)")
    parser.add_argument("--secrets", type=Path, default=None, metavar="FILE",
                        help="NAME=value lines, the workflows' {{ secrets.NAME }} (default: "
                             "BOT/secrets.env when it exists; BOTFACTORY_SECRET_NAME in the "
                             "environment wins)")
    parser.add_argument("--retrain", action="store_true",
                        help="train the bot again even when a model of it is there")
    parser.add_argument("--sentiment-data", type=Path,
                        default=SENTIMENT_DATA if SENTIMENT_DATA.is_dir() else None,
                        help="GoEmotions folder (or text,label CSV) to train the sentiment "
                             "model from (default ../shared/data/goemotions when it exists)")
    parser.add_argument("--no-sentiment", action="store_true",
                        help="serve no sentiment model")
