"""`python -m services.nlu`: the NLU gRPC service (config: BOTFACTORY_NLU_* variables)."""

from __future__ import annotations

import asyncio
import functools
import sys

from services.common.config import ConfigError
from services.common.lifecycle import run_service
from services.common.logging import configure_logging
from services.nlu import config as nlu_config
from services.nlu.app import NluServer
from services.nlu.engine import ModelLoadError


def main() -> int:
    try:
        config = nlu_config.load()
        configure_logging("nlu", config.log_level)
    except (ConfigError, ValueError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_service(functools.partial(NluServer, config)))
    except ModelLoadError as exc:
        print(f"cannot load model: {exc}", file=sys.stderr)
        return 1
    except ConnectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
