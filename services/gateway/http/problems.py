"""One error format for every response: RFC 9457 `application/problem+json`.

`{"type", "title", "status", "detail"}` plus, where they help, extension members: `errors`
(field-level messages of a 400), `issues` (a rejected bot definition, 422), `retry_after`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web

from services.common.errors import DomainError, InvalidArgument

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:botfactory:problem:"
INTERNAL_DETAIL = "internal error; the request was logged and can be reported with its id"


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class RequestInvalid(InvalidArgument):
    """A request body, query or path that fails validation, with one message per field."""

    problem_type = "invalid-request"

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors

    @classmethod
    def one(cls, field: str, message: str) -> RequestInvalid:
        return cls([FieldError(field, message)])

    def extensions(self) -> dict[str, Any]:
        return {"errors": [asdict(e) for e in self.errors]}


class PayloadTooLarge(DomainError):
    http_status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")


class UnsupportedMediaType(DomainError):
    http_status = 415

    def __init__(self, offered: str) -> None:
        super().__init__(f"the body must be application/json, not {offered or 'untyped'}")


class DefinitionInvalid(DomainError):
    """A bot definition that does not load: the issues, with file, line and field."""

    http_status = 422
    problem_type = "invalid-definition"

    def __init__(self, issues: list[dict[str, Any]]) -> None:
        super().__init__(f"the bot definition has {len(issues)} issue(s)")
        self.issues = issues

    def extensions(self) -> dict[str, Any]:
        return {"issues": self.issues}


def slug(name: str) -> str:
    """`NotFound` / `Not Found` → `not-found`."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return "-".join(spaced.lower().split())


def problem(status: int, detail: str, *, type_slug: str | None = None,
            extensions: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None) -> web.Response:
    title = _title(status)
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + (type_slug or slug(title)), "title": title,
        "status": status, "detail": detail, **(extensions or {}),
    }
    return web.Response(status=status, text=json.dumps(body), headers=headers,
                        content_type=PROBLEM_CONTENT_TYPE)


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def from_domain_error(exc: DomainError, headers: dict[str, str] | None = None) -> web.Response:
    status = exc.http_status
    type_slug = getattr(exc, "problem_type", None) or slug(type(exc).__name__)
    extensions_of = getattr(exc, "extensions", None)
    extensions = extensions_of() if callable(extensions_of) else None
    headers_of = getattr(exc, "headers", None)  # e.g. Retry-After of a 503
    if headers is None and callable(headers_of):
        headers = headers_of()
    return problem(status, str(exc) or _title(status), type_slug=type_slug,
                   extensions=extensions, headers=headers)


def from_http_exception(exc: web.HTTPException) -> web.Response:
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    return problem(exc.status, detail, headers=headers)
