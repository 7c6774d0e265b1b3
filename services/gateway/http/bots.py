"""Bots and their tenants: the bots of the caller's tenants, a bot's owner, moving a bot to
another tenant, and recording the owner of a bot deployed for the first time
(services/gateway/access.py, docs/security.md "Tenants").
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.common.errors import DomainError, PermissionDenied
from services.gateway.access import ALL_TENANTS, BotNotFound, Permission
from services.gateway.auth import TENANT_RE
from services.gateway.http.bodies import SET_OWNER
from services.gateway.http.problems import RequestInvalid
from services.gateway.http.state import BOT_TENANT, CREATING, principal_of, state_of
from services.gateway.http.wire import json_response, read_json

BOT_OWNER_SET = "bot.owner_set"

_STR = {"type": "string"}
_OWNER = {"type": "object", "required": ["bot_id", "tenant", "recorded"], "properties": {
    "bot_id": _STR, "tenant": _STR,
    "recorded": {"type": "boolean", "description": "false: the bot has no owner record and "
                 "belongs to the default tenant"}}}
SCHEMAS: dict[str, Any] = {
    "BotOwner": _OWNER,
    "BotList": {"type": "object", "required": ["bots"], "properties": {
        "bots": {"type": "array", "items": {"$ref": "#/components/schemas/BotOwner"}}}},
}


class OwnerConflict(DomainError):
    http_status = 409


def _tenant_query(request: web.Request) -> str | None:
    if "tenant" not in request.query:
        return None
    tenant = request.query["tenant"]
    if not TENANT_RE.match(tenant):
        raise RequestInvalid.one("tenant", "must be 1-64 letters, digits, '_' or '-'")
    return tenant


async def list_bots(request: web.Request) -> web.Response:
    """The bots with an owner record in the tenants where the caller may read (one tenant
    with `?tenant=`); a key sees only the bots it names (all with `*`)."""
    principal = principal_of(request)
    readable = principal.tenants_with(Permission.READ)
    wanted = _tenant_query(request)
    if wanted is not None and ALL_TENANTS not in readable and wanted not in readable:
        raise PermissionDenied(f"you cannot read tenant {wanted!r}")
    records = await state_of(request).auth.owners.owners()
    bots = [{"bot_id": bot, "tenant": tenant, "recorded": True}
            for bot, tenant in sorted(records.items())
            if (ALL_TENANTS in readable or tenant in readable)
            and (wanted is None or tenant == wanted) and principal.allows_bot(bot)]
    return json_response({"bots": bots})


async def get_owner(request: web.Request) -> web.Response:
    bot = request.match_info["bot"]
    owner = await state_of(request).auth.owners.owner(bot)
    return json_response({"bot_id": bot, "tenant": request[BOT_TENANT],
                          "recorded": owner is not None})


async def put_owner(request: web.Request) -> web.Response:
    """Move the bot to another tenant: the caller administers both (the platform's key any)."""
    from services.gateway.http.admin import audited

    state = state_of(request)
    bot = request.match_info["bot"]
    fields = SET_OWNER.read(await read_json(request, state.config.body_limit_bytes),
                            state.config)
    tenant: str = fields["tenant"]
    if not principal_of(request).manages_tenant(tenant):
        raise PermissionDenied(f"you cannot manage tenant {tenant!r}")
    previous = await state.auth.owners.set_owner(bot, tenant)
    before = request[BOT_TENANT]
    target = {"bot_id": bot, "tenant": tenant, "from": before, "recorded_before": previous
              is not None}
    for audited_tenant in dict.fromkeys((before, tenant)):  # both tenants see the move
        await audited(request, BOT_OWNER_SET, target, audited_tenant)
    return json_response({"bot_id": bot, "tenant": tenant, "recorded": True})


async def record_deployment_owner(request: web.Request, bot: str) -> str:
    """The owner of a bot being deployed (call once the deployment is valid, before storing
    it): a new bot becomes the tenant the guard chose (CREATING); a bot without an owner
    record becomes `?tenant=` or the deploying key's tenant (the platform's key leaves it to
    the default tenant); an owned bot stays its owner's (`?tenant=` naming another: 409)."""
    from services.gateway.http.admin import audited

    state = state_of(request)
    principal = principal_of(request)
    owners = state.auth.owners
    wanted = _tenant_query(request)
    owner = await owners.owner(bot)
    if owner is not None:
        if wanted is not None and wanted != owner:
            raise OwnerConflict(f"bot {bot!r} belongs to tenant {owner!r}: move it with PUT "
                                f"/v1/admin/bots/{bot}/owner")
        return owner
    if request.get(CREATING):
        tenant = request[BOT_TENANT]
    else:
        tenant = wanted or (principal.tenant if principal.role is not None
                            and principal.tenant != ALL_TENANTS else "")
        if not tenant:
            return str(request[BOT_TENANT])  # stays the default tenant's
        if Permission.EDIT not in principal.permissions(tenant):
            raise PermissionDenied(f"you cannot deploy bots of tenant {tenant!r}")
    claimed = await owners.claim(bot, tenant)
    if claimed != tenant:  # another deployment claimed it a moment ago
        raise BotNotFound(bot)
    request[BOT_TENANT] = tenant
    await audited(request, BOT_OWNER_SET, {"bot_id": bot, "tenant": tenant, "from": None,
                                           "recorded_before": False}, tenant)
    return tenant
