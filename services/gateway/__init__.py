"""The gateway service: the public HTTP/JSON + WebSocket API, API keys, rate limits, the admin
API, webhook delivery and the web chat page. It meets the rest of the platform only through
the bus (see `ports.py` for the interfaces the HTTP layer is written against)."""
