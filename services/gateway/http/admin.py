"""Admin routes: API keys, the active model version, bot definitions, webhooks.

An admin key manages only its own tenant and only bots within its own scope (its tenant's
bots, services/gateway/access.py); the bootstrap key (config) manages every tenant. Every
change is recorded as an audit event (services/gateway/audit.py) once it is made, under the
tenant of the key or bot it concerns.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from services.botdef import BotDefinitionError, DefinitionIssue, load_bot
from services.common.definitions import unpacked
from services.common.errors import NotFound, PermissionDenied, Unavailable
from services.gateway import audit
from services.gateway.access import ALL_TENANTS, Permission
from services.gateway.http.bodies import ACTIVATE_MODEL, CREATE_KEY
from services.gateway.http.bots import record_deployment_owner
from services.gateway.http.problems import DefinitionInvalid, RequestInvalid
from services.gateway.http.state import CORRELATION, principal_of, state_of
from services.gateway.http.wire import BOT_ID, Fields, json_response, read_json
from services.gateway.ports import (
    ALL_BOTS,
    ApiKeyRecord,
    DefinitionStore,
    ModelAdmin,
    Role,
    Webhook,
    WebhookStore,
)

YAML_SUFFIXES = (".yml", ".yaml")
DEFINITION_PATH = re.compile(r"^[A-Za-z0-9_.-]{1,100}(/[A-Za-z0-9_.-]{1,100}){0,7}$")
MAX_DEFINITION_FILES = 200
MAX_WEBHOOK_URL_CHARS = 2000
MIN_WEBHOOK_SECRET_CHARS = 16
MAX_WEBHOOK_SECRET_CHARS = 256
# http(s), optional user info, a host name or IPv4 address, a port in 0..65535, then printable
# ASCII: the OpenAPI document states the same pattern.
WEBHOOK_URL = re.compile(
    r"^[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9._~%!$&'()*+,;=:-]*@)?"
    r"[A-Za-z0-9._~%!$&'()*+,;=-]+"
    r"(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?"
    r"(?:[/?#][!-~]*)?$")


async def audited(request: web.Request, action: str, target: dict[str, Any],
                  tenant: str | None = None) -> None:
    """Record the audit event of this request's admin action (after it succeeded), under
    `tenant` (default: the owner of the bot it concerns; the actor's tenant for a bot without
    an owner record, as before bots had owners)."""
    if tenant is None and isinstance(target.get("bot_id"), str):
        tenant = await state_of(request).auth.owners.owner(target["bot_id"])
    event = audit.new_event(principal_of(request), action, target,
                            correlation_id=request.get(CORRELATION, ""), tenant=tenant)
    await audit.record(state_of(request).audit, event)


def key_target(record: ApiKeyRecord) -> dict[str, Any]:
    return {"key_id": record.key_id, "tenant": record.tenant, "bots": list(record.bots),
            "role": record.role.value,
            **({"environment": record.environment} if record.environment else {})}


def key_json(record: ApiKeyRecord) -> dict[str, Any]:
    return {
        "key_id": record.key_id, "tenant": record.tenant, "bots": list(record.bots),
        "role": record.role.value, "description": record.description,
        "created_at_unix_ms": record.created_at_unix_ms,
        "revoked_at_unix_ms": record.revoked_at_unix_ms, "revoked": record.revoked,
        "environment": record.environment,
    }


async def create_key(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await read_json(request, state.config.body_limit_bytes)
    fields = CREATE_KEY.read(body, state.config)
    tenant, bots, role = fields["tenant"], fields["bots"], fields["role"]
    description = fields["description"]
    environment = fields["environment"] or ""
    principal = principal_of(request)
    if not principal.manages_tenant(tenant):
        raise PermissionDenied(f"this API key cannot manage tenant {tenant!r}")
    if not principal.covers_bots(bots) or not await reaches_all(request, bots):
        raise PermissionDenied("a new key's bots must be within this API key's bots")
    if role == Role.PUBLISHABLE.value:
        check_publishable_bots(body["bots"])
    issued = await state.auth.issue(tenant, bots, Role(role), description or "", environment)
    await audited(request, audit.KEY_CREATED, key_target(issued.record), tenant)
    return json_response({**key_json(issued.record), "secret": issued.secret}, status=201)


async def reaches_all(request: web.Request, bots: list[str]) -> bool:
    """Whether the caller reaches every bot it names (a key of its tenant with bots `*`
    reaches only its tenant's bots, so it cannot name another tenant's)."""
    principal = principal_of(request)
    auth = state_of(request).auth
    for bot in bots:
        if bot == ALL_BOTS:
            continue
        owner = await auth.owners.owner(bot)
        if principal.bot_permissions(bot, owner, auth.default_tenant) is None:
            return False
    return True


def check_publishable_bots(bots: list[str]) -> None:
    """A publishable key sits in a page for anyone to read: it names exactly one bot (the
    widget's), never `*` (`bots` as sent: the document says at most one item)."""
    if len(bots) != 1 or bots[0] == ALL_BOTS:
        raise RequestInvalid.one("bots", "a publishable key is for exactly one bot (not *)")


async def list_keys(request: web.Request) -> web.Response:
    """The keys of the tenants the caller administers (one with `?tenant=`)."""
    state = state_of(request)
    principal = principal_of(request)
    tenant = request.query.get("tenant") or None
    managed = principal.tenants_with(Permission.ADMIN)
    if ALL_TENANTS in managed:
        records = await state.auth.store.list_keys(tenant)
    else:
        if tenant is not None and tenant not in managed:
            raise PermissionDenied(f"this API key cannot manage tenant {tenant!r}")
        records = [record for name in ((tenant,) if tenant else managed)
                   for record in await state.auth.store.list_keys(name)]
        records.sort(key=lambda r: (r.created_at_unix_ms, r.key_id))
    return json_response({"keys": [key_json(r) for r in records]})


async def revoke_key(request: web.Request) -> web.Response:
    state = state_of(request)
    key_id = request.match_info["key_id"]
    record = await state.auth.store.get(key_id)
    if record is None or not principal_of(request).manages_tenant(record.tenant):
        raise NotFound(f"no API key {key_id!r}")
    was_revoked = record.revoked
    revoked = await state.auth.revoke(key_id)
    if revoked is None:
        raise NotFound(f"no API key {key_id!r}")
    if not was_revoked:
        await audited(request, audit.KEY_REVOKED, key_target(revoked), revoked.tenant)
    return json_response(key_json(revoked))


def model_admin(request: web.Request) -> ModelAdmin:
    models = state_of(request).models
    if models is None:
        raise Unavailable("model administration is not available on this gateway")
    return models


async def list_models(request: web.Request) -> web.Response:
    bot = request.match_info["bot"]
    versions = await model_admin(request).versions(bot)
    return json_response({"bot_id": bot, "versions": versions})


async def put_model(request: web.Request) -> web.Response:
    bot = request.match_info["bot"]
    version = await requested_version(request)
    models = model_admin(request)
    if version not in await models.versions(bot):
        raise NotFound(f"bot {bot!r} has no model version {version!r} in the store")
    await models.activate(bot, version)
    await audited(request, audit.MODEL_ACTIVATED, {"bot_id": bot, "version": version})
    return json_response({"bot_id": bot, "version": version, "active": True})


async def requested_version(request: web.Request) -> str:
    """The model version an ActivateModelRequest body names."""
    state = state_of(request)
    fields = ACTIVATE_MODEL.read(await read_json(request, state.config.body_limit_bytes),
                                 state.config)
    version: str = fields["version"]
    return version


# --- bot definitions --------------------------------------------------------------------------


def definition_store(request: web.Request) -> DefinitionStore:
    definitions = state_of(request).definitions
    if definitions is None:
        raise Unavailable("bot definition deployment is not available on this gateway")
    return definitions


def check_definition_path(name: str) -> str | None:
    """Why `name` is not an acceptable file of a bot folder (None when it is)."""
    path = PurePosixPath(name)
    if "\\" in name or path.is_absolute() or any(p in ("", ".", "..") for p in name.split("/")):
        return "must be a relative path with no '.', '..' or empty parts"
    if not DEFINITION_PATH.match(name):
        return "must be at most 8 names of letters, digits, '_', '-' and '.' (100 each)"
    if any(part.startswith(".") for part in path.parts):
        return "hidden files are not allowed"
    if path.suffix not in YAML_SUFFIXES:
        return "must be a YAML file (.yml or .yaml)"
    return None


def definition_files(body: Any) -> dict[str, str]:
    fields = Fields(body)
    files = fields.string_dict("files")
    fields.done()
    assert files is not None
    return checked_files(files)


def checked_files(files: dict[str, str]) -> dict[str, str]:
    """`files` when they can be a bot folder's (bot.yml, YAML files, at most
    MAX_DEFINITION_FILES); else 400 naming the field."""
    if len(files) > MAX_DEFINITION_FILES:
        raise RequestInvalid.one("files", f"at most {MAX_DEFINITION_FILES} files")
    if "bot.yml" not in files:
        raise RequestInvalid.one("files", "bot.yml is required")
    for name in files:
        problem = check_definition_path(name)
        if problem is not None:
            raise RequestInvalid.one(f"files.{name}", problem)
    return files


def validate_definition(bot: str, files: dict[str, str]) -> list[dict[str, Any]]:
    """Load the files as a bot folder (in a temp dir); the issues found, [] when valid."""
    with unpacked(files) as root:
        try:
            definition = load_bot(root)
        except BotDefinitionError as exc:
            return [issue_json(issue, root) for issue in exc.issues]
    if definition.name != bot:
        return [{"file": "bot.yml", "line": 0, "field": "name",
                 "message": f"is {definition.name!r}; it must be the bot id {bot!r}"}]
    return []


def issue_json(issue: DefinitionIssue, root: Path) -> dict[str, Any]:
    file = issue.file
    for prefix in (f"{root}/", f"{root.resolve()}/"):
        file = file.removeprefix(prefix)
    return {"file": file, "line": issue.line, "field": issue.field, "message": issue.message}


async def put_definition(request: web.Request) -> web.Response:
    state = state_of(request)
    bot = request.match_info["bot"]
    assert BOT_ID.match(bot)
    files = definition_files(await read_json(request, state.config.definition_body_limit_bytes))
    store = definition_store(request)
    issues = await asyncio.to_thread(validate_definition, bot, files)
    if issues:
        raise DefinitionInvalid(issues)
    await record_deployment_owner(request, bot)
    revision = await store.put(bot, files)
    await audited(request, audit.BOT_DEPLOYED,
                  {"bot_id": bot, "revision": revision, "files": sorted(files)})
    return json_response({"bot_id": bot, "revision": revision, "files": sorted(files)})


# --- webhooks ---------------------------------------------------------------------------------


def webhook_store(request: web.Request) -> WebhookStore:
    webhooks = state_of(request).webhooks
    if webhooks is None:
        raise Unavailable("webhook configuration is not available on this gateway")
    return webhooks


def check_webhook_url(url: str) -> str | None:
    """Why `url` is not an acceptable webhook address (None when it is)."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return "must not contain spaces or control characters"
    if not WEBHOOK_URL.match(url):
        return ("must be an http:// or https:// URL with a host and a port up to 65535, in "
                "printable ASCII")
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port
    except ValueError:
        return "has an invalid host or port"
    if not host:
        return "must name a host"
    return None


def webhook_of(body: Any) -> Webhook:
    fields = Fields(body)
    url = fields.text("url", max_chars=MAX_WEBHOOK_URL_CHARS)
    secret = fields.text("secret", max_chars=MAX_WEBHOOK_SECRET_CHARS)
    if url is not None and (problem := check_webhook_url(url)) is not None:
        fields.fail("url", problem)
    if secret is not None and len(secret) < MIN_WEBHOOK_SECRET_CHARS:
        fields.fail("secret", f"must be at least {MIN_WEBHOOK_SECRET_CHARS} characters")
    fields.done()
    assert url is not None and secret is not None
    return Webhook(url, secret)


def webhook_json(bot: str, hook: Webhook) -> dict[str, Any]:
    return {"bot_id": bot, "url": hook.url}  # never the secret


async def put_webhook(request: web.Request) -> web.Response:
    state = state_of(request)
    bot = request.match_info["bot"]
    hook = webhook_of(await read_json(request, state.config.body_limit_bytes))
    await webhook_store(request).put(bot, hook)
    # the host only: a URL may carry credentials or tokens
    await audited(request, audit.WEBHOOK_SET, {"bot_id": bot, "host": urlsplit(hook.url).hostname})
    return json_response(webhook_json(bot, hook))


async def get_webhook(request: web.Request) -> web.Response:
    bot = request.match_info["bot"]
    hook = await webhook_store(request).get(bot)
    if hook is None:
        raise NotFound(f"bot {bot!r} has no webhook")
    return json_response(webhook_json(bot, hook))


async def delete_webhook(request: web.Request) -> web.Response:
    bot = request.match_info["bot"]
    if not await webhook_store(request).delete(bot):
        raise NotFound(f"bot {bot!r} has no webhook")
    await audited(request, audit.WEBHOOK_DELETED, {"bot_id": bot})
    return json_response({"bot_id": bot, "deleted": True})
