"""Bot authors' regexes run with RE2: linear time by construction, no ReDoS.

Bots bring their own regexes (entity patterns, slot validation) and the services run them on
user text. Python's backtracking `re` can take exponential time on some patterns; RE2
(`google-re2`) cannot, because it has no construct that needs backtracking. So every pattern
from a bot definition goes through `compile_bot_regex`, and `regex_problem` names what RE2
does not allow (lookarounds, backreferences, conditionals, atomic groups, possessive
quantifiers, ...) for the definition error.

The shorthand classes keep Python's Unicode meaning: `\\w`, `\\d`, `\\s`, `\\W`, `\\D`, `\\S`
become Unicode property classes before RE2 sees the pattern, so `\\w+` still matches "héllo"
(`\\W` and `\\S` inside brackets, which RE2 cannot spell, are refused). `\\b` is RE2's: only
ASCII letters, digits and `_` count as word characters on either side of it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Protocol

import re2  # type: ignore[import-untyped]


class UnsafeRegex(ValueError):
    pass


class RegexMatch(Protocol):
    def group(self, index: int = 0, /) -> str: ...
    def start(self, index: int = 0, /) -> int: ...
    def end(self, index: int = 0, /) -> int: ...


class BotPattern(Protocol):
    """What `re.Pattern[str]` and a compiled RE2 pattern have in common."""

    @property
    def pattern(self) -> str: ...
    def search(self, text: str, /) -> RegexMatch | None: ...
    def fullmatch(self, text: str, /) -> RegexMatch | None: ...
    def finditer(self, text: str, /) -> Iterator[RegexMatch]: ...


_WORD = r"\p{L}\p{N}_"
_SPACE = r"\s\x0b\x1c-\x1f\x85\p{Z}"
_INSIDE = {"w": _WORD, "d": r"\p{Nd}", "D": r"\P{Nd}", "s": _SPACE}
"""Python's Unicode shorthand classes, as RE2 class contents."""
_OUTSIDE = {"w": f"[{_WORD}]", "W": f"[^{_WORD}]", "d": r"\p{Nd}", "D": r"\P{Nd}",
            "s": f"[{_SPACE}]", "S": f"[^{_SPACE}]"}

_CONSTRUCTS = (
    ("(?<=", "lookbehind `(?<=...)`"), ("(?<!", "negative lookbehind `(?<!...)`"),
    ("(?=", "lookahead `(?=...)`"), ("(?!", "negative lookahead `(?!...)`"),
    ("(?P=", "backreference `(?P=name)`"), ("(?(", "conditional `(?(1)...)`"),
    ("(?>", "atomic group `(?>...)`"), ("(?#", "comment `(?#...)`"),
)


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    return options


_OPTIONS = _options()


def to_re2(pattern: str) -> str:
    """`pattern` with Python's Unicode `\\w`, `\\d`, `\\s` spelled for RE2."""
    out: list[str] = []
    in_class = False
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            escape = pattern[index + 1]
            if in_class and escape in "WS":
                raise UnsafeRegex(f"`\\{escape}` inside brackets is not allowed (RE2 would read "
                                  f"it as ASCII only): write `[^\\{escape.lower()}...]`")
            table = _INSIDE if in_class else _OUTSIDE
            out.append(table.get(escape, char + escape))
            index += 2
            continue
        if char == "[" and not in_class:
            in_class = True
            out.append(char + ("^" if pattern[index + 1:index + 2] == "^" else ""))
            index += len(out[-1])
            if pattern[index:index + 1] == "]":  # a leading "]" is a literal
                out.append("]")
                index += 1
            continue
        in_class = in_class and char != "]"
        out.append(char)
        index += 1
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def compile_bot_regex(pattern: str) -> BotPattern:
    """The RE2 pattern for a bot author's `pattern`; UnsafeRegex names what RE2 refuses."""
    try:
        compiled: BotPattern = re2.compile(to_re2(pattern), _OPTIONS)
    except re2.error as exc:
        raise UnsafeRegex(_reason(pattern, exc)) from None
    return compiled


def regex_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be a bot regex (None: it can)."""
    try:
        compile_bot_regex(pattern)
    except UnsafeRegex as exc:
        return str(exc)
    return None


def _reason(pattern: str, exc: Exception) -> str:
    for opening, construct in _CONSTRUCTS:
        if opening in pattern:
            return f"{construct} is not allowed (bot regexes run with RE2, in linear time)"
    detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
    if detail.startswith("invalid escape sequence: \\") and detail[-1:].isdigit():
        return f"backreference `{detail.rsplit(' ', 1)[-1]}` is not allowed (bot regexes " \
               "run with RE2, in linear time)"
    if detail.startswith("bad repetition operator: ") and detail.endswith("+"):
        return f"possessive quantifier `{detail.rsplit(' ', 1)[-1]}` is not allowed (bot " \
               "regexes run with RE2, in linear time)"
    return f"not a valid RE2 regex: {detail}"


def pattern_issue(pattern: str) -> str | None:
    """The definition error for a bot author's `pattern` (None: it is fine): "invalid regex"
    when it is no regex at all, "unsafe regex" naming the construct RE2 does not allow."""
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"invalid regex {pattern!r}: {exc}"
    problem = regex_problem(pattern)
    return None if problem is None else f"unsafe regex {pattern!r}: {problem}"
