"""Import rules: shared code imports no service; no service imports another; the NLU serving
path never imports the training stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ("common", "botdef", "knowledge")
# Every package under services/ that is not shared code is a service.
SERVICES = tuple(sorted(p.name for p in (ROOT / "services").iterdir()
                        if (p / "__init__.py").is_file() and p.name not in SHARED))


def _imports(package: Path) -> set[tuple[Path, str]]:
    found: set[tuple[Path, str]] = set()
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update((path, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((path, node.module))
    return found


def test_services_are_found() -> None:
    assert "nlu" in SERVICES


@pytest.mark.parametrize("shared", SHARED)
def test_shared_code_imports_no_service_nor_cli(shared: str) -> None:
    package = ROOT / "services" / shared
    if not package.is_dir():
        pytest.fail(f"services/{shared} is missing")
    bad = sorted(f"{p.relative_to(ROOT)}: {m}" for p, m in _imports(package)
                 if m.startswith("botfactory") or
                 any(m == f"services.{s}" or m.startswith(f"services.{s}.") for s in SERVICES))
    assert bad == []


@pytest.mark.parametrize("service", SERVICES)
def test_no_service_imports_another(service: str) -> None:
    package = ROOT / "services" / service
    others = [s for s in SERVICES if s != service]
    bad = sorted(f"{p.relative_to(ROOT)}: {m}" for p, m in _imports(package)
                 if m.startswith("botfactory") or
                 any(m == f"services.{o}" or m.startswith(f"services.{o}.") for o in others))
    assert bad == []


def test_nlu_serving_path_does_not_load_torch_or_transformers() -> None:
    code = ("import sys, services.nlu.app, services.nlu.__main__; "
            "print(sorted(m for m in ('torch', 'transformers', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
