"""`python -m services.gateway`: the public HTTP/WebSocket API (config: BOTFACTORY_GATEWAY_*)."""

from __future__ import annotations

import asyncio
import functools
import sys

from services.common.config import ConfigError
from services.common.lifecycle import run_service
from services.common.logging import configure_logging
from services.gateway import config as gateway_config
from services.gateway.app import GatewayServer


def main() -> int:
    try:
        config = gateway_config.load()
        configure_logging("gateway", config.log_level)
    except (ConfigError, ValueError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_service(functools.partial(GatewayServer, config)))
    except ConnectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
