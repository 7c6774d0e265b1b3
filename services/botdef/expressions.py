"""The safe expression language of workflows (docs/workflows.md, "Expressions"). No `eval`.

A small recursive-descent parser over literals (numbers, 'strings', true/false/null, [lists]),
references (`inputs.amount`, `steps.debit.outputs.reference`, `vars.n`, `items[0]`),
comparisons (== != < <= > >= in, not in), boolean operators (and, or, not), arithmetic
(+ - * / // %) and a fixed set of functions. Templates are strings with `{{ expression }}`
parts; a template that is exactly one `{{ expression }}` keeps the value's type.

Evaluation reads only the scope it is given (mappings and lists); a missing mapping key is
null. A `Resolver` in the scope (the secrets) is asked for each name instead, and may refuse.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_LENGTH = 100_000  # the longest string or list an expression may build
MAX_SOURCE = 2_000  # the longest expression accepted
MAX_DEPTH = 100  # the deepest nesting accepted (`((1))`, `a + b + c`, `not x` each count)


class ExpressionError(ValueError):
    """A malformed expression, or one that cannot be evaluated on the given scope."""


class Resolver:
    """A scope entry resolved name by name (e.g. secrets); raises KeyError when unknown."""

    def resolve(self, name: str) -> Any:
        raise KeyError(name)


# -- syntax tree -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class Name:
    name: str


@dataclass(frozen=True)
class Attr:
    target: Node
    name: str


@dataclass(frozen=True)
class Index:
    target: Node
    index: Node


@dataclass(frozen=True)
class ListExpr:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Unary:
    op: str
    operand: Node


@dataclass(frozen=True)
class Binary:
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Call:
    function: str
    args: tuple[Node, ...]


Node = Literal | Name | Attr | Index | ListExpr | Unary | Binary | Call

# -- tokens ------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|//|[-+*/%<>()\[\].,])
""", re.VERBOSE)
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null", "True", "False", "None"}
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}


@dataclass(frozen=True)
class Token:
    kind: str  # number, string, name, op, keyword, end
    text: str
    position: int


def tokenize(source: str) -> list[Token]:
    if len(source) > MAX_SOURCE:
        raise ExpressionError(f"expression longer than {MAX_SOURCE} characters")
    tokens: list[Token] = []
    position = 0
    while position < len(source):
        match = _TOKEN.match(source, position)
        if match is None:
            raise ExpressionError(f"unexpected character {source[position]!r} at {position}")
        kind = match.lastgroup or ""
        text = match.group()
        if kind != "space":
            if kind == "name" and text in _KEYWORDS:
                kind = "keyword"
            tokens.append(Token(kind, text, position))
        position = match.end()
    tokens.append(Token("end", "", len(source)))
    return tokens


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


# -- parser ------------------------------------------------------------------------------------

_COMPARISONS = {"==", "!=", "<", "<=", ">", ">="}


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = tokenize(source)
        self.at = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.at]

    def take(self) -> Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def accept(self, text: str) -> bool:
        if self.token.text == text and self.token.kind in ("op", "keyword"):
            self.at += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text):
            raise self.error(f"expected {text!r}")

    def error(self, message: str) -> ExpressionError:
        found = self.token.text or "end of expression"
        return ExpressionError(f"{message} at {self.token.position} (found {found!r}) "
                               f"in {self.source!r}")

    def parse(self) -> Node:
        node = self.or_expr()
        if self.token.kind != "end":
            raise self.error("unexpected token")
        return node

    def or_expr(self) -> Node:
        node = self.and_expr()
        while self.accept("or"):
            node = Binary("or", node, self.and_expr())
        return node

    def and_expr(self) -> Node:
        node = self.not_expr()
        while self.accept("and"):
            node = Binary("and", node, self.not_expr())
        return node

    def not_expr(self) -> Node:
        if self.accept("not"):
            return Unary("not", self.not_expr())
        return self.comparison()

    def comparison(self) -> Node:
        node = self.additive()
        token = self.token
        if token.kind == "op" and token.text in _COMPARISONS:
            self.take()
            return Binary(token.text, node, self.additive())
        if self.accept("in"):
            return Binary("in", node, self.additive())
        if token.text == "not" and self.tokens[self.at + 1].text == "in":
            self.at += 2
            return Unary("not", Binary("in", node, self.additive()))
        return node

    def additive(self) -> Node:
        node = self.multiplicative()
        while self.token.kind == "op" and self.token.text in ("+", "-"):
            node = Binary(self.take().text, node, self.multiplicative())
        return node

    def multiplicative(self) -> Node:
        node = self.unary()
        while self.token.kind == "op" and self.token.text in ("*", "/", "//", "%"):
            node = Binary(self.take().text, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.accept("-"):
            return Unary("-", self.unary())
        return self.postfix(self.primary())

    def postfix(self, node: Node) -> Node:
        while True:
            if self.accept("."):
                token = self.take()
                if token.kind not in ("name", "keyword"):
                    self.at -= 1
                    raise self.error("expected a name after '.'")
                node = Attr(node, token.text)
            elif self.accept("["):
                node = Index(node, self.or_expr())
                self.expect("]")
            else:
                return node

    def primary(self) -> Node:
        token = self.take()
        if token.kind == "number":
            number = float(token.text)
            is_int = number.is_integer() and not any(c in token.text for c in ".eE")
            return Literal(int(token.text) if is_int else number)
        if token.kind == "string":
            return Literal(_unquote(token.text))
        if token.kind == "keyword" and token.text in ("true", "True"):
            return Literal(True)
        if token.kind == "keyword" and token.text in ("false", "False"):
            return Literal(False)
        if token.kind == "keyword" and token.text in ("null", "None"):
            return Literal(None)
        if token.kind == "name":
            return self.name_or_call(token)
        if token.text == "(" and token.kind == "op":
            node = self.or_expr()
            self.expect(")")
            return node
        if token.text == "[" and token.kind == "op":
            return ListExpr(tuple(self.arguments("]")))
        self.at -= 1
        raise self.error("expected a value")

    def name_or_call(self, token: Token) -> Node:
        if not self.accept("("):
            return Name(token.text)
        if token.text not in FUNCTIONS:
            self.at -= 2
            raise self.error(f"unknown function {token.text!r} (known: "
                             f"{', '.join(sorted(FUNCTIONS))})")
        return Call(token.text, tuple(self.arguments(")")))

    def arguments(self, closing: str) -> list[Node]:
        items: list[Node] = []
        if self.accept(closing):
            return items
        while True:
            items.append(self.or_expr())
            if self.accept(closing):
                return items
            self.expect(",")


_CACHE: dict[str, Node] = {}


def parse(source: str) -> Node:
    """The syntax tree of an expression (cached); raises ExpressionError."""
    node = _CACHE.get(source)
    if node is None:
        try:
            node = _Parser(source).parse()
        except RecursionError:
            raise ExpressionError(f"expression nested deeper than {MAX_DEPTH} levels") from None
        if _depth(node) > MAX_DEPTH:  # evaluation recurses as deep as the tree
            raise ExpressionError(f"expression nested deeper than {MAX_DEPTH} levels")
        if len(_CACHE) < 10_000:
            _CACHE[source] = node
    return node


def _depth(root: Node) -> int:
    """The depth of a syntax tree (iterative: the tree may be deeper than the stack)."""
    deepest = 0
    stack: list[tuple[Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, Attr):
            children: tuple[Node, ...] = (node.target,)
        elif isinstance(node, Index):
            children = (node.target, node.index)
        elif isinstance(node, ListExpr):
            children = node.items
        elif isinstance(node, Unary):
            children = (node.operand,)
        elif isinstance(node, Binary):
            children = (node.left, node.right)
        elif isinstance(node, Call):
            children = tuple(node.args)
        else:
            children = ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


# -- evaluation --------------------------------------------------------------------------------


def _number(value: Any, op: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExpressionError(f"{op} needs numbers, got {type_name(value)}")
    return value


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Sequence):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def truthy(value: Any) -> bool:
    return bool(value)


def _checked(value: Any) -> Any:
    if isinstance(value, str | list) and len(value) > MAX_LENGTH:
        raise ExpressionError(f"result longer than {MAX_LENGTH}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ExpressionError("result is not a finite number")
    return value


def _add(left: Any, right: Any) -> Any:
    if isinstance(left, str) and isinstance(right, str):
        return _checked(left + right)
    if isinstance(left, list) and isinstance(right, list):
        return _checked(left + right)
    return _checked(_number(left, "+") + _number(right, "+"))


def _divide(op: str, left: Any, right: Any) -> Any:
    a, b = _number(left, op), _number(right, op)
    if b == 0:
        raise ExpressionError("division by zero")
    if op == "/":
        result = a / b
        return int(result) if result.is_integer() and isinstance(a, int) and a % b == 0 \
            else result
    return a // b if op == "//" else a % b


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "==":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    both_numbers = all(isinstance(v, int | float) and not isinstance(v, bool)
                       for v in (left, right))
    if not both_numbers and not (isinstance(left, str) and isinstance(right, str)):
        raise ExpressionError(f"cannot compare {type_name(left)} {op} {type_name(right)}")
    result: bool = {"<": left < right, "<=": left <= right, ">": left > right,
                    ">=": left >= right}[op]
    return result


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        if not isinstance(item, str):
            raise ExpressionError(f"'in' a string needs a string, got {type_name(item)}")
        return item in container
    if isinstance(container, Mapping | list | tuple):
        return item in container
    raise ExpressionError(f"'in' needs a list, mapping or string, got {type_name(container)}")


def _binary(node: Binary, scope: Mapping[str, Any]) -> Any:
    if node.op == "and":
        left = evaluate(node.left, scope)
        return evaluate(node.right, scope) if truthy(left) else left
    if node.op == "or":
        left = evaluate(node.left, scope)
        return left if truthy(left) else evaluate(node.right, scope)
    left, right = evaluate(node.left, scope), evaluate(node.right, scope)
    if node.op == "+":
        return _add(left, right)
    if node.op == "-":
        return _checked(_number(left, "-") - _number(right, "-"))
    if node.op == "*":
        return _checked(_number(left, "*") * _number(right, "*"))
    if node.op in ("/", "//", "%"):
        return _divide(node.op, left, right)
    if node.op == "in":
        return _contains(right, left)
    return _compare(node.op, left, right)


def _member(target: Any, key: Any) -> Any:
    if isinstance(key, list | dict) and target is not None:  # unhashable: no mapping key
        raise ExpressionError(f"cannot look up a {type_name(key)} in a {type_name(target)}")
    if isinstance(target, dict):
        return target.get(key)
    if isinstance(target, Resolver):
        try:
            return target.resolve(str(key))
        except KeyError as exc:
            raise ExpressionError(str(exc.args[0]) if exc.args else str(exc)) from None
    if isinstance(target, Mapping):
        return target.get(key)
    if isinstance(target, list | tuple | str) and isinstance(key, int) \
            and not isinstance(key, bool):
        return target[key] if -len(target) <= key < len(target) else None
    if target is None:
        return None
    raise ExpressionError(f"cannot look up {key!r} in a {type_name(target)}")


def evaluate(node: Node, scope: Mapping[str, Any]) -> Any:
    """The value of `node` over `scope`; raises ExpressionError."""
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Name):
        if node.name not in scope:
            raise ExpressionError(f"unknown name {node.name!r}")
        return scope[node.name]
    if isinstance(node, Attr):
        return _member(evaluate(node.target, scope), node.name)
    if isinstance(node, Index):
        return _member(evaluate(node.target, scope), evaluate(node.index, scope))
    if isinstance(node, ListExpr):
        return [evaluate(item, scope) for item in node.items]
    if isinstance(node, Unary):
        value = evaluate(node.operand, scope)
        return not truthy(value) if node.op == "not" else -_number(value, "-")
    if isinstance(node, Call):
        return _call(node, scope)
    return _binary(node, scope)


def evaluate_source(source: str, scope: Mapping[str, Any]) -> Any:
    return evaluate(parse(source), scope)


# -- functions ---------------------------------------------------------------------------------


def _len(value: Any) -> int:
    if isinstance(value, str | list | tuple | Mapping):
        return len(value)
    raise ExpressionError(f"len() of a {type_name(value)}")


def _text(value: Any) -> str:
    return to_text(value)


def _to_int(value: Any) -> int:
    try:
        return int(float(value)) if isinstance(value, str) else int(_number(value, "int()"))
    except ValueError:
        raise ExpressionError(f"int() of {value!r}") from None


def _to_float(value: Any) -> float:
    try:
        return float(value) if isinstance(value, str) else float(_number(value, "float()"))
    except ValueError:
        raise ExpressionError(f"float() of {value!r}") from None


def _round(value: Any, digits: Any = 0) -> float | int:
    result = round(_number(value, "round()"), int(_number(digits, "round()")))
    return result


def _strings(name: str, fn: Callable[[str], Any]) -> Callable[[Any], Any]:
    def wrapped(value: Any) -> Any:
        if not isinstance(value, str):
            raise ExpressionError(f"{name}() needs a string, got {type_name(value)}")
        return fn(value)
    return wrapped


def _extreme(name: str, pick: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*values: Any) -> Any:
        items = list(values[0]) if len(values) == 1 and isinstance(values[0], list) \
            else list(values)
        if not items:
            raise ExpressionError(f"{name}() of nothing")
        return pick(_number(v, f"{name}()") for v in items)
    return wrapped


def _default(value: Any, fallback: Any) -> Any:
    return fallback if value is None or value == "" else value


def _join(items: Any, separator: Any = ", ") -> str:
    if not isinstance(items, list):
        raise ExpressionError(f"join() needs a list, got {type_name(items)}")
    return _checked(str(separator).join(to_text(item) for item in items))  # type: ignore[no-any-return]


def money(value: Any, places: Any = 2) -> str:
    """An amount with thousands separators: `1234.5` and `"1234.5"` -> `1,234.50`; null ->
    empty. The one `money` of bot authors: the expression function and the template filter.
    Anything else (a boolean, a list, text that is no number) raises ExpressionError."""
    if value is None:
        return ""
    number = _number(float(value) if isinstance(value, str) and _is_numeral(value) else value,
                     "money()")
    if not math.isfinite(number):
        raise ExpressionError("money() needs a finite number")
    return f"{number:,.{int(_number(places, 'money()'))}f}"


def _is_numeral(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": _len,
    "str": _text,
    "int": _to_int,
    "float": _to_float,
    "round": _round,
    "abs": lambda value: abs(_number(value, "abs()")),
    "min": _extreme("min", min),
    "max": _extreme("max", max),
    "lower": _strings("lower", str.lower),
    "upper": _strings("upper", str.upper),
    "trim": _strings("trim", str.strip),
    "startswith": lambda value, prefix: to_text(value).startswith(to_text(prefix)),
    "default": _default,
    "join": _join,
    "money": money,
}


def _call(node: Call, scope: Mapping[str, Any]) -> Any:
    args = [evaluate(arg, scope) for arg in node.args]
    try:
        return _checked(FUNCTIONS[node.function](*args))
    except TypeError as exc:
        raise ExpressionError(f"{node.function}(): {exc}") from None
    except (OverflowError, ValueError) as exc:
        if isinstance(exc, ExpressionError):
            raise
        raise ExpressionError(f"{node.function}(): {exc}") from None


# -- references (for validation) ---------------------------------------------------------------


def references(node: Node) -> list[tuple[str, ...]]:
    """The dotted paths the expression reads, each as far as it is static:
    `steps.debit.outputs.x` -> ("steps", "debit", "outputs", "x"); `a[i].b` -> ("a",), ("i",)."""
    found: list[tuple[str, ...]] = []
    _collect(node, found)
    return found


def _collect(node: Node, found: list[tuple[str, ...]]) -> None:
    if isinstance(node, Name | Attr):
        path = _static_path(node)
        if path is not None:
            found.append(path)
        elif isinstance(node, Attr):
            _collect(node.target, found)
    elif isinstance(node, Index):
        _collect(node.target, found)
        _collect(node.index, found)
    elif isinstance(node, ListExpr | Call):
        for child in node.items if isinstance(node, ListExpr) else node.args:
            _collect(child, found)
    elif isinstance(node, Unary):
        _collect(node.operand, found)
    elif isinstance(node, Binary):
        _collect(node.left, found)
        _collect(node.right, found)


def _static_path(node: Node) -> tuple[str, ...] | None:
    if isinstance(node, Name):
        return (node.name,)
    if isinstance(node, Attr):
        parent = _static_path(node.target)
        return None if parent is None else (*parent, node.name)
    return None


# -- templates ---------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


@dataclass(frozen=True)
class Template:
    """A string with `{{ expression }}` parts: literal text and parsed expressions in order."""

    parts: tuple[str | Node, ...]

    @property
    def single(self) -> Node | None:
        """The expression when the template is exactly one `{{ ... }}` (keeps its type)."""
        if len(self.parts) == 1 and not isinstance(self.parts[0], str):
            return self.parts[0]
        return None

    def expressions(self) -> list[Node]:
        return [part for part in self.parts if not isinstance(part, str)]

    def render(self, scope: Mapping[str, Any]) -> Any:
        single = self.single
        if single is not None:
            return evaluate(single, scope)
        pieces = [part if isinstance(part, str) else to_text(evaluate(part, scope))
                  for part in self.parts]
        return _checked("".join(pieces))


_TEMPLATES: dict[str, Template] = {}


def parse_template(text: str) -> Template:
    """Parse `text` (cached); raises ExpressionError for a bad `{{ ... }}` part."""
    found = _TEMPLATES.get(text)
    if found is not None:
        return found
    parts: list[str | Node] = []
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        if match.start() > position:
            parts.append(text[position:match.start()])
        source = match.group(1).strip()
        if not source:
            raise ExpressionError(f"empty {{{{ }}}} in {text!r}")
        parts.append(parse(source))
        position = match.end()
    if position < len(text):
        parts.append(text[position:])
    if "{{" in "".join(p for p in parts if isinstance(p, str)):
        raise ExpressionError(f"unclosed '{{{{' in {text!r}")
    template = Template(tuple(parts))
    if len(_TEMPLATES) < 10_000:
        _TEMPLATES[text] = template
    return template


def is_template(text: str) -> bool:
    return "{{" in text


def render_value(value: Any, scope: Mapping[str, Any]) -> Any:
    """Render every string inside a JSON-like value as a template (keys stay as written)."""
    if isinstance(value, str):
        return parse_template(value).render(scope) if is_template(value) else value
    if isinstance(value, Mapping):
        return {str(k): render_value(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, scope) for v in value]
    return value


def value_templates(value: Any) -> Iterator[Template]:
    """Every template inside a JSON-like value (for validation)."""
    if isinstance(value, str):
        if is_template(value):
            yield parse_template(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from value_templates(item)
    elif isinstance(value, list):
        for item in value:
            yield from value_templates(item)


def to_text(value: Any) -> str:
    """How a value reads inside a text template."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    import json

    return json.dumps(value, default=str, separators=(",", ":"))
