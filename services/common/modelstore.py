"""The model registry on JetStream: artifacts in object store `models`, the active version per
bot in KV `bots` (key `model.<bot>`), and an `events.model.published.<bot>` event on publish.

Used by the CLI (`botfactory publish`) and by the NLU service (load + watch for new versions).
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from nats.js.api import ObjectMeta, ObjectMetaOptions
from nats.js.errors import KeyNotFoundError

from services.common.nats import KV_BOTS, OBJ_MODELS, Bus

ACTIVE_PREFIX = "model."
# Object store chunk size: under the server's default 1 MiB max payload; large chunks make
# fetching a ~100 MB model several times faster than the client's 128 KiB default.
CHUNK_BYTES = 1000 * 1024
BOT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ModelStoreError(Exception):
    """A model cannot be published or fetched."""


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
    meta = ObjectMeta(name=name, options=ObjectMetaOptions(max_chunk_size=CHUNK_BYTES))
    await store.put(name, pack(model_dir), meta=meta)
    return ref


async def activate(bus: Bus, ref: ModelRef) -> None:
    """Make `ref` the bot's active model and announce it on EVENTS."""
    kv = await bus.kv(KV_BOTS)
    await kv.put(active_key(ref.bot), ref.version.encode())
    event = {"bot": ref.bot, "version": ref.version}
    await bus.js.publish(f"events.model.published.{ref.bot}", json.dumps(event).encode())


async def publish(bus: Bus, model_dir: Path, *, make_active: bool = True) -> ModelRef:
    ref = await upload(bus, model_dir)
    if make_active:
        await activate(bus, ref)
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
