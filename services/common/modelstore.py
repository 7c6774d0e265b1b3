"""The model registry on JetStream, as its users see it: publishing, activating, rolling back
and promoting a bot's model versions. An activation sets the active version (KV `bots`, key
`model.<bot>`), appends it to the activation history, announces it on
`events.model.published.<bot>` and ends a rollout whose candidate it activates.

The parts live in their own modules and are re-exported here, so that `modelstore.X` stays the
one import path: artifacts and the active version (`modelartifacts`), the activation history
(`modelhistory`), rollouts of a candidate version (`modelrollouts`); docs/rollout.md.

Used by the CLI (`botfactory publish`, `botfactory models`), the gateway's admin API and the
NLU service (load + watch for new versions).
"""

from __future__ import annotations

import json
from pathlib import Path

from services.common.modelartifacts import (
    ACTIVE_PREFIX,
    BOT_ID,
    CHUNK_BYTES,
    MAX_SUMMARY_CHARS,
    SUMMARY_FIELDS,
    VERSION_ID,
    ModelRef,
    ModelStoreError,
    ModelVersionNotFound,
    VersionInfo,
    active_key,
    active_version,
    fetch,
    list_versions,
    now_ms,
    object_name,
    pack,
    read_ref,
    require_version,
    summary,
    unpack,
    upload,
)
from services.common.modelhistory import (
    HISTORY_LIMIT,
    HISTORY_PREFIX,
    Activation,
    append_history,
    history,
    history_key,
)
from services.common.modelrollouts import (
    MODES,
    ROLLOUT_PREFIX,
    Rollout,
    RolloutConflict,
    RolloutInvalid,
    abort_rollout,
    delete_rollout,
    get_rollout,
    rollout_key,
    start_rollout,
)
from services.common.nats import KV_BOTS, Bus

__all__ = [
    "ACTIVE_PREFIX",
    "BOT_ID",
    "CHUNK_BYTES",
    "HISTORY_LIMIT",
    "HISTORY_PREFIX",
    "MAX_SUMMARY_CHARS",
    "MODES",
    "ROLLOUT_PREFIX",
    "SUMMARY_FIELDS",
    "VERSION_ID",
    "Activation",
    "ModelRef",
    "ModelStoreError",
    "ModelVersionNotFound",
    "Rollout",
    "RolloutConflict",
    "RolloutInvalid",
    "VersionInfo",
    "abort_rollout",
    "activate",
    "active_key",
    "active_version",
    "append_history",
    "delete_rollout",
    "fetch",
    "get_rollout",
    "history",
    "history_key",
    "list_versions",
    "now_ms",
    "object_name",
    "pack",
    "promote",
    "publish",
    "read_ref",
    "require_version",
    "rollback",
    "rollout_key",
    "start_rollout",
    "summary",
    "unpack",
    "upload",
]


async def activate(bus: Bus, ref: ModelRef, *, actor: str = "",
                   reason: str = "activate") -> Activation:
    """Make `ref` (which must be in the store) the bot's active model, append it to the
    activation history and announce it on EVENTS. A rollout whose candidate is `ref` ends."""
    await require_version(bus, ref)
    kv = await bus.kv(KV_BOTS)
    previous = await active_version(bus, ref.bot)
    await kv.put(active_key(ref.bot), ref.version.encode())
    record = Activation(ref.version, previous or "", actor, reason, now_ms())
    await append_history(bus, ref.bot, record)
    event = {"bot": ref.bot, "version": ref.version, "previous": previous, "reason": reason}
    await bus.js.publish(f"events.model.published.{ref.bot}", json.dumps(event).encode())
    current = await get_rollout(bus, ref.bot)
    if current is not None and current[0].candidate == ref.version:
        await delete_rollout(bus, ref.bot, current[1])
    return record


async def publish(bus: Bus, model_dir: Path, *, make_active: bool = True) -> ModelRef:
    ref = await upload(bus, model_dir)
    if make_active:
        await activate(bus, ref)
    return ref


async def rollback(bus: Bus, bot: str, *, actor: str = "") -> Activation:
    """Activate the version that was active before the current one."""
    current = await active_version(bus, bot)
    records = await history(bus, bot)
    previous = next((r.previous for r in reversed(records)
                     if r.version == current and r.previous), "")
    if not current or not previous:
        raise RolloutConflict(f"bot {bot!r} has no earlier active version to roll back to")
    return await activate(bus, ModelRef(bot, previous), actor=actor, reason="rollback")


async def promote(bus: Bus, bot: str, *, actor: str = "") -> Activation:
    """Activate the rollout's candidate (which ends the rollout)."""
    current = await get_rollout(bus, bot)
    if current is None:
        raise RolloutConflict(f"bot {bot!r} has no rollout to promote")
    return await activate(bus, ModelRef(bot, current[0].candidate), actor=actor,
                          reason="promote")
