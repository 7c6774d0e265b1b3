"""JSON in and out: reading bodies within a size limit, field-level validation, and the JSON
form of bot messages (shared by the HTTP responses, the WebSocket and webhooks).

Hostile input (docs/security.md): a body over its limit is refused with 413 before it is read
whole; invalid UTF-8, JSON nested deeper than MAX_JSON_DEPTH and lone surrogates (`"\\ud800"`,
not encodable) anywhere in it get 400; so do control characters (other than tab, line feed
and carriage return) in text fields: they are refused, not stripped, so that the text stored
is the text sent."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from services.common.pb.botfactory.v1 import conversation_pb2
from services.gateway.http.problems import FieldError, PayloadTooLarge, RequestInvalid
from services.gateway.hub import citation_json

# Ids end up in NATS subjects and KV keys: no dots, wildcards or spaces.
BOT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CONVERSATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
MESSAGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# A bot message id is the user message id it answers plus ":<index>" (see the dialogue).
RATED_MESSAGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}(:[0-9]{1,4})?$")
MAX_METADATA_ENTRIES = 32
MAX_METADATA_CHARS = 512
MAX_SENDER_CHARS = 256
MAX_JSON_DEPTH = 32
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, refusing (413) anything over `limit` bytes before reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request, limit: int) -> Any:
    raw = await read_body(request, limit)
    if not raw.strip():
        raise RequestInvalid.one("body", "a JSON object is required")
    return parse_json(raw)


def parse_json(raw: str | bytes) -> Any:
    """The JSON value of a body or frame; 400 when it is not valid JSON, is nested too deep
    or holds a lone surrogate."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestInvalid.one("body", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestInvalid.one("body", f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    check_structure(body)
    return body


def check_structure(body: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """400 unless `body` is nested at most `max_depth` levels and holds no lone surrogate."""
    stack: list[tuple[Any, int]] = [(body, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth >= max_depth:
                raise RequestInvalid.one("body", f"nested deeper than {max_depth} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and _SURROGATE.search(key):
                    raise RequestInvalid.one("body", "invalid Unicode (a lone surrogate)")
                stack.append((item, depth + 1))
        elif isinstance(value, str) and _SURROGATE.search(value):
            raise RequestInvalid.one("body", "invalid Unicode (a lone surrogate)")


def text_problem(value: str) -> str | None:
    """Why `value` is not acceptable text (None when it is): lone surrogates, control
    characters other than tab, line feed and carriage return."""
    if _SURROGATE.search(value):
        return "must be valid Unicode (no lone surrogates)"
    if _CONTROL.search(value):
        return "must not contain control characters (other than tab and line breaks)"
    return None


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


class Fields:
    """Reads fields of one JSON object, collecting every problem; `done()` raises them all."""

    def __init__(self, body: Any, *, where: str = "") -> None:
        self.errors: list[FieldError] = []
        self._where = where
        self._seen: set[str] = set()
        self.body: dict[str, Any] = body if isinstance(body, dict) else {}
        if not isinstance(body, dict):
            self.errors.append(FieldError(where or "body", "must be a JSON object"))

    def _get(self, name: str, required: bool) -> Any:
        self._seen.add(name)
        if name not in self.body or self.body[name] is None:
            if required:
                self.fail(name, "is required")
            return None
        return self.body[name]

    def fail(self, name: str, message: str) -> None:
        self.errors.append(FieldError(f"{self._where}{name}", message))

    def text(self, name: str, *, max_chars: int, required: bool = True,
             allow_empty: bool = False) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(name, "must be a string")
            return None
        if not allow_empty and not value.strip():
            self.fail(name, "must not be empty")
            return None
        if len(value) > max_chars:
            self.fail(name, f"must be at most {max_chars} characters")
            return None
        problem = text_problem(value)
        if problem is not None:
            self.fail(name, problem)
            return None
        return value

    def identifier(self, name: str, pattern: re.Pattern[str], *,
                   required: bool = True) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str) or not pattern.match(value):
            self.fail(name, f"must be a string matching {pattern.pattern}")
            return None
        return value

    def choice(self, name: str, allowed: tuple[Any, ...]) -> Any:
        value = self._get(name, True)
        if value is None:
            return None
        if type(value) not in {type(a) for a in allowed} or value not in allowed:
            choices = ", ".join(json.dumps(a) for a in allowed)
            self.fail(name, f"must be one of {choices}")
            return None
        return value

    def number(self, name: str, *, minimum: float, maximum: float,
               integer: bool = False) -> float | None:
        """An optional number in minimum..maximum (an integer when `integer`: 3 or 3.0, as
        JSON Schema's "integer" reads it)."""
        value = self._get(name, False)
        if value is None:
            return None
        if integer and isinstance(value, float) and value.is_integer():
            value = int(value)
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) \
                or not minimum <= value <= maximum:
            kind = "an integer" if integer else "a number"
            self.fail(name, f"must be {kind} in {minimum:g}..{maximum:g}")
            return None
        return float(value)

    def string_map(self, name: str, *, max_entries: int = MAX_METADATA_ENTRIES,
                   max_chars: int = MAX_METADATA_CHARS) -> dict[str, str]:
        value = self._get(name, False)
        if value is None:
            return {}
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= max_chars and
            len(v) <= max_chars and text_problem(k) is None and text_problem(v) is None
            for k, v in value.items())
        if not ok or len(value) > max_entries:
            self.fail(name, f"must be an object of at most {max_entries} string values "
                            f"(keys and values up to {max_chars} characters, no control "
                            "characters)")
            return {}
        return dict(value)

    def string_list(self, name: str, pattern: re.Pattern[str], *,
                    max_items: int = 100) -> list[str] | None:
        value = self._get(name, True)
        if value is None:
            return None
        ok = isinstance(value, list) and 0 < len(value) <= max_items and all(
            isinstance(v, str) and pattern.match(v) for v in value)
        if not ok:
            self.fail(name, f"must be a list of 1..{max_items} strings matching "
                            f"{pattern.pattern}")
            return None
        return list(dict.fromkeys(value))

    def object(self, name: str) -> dict[str, Any]:
        """An optional JSON object field ({} when absent)."""
        value = self._get(name, False)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(name, "must be a JSON object")
            return {}
        return value

    def flag(self, name: str) -> bool | None:
        """An optional boolean (None when absent or null)."""
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.fail(name, "must be true or false")
            return None
        return value

    def array(self, name: str, *, max_items: int) -> list[Any]:
        """A required JSON array of 1 to `max_items` items (its items unchecked)."""
        value = self._get(name, True)
        if value is None:
            return []
        if not isinstance(value, list) or not 1 <= len(value) <= max_items:
            self.fail(name, f"must be a list of 1 to {max_items} items")
            return []
        return value

    def string_dict(self, name: str, *, required: bool = True) -> dict[str, str] | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, dict) or not value or not all(
                isinstance(v, str) for v in value.values()):
            self.fail(name, "must be a non-empty object of strings")
            return None
        return dict(value)

    def done(self) -> None:
        for name in sorted(set(self.body) - self._seen):
            self.fail(name, "unknown field")
        if self.errors:
            raise RequestInvalid(self.errors)


def limit_query(request: web.Request, default: int, maximum: int) -> int:
    """The `?limit=` of a list route: an integer 1..`maximum` (`default` when absent)."""
    raw = request.query.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise RequestInvalid.one("limit", f"must be an integer 1..{maximum}")
    return int(raw)


def button_json(button: conversation_pb2.Button) -> dict[str, str]:
    return {"title": button.title, "payload": button.payload}


def turn_nlu_json(nlu: conversation_pb2.TurnNlu | None) -> dict[str, Any] | None:
    """`?include=nlu`: the matched intent, its confidence, the ranking, the parameters
    (entities) and the flow step after the turn; None when the turn ran no NLU."""
    if nlu is None:
        return None
    return {
        "intent": nlu.intent,
        "confidence": round(nlu.confidence, 4),
        "ranking": [{"intent": i.name, "confidence": round(i.confidence, 4)}
                    for i in nlu.ranking],
        "entities": [{"entity": e.entity, "value": e.value, "raw": e.raw, "start": e.start,
                      "end": e.end} for e in nlu.entities],
        "out_of_scope": nlu.out_of_scope,
        "sentiment": nlu.sentiment or None,
        "model_version": nlu.model_version,
        "flow": nlu.flow or None,
        "step": nlu.step or None,
    }


def reply_json(message: conversation_pb2.BotMessage) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "text": message.text,
        "buttons": [button_json(b) for b in message.buttons],
        "citations": [citation_json(c) for c in message.citations],
        "role": message.role or "bot",
        "in_reply_to": message.in_reply_to,
        "at_unix_ms": message.sent_at_unix_ms,
    }
