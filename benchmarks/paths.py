"""Paths as the results JSON records them: relative to the repository (`../shared/data` for
what lies beside it), so committed results do not name the machine that produced them."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def shown(path: Path) -> str:
    """`path` relative to the repository root, with forward slashes."""
    return Path(os.path.relpath(path.resolve(), ROOT)).as_posix()
