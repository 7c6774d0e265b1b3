"""In-memory stand-ins for the gateway's stores, for tests that need no NATS server: API keys
(`InMemoryKeyStore`), webhooks (`InMemoryWebhookStore`), model versions and rollouts
(`MemoryModelRollouts`) and the audit log (`MemoryAuditLog`). Production code uses the
JetStream-backed stores only."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from nats.js.errors import NotFoundError

from services.common import trainings
from services.common.audit import AuditEvent
from services.common.modelstore import (
    Activation,
    ModelVersionNotFound,
    Rollout,
    RolloutConflict,
    RolloutInvalid,
    VersionInfo,
)
from services.common.trainings import Options, Training
from services.gateway.auth import KeyExists, now_ms
from services.gateway.ports import ApiKeyRecord, Webhook
from services.gateway.webhook_store import Subscription, stored_subscription
from tests.support.memkv import MemoryKeyValue


class InMemoryKeyStore:
    """A KeyStore in process memory."""

    def __init__(self) -> None:
        self._by_id: dict[str, ApiKeyRecord] = {}
        self._id_by_hash: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def create(self, record: ApiKeyRecord) -> None:
        async with self._lock:
            if record.key_id in self._by_id or record.key_hash in self._id_by_hash:
                raise KeyExists(record.key_id)
            self._by_id[record.key_id] = record
            self._id_by_hash[record.key_hash] = record.key_id

    async def get_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        key_id = self._id_by_hash.get(key_hash)
        return self._by_id.get(key_id) if key_id is not None else None

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        return self._by_id.get(key_id)

    async def revoke(self, key_id: str) -> ApiKeyRecord | None:
        async with self._lock:
            record = self._by_id.get(key_id)
            if record is None or record.revoked:
                return record
            record = replace(record, revoked_at_unix_ms=now_ms())
            self._by_id[key_id] = record
            return record

    async def list_keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        records = [r for r in self._by_id.values() if tenant is None or r.tenant == tenant]
        return sorted(records, key=lambda r: (r.created_at_unix_ms, r.key_id))


class InMemoryWebhookStore:
    def __init__(self) -> None:
        self.hooks: dict[str, Webhook] = {}
        self.since: dict[str, int] = {}

    async def put(self, bot: str, hook: Webhook) -> None:
        self.hooks[bot] = hook

    async def get(self, bot: str) -> Webhook | None:
        return self.hooks.get(bot)

    async def delete(self, bot: str) -> bool:
        return self.hooks.pop(bot, None) is not None

    async def subscription(self, bot: str) -> Subscription | None:
        hook = await self.get(bot)
        return None if hook is None else Subscription(hook, self.since.get(bot, 0))

    def stored(self, bot: str, value: bytes | None) -> Subscription | None:
        return stored_subscription(bot, value)


class MemoryModelRollouts:
    """ModelRollouts in process memory: every bot has the versions given."""

    def __init__(self, versions: tuple[str, ...] = ("v1", "v2")) -> None:
        self._versions = versions
        self._history: dict[str, list[Activation]] = {}
        self._rollouts: dict[str, Rollout] = {}

    async def versions(self, bot: str) -> list[VersionInfo]:
        return [VersionInfo(v, 1, "", "", "nlu", {}) for v in self._versions]

    async def active(self, bot: str) -> str | None:
        entries = self._history.get(bot)
        return entries[-1].version if entries else None

    async def history(self, bot: str) -> list[Activation]:
        return list(self._history.get(bot, []))

    async def rollout(self, bot: str) -> Rollout | None:
        return self._rollouts.get(bot)

    async def activate(self, bot: str, version: str, actor: str,
                       reason: str = "activate") -> Activation:
        if version not in self._versions:
            raise ModelVersionNotFound(f"bot {bot!r} has no model version {version!r}")
        record = Activation(version, await self.active(bot) or "", actor, reason,
                            int(time.time() * 1000))
        self._history.setdefault(bot, []).append(record)
        if bot in self._rollouts and self._rollouts[bot].candidate == version:
            del self._rollouts[bot]
        return record

    async def rollback(self, bot: str, actor: str) -> Activation:
        entries = self._history.get(bot, [])
        if not entries or not entries[-1].previous:
            raise RolloutConflict(f"bot {bot!r} has no earlier active version to roll back to")
        return await self.activate(bot, entries[-1].previous, actor, "rollback")

    async def start_rollout(self, bot: str, rollout: Rollout) -> Rollout:
        rollout.validate()
        if rollout.candidate not in self._versions:
            raise ModelVersionNotFound(f"bot {bot!r} has no model version {rollout.candidate!r}")
        active = await self.active(bot)
        if active is None:
            raise RolloutConflict(f"bot {bot!r} has no active version")
        if active == rollout.candidate:
            raise RolloutInvalid(f"{rollout.candidate!r} is already the active version")
        self._rollouts[bot] = replace(rollout, baseline=active,
                                      started_at_unix_ms=int(time.time() * 1000))
        return self._rollouts[bot]

    async def promote(self, bot: str, actor: str) -> Activation:
        if bot not in self._rollouts:
            raise RolloutConflict(f"bot {bot!r} has no rollout to promote")
        return await self.activate(bot, self._rollouts[bot].candidate, actor, "promote")

    async def abort(self, bot: str) -> Rollout:
        if bot not in self._rollouts:
            raise RolloutConflict(f"bot {bot!r} has no rollout to abort")
        return self._rollouts.pop(bot)


class MemoryAuditLog:
    """An AuditLog in process memory."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, event: AuditEvent) -> None:
        self.events.append(event)


class MemoryTrainings:
    """Trainings (services/gateway/ports.py) in a dict, with the records' state machine
    (services/common/trainings.py); no trainer runs them."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], Training] = {}

    async def start(self, bot: str, options: Options, files: dict[str, str] | None,
                    actor: str) -> Training:
        at = trainings.now_ms()
        record = Training(job_id=trainings.new_job_id(at), bot=bot, status=trainings.QUEUED,
                          options=options, created_at_ms=at, requested_by=actor,
                          source="deployed" if files is None else "request")
        self.records[(bot, record.job_id)] = record
        return record

    async def list(self, bot: str, limit: int) -> list[Training]:
        found = [r for (b, _), r in sorted(self.records.items()) if b == bot]
        return found[::-1][:limit]

    async def get(self, bot: str, job_id: str) -> Training:
        record = self.records.get((bot, job_id))
        if record is None:
            raise trainings.TrainingNotFound(f"bot {bot!r} has no training {job_id!r}")
        return record

    async def cancel(self, bot: str, job_id: str) -> Training:
        record = await self.get(bot, job_id)
        after = trainings.cancelled(record) or record
        self.records[(bot, job_id)] = after
        return after

    async def logs(self, bot: str, job_id: str) -> str:
        await self.get(bot, job_id)
        return ""
class _EmptyObjectStore:
    async def get_info(self, name: str) -> Any:
        raise NotFoundError


class MemoryBus:
    """The KV buckets of a Bus in memory (and an empty object store): what the bot-version
    routes (services/gateway/http/bot_versions.py) use, for tests without a server."""

    def __init__(self) -> None:
        self._buckets: dict[str, MemoryKeyValue] = {}

    async def kv(self, name: str) -> MemoryKeyValue:
        return self._buckets.setdefault(name, MemoryKeyValue())

    async def object_store(self, name: str) -> _EmptyObjectStore:
        return _EmptyObjectStore()
