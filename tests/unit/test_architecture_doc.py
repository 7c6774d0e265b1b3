"""docs/architecture.md stays in step with the code: every stream, subject filter, bucket and
durable consumer the code provisions is named there, every subject it names is one the code
uses, and every test it cites as enforcing a rule exists."""

from __future__ import annotations

import re
from pathlib import Path

from services.common.nats import KV_BUCKETS, OBJ_MODELS, STREAMS
from services.dialogue import analytics, review
from services.gateway import webhook_follower
from services.rpa_runner import worker
from services.trainer import worker as trainer_worker

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
SUBJECT = re.compile(r"`((?:conv|rpa|events)\.[^`\s]*)`")
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")


def _code_text() -> str:
    files = [*(ROOT / "services").rglob("*.py"), *(ROOT / "botfactory").rglob("*.py")]
    return "\n".join(p.read_text(encoding="utf-8") for p in files if "/pb/" not in str(p))


def test_every_stream_subject_and_bucket_is_named() -> None:
    names = [s.name for s in STREAMS] + [subject for s in STREAMS for subject in s.subjects]
    names += [bucket for bucket, _ in KV_BUCKETS] + [OBJ_MODELS]
    assert [n for n in names if f"`{n}`" not in DOC] == []


def test_every_durable_consumer_is_named() -> None:
    durables = [webhook_follower.DURABLE, worker.DURABLE, analytics.DURABLE,
                review.CONV_DURABLE, review.SHADOW_DURABLE, trainer_worker.DURABLE,
                "dialogue-p<n>"]
    assert [d for d in durables if f"`{d}`" not in DOC] == []


def test_every_named_subject_is_used_by_the_code() -> None:
    code = _code_text()
    subjects = SUBJECT.findall(DOC)
    assert len(subjects) > 10
    prefixes = {re.split(r"[<>*]", subject)[0] for subject in subjects}
    assert sorted(p for p in prefixes if p not in code) == []


def test_every_cited_test_exists() -> None:
    cited = TEST_REF.findall(DOC)
    assert cited
    missing = []
    for path, name in cited:
        file = ROOT / path
        if not file.is_file() or (name and f"def {name}(" not in file.read_text("utf-8")):
            missing.append(f"{path}::{name}")
    assert missing == []
