"""`python -m services.rpa_runner`: the RPA runner (config: BOTFACTORY_RPA_*; secrets:
BOTFACTORY_SECRET_<NAME>)."""

from __future__ import annotations

import asyncio
import functools
import sys

from services.botdef import BotDefinitionError
from services.common.config import ConfigError
from services.common.lifecycle import run_service
from services.common.logging import configure_logging
from services.rpa_runner import config as runner_config
from services.rpa_runner.app import RunnerServer


def main() -> int:
    try:
        config = runner_config.load()
        configure_logging("rpa_runner", config.log_level)
    except (ConfigError, ValueError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_service(functools.partial(RunnerServer, config)))
    except BotDefinitionError as exc:
        print(f"invalid bot definition:\n{exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
