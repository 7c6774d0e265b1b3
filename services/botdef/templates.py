"""Response templates: the sandboxed Jinja environment the dialogue renders with, and the
load-time check of a template (docs/bot-definition.md, "Responses"; docs/security.md)."""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from jinja2 import ChainableUndefined, Undefined, nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.botdef.expressions import money as format_money
from services.common.pii import redact

TEMPLATE_VARIABLES = frozenset({"slots", "display", "slot", "workflow"})
"""What a template may read: `slots.NAME`, `display.NAME` (the slot's value as written in the
conversation's language: 柏林 for the canonical Berlin in Chinese, from the entity's synonyms),
`slot` (name, label, value, problem: the slot a question, a re-ask or a correction is about)
and `workflow` (name, status, error, outputs)."""
MAX_EXPONENT = 64
MAX_PRODUCT_SIZE = 100_000
MAX_CALL_NUMBER = 10_000
"""The largest number a template may pass to a call or filter (range, widths, counts)."""
UNSAFE_FILTERS = ("format", "center", "indent", "wordwrap")
"""Filters left out of templates: they build strings from widths or format specs."""


class _Sandbox(ImmutableSandboxedEnvironment):
    """Also refuses what would build huge values or run for long: `*` and `**` with huge
    results (`'x' * 10**9`), `%` formatting of strings (`'%0999999999d' % 1`), `str.format`,
    and any call or filter given a number above MAX_CALL_NUMBER (`'x'.ljust(10**9)`,
    `'x'|center(10**9)`, `range(10**6)`) or returning a string longer than MAX_PRODUCT_SIZE."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is too large")
        sequence = isinstance(left, str | list | tuple) or isinstance(right, str | list | tuple)
        if operator == "*" and sequence and _size(left) * _size(right) > MAX_PRODUCT_SIZE:
            raise SecurityError("the product would be too large")
        if operator == "%" and isinstance(left, str):
            raise SecurityError("% formatting of strings is not allowed")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(__obj, "__name__", "")
        if name in ("format", "format_map"):  # str.format, wrapped by the sandbox
            raise SecurityError("str.format is not allowed")
        _check_arguments(args, kwargs)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str) and name in ("replace", "join") and args:
            if name == "join":
                args = (list(args[0]), *args[1:])
            _check_growth(name, owner if name == "replace" else args[0],
                          args[:2] if name == "replace" else (owner,))
        return _check_result(super().call(__context, __obj, *args, **kwargs))


def _check_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int | float) and not isinstance(value, bool) and \
                abs(value) > MAX_CALL_NUMBER:
            raise SecurityError(f"argument {value} is too large (at most {MAX_CALL_NUMBER})")


def _check_result(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_PRODUCT_SIZE:
        raise SecurityError("the result would be too large")
    return value


def _check_growth(name: str, value: Any, args: Sequence[Any]) -> None:
    """Refuse a `replace` or `join` whose result would exceed MAX_PRODUCT_SIZE, before it
    is built (`'ab'|replace('a', 'x' * 99999)|replace('x', 'y' * 99999)`)."""
    if name == "replace" and isinstance(value, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        size = len(value) + (value.count(old) if old else len(value) + 1) * len(new)
    elif name == "join" and isinstance(value, list):
        separator = str(args[0]) if args else ""
        size = sum(len(str(item)) for item in value) + len(separator) * len(value)
    else:
        return
    if size > MAX_PRODUCT_SIZE:
        raise SecurityError("the result would be too large")


def _guarded_filter(name: str, function: Any) -> Any:
    """A filter that refuses huge numeric arguments and huge string results."""

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(args[1:], kwargs)  # args[0]: the value or the context
        if name in ("replace", "join") and len(args) >= 2:  # (eval context, value, ...)
            value = list(args[1]) if name == "join" and not isinstance(args[1], str) \
                else args[1]
            _check_growth(name, value, args[2:])
            args = (args[0], value, *args[2:])
        return _check_result(function(*args, **kwargs))

    return guarded


def _size(value: Any) -> int:
    if isinstance(value, str | list | tuple):
        return max(len(value), 1)
    if isinstance(value, int) and not isinstance(value, bool):
        return max(abs(value), 1)
    return 1


def template_environment() -> ImmutableSandboxedEnvironment:
    """The sandboxed Jinja environment of response templates.

    No loader (no include/import), no access to private attributes or mutation of values,
    no huge products or powers; a missing value renders empty, None renders empty,
    booleans as yes/no. Filter `money` formats a number with thousands separators and 2
    decimals; `redact_pii` masks card numbers, IBANs, e-mail addresses, phone numbers and
    Chinese resident ID numbers.
    """
    env = _Sandbox(undefined=ChainableUndefined, finalize=_finalize, autoescape=False)
    env.filters["money"] = money
    env.filters["redact_pii"] = _redact_pii
    for name in UNSAFE_FILTERS:
        env.filters.pop(name, None)
    env.filters = {name: _guarded_filter(name, f) for name, f in env.filters.items()}
    env.globals.pop("lipsum", None)
    return env


def _redact_pii(value: Any) -> Any:
    """`{{ slots.recipient | redact_pii }}`: a value with card numbers, IBANs, e-mail addresses,
    phone numbers and Chinese resident ID numbers masked, for messages that echo what the user
    gave (docs/security.md)."""
    if value is None or isinstance(value, Undefined):
        return ""
    return redact(value) if isinstance(value, str) else value


def _finalize(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def money(value: Any, places: int = 2) -> str:
    """The `money` filter: `expressions.money` (a missing value renders empty)."""
    return "" if isinstance(value, Undefined) else format_money(value, places)


def template_problems(
    env: ImmutableSandboxedEnvironment, source: str, slots: Collection[str]
) -> list[str]:
    """What is wrong with a response template: syntax, include/import, unknown variables
    or slots (`slots.NAME` / `slots["NAME"]` must name a defined slot)."""
    try:
        tree = env.parse(source)
        env.from_string(source)
    except TemplateError as exc:
        return [f"template error: {exc}"]
    problems = [
        f"`{type(node).__name__.lower()}` is not allowed in a template"
        for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport,
                                   nodes.Macro, nodes.CallBlock))
    ]
    problems.extend(_unsafe_template_parts(tree))
    allowed = TEMPLATE_VARIABLES | set(env.globals)
    for name in sorted(_free_names(tree) - allowed):
        problems.append(f"unknown template variable {name!r} (use slots.NAME)")
    for slot in sorted(_slot_references(tree) - set(slots)):
        problems.append(f"template uses unknown slot {slot!r}")
    return problems


def _unsafe_template_parts(tree: nodes.Template) -> list[str]:
    """Runaway rendering, refused when the bot is loaded: loops inside loops and recursive
    loops (with macros, refused by the caller, the only ways to run long without writing;
    what a template writes is bounded when it is rendered). Private attributes
    (`''.__class__`) are left to the sandbox: they render empty."""
    problems: list[str] = []
    for loop in tree.find_all(nodes.For):
        if loop.recursive:
            problems.append("recursive loops are not allowed in a template")
        if any(True for _ in loop.find_all(nodes.For)):
            problems.append("loops inside loops are not allowed in a template")
    return problems


def _free_names(tree: nodes.Template) -> set[str]:
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    return {n.name for n in tree.find_all(nodes.Name) if n.ctx == "load"} - assigned


_SLOT_MAPS = frozenset({"slots", "display"})


def _slot_references(tree: nodes.Template) -> set[str]:
    found: set[str] = set()
    for node in tree.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.node.name in _SLOT_MAPS:
            found.add(node.attr)
    for item in tree.find_all(nodes.Getitem):
        if isinstance(item.node, nodes.Name) and item.node.name in _SLOT_MAPS:
            arg = item.arg
            if isinstance(arg, nodes.Const) and isinstance(arg.value, str):
                found.add(arg.value)
    return found
