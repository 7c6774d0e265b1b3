"""Refuse regular expressions that can backtrack catastrophically (ReDoS).

Bots bring their own regexes (entity patterns, slot validation) and the services run them on
user text with Python's backtracking `re`, which has no time limit. `unsafe_reason(pattern)`
parses a pattern and names the first construct known to take exponential or high polynomial
time on some input, None when it finds none:

- backreferences (`(a+)\\1`, `(?(1)...)`);
- a repeated part that can match the empty string (`(a?)+`, `(a*){20}`);
- nested variable quantifiers: a repeated part holding a quantifier of variable length
  (`(a+)+`, `(\\w+\\s?)*`, `(a{1,3}){2,}`); a fixed or at most optional inner part is fine
  (`(?:\\d{3}[ -]?)+`, `(?: ?[A-Z0-9]{4}){2,7}`);
- a repeated alternation whose branches can start with the same character or be empty
  (`(a|ab)+`, `(\\d|\\w)*`); disjoint branches are fine (`(?:foo|bar)+`);
- unbounded quantifiers over overlapping characters one after the other, with only optional
  parts between them (`\\d+\\d+`, `.*\\s*.*`, `\\w+ ?\\w+`).

This is a conservative check, not a proof: a pattern it lets through still runs on input whose
length the services bound (the gateway's `MAX_TEXT_CHARS`; the NLU's rule extractors
truncate), so the time stays bounded.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Iterable
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import sre_constants as C
    import sre_parse

_SAMPLE = frozenset(chr(c) for c in range(256)) | frozenset("éßçñøΩЖ中٣")
_REPEATS = {C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", C.MAX_REPEAT)}
_UNBOUNDED = 32
"""A quantifier that may repeat more than this many times counts as unbounded."""


class UnsafeRegex(ValueError):
    pass


@functools.lru_cache(maxsize=1024)
def unsafe_reason(pattern: str) -> str | None:
    """Why `pattern` may backtrack catastrophically, None when it looks safe (or does not
    compile: `re.compile` reports that)."""
    try:
        parsed = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        return None
    try:
        _check_sequence(list(parsed.data))
    except UnsafeRegex as exc:
        return str(exc)
    return None


def check(pattern: str) -> None:
    """Raise UnsafeRegex when `unsafe_reason` finds a problem."""
    reason = unsafe_reason(pattern)
    if reason is not None:
        raise UnsafeRegex(reason)


# --- the walk ---------------------------------------------------------------------------------

Item = tuple[Any, Any]


def _check_sequence(items: list[Item]) -> None:
    previous: frozenset[str] | None = None  # chars of the last unbounded repeat in this run
    for op, av in items:
        _check_item(op, av)
        op, av = _unwrapped(op, av)
        if op in _REPEATS and _is_unbounded(av):
            chars = _single_chars(list(av[2]))
            if previous is not None and (chars is None or chars & previous):
                raise UnsafeRegex("unbounded quantifiers over overlapping characters follow "
                                  "each other (e.g. \\d+\\d+): rewrite with one quantifier")
            previous = chars if chars is not None else _SAMPLE
        elif _min_width([(op, av)]) > 0:
            previous = None


def _unwrapped(op: Any, av: Any) -> Item:
    """A group holding a single item stands for that item (`(\\d+)` is `\\d+`)."""
    while op is C.SUBPATTERN and len(list(av[-1])) == 1:
        op, av = next(iter(av[-1]))
    return op, av


def _check_item(op: Any, av: Any) -> None:
    if op in (C.GROUPREF, C.GROUPREF_EXISTS):
        raise UnsafeRegex("backreferences are not allowed")
    if op in _REPEATS:
        _, high, body = av
        body_items = list(body)
        if high > 1:
            _check_repeated_body(body_items)
        _check_sequence(body_items)
    elif op is C.SUBPATTERN:
        _check_sequence(list(av[-1]))
    elif op is C.BRANCH:
        for branch in av[1]:
            _check_sequence(list(branch))
    elif op in (C.ASSERT, C.ASSERT_NOT):
        _check_sequence(list(av[1]))
    elif op is getattr(C, "ATOMIC_GROUP", None):
        _check_sequence(list(av))


def _check_repeated_body(body: list[Item]) -> None:
    if _min_width(body) == 0:
        raise UnsafeRegex("a repeated part can match the empty string (e.g. (a?)+)")
    for op, av in _descendants(body):
        if op in _REPEATS:
            low, high, _ = av
            if high > 1 and low != high:
                raise UnsafeRegex("nested quantifiers (e.g. (a+)+): a repeated part holds a "
                                  "quantifier of variable length")
        elif op is C.BRANCH:
            _check_disjoint_branches(av[1])


def _check_disjoint_branches(branches: list[Any]) -> None:
    seen: set[str] = set()
    for branch in branches:
        items = list(branch)
        first = _first_chars(items)
        if first is None or _min_width(items) == 0 or first & seen:
            raise UnsafeRegex("a repeated alternation has branches that can match the same "
                              "text (e.g. (a|ab)+): make the branches start differently")
        seen |= first


def _descendants(items: Iterable[Item]) -> Iterable[Item]:
    for op, av in items:
        yield op, av
        if op in _REPEATS:
            yield from _descendants(av[2])
        elif op is C.SUBPATTERN:
            yield from _descendants(av[-1])
        elif op is C.BRANCH:
            for branch in av[1]:
                yield from _descendants(branch)
        elif op is getattr(C, "ATOMIC_GROUP", None):
            yield from _descendants(av)


def _is_unbounded(av: Any) -> bool:
    return bool(av[1] > _UNBOUNDED)


def _min_width(items: list[Item]) -> int:
    if not items:
        return 0
    sub = sre_parse.SubPattern(sre_parse.State(), items)
    return int(sub.getwidth()[0])


# --- character sets (over a sample alphabet; None: unknown, assume anything) ------------------


def _single_chars(body: list[Item]) -> frozenset[str] | None:
    """The characters a one-character body matches (None when it is not one character)."""
    if len(body) == 1:
        return _chars_of(*body[0])
    return None


def _first_chars(items: list[Item]) -> frozenset[str] | None:
    """The characters a sequence can start with (None when unknown)."""
    if not items:
        return None
    op, av = items[0]
    if op is C.SUBPATTERN:
        return _first_chars(list(av[-1]) + items[1:]) if list(av[-1]) else None
    if op in _REPEATS and av[0] >= 1:
        return _first_chars(list(av[2]))
    return _chars_of(op, av)


def _chars_of(op: Any, av: Any) -> frozenset[str] | None:
    if op is C.LITERAL:
        return _with_case(frozenset({chr(av)}))
    if op is C.NOT_LITERAL:
        return _SAMPLE - {chr(av)}
    if op is C.ANY:
        return _SAMPLE
    if op is C.IN:
        return _with_case(_class_chars(av))
    return None


def _class_chars(items: list[Item]) -> frozenset[str]:
    negate = any(op is C.NEGATE for op, _ in items)
    found: set[str] = set()
    for op, av in items:
        if op is C.LITERAL:
            found.add(chr(av))
        elif op is C.RANGE:
            low, high = av
            found.update(c for c in _SAMPLE if low <= ord(c) <= high)
        elif op is C.CATEGORY:
            found.update(c for c in _SAMPLE if _in_category(av, c))
    return frozenset(_SAMPLE - found if negate else found)


def _in_category(category: Any, char: str) -> bool:
    tests = {
        C.CATEGORY_DIGIT: char.isdigit(),
        C.CATEGORY_NOT_DIGIT: not char.isdigit(),
        C.CATEGORY_SPACE: char.isspace(),
        C.CATEGORY_NOT_SPACE: not char.isspace(),
        C.CATEGORY_WORD: char.isalnum() or char == "_",
        C.CATEGORY_NOT_WORD: not (char.isalnum() or char == "_"),
    }
    return tests.get(category, True)


def _with_case(chars: frozenset[str]) -> frozenset[str]:
    """Both cases of each character (a pattern may be case-insensitive)."""
    return chars | {c.swapcase() for c in chars} if chars else chars
