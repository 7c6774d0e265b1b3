"""Bot version and environment routes (role admin; docs/versions.md): create and list
immutable versions, compare two, record check results; configure a bot's environments,
promote a version into one, roll it back, run a bot-version canary. Every change is audited.

They work on the bus (`BOT_VERSIONS` on the app: services/common/botversions.py); without it
they answer 503.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from services.common import audit as actions
from services.common import botversions as bv
from services.common.errors import Unavailable
from services.common.nats import Bus
from services.gateway.http.admin import audited, definition_files, validate_definition
from services.gateway.http.bodies import VERSION, text_schema
from services.gateway.http.problems import DefinitionInvalid, RequestInvalid
from services.gateway.http.state import principal_of, state_of
from services.gateway.http.wire import Fields, json_response, read_json

BOT_VERSIONS: web.AppKey[Bus] = web.AppKey("bot_versions", Bus)
MAX_DESCRIPTION_CHARS = 500
MAX_DETAIL_CHARS = 2000

_STR = {"type": "string"}
_INT = {"type": "integer"}
_CHANGE = {"type": "object", "properties": {
    "version": _STR, "previous": _STR, "actor": _STR, "at_unix_ms": _INT,
    "reason": {"enum": ["promote", "rollback", "canary", "canary_cleared"]}}}
SCHEMAS: dict[str, Any] = {
    "BotVersion": {"type": "object", "required": ["bot", "id", "model", "files"], "properties": {
        "bot": _STR, "id": _STR, "model": _STR, "kb": _STR, "description": _STR,
        "actor": _STR, "created_at_unix_ms": _INT,
        "files": {"description": "Names (listings) or name → YAML text (one version)"},
        "checks": {"type": "object"}, "created": {"type": "boolean"}}},
    "BotVersions": {"type": "object", "required": ["bot_id", "versions"], "properties": {
        "bot_id": _STR,
        "versions": {"type": "array", "items": {"$ref": "#/components/schemas/BotVersion"}}}},
    "BotVersionDiff": {"type": "object", "required": ["from", "to", "files", "model"],
                       "properties": {"bot_id": _STR, "from": _STR, "to": _STR,
                                      "files": {"type": "object"}, "model": {"type": "object"},
                                      "kb": {"type": "object"}}},
    "CheckRecorded": {"type": "object", "required": ["name", "passed"], "properties": {
        "name": _STR, "passed": {"type": "boolean"}, "detail": _STR, "actor": _STR,
        "at_unix_ms": _INT}},
    "BotEnvironment": {"type": "object", "required": ["bot", "name", "version"], "properties": {
        "bot": _STR, "name": _STR, "version": _STR, "canary_version": _STR,
        "canary_share": {"type": "number"}, "updated_at_unix_ms": _INT, "actor": _STR,
        "history": {"type": "array", "items": _CHANGE}}},
    "BotEnvironments": {"type": "object", "required": ["bot_id", "default", "environments"],
                        "properties": {
                            "bot_id": _STR, "default": _STR,
                            "config": {"type": "object"},
                            "environments": {"type": "array", "items": {
                                "$ref": "#/components/schemas/BotEnvironment"}}}},
}

_ENV = {"type": "string", "pattern": bv.ENV_NAME.pattern}
_CHECK = {"type": "string", "pattern": bv.CHECK_NAME.pattern}
REQUEST_SCHEMAS: dict[str, Any] = {
    "CreateVersionRequest": {
        "type": "object", "required": ["files", "model"], "additionalProperties": False,
        "properties": {
            "files": {"type": "object", "required": ["bot.yml"],
                      "additionalProperties": {"type": "string"},
                      "description": "The bot folder's YAML files, as for PUT .../definition; "
                                     "422 when not a valid bot definition"},
            "model": {"type": "string", "pattern": VERSION.pattern,
                      "description": "A model version in the store"},
            "kb": {"type": "string", "pattern": VERSION.pattern,
                   "description": "A knowledge index version in the store"},
            "description": text_schema(MAX_DESCRIPTION_CHARS, blank=True)}},
    "RecordCheckRequest": {
        "type": "object", "required": ["name", "passed"], "additionalProperties": False,
        "properties": {"name": _CHECK, "passed": {"type": "boolean"},
                       "detail": text_schema(MAX_DETAIL_CHARS, blank=True)}},
    "ConfigureEnvironmentsRequest": {
        "type": "object", "required": ["environments"], "additionalProperties": False,
        "properties": {
            "default": _ENV,
            "environments": {"type": "array", "minItems": 1, "maxItems": 16, "items": {
                "type": "object", "required": ["name"], "additionalProperties": False,
                "properties": {"name": _ENV, "requires": {
                    "type": "array", "maxItems": 16, "items": _CHECK}}}}}},
    "PromoteRequest": {
        "type": "object", "additionalProperties": False,
        "description": "Exactly one of `version` and `from_environment`",
        "properties": {"version": {"type": "string", "pattern": bv.BOT_VERSION_ID.pattern},
                       "from_environment": _ENV},
        "oneOf": [{"required": ["version"], "properties": {"version": {"type": "string"}}},
                  {"required": ["from_environment"],
                   "properties": {"from_environment": {"type": "string"}}}]},
    "CanaryRequest": {
        "type": "object", "required": ["version", "share"], "additionalProperties": False,
        "properties": {"version": {"type": "string", "pattern": bv.BOT_VERSION_ID.pattern},
                       "share": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}}},
}


def _bus(request: web.Request) -> Bus:
    bus = request.app.get(BOT_VERSIONS)
    if bus is None:
        raise Unavailable("bot versions are not available on this gateway")
    return bus


def _store(request: web.Request) -> bv.VersionStore:
    return bv.VersionStore(_bus(request))


def _actor(request: web.Request) -> str:
    return principal_of(request).key_id


async def _body(request: web.Request) -> Any:
    return await read_json(request, state_of(request).config.definition_body_limit_bytes)


def _path(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    pattern = bv.BOT_VERSION_ID if name == "version" else bv.ENV_NAME
    if not pattern.match(value):
        raise RequestInvalid.one(name, f"must match {pattern.pattern}")
    return value


async def list_versions(request: web.Request) -> web.Response:
    bot = request.match_info["bot"]
    versions = await _store(request).versions(bot)
    return json_response({"bot_id": bot, "versions": [v.summary() for v in versions]})


async def create_version(request: web.Request) -> web.Response:
    """A version of the posted definition files with a model (and index) from the store."""
    bot = request.match_info["bot"]
    body = await _body(request)
    fields = Fields(body)
    model = fields.identifier("model", VERSION)
    kb = fields.identifier("kb", VERSION, required=False)
    description = fields.text("description", max_chars=MAX_DESCRIPTION_CHARS, required=False,
                              allow_empty=True)
    fields.object("files")
    fields.done()
    files = definition_files({"files": fields.body.get("files")})
    assert model is not None
    issues = await asyncio.to_thread(validate_definition, bot, files)
    if issues:
        raise DefinitionInvalid(issues)
    version, created = await bv.publish_version(_bus(request), bot, files, model, kb or "",
                                                actor=_actor(request),
                                                description=description or "")
    if created:
        await audited(request, actions.VERSION_CREATED,
                      {"bot_id": bot, "version": version.id, "model": version.model,
                       "kb": version.kb, "files": sorted(version.files)})
    return json_response({**version.summary(), "created": created}, 201 if created else 200)


async def get_version(request: web.Request) -> web.Response:
    bot, store = request.match_info["bot"], _store(request)
    version = await store.get(bot, _path(request, "version"))
    checks = await store.checks(bot, version.id)
    return json_response({**version.to_json(),
                          "checks": {n: vars(c) for n, c in checks.items()}})


async def diff_versions(request: web.Request) -> web.Response:
    """What changed from `?from=` (default: the version before) to this version."""
    bot, store = request.match_info["bot"], _store(request)
    new = await store.get(bot, _path(request, "version"))
    source = request.query.get("from", "")
    if source:
        if not bv.BOT_VERSION_ID.match(source):
            raise RequestInvalid.one("from", f"must match {bv.BOT_VERSION_ID.pattern}")
        old = await store.get(bot, source)
    else:
        earlier = [v for v in await store.versions(bot) if v.id != new.id
                   and v.created_at_unix_ms <= new.created_at_unix_ms]
        if not earlier:
            raise bv.VersionNotFound(f"{new.id} has no earlier version to compare with; "
                                     "name one with ?from=")
        old = earlier[-1]
    return json_response(await bv.diff_report(_bus(request), old, new))


async def record_check(request: web.Request) -> web.Response:
    bot, version = request.match_info["bot"], _path(request, "version")
    fields = Fields(await _body(request))
    name = fields.identifier("name", bv.CHECK_NAME)
    passed = fields.choice("passed", (True, False))
    detail = fields.text("detail", max_chars=MAX_DETAIL_CHARS, required=False, allow_empty=True)
    fields.done()
    assert name is not None
    result = await _store(request).record_check(bot, version, bv.CheckResult(
        name, bool(passed), detail or "", _actor(request)))
    await audited(request, actions.VERSION_CHECKED,
                  {"bot_id": bot, "version": version, "check": name, "passed": result.passed})
    return json_response(vars(result))


async def list_environments(request: web.Request) -> web.Response:
    bot, store = request.match_info["bot"], _store(request)
    config = await store.config(bot)
    environments = await store.environments(bot)
    return json_response({"bot_id": bot, "default": config.default, "config": config.to_json(),
                          "environments": [e.to_json() for e in environments]})


async def configure_environments(request: web.Request) -> web.Response:
    bot = request.match_info["bot"]
    fields = Fields(await _body(request))
    default = fields.identifier("default", bv.ENV_NAME, required=False)
    raw = fields.array("environments", max_items=16)
    fields.done()
    config = environments_config(raw, default or bv.DEFAULT_ENVIRONMENT)
    await _store(request).configure(bot, config)
    await audited(request, actions.ENV_CONFIGURED, {"bot_id": bot, **config.to_json()})
    return await list_environments(request)


def environments_config(raw: list[Any], default: str) -> bv.BotEnvironments:
    """The configuration a ConfigureEnvironmentsRequest's list describes (400 when bad)."""
    envs = []
    for index, item in enumerate(raw):
        where = f"environments[{index}]."
        rest = {k: v for k, v in item.items() if k != "requires"} \
            if isinstance(item, dict) else item
        fields = Fields(rest, where=where)
        name = fields.identifier("name", bv.ENV_NAME)
        requires = item.get("requires", []) if isinstance(item, dict) else []
        if not isinstance(requires, list) or len(requires) > 16 or not all(
                isinstance(c, str) and bv.CHECK_NAME.match(c) for c in requires):
            fields.fail("requires", "must be a list of at most 16 check names matching "
                                    f"{bv.CHECK_NAME.pattern}")
            requires = []
        fields.done()
        assert name is not None
        envs.append(bv.EnvConfig(name, tuple(requires)))
    return bv.BotEnvironments(tuple(envs), default).validate()


async def promote(request: web.Request) -> web.Response:
    """Point the environment at a version, or at the version another environment serves."""
    bot, name = request.match_info["bot"], _path(request, "environment")
    fields = Fields(await _body(request))
    version = fields.identifier("version", bv.BOT_VERSION_ID, required=False)
    source = fields.identifier("from_environment", bv.ENV_NAME, required=False)
    if (version is None) == (source is None):
        fields.fail("version", "give exactly one of version and from_environment")
    fields.done()
    store, actor = _store(request), _actor(request)
    if source is not None:
        record = await store.promote_from(bot, source, name, actor=actor)
    else:
        assert version is not None
        record = await store.promote(bot, name, version, actor=actor)
    return await _changed(request, actions.ENV_PROMOTED, record,
                          {"from_environment": source} if source else {})


async def rollback(request: web.Request) -> web.Response:
    bot, name = request.match_info["bot"], _path(request, "environment")
    record = await _store(request).rollback(bot, name, actor=_actor(request))
    return await _changed(request, actions.ENV_ROLLED_BACK, record, {})


async def put_canary(request: web.Request) -> web.Response:
    bot, name = request.match_info["bot"], _path(request, "environment")
    fields = Fields(await _body(request))
    version = fields.identifier("version", bv.BOT_VERSION_ID)
    share = fields.number("share", minimum=0, maximum=1)
    if share is None or share <= 0:
        fields.fail("share", "is required: a number above 0 and at most 1")
    fields.done()
    assert version is not None and share is not None
    record = await _store(request).set_canary(bot, name, version, share,
                                              actor=_actor(request))
    return await _changed(request, actions.ENV_CANARY_SET, record, {})


async def delete_canary(request: web.Request) -> web.Response:
    bot, name = request.match_info["bot"], _path(request, "environment")
    record = await _store(request).clear_canary(bot, name, actor=_actor(request))
    return await _changed(request, actions.ENV_CANARY_CLEARED, record, {})


async def _changed(request: web.Request, action: str, record: bv.Environment,
                   extra: dict[str, Any]) -> web.Response:
    """Mirror the default environment into KV `bots`, audit, answer with the record."""
    await bv.mirror_default(_bus(request), record, actor=_actor(request))
    last = record.history[-1] if record.history else None
    await audited(request, action, {
        "bot_id": record.bot, "environment": record.name, "version": record.version,
        "from": last.previous if last else "", "canary_version": record.canary_version,
        "canary_share": record.canary_share, **extra})
    return json_response(record.to_json())
