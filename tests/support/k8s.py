"""deploy/k8s rendered by the venv's kubectl (kustomize): the objects of an overlay, by kind and
name (tests/unit/test_deploy.py, tests/integration/test_deploy_nats.py)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def tool(name: str) -> str:
    """A command-line tool installed into this venv by a dev dependency (a wheel's script)."""
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(f"{name} is not installed in this venv ({sys.executable}): install the dev "
                f"extra, e.g. `make setup` or `.venv/bin/pip install -e '.[train,dev]'`")


def yaml_docs(text: str) -> list[Any]:
    return [doc for doc in YAML(typ="safe").load_all(text) if doc]


@functools.cache
def render(overlay: str) -> tuple[Any, ...]:
    result = subprocess.run([tool("kubectl"), "kustomize", str(K8S / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return tuple(yaml_docs(result.stdout))


def objects(overlay: str, kind: str) -> list[Any]:
    return [obj for obj in render(overlay) if obj["kind"] == kind]


def by_name(overlay: str, kind: str) -> dict[str, Any]:
    return {obj["metadata"]["name"]: obj for obj in objects(overlay, kind)}
