"""Model artifacts in object store `models` (`<bot>/<version>.tar`, with a summary of their
metadata.json as the object's description), the active version per bot in KV `bots` (key
`model.<bot>`), and the errors and ids the model registry shares. The registry's operations
that combine artifacts, history and rollouts: `modelstore`."""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.js.api import ObjectInfo, ObjectMeta, ObjectMetaOptions
from nats.js.errors import KeyNotFoundError, NotFoundError

from services.common.errors import NotFound
from services.common.nats import KV_BOTS, OBJ_MODELS, Bus

ACTIVE_PREFIX = "model."
# Object store chunk size: under the server's default 1 MiB max payload; large chunks make
# fetching a ~100 MB model several times faster than the client's 128 KiB default.
CHUNK_BYTES = 1000 * 1024
BOT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
VERSION_ID = re.compile(r"^[A-Za-z0-9_.+-]{1,128}$")
SUMMARY_FIELDS = ("kind", "created_at", "base_model", "metrics")
MAX_SUMMARY_CHARS = 4000


class ModelStoreError(Exception):
    """A model cannot be published or fetched."""


class ModelVersionNotFound(ModelStoreError, NotFound):
    """The bot has no such model version in the store."""


@dataclass(frozen=True)
class ModelRef:
    bot: str
    version: str


def active_key(bot: str) -> str:
    if not BOT_ID.match(bot):
        raise ModelStoreError(f"invalid bot id {bot!r}")
    return f"{ACTIVE_PREFIX}{bot}"


def object_name(ref: ModelRef) -> str:
    return f"{ref.bot}/{ref.version}.tar"


def read_ref(model_dir: Path) -> ModelRef:
    try:
        meta = json.loads((model_dir / "metadata.json").read_text(encoding="utf-8"))
        return ModelRef(bot=str(meta["bot"]), version=str(meta["version"]))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelStoreError(f"{model_dir}: no readable metadata.json: {exc}") from exc


def pack(model_dir: Path) -> bytes:
    buffer = io.BytesIO()
    # ONNX weights barely compress: a plain tar is as small and much faster to (un)pack.
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(p for p in model_dir.iterdir() if p.is_file()):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()


def unpack(data: bytes, target: Path) -> None:
    """Extract a packed model into `target` (created), refusing links and paths outside it."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            archive.extractall(target, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ModelStoreError(f"corrupt model archive: {exc}") from exc


async def upload(bus: Bus, model_dir: Path) -> ModelRef:
    """Store the model's files in the object store (idempotent for the same version)."""
    ref = read_ref(model_dir)
    active_key(ref.bot)
    store = await bus.object_store(OBJ_MODELS)
    name = object_name(ref)
    meta = ObjectMeta(name=name, description=summary(model_dir),
                      options=ObjectMetaOptions(max_chunk_size=CHUNK_BYTES))
    await store.put(name, pack(model_dir), meta=meta)
    return ref


async def active_version(bus: Bus, bot: str) -> str | None:
    kv = await bus.kv(KV_BOTS)
    try:
        entry = await kv.get(active_key(bot))
    except KeyNotFoundError:
        return None
    return entry.value.decode() if entry.value else None


async def fetch(bus: Bus, ref: ModelRef, cache_dir: Path) -> Path:
    """Download and unpack `ref` under `cache_dir/<bot>/<version>` (reused when present)."""
    target = cache_dir / ref.bot / ref.version
    if (target / "metadata.json").is_file():
        return target
    store = await bus.object_store(OBJ_MODELS)
    try:
        result = await store.get(object_name(ref))
    except Exception as exc:  # nats-py raises several error types for a missing object
        raise ModelStoreError(f"model {ref.bot}@{ref.version} not in the store: {exc}") from exc
    staging = target.with_name(f".{ref.version}.partial")
    unpack(result.data or b"", staging)
    staging.replace(target)
    return target


@dataclass(frozen=True)
class VersionInfo:
    """A model version in the store, with what its metadata.json says about it."""

    version: str
    size_bytes: int
    uploaded_at: str
    created_at: str
    kind: str
    metrics: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summary(model_dir: Path) -> str:
    """metadata.json's kind, creation time, base model and metrics as JSON (kept with the
    object, so that listing versions needs no download)."""
    try:
        meta = json.loads((model_dir / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "{}"
    uploaded = {"uploaded_at": datetime.now(UTC).isoformat(timespec="seconds")}
    text = json.dumps({**{k: meta[k] for k in SUMMARY_FIELDS if k in meta}, **uploaded},
                      sort_keys=True)
    if len(text) > MAX_SUMMARY_CHARS:
        text = json.dumps({"kind": meta.get("kind"), **uploaded})
    return text


def _version_info(bot: str, info: ObjectInfo) -> VersionInfo:
    try:
        meta = json.loads(info.description or "{}")
    except ValueError:
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    metrics = meta.get("metrics")
    return VersionInfo(
        version=info.name[len(bot) + 1:-len(".tar")], size_bytes=int(info.size or 0),
        uploaded_at=str(meta.get("uploaded_at") or info.mtime or ""),
        created_at=str(meta.get("created_at") or ""),
        kind=str(meta.get("kind") or ""), metrics=metrics if isinstance(metrics, dict) else {})


async def list_versions(bus: Bus, bot: str) -> list[VersionInfo]:
    """The bot's versions in the store, oldest first (by creation time, then name)."""
    active_key(bot)
    store = await bus.object_store(OBJ_MODELS)
    try:
        infos = await store.list(ignore_deletes=True)
    except NotFoundError:  # an empty store
        return []
    prefix = f"{bot}/"
    found = [_version_info(bot, i) for i in infos
             if i.name.startswith(prefix) and i.name.endswith(".tar") and not i.deleted]
    return sorted(found, key=lambda v: (v.created_at or v.uploaded_at, v.version))


async def require_version(bus: Bus, ref: ModelRef) -> None:
    """Raise ModelVersionNotFound unless `ref` is in the store."""
    active_key(ref.bot)
    if not VERSION_ID.match(ref.version):
        raise ModelVersionNotFound(f"bot {ref.bot!r} has no model version {ref.version!r}")
    store = await bus.object_store(OBJ_MODELS)
    try:
        info = await store.get_info(object_name(ref))
    except NotFoundError:
        info = None
    if info is None or info.deleted:
        raise ModelVersionNotFound(f"bot {ref.bot!r} has no model version {ref.version!r} "
                                   "in the store")


def now_ms() -> int:
    return int(time.time() * 1000)
