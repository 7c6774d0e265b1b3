"""Paths as the results JSON records them: relative to the repository (`../shared/data` for
what lies beside it), so committed results do not name the machine that produced them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def shown(path: Path) -> str:
    """`path` relative to the repository root, with forward slashes."""
    return Path(os.path.relpath(path.resolve(), ROOT)).as_posix()


def write_results(path: Path, document: dict[str, Any]) -> None:
    """Write a benchmark's results JSON (UTF-8, indented, non-ASCII kept) and say where."""
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {shown(path)}")
