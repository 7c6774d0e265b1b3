"""`python -m services.gateway`: the public HTTP/WebSocket and gRPC API
(config: BOTFACTORY_GATEWAY_*)."""

import sys

from services.common.lifecycle import service_main
from services.gateway import config
from services.gateway.app import GatewayServer

if __name__ == "__main__":
    sys.exit(service_main("gateway", config.load, GatewayServer))
