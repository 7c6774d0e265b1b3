"""Knowledge indexes in the model store: the artifact in object store `models` as
`<bot>.kb/<version>.tar` (apart from the bot's model versions, `<bot>/<version>.tar`), the
active version per bot in KV `bots` under `kb.<bot>`, and an `events.kb.published.<bot>`
event on activation."""

from __future__ import annotations

import json
from pathlib import Path

from nats.js.api import ObjectMeta, ObjectMetaOptions
from nats.js.errors import KeyNotFoundError

from services.common.modelstore import (
    BOT_ID,
    CHUNK_BYTES,
    ModelRef,
    ModelStoreError,
    pack,
    read_ref,
    unpack,
)
from services.common.nats import KV_BOTS, OBJ_MODELS, Bus
from services.knowledge.errors import IndexLoadError
from services.knowledge.index import METADATA_FILE, read_metadata

KB_PREFIX = "kb."


def kb_key(bot: str) -> str:
    if not BOT_ID.match(bot):
        raise ModelStoreError(f"invalid bot id {bot!r}")
    return f"{KB_PREFIX}{bot}"


def kb_object_name(ref: ModelRef) -> str:
    return f"{ref.bot}.kb/{ref.version}.tar"


async def upload_kb(bus: Bus, index_dir: Path) -> ModelRef:
    """Store a knowledge index directory's files (idempotent for the same version)."""
    try:
        read_metadata(index_dir)
    except IndexLoadError as exc:
        raise ModelStoreError(str(exc)) from exc
    ref = read_ref(index_dir)
    kb_key(ref.bot)
    store = await bus.object_store(OBJ_MODELS)
    name = kb_object_name(ref)
    meta = ObjectMeta(name=name, options=ObjectMetaOptions(max_chunk_size=CHUNK_BYTES))
    await store.put(name, pack(index_dir), meta=meta)
    return ref


async def activate_kb(bus: Bus, ref: ModelRef) -> None:
    """Make `ref` the bot's active knowledge index and announce it on EVENTS."""
    kv = await bus.kv(KV_BOTS)
    await kv.put(kb_key(ref.bot), ref.version.encode())
    event = {"bot": ref.bot, "version": ref.version}
    await bus.js.publish(f"events.kb.published.{ref.bot}", json.dumps(event).encode())


async def publish_kb(bus: Bus, index_dir: Path, *, make_active: bool = True) -> ModelRef:
    """Upload a knowledge index directory and (unless told not to) activate it."""
    ref = await upload_kb(bus, index_dir)
    if make_active:
        await activate_kb(bus, ref)
    return ref


async def active_kb_version(bus: Bus, bot: str) -> str | None:
    kv = await bus.kv(KV_BOTS)
    try:
        entry = await kv.get(kb_key(bot))
    except KeyNotFoundError:
        return None
    return entry.value.decode() if entry.value else None


async def fetch_kb(bus: Bus, ref: ModelRef, cache_dir: Path) -> Path:
    """Download and unpack an index under `cache_dir/<bot>/<version>` (reused when present)."""
    target = cache_dir / ref.bot / ref.version
    if (target / METADATA_FILE).is_file():
        return target
    store = await bus.object_store(OBJ_MODELS)
    try:
        result = await store.get(kb_object_name(ref))
    except Exception as exc:  # nats-py raises several error types for a missing object
        raise ModelStoreError(f"knowledge index {ref.bot}@{ref.version} not in the store: "
                              f"{exc}") from exc
    staging = target.with_name(f".{ref.version}.partial")
    unpack(result.data or b"", staging)
    staging.replace(target)
    return target
