"""Domain errors and their one mapping to gRPC status codes (and HTTP statuses).

Services raise these; the boundary (`grpc_errors` for aio servicers) turns them into a status
with the error's message. Anything else becomes INTERNAL with a generic message and a logged
traceback: a client never sees a stack trace.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import grpc

from services.common.logging import get_logger

log = get_logger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


class DomainError(Exception):
    grpc_code = grpc.StatusCode.INTERNAL
    http_status = 500


class InvalidArgument(DomainError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class NotFound(DomainError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class Unavailable(DomainError):
    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class ResourceExhausted(DomainError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class Unauthenticated(DomainError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class PermissionDenied(DomainError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


def grpc_errors(
    method: Callable[..., Awaitable[R]],
) -> Callable[..., Awaitable[R]]:
    """Decorate an aio servicer method `(self, request, context)` to map domain errors."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await method(self, request, context)
        except DomainError as exc:
            await context.abort(exc.grpc_code, str(exc))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unhandled_error", method=method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper
