"""Inline entity annotations in example text.

`send [50](amount) to [mom](recipient)` marks "50" as an `amount` and "mom" as a `recipient`;
`[current]{"entity": "account_type", "value": "checking"}` also gives a normalised value.
A bracket pair not directly followed by `(` or `{` is literal text, and `\\[`, `\\]` and `\\\\`
are a literal `[`, `]` and backslash (any other backslash is literal as it stands).
"""

from __future__ import annotations

import json
import re

from services.botdef.model import EntitySpan, Example

ENTITY_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
"""Entity names: a letter or `_`, then letters, digits, `_`, `.` or `-` (ATIS uses dots)."""

_ESCAPABLE = "[]\\"
_JSON_KEYS = ("entity", "value", "role", "group")
_DECODER = json.JSONDecoder()


def parse_annotated(text: str, *, intent: str = "") -> Example:
    """Parse an annotated example into its plain text and entity spans.

    Raises ValueError (with the 1-based column) on a malformed annotation.
    """
    plain: list[str] = []
    spans: list[EntitySpan] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and text[i + 1 : i + 2] in tuple(_ESCAPABLE):
            plain.append(text[i + 1])
            i += 2
            continue
        if char == "[":
            found = _annotation_at(text, i)
            if found is not None:
                inner, entity, value, i = found
                start = sum(len(piece) for piece in plain)
                spans.append(EntitySpan(start, start + len(inner), entity, value))
                plain.append(inner)
                continue
        plain.append(char)
        i += 1
    return Example(text="".join(plain), intent=intent, entities=tuple(spans))


def _annotation_at(text: str, i: int) -> tuple[str, str, str | None, int] | None:
    """The annotation opening at `text[i] == "["`: (text, entity, value, end) or None."""
    bracket = _bracket_text(text, i + 1)
    if bracket is None:
        return None
    inner, close = bracket
    after = close + 1
    if text[after : after + 1] not in ("(", "{"):
        return None
    if text[after] == "(":
        entity, end = _paren_entity(text, after)
        value = None
    else:
        entity, value, end = _json_entity(text, after)
    _check_inner(inner, i)
    return inner, entity, value, end


def _bracket_text(text: str, i: int) -> tuple[str, int] | None:
    """Unescaped text up to the next unescaped `]` and its index; None if `[` or end first."""
    chars: list[str] = []
    while i < len(text):
        char = text[i]
        if char == "\\" and text[i + 1 : i + 2] in tuple(_ESCAPABLE):
            chars.append(text[i + 1])
            i += 2
            continue
        if char == "]":
            return "".join(chars), i
        if char == "[":
            return None
        chars.append(char)
        i += 1
    return None


def _check_inner(inner: str, i: int) -> None:
    if not inner.strip():
        raise ValueError(f"empty annotated text at column {i + 1}")
    if inner != inner.strip():
        raise ValueError(
            f"annotated text {inner!r} at column {i + 1} starts or ends with whitespace"
        )


def _paren_entity(text: str, i: int) -> tuple[str, int]:
    close = text.find(")", i)
    if close < 0:
        raise ValueError(f"unclosed '(' at column {i + 1}")
    name = text[i + 1 : close]
    if not ENTITY_NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid entity name {name!r} at column {i + 2} "
            "(expected a letter or '_', then letters, digits, '_', '.', '-')"
        )
    return name, close + 1


def _json_entity(text: str, i: int) -> tuple[str, str | None, int]:
    try:
        obj, end = _DECODER.raw_decode(text, i)
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON annotation at column {i + 1}: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"JSON annotation at column {i + 1} is not an object")
    unknown = sorted(set(obj) - set(_JSON_KEYS))
    if unknown:
        raise ValueError(
            f"JSON annotation at column {i + 1} has unknown key(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(_JSON_KEYS)})"
        )
    entity = obj.get("entity")
    if not isinstance(entity, str) or not ENTITY_NAME_RE.fullmatch(entity):
        raise ValueError(f'JSON annotation at column {i + 1} needs a valid "entity" name')
    value = obj.get("value")
    if value is not None and not isinstance(value, str):
        raise ValueError(f'JSON annotation at column {i + 1}: "value" must be a string')
    return entity, value, end


def format_annotated(example: Example) -> str:
    """Write an example back in annotated form; `parse_annotated` of the result is equal.

    Raises ValueError on spans that overlap, fall outside the text, are empty or start/end
    with whitespace, or on an invalid entity name.
    """
    pieces: list[str] = []
    position = 0
    for span in sorted(example.entities, key=lambda s: (s.start, s.end)):
        _check_span(example.text, span, position)
        pieces.append(_escape(example.text[position : span.start]))
        pieces.append(_format_span(example.text[span.start : span.end], span))
        position = span.end
    pieces.append(_escape(example.text[position:]))
    return "".join(pieces)


def _check_span(text: str, span: EntitySpan, position: int) -> None:
    if not 0 <= span.start < span.end <= len(text):
        raise ValueError(f"span [{span.start}, {span.end}) is empty or outside {text!r}")
    if span.start < position:
        raise ValueError(f"span [{span.start}, {span.end}) overlaps another span in {text!r}")
    inner = text[span.start : span.end]
    if inner != inner.strip():
        raise ValueError(f"span {inner!r} of {text!r} starts or ends with whitespace")
    if not ENTITY_NAME_RE.fullmatch(span.entity):
        raise ValueError(f"invalid entity name {span.entity!r}")


def _format_span(inner: str, span: EntitySpan) -> str:
    if span.value is None:
        return f"[{_escape(inner)}]({span.entity})"
    spec = json.dumps({"entity": span.entity, "value": span.value}, ensure_ascii=False)
    return f"[{_escape(inner)}]{spec}"


def _escape(text: str) -> str:
    out: list[str] = []
    for index, char in enumerate(text):
        if char in "[]":
            out.append("\\" + char)
        elif char == "\\" and (index + 1 == len(text) or text[index + 1] in _ESCAPABLE):
            out.append("\\\\")
        else:
            out.append(char)
    return "".join(out)
