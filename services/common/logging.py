"""structlog JSON logging with a correlation id carried in a context variable.

The correlation id arrives in gRPC metadata (`x-correlation-id`) or a NATS header
(`Correlation-Id`); `bind_correlation_id` puts it in the context so every log line of that
request carries it.
"""

from __future__ import annotations

import logging
import sys
import uuid
from typing import Any

import structlog

CORRELATION_HEADER = "Correlation-Id"
CORRELATION_METADATA = "x-correlation-id"


def configure_logging(service: str, level: str = "INFO") -> None:
    """JSON lines on stdout: timestamp, level, service, event, correlation id, fields."""
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    logging.basicConfig(format="%(message)s", stream=sys.stdout, level=numeric, force=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def bind_correlation_id(value: str | None) -> str:
    """Bind the given id (or a new one) to the current context and return it."""
    correlation_id = value or new_correlation_id()
    structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
    return correlation_id
