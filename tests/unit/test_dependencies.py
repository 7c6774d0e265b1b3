"""A serving install (`pip install .`, no extras) has every package the services import: the
third-party imports of services/ come from [project].dependencies or what those depend on, and
the training stack (torch, transformers, tqdm, ...) stays in the `train` extra. Checked
statically: installing into a fresh venv takes minutes."""

from __future__ import annotations

import re
import sys
import tomllib
from functools import cache
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

from tests.support.imports import imports

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Installed beside the package where it is needed, not by `pip install .`.
INSTALLED_BESIDE = {"playwright": ROOT / "deploy" / "docker" / "rpa_runner.Dockerfile"}


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _serving_closure() -> set[str]:
    """The base dependencies and, recursively, what they require without extras."""
    todo = [_name(r) for r in PYPROJECT["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            found = requires(name) or []
        except PackageNotFoundError:
            found = []
        todo += [_name(r) for r in found if "extra" not in r.partition(";")[2]]
    return seen


@cache
def _third_party_imports(package: Path) -> dict[str, str]:
    """Top-level third-party module -> the first file:line importing it."""
    found: dict[str, str] = {}
    for path in sorted(package.rglob("*.py")):
        for line, name in imports(path):
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in {"services", "__future__"}:
                found.setdefault(top, f"{path.relative_to(ROOT)}:{line}")
    return found


def test_every_serving_import_is_a_serving_dependency() -> None:
    closure = _serving_closure()
    distributions = packages_distributions()
    missing = [f"{where}: {module} ({', '.join(distributions.get(module, ['?']))})"
               for module, where in _third_party_imports(ROOT / "services").items()
               if module not in INSTALLED_BESIDE
               and not {_name(d) for d in distributions.get(module, [])} & closure]
    assert missing == [], "add these to [project].dependencies in pyproject.toml"


def test_packages_installed_beside_are_installed_there() -> None:
    for module, dockerfile in INSTALLED_BESIDE.items():
        assert module in dockerfile.read_text(encoding="utf-8"), dockerfile


def test_training_only_packages_are_in_the_train_extra() -> None:
    base = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    train = {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["train"]}
    assert {"torch", "transformers", "tqdm"} <= train
    assert not base & {"torch", "transformers", "tqdm", "onnx", "matplotlib"}
    assert "tqdm" not in _third_party_imports(ROOT / "services")
