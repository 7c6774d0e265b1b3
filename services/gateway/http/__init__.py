"""The gateway's HTTP/JSON + WebSocket API (aiohttp): `create_app` builds it."""

from services.gateway.http.app import create_app
from services.gateway.http.metrics import GatewayMetrics

__all__ = ["GatewayMetrics", "create_app"]
