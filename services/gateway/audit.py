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

import time
import uuid
from typing import Any

from services.common.audit import (  # the event shape and its store are shared (CLI, guard)
    MODEL_ACTIONS,
    MODEL_ACTIVATED,
    PLATFORM_TENANT,
    SUBJECT_PREFIX,
    VERSION_ACTIONS,
    AuditEvent,
    BusAuditLog,
    event_json,
    record,
    subject,
)
from services.gateway.access import ALL_TENANTS
from services.gateway.auth import Principal

__all__ = ["MODEL_ACTIVATED", "PLATFORM_TENANT", "SUBJECT_PREFIX", "AuditEvent", "BusAuditLog",
           "event_json", "record", "subject"]

BOT_OWNER_SET = "bot.owner_set"
KEY_CREATED = "key.created"
KEY_REVOKED = "key.revoked"
BOT_DEPLOYED = "bot.deployed"
WEBHOOK_SET = "webhook.set"
WEBHOOK_DELETED = "webhook.deleted"
CHANNEL_SET = "channel.set"
CHANNEL_DELETED = "channel.deleted"
TRAINING_STARTED = "training.started"
TRAINING_CANCELLED = "training.cancelled"
ACTIONS = (KEY_CREATED, KEY_REVOKED, BOT_DEPLOYED, BOT_OWNER_SET, WEBHOOK_SET,
           WEBHOOK_DELETED, CHANNEL_SET, CHANNEL_DELETED, TRAINING_STARTED, TRAINING_CANCELLED,
           *MODEL_ACTIONS, *VERSION_ACTIONS)


def new_event(principal: Principal, action: str, target: dict[str, Any], *,
              correlation_id: str, tenant: str | None = None) -> AuditEvent:
    """The event of `principal` doing `action` to `target` (about `tenant`: a key's tenant, a
    bot's; default: the actor's own, `_platform` for the bootstrap key). A person signed in
    with OIDC is the actor `user:<subject>`, with their e-mail when the token has one."""
    if tenant is None or tenant == ALL_TENANTS:
        tenant = principal.tenant if principal.tenant != ALL_TENANTS else PLATFORM_TENANT
    return AuditEvent(tenant=tenant, action=action, actor_key_id=principal.key_id,
                      actor_tenant=principal.tenant, target=target,
                      at_unix_ms=int(time.time() * 1000), correlation_id=correlation_id,
                      event_id=uuid.uuid4().hex, actor_email=principal.email)
