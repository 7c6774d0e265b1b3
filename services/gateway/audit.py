"""Audit events of admin actions, published to `events.audit.<tenant>` on stream EVENTS.

Every successful admin change made through the gateway is recorded after it is made: API key
created or revoked, bot definition deployed, model version activated, webhook set or deleted.
The event (JSON) names the action, the tenant it concerns, the actor (the API key id and its
tenant; `bootstrap` for the bootstrap key), the target, the time and the request's correlation
id; `Nats-Msg-Id` is the event id, so a retried publish is stored once.

The tenant of a key action is the key's tenant; of a bot action, the actor's tenant, or
`_platform` when the actor is the bootstrap key (which belongs to no tenant). An event that
cannot be stored is logged in full at error level (`audit_publish_failed`); the action itself
has already happened and its answer is not changed.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict
from typing import Any

import nats.errors

from services.common.logging import get_logger
from services.common.nats import Bus
from services.common.subjects import HEADER_CORRELATION, HEADER_MSG_ID
from services.gateway.auth import ALL_TENANTS, Principal
from services.gateway.ports import AuditEvent, AuditLog

log = get_logger(__name__)

SUBJECT_PREFIX = "events.audit"
PLATFORM_TENANT = "_platform"
PUBLISH_TIMEOUT_S = 5.0

KEY_CREATED = "key.created"
KEY_REVOKED = "key.revoked"
BOT_DEPLOYED = "bot.deployed"
MODEL_ACTIVATED = "model.activated"
WEBHOOK_SET = "webhook.set"
WEBHOOK_DELETED = "webhook.deleted"
ACTIONS = (KEY_CREATED, KEY_REVOKED, BOT_DEPLOYED, MODEL_ACTIVATED, WEBHOOK_SET, WEBHOOK_DELETED)


def subject(tenant: str) -> str:
    return f"{SUBJECT_PREFIX}.{tenant}"


def event_json(event: AuditEvent) -> dict[str, Any]:
    return asdict(event)


def new_event(principal: Principal, action: str, target: dict[str, Any], *,
              correlation_id: str, tenant: str | None = None) -> AuditEvent:
    """The event of `principal` doing `action` to `target` (about `tenant`; default: the
    actor's own, `_platform` for the bootstrap key)."""
    if tenant is None or tenant == ALL_TENANTS:
        tenant = principal.tenant if principal.tenant != ALL_TENANTS else PLATFORM_TENANT
    return AuditEvent(tenant=tenant, action=action, actor_key_id=principal.key_id,
                      actor_tenant=principal.tenant, target=target,
                      at_unix_ms=int(time.time() * 1000), correlation_id=correlation_id,
                      event_id=uuid.uuid4().hex)


async def record(audit: AuditLog | None, event: AuditEvent) -> None:
    """Store `event` (and log it); a failure to store it is logged, never raised."""
    log.info("audit", **{k: v for k, v in event_json(event).items() if k != "target"},
             target=json.dumps(event.target, sort_keys=True))
    if audit is None:
        return
    try:
        await audit.record(event)
    except Exception as exc:
        log.error("audit_publish_failed", error=repr(exc), audit_event=event_json(event))


class BusAuditLog:
    """AuditLog on JetStream (stream EVENTS)."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def record(self, event: AuditEvent) -> None:
        headers = {HEADER_MSG_ID: f"audit-{event.event_id}"}
        if event.correlation_id:
            headers[HEADER_CORRELATION] = event.correlation_id
        body = json.dumps(event_json(event), separators=(",", ":")).encode()
        try:
            await self._bus.js.publish(subject(event.tenant), body, headers=headers,
                                       timeout=PUBLISH_TIMEOUT_S)
        except (nats.errors.Error, TimeoutError):
            # once more (same Nats-Msg-Id: stored once), then give up
            await self._bus.js.publish(subject(event.tenant), body, headers=headers,
                                       timeout=PUBLISH_TIMEOUT_S)


class MemoryAuditLog:
    """AuditLog in process memory (tests)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, event: AuditEvent) -> None:
        self.events.append(event)
