"""`botfactory publish MODEL_DIR`: upload a model to the NATS object store and activate it.

Serving NLU replicas that follow the store pick the new version up without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_NATS = "nats://127.0.0.1:4222"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("publish", help="publish a trained model to the model store",
                                   description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--nats", default=os.environ.get("BOTFACTORY_NATS_URL", DEFAULT_NATS),
                        help="NATS URL (default: $BOTFACTORY_NATS_URL or %(default)s)")
    parser.add_argument("--no-activate", action="store_true",
                        help="upload only; do not make it the bot's active version")
    parser.set_defaults(func=run_publish)


def run_publish(args: argparse.Namespace) -> int:
    from services.common.modelstore import ModelStoreError
    from services.nlu.engine import ModelLoadError, NluModel

    try:
        NluModel.load(args.model_dir)  # refuse to publish what a server would reject
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        ref = asyncio.run(_publish(args.nats, args.model_dir, not args.no_activate))
    except (ModelStoreError, OSError, TimeoutError) as exc:
        print(f"error: cannot publish to {args.nats}: {exc}", file=sys.stderr)
        return 1
    state = "active" if not args.no_activate else "uploaded"
    print(f"published {ref.bot}@{ref.version} ({state})")
    return 0


async def _publish(url: str, model_dir: Path, activate: bool) -> Any:
    from services.common.modelstore import publish
    from services.common.nats import connect, provision

    bus = await connect(url, name="botfactory-cli")
    try:
        await provision(bus)
        return await publish(bus, model_dir, make_active=activate)
    finally:
        await bus.drain()
