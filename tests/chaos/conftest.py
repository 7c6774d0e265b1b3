"""The chaos tier runs only when asked for (`make test-chaos`, i.e. `pytest tests/chaos -m
chaos`): a plain `pytest` / `make test` deselects it (it takes minutes and kills processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: kill -9 / restart under load (make test-chaos)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "chaos" in (config.getoption("markexpr") or ""):
        return
    chaos = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    if chaos:
        config.hook.pytest_deselected(items=chaos)
        items[:] = [item for item in items if item not in chaos]
