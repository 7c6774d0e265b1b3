"""YAML reading and writing with line numbers (ruamel.yaml round-trip nodes)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.representer import RoundTripRepresenter

PathPart = str | int


class YamlSyntaxError(ValueError):
    """A file that is not valid YAML; `line` is 1-based (0 when unknown)."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


MAX_VALUES = 200_000
"""The most values (scalars, lists, mappings) a file may hold, each alias counted again: a
"billion laughs" document of aliases to aliases is refused instead of being expanded."""
MAX_DEPTH = 64
"""The deepest nesting of lists and mappings a file may have."""


def read_yaml(path: Path) -> Any:
    """Load one YAML file keeping line info; raises YamlSyntaxError or OSError."""
    text = path.read_text(encoding="utf-8")
    try:
        doc = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = exc.problem or exc.context or "invalid YAML"
        raise YamlSyntaxError(f"invalid YAML: {problem}", line) from None
    except YAMLError as exc:
        raise YamlSyntaxError(f"invalid YAML: {exc}", 0) from None
    except RecursionError:
        raise YamlSyntaxError(f"nested deeper than {MAX_DEPTH} levels", 0) from None
    check_size(doc)
    return doc


def check_size(doc: Any) -> None:
    """Raise YamlSyntaxError when `doc`, aliases expanded, is too big or too deep."""
    count = 0
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise YamlSyntaxError(f"more than {MAX_VALUES} values (aliases included)", 0)
        if isinstance(node, dict | list):
            if depth >= MAX_DEPTH:
                raise YamlSyntaxError(f"nested deeper than {MAX_DEPTH} levels",
                                      _node_line(node))
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)


def line_of(root: Any, path: Sequence[PathPart]) -> int:
    """The 1-based line of the deepest node of `path` that exists under `root` (1 if none)."""
    line = _node_line(root)
    node = root
    for part in path:
        found = _child_line(node, part)
        if found is None:
            break
        line, node = found
    return line


def _node_line(node: Any) -> int:
    lc = getattr(node, "lc", None)
    return int(lc.line) + 1 if lc is not None and lc.line is not None else 1


def _child_line(node: Any, part: PathPart) -> tuple[int, Any] | None:
    lc = getattr(node, "lc", None)
    try:
        if isinstance(node, dict) and part in node:
            position = lc.key(part) if lc is not None else None
            return (position[0] + 1 if position else _node_line(node)), node[part]
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            position = lc.item(part) if lc is not None else None
            return (position[0] + 1 if position else _node_line(node)), node[part]
    except (KeyError, IndexError, TypeError):
        return None
    return None


def is_flow_list(node: Any) -> bool:
    """Whether `node` is a list written in flow style (`[a, b]`) in its file."""
    fa = getattr(node, "fa", None)
    return isinstance(node, list) and fa is not None and bool(fa.flow_style())


def value_line(mapping: Any, key: str) -> int:
    """The 1-based line where the value of `mapping[key]` starts."""
    lc = getattr(mapping, "lc", None)
    try:
        return int(lc.value(key)[0]) + 1 if lc is not None else line_of(mapping, [key])
    except (KeyError, TypeError):
        return line_of(mapping, [key])


def field_path(path: Sequence[PathPart]) -> str:
    """`["intents", 2, "examples", 3]` -> `intents[2].examples[3]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def to_plain(node: Any) -> Any:
    """A copy of a round-trip tree as plain dict / list / str / int / float / bool / None."""
    if isinstance(node, dict):
        return {to_plain(key): to_plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [to_plain(item) for item in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, str):
        return str(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


def dump_yaml(data: Any) -> str:
    """Readable block-style YAML of plain data (no line folding)."""
    yaml = YAML(typ="rt")
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 100_000
    yaml.Representer = _Representer
    stream = io.StringIO()
    yaml.dump(data, stream)
    return stream.getvalue()


class _Representer(RoundTripRepresenter):  # type: ignore[misc]
    """Writes None as an explicit `null` (the round-trip default writes nothing)."""

    def represent_none(self, data: None) -> Any:
        return self.represent_scalar("tag:yaml.org,2002:null", "null")


_Representer.add_representer(type(None), _Representer.represent_none)
