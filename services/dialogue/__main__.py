"""`python -m services.dialogue`: the dialogue worker (config: BOTFACTORY_DIALOGUE_*)."""

from __future__ import annotations

import asyncio
import functools
import sys

from services.botdef import BotDefinitionError
from services.common.config import ConfigError
from services.common.lifecycle import run_service
from services.common.logging import configure_logging
from services.dialogue import config as dialogue_config
from services.dialogue.app import DialogueServer


def main() -> int:
    try:
        config = dialogue_config.load()
        configure_logging("dialogue", config.log_level)
    except (ConfigError, ValueError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_service(functools.partial(DialogueServer, config)))
    except BotDefinitionError as exc:
        print(f"invalid bot definition:\n{exc}", file=sys.stderr)
        return 1
    except ConnectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
