"""The audit event of an admin action and where it is stored: `events.audit.<tenant>` on
stream EVENTS (docs/security.md, "Audit").

Shared by every place that makes admin changes: the gateway's admin API (actor: an API key),
the `botfactory` CLI (actor `cli:<user>`) and the dialogue service's rollout guard (actor
`rollout-guard`). Actions that concern no tenant (CLI, guard) are recorded under `_platform`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import nats.errors

from services.common.logging import get_logger
from services.common.nats import Bus
from services.common.subjects import HEADER_CORRELATION, HEADER_MSG_ID

log = get_logger(__name__)

SUBJECT_PREFIX = "events.audit"
PLATFORM_TENANT = "_platform"
PUBLISH_TIMEOUT_S = 5.0

MODEL_ACTIVATED = "model.activated"
MODEL_ROLLED_BACK = "model.rolled_back"
ROLLOUT_STARTED = "model.rollout_started"
ROLLOUT_PROMOTED = "model.rollout_promoted"
ROLLOUT_ABORTED = "model.rollout_aborted"
MODEL_ACTIONS = (MODEL_ACTIVATED, MODEL_ROLLED_BACK, ROLLOUT_STARTED, ROLLOUT_PROMOTED,
                 ROLLOUT_ABORTED)
# bot versions and environments (services/common/botversions.py, docs/versions.md)
VERSION_CREATED = "version.created"
VERSION_CHECKED = "version.check_recorded"
ENV_CONFIGURED = "environment.configured"
ENV_PROMOTED = "environment.promoted"
ENV_ROLLED_BACK = "environment.rolled_back"
ENV_CANARY_SET = "environment.canary_set"
ENV_CANARY_CLEARED = "environment.canary_cleared"
VERSION_ACTIONS = (VERSION_CREATED, VERSION_CHECKED, ENV_CONFIGURED, ENV_PROMOTED,
                   ENV_ROLLED_BACK, ENV_CANARY_SET, ENV_CANARY_CLEARED)


@dataclass(frozen=True)
class AuditEvent:
    """One admin action: who (`actor_key_id`, its tenant), did what (`action`, e.g.
    `key.created`) to what (`target`), when, in which request."""

    tenant: str
    action: str
    actor_key_id: str
    actor_tenant: str
    target: dict[str, Any]
    at_unix_ms: int
    correlation_id: str
    event_id: str
    # A person signed in with OIDC (actor_key_id `user:<subject>`): their e-mail, if given.
    actor_email: str | None = None


def subject(tenant: str) -> str:
    return f"{SUBJECT_PREFIX}.{tenant}"


def event_json(event: AuditEvent) -> dict[str, Any]:
    data = asdict(event)
    if data["actor_email"] is None:
        del data["actor_email"]  # API keys and platform actors have none
    return data


def platform_event(actor: str, action: str, target: dict[str, Any], *,
                   correlation_id: str = "") -> AuditEvent:
    """An action of a platform actor (CLI user, service) that belongs to no tenant."""
    return AuditEvent(tenant=PLATFORM_TENANT, action=action, actor_key_id=actor,
                      actor_tenant=PLATFORM_TENANT, target=target,
                      at_unix_ms=int(time.time() * 1000), correlation_id=correlation_id,
                      event_id=uuid.uuid4().hex)


class BusAuditLog:
    """Audit events on JetStream (stream EVENTS); `Nats-Msg-Id` is the event id, so a retried
    publish is stored once."""

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


class AuditSink(Protocol):
    async def record(self, event: AuditEvent) -> None:
        """Store the event durably (raise when it could not be stored)."""
        ...


async def record(sink: AuditSink | None, event: AuditEvent) -> None:
    """Store `event` (and log it); a failure to store it is logged in full at error level
    (`audit_publish_failed`), never raised: the action itself has already happened."""
    log.info("audit", **{k: v for k, v in event_json(event).items() if k != "target"},
             target=json.dumps(event.target, sort_keys=True))
    if sink is None:
        return
    try:
        await sink.record(event)
    except Exception as exc:
        log.error("audit_publish_failed", error=repr(exc), audit_event=event_json(event))
