"""Benchmark results record paths relative to the repository (benchmarks/paths.py), never the
absolute paths of the machine that produced them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.paths import ROOT, shown

RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.json"))


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")
    elif isinstance(value, str):
        yield where, value


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_committed_results_hold_no_absolute_paths(path: Path) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    absolute = [f"{where}: {text}" for where, text in _strings(document, path.name)
                if text.startswith(("/", "~")) or text[1:3] == ":\\"]
    assert absolute == []


def test_paths_are_shown_relative_to_the_repository() -> None:
    assert shown(ROOT / ".botfactory" / "models" / "banking") == ".botfactory/models/banking"
    assert shown(ROOT.parent / "shared" / "data") == "../shared/data"
    assert shown(ROOT) == "."
