"""Every module imports on its own, first: an import cycle that only works when some other
module happened to be imported before (a test file run alone, a service's `__main__`) fails
here. One subprocess, the project's modules forgotten before each import (the generated
protobuf modules and third-party packages stay loaded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "botfactory")
SCRIPT = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("services", "botfactory")
                   and not m.startswith("services.common.pb")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def modules() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "pb" in parts or parts[-1] == "__main__":
                continue
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def test_every_module_imports_first() -> None:
    names = modules()
    assert len(names) > 150
    done = subprocess.run([sys.executable, "-c", SCRIPT, *names], cwd=ROOT, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
