"""Generate Python code from protos/ into services/common/pb (run by `make protos`).

grpcio-tools writes absolute imports rooted at the proto package (`from botfactory.v1 import
x_pb2`); they are rewritten to `services.common.pb.botfactory.v1` so the generated code is an
ordinary sub-package of services.common. `--out` lets the sync test generate into a temp dir.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
DEFAULT_OUT = ROOT / "services" / "common" / "pb"
IMPORT = re.compile(r"^from botfactory\.(\S+) import ", re.MULTILINE)


def generate(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(PROTOS.rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", f"--plugin=protoc-gen-mypy_grpc={plugin}",
            f"--mypy_grpc_out={out}", *map(str, sources)]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted(p for p in out.rglob("*") if p.suffix in {".py", ".pyi"})
    for path in written:
        fixed = IMPORT.sub(r"from services.common.pb.botfactory.\1 import ", path.read_text())
        path.write_text(fixed)
    for package in {p.parent for p in written} | {out}:
        current = package
        while current != out.parent:
            (current / "__init__.py").touch()
            current = current.parent
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
