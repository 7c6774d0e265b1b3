"""The model registry on JetStream: artifacts in object store `models`, the active version per
bot in KV `bots` (key `model.<bot>`), and an `events.model.published.<bot>` event on publish.

Safe rollout (docs/rollout.md): each activation is appended to the bot's bounded activation
history (KV `history.<bot>`), so `rollback` can return to the version active before; a rollout
of a candidate version (shadow or canary) is the JSON record KV `rollout.<bot>`, followed by
the NLU service and guarded by the dialogue service (compare-and-set on its revision).

Used by the CLI (`botfactory publish`, `botfactory models`), the gateway's admin API and the
NLU service (load + watch for new versions).
"""

from __future__ import annotations

import io
import json
import math
import re
import tarfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from nats.js.api import ObjectInfo, ObjectMeta, ObjectMetaOptions
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from services.common.errors import DomainError, InvalidArgument, NotFound
from services.common.nats import KV_BOTS, OBJ_MODELS, Bus

ACTIVE_PREFIX = "model."
# Object store chunk size: under the server's default 1 MiB max payload; large chunks make
# fetching a ~100 MB model several times faster than the client's 128 KiB default.
CHUNK_BYTES = 1000 * 1024
BOT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ModelStoreError(Exception):
    """A model cannot be published or fetched."""


class ModelVersionNotFound(ModelStoreError, NotFound):
    """The bot has no such model version in the store."""


class RolloutInvalid(ModelStoreError, InvalidArgument):
    """A rollout request with a bad value (mode, share, threshold, candidate)."""


class RolloutConflict(ModelStoreError, DomainError):
    """The bot's state does not allow this (no rollout, nothing to roll back to, ...)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


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


async def activate(bus: Bus, ref: ModelRef, *, actor: str = "",
                   reason: str = "activate") -> Activation:
    """Make `ref` (which must be in the store) the bot's active model, append it to the
    activation history and announce it on EVENTS. A rollout whose candidate is `ref` ends."""
    await require_version(bus, ref)
    kv = await bus.kv(KV_BOTS)
    previous = await active_version(bus, ref.bot)
    await kv.put(active_key(ref.bot), ref.version.encode())
    record = Activation(ref.version, previous or "", actor, reason, _now_ms())
    await _append_history(bus, ref.bot, record)
    event = {"bot": ref.bot, "version": ref.version, "previous": previous, "reason": reason}
    await bus.js.publish(f"events.model.published.{ref.bot}", json.dumps(event).encode())
    current = await get_rollout(bus, ref.bot)
    if current is not None and current[0].candidate == ref.version:
        await _delete_rollout(bus, ref.bot, current[1])
    return record


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


# --- versions, activation history and rollouts (docs/rollout.md) ------------------------------

HISTORY_PREFIX = "history."
ROLLOUT_PREFIX = "rollout."
HISTORY_LIMIT = 50
MODES = ("shadow", "canary")
SUMMARY_FIELDS = ("kind", "created_at", "base_model", "metrics")
MAX_SUMMARY_CHARS = 4000
_WRONG_LAST_SEQUENCE = (10071, 10164)


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


@dataclass(frozen=True)
class Activation:
    """One change of the active version: to `version` from `previous` ("" for the first)."""

    version: str
    previous: str
    actor: str
    reason: str  # "activate", "rollback" or "promote"
    at_unix_ms: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Rollout:
    """The rollout of a candidate version beside the active one (KV `rollout.<bot>`).

    shadow: the candidate parses live traffic off the critical path; the active model answers.
    canary: `share` of the conversations (sticky by conversation id) are answered by the
    candidate. The dialogue service aborts a canary once both variants have `min_samples`
    turns in its window and the candidate's fallback rate or negative-feedback rate (thumbs
    down per turn) exceeds the active one's by more than the given increase (absolute).
    """

    candidate: str
    mode: str
    share: float = 0.0
    baseline: str = ""
    started_at_unix_ms: int = 0
    actor: str = ""
    max_fallback_increase: float = 0.05
    max_negative_feedback_increase: float = 0.05
    min_samples: int = 50

    def validate(self) -> Rollout:
        problems = []
        if not VERSION_ID.match(self.candidate):
            problems.append(f"candidate {self.candidate!r} is not a version id")
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not _unit(self.share) or (self.mode == "canary" and self.share <= 0):
            problems.append("share must be a number in 0..1 (above 0 for a canary)")
        for name in ("max_fallback_increase", "max_negative_feedback_increase"):
            if not _unit(getattr(self, name)):
                problems.append(f"{name} must be a number in 0..1")
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int) \
                or self.min_samples < 1:
            problems.append("min_samples must be an integer >= 1")
        if problems:
            raise RolloutInvalid("; ".join(problems))
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Rollout:
        try:
            data = json.loads(raw)
            return cls(**data).validate()
        except (ValueError, TypeError) as exc:
            raise RolloutInvalid(f"unreadable rollout record: {exc}") from exc


VERSION_ID = re.compile(r"^[A-Za-z0-9_.+-]{1,128}$")


def _unit(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and 0.0 <= value <= 1.0)


def _now_ms() -> int:
    return int(time.time() * 1000)


def history_key(bot: str) -> str:
    return f"{HISTORY_PREFIX}{active_key(bot)[len(ACTIVE_PREFIX):]}"


def rollout_key(bot: str) -> str:
    return f"{ROLLOUT_PREFIX}{active_key(bot)[len(ACTIVE_PREFIX):]}"


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


async def history(bus: Bus, bot: str) -> list[Activation]:
    """The bot's activations, oldest first (the last HISTORY_LIMIT)."""
    records, _ = await _read_history(bus, bot)
    return records


async def _read_history(bus: Bus, bot: str) -> tuple[list[Activation], int]:
    kv = await bus.kv(KV_BOTS)
    try:
        entry = await kv.get(history_key(bot))
    except KeyNotFoundError:
        return [], 0
    try:
        records = [Activation(**item) for item in json.loads(entry.value or b"[]")]
    except (ValueError, TypeError):  # unreadable: start a new history
        records = []
    return records, entry.revision or 0


async def _append_history(bus: Bus, bot: str, record: Activation) -> None:
    kv = await bus.kv(KV_BOTS)
    for _ in range(10):
        records, revision = await _read_history(bus, bot)
        body = json.dumps([r.to_json() for r in [*records, record][-HISTORY_LIMIT:]]).encode()
        try:
            await kv.update(history_key(bot), body, last=revision)
            return
        except KeyWrongLastSequenceError:
            continue
    raise ModelStoreError(f"activation history of {bot!r} keeps changing; not recorded")


async def rollback(bus: Bus, bot: str, *, actor: str = "") -> Activation:
    """Activate the version that was active before the current one."""
    current = await active_version(bus, bot)
    records = await history(bus, bot)
    previous = next((r.previous for r in reversed(records)
                     if r.version == current and r.previous), "")
    if not current or not previous:
        raise RolloutConflict(f"bot {bot!r} has no earlier active version to roll back to")
    return await activate(bus, ModelRef(bot, previous), actor=actor, reason="rollback")


async def get_rollout(bus: Bus, bot: str) -> tuple[Rollout, int] | None:
    """The bot's rollout record and its KV revision (None when no rollout is under way)."""
    kv = await bus.kv(KV_BOTS)
    try:
        entry = await kv.get(rollout_key(bot))
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    return Rollout.from_bytes(entry.value), entry.revision or 0


async def start_rollout(bus: Bus, bot: str, rollout: Rollout) -> Rollout:
    """Start (or replace) the bot's rollout of `rollout.candidate` against its active version."""
    rollout.validate()
    await require_version(bus, ModelRef(bot, rollout.candidate))
    active = await active_version(bus, bot)
    if not active:
        raise RolloutConflict(f"bot {bot!r} has no active version to compare a candidate with")
    if active == rollout.candidate:
        raise RolloutInvalid(f"{rollout.candidate!r} is already the active version")
    record = replace(rollout, baseline=active, started_at_unix_ms=_now_ms())
    kv = await bus.kv(KV_BOTS)
    await kv.put(rollout_key(bot), record.to_bytes())
    return record


async def promote(bus: Bus, bot: str, *, actor: str = "") -> Activation:
    """Activate the rollout's candidate (which ends the rollout)."""
    current = await get_rollout(bus, bot)
    if current is None:
        raise RolloutConflict(f"bot {bot!r} has no rollout to promote")
    return await activate(bus, ModelRef(bot, current[0].candidate), actor=actor,
                          reason="promote")


async def abort_rollout(bus: Bus, bot: str, *, revision: int | None = None) -> Rollout | None:
    """End the bot's rollout without promoting it; the candidate stops serving. With
    `revision`, only if the record is still that revision (None when it is not). Raises
    RolloutConflict when there is no rollout."""
    current = await get_rollout(bus, bot)
    if current is None:
        raise RolloutConflict(f"bot {bot!r} has no rollout to abort")
    record, found = current
    if revision is not None and revision != found:
        return None
    return record if await _delete_rollout(bus, bot, found) else None


async def _delete_rollout(bus: Bus, bot: str, revision: int) -> bool:
    """Delete `rollout.<bot>` if it is still at `revision` (compare-and-set)."""
    kv = await bus.kv(KV_BOTS)
    try:
        await kv.delete(rollout_key(bot), last=revision)
    except APIError as exc:
        if exc.err_code in _WRONG_LAST_SEQUENCE:
            return False
        raise
    return True
