"""structlog JSON logging with a correlation id carried in a context variable.

The correlation id arrives in gRPC metadata (`x-correlation-id`) or a NATS header
(`Correlation-Id`); `bind_correlation_id` puts it in the context so every log line of that
request carries it.

PII is redacted from every log line (services/common/pii.py, docs/security.md): the
`redact_pii` processor rewrites every string value of a structlog event (nested values too)
before it is rendered, and a filter on the root handler does the same for plain `logging`
records (libraries).

Plain `logging` records (nats-py's warnings, aiohttp's errors, ...) are rendered as the same
JSON lines (`event` is the message; `logger`, `level`, `timestamp`, `service` and the bound
correlation id are added; a traceback goes in `exception`).
"""

from __future__ import annotations

import logging
import sys
import uuid
from typing import Any

import structlog

from services.common.pii import redact, redact_value

CORRELATION_METADATA = "x-correlation-id"
# Generated identifiers that are never PII: left as they are (a digit-only correlation id
# would otherwise read as a phone number).
NOT_PII_FIELDS = frozenset({"correlation_id", "key_id", "run_id", "delivery_id", "timestamp",
                            "level", "service"})


def redact_pii(logger: Any, method_name: str, event_dict: Any) -> Any:
    """structlog processor: every string value with its PII replaced by labels."""
    return {key: value if key in NOT_PII_FIELDS else redact_value(value)
            for key, value in event_dict.items()}


class RedactingFilter(logging.Filter):
    """A `logging` filter that redacts PII from the formatted message and exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logged as written, never raised to the caller
            message = f"{record.msg} {record.args}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def add_exception_text(logger: Any, method_name: str, event_dict: Any) -> Any:
    """structlog processor for `logging` records: their (redacted) traceback, if any."""
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord) and record.exc_text:
        event_dict["exception"] = record.exc_text
    return event_dict


def json_formatter() -> structlog.stdlib.ProcessorFormatter:
    """Renders plain `logging` records as the services' JSON lines."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            add_exception_text,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_pii,
            structlog.processors.JSONRenderer(),
        ],
    )


def configure_logging(service: str, level: str = "INFO") -> None:
    """JSON lines on stdout: timestamp, level, service, event, correlation id, fields."""
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    logging.basicConfig(format="%(message)s", stream=sys.stdout, level=numeric, force=True)
    for handler in logging.root.handlers:
        handler.addFilter(RedactingFilter())
        handler.setFormatter(json_formatter())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_pii,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
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


def current_correlation_id() -> str | None:
    """The correlation id bound to the current context (None when none is)."""
    value = structlog.contextvars.get_contextvars().get("correlation_id")
    return value if isinstance(value, str) and value else None


def bind_correlation_id(value: str | None) -> str:
    """Bind the given id (or a new one) to the current context and return it."""
    correlation_id = value or new_correlation_id()
    structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
    return correlation_id
