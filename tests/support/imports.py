"""The absolute imports of a Python file, read statically (tests/unit/test_architecture.py,
tests/unit/test_dependencies.py)."""

from __future__ import annotations

import ast
from pathlib import Path


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `import m` and `from m import ...` that is not relative."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found
