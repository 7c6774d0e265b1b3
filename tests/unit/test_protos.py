"""Generated protobuf code is committed and must match what `make protos` produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "services" / "common" / "pb"


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in {".py", ".pyi"}}


def test_generated_code_is_in_sync_with_protos(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out",
                    str(tmp_path)], check=True, capture_output=True)
    fresh, committed = _files(tmp_path), _files(COMMITTED)
    assert sorted(fresh) == sorted(committed), "run `make protos` and commit the result"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert stale == [], f"out of sync (run `make protos`): {stale}"


def test_generated_modules_import() -> None:
    from services.common.pb.botfactory.v1 import nlu_pb2, nlu_pb2_grpc

    assert nlu_pb2.DESCRIPTOR.services_by_name["NluService"].full_name == "botfactory.v1.NluService"
    assert hasattr(nlu_pb2_grpc, "NluServiceStub")
