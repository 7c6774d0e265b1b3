"""Immutable bot versions and the environments that serve them (docs/versions.md).

KV bucket `bot_versions`:

- `v.<bot>.<version id>`: a version, immutable: the definition (every YAML file of the bot
  folder), the NLU model version and the knowledge-base index version. The id is a content
  hash over the three, so the same content is the same version; it is written only if absent.
- `env.<bot>.<environment>`: which version an environment serves, its bot-version canary
  (a sticky share of new conversations on another version) and its change history, updated
  with compare-and-set on the KV revision.
- `config.<bot>`: the bot's environments (default `dev`, `staging`, `prod`), the checks a
  version must have passed before it is promoted into each, and the default environment
  (`prod`: what keys without an environment use; mirrored into `def.<bot>` / `model.<bot>` /
  `kb.<bot>` of KV `bots`, so everything that predates versions serves it).
- `checks.<bot>.<version id>`: check results recorded on a version (conversation tests, the
  model gate, ...), read by promotions that require them.

Shared by the CLI (`botfactory publish BOT_DIR --model M`, `versions`, `env`), the gateway's
admin API and the dialogue service (which version a new conversation starts on).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import grpc
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from services.common.definitions import DefinitionStore, definition_key
from services.common.errors import DomainError, InvalidArgument, NotFound
from services.common.modelartifacts import (
    BOT_ID,
    VERSION_ID,
    ModelRef,
    active_version,
    list_versions,
    require_version,
)
from services.common.modelrollouts import canary_point
from services.common.modelstore import activate
from services.common.nats import KV_BOT_VERSIONS, KV_BOTS, OBJ_MODELS, Bus
from services.knowledge.store import activate_kb, active_kb_version, kb_object_name

VERSION_PREFIX = "v."
ENV_PREFIX = "env."
CONFIG_PREFIX = "config."
CHECKS_PREFIX = "checks."
BOT_VERSION_ID = re.compile(r"^v[0-9a-f]{16}$")
ENV_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
CHECK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
DEFAULT_ENVIRONMENTS = ("dev", "staging", "prod")
DEFAULT_ENVIRONMENT = "prod"
KNOWN_CHECKS = ("conversation_tests", "model_gate")
HISTORY_LIMIT = 50
_CAS_TRIES = 10


class VersionError(DomainError):
    """A bot-version request the platform cannot carry out."""


class VersionInvalid(VersionError, InvalidArgument):
    """A bad value (bot, version id, environment, share, files)."""


class VersionNotFound(VersionError, NotFound):
    """No such version, environment or check."""


class VersionConflict(VersionError):
    """The state does not allow it (nothing to roll back to, a required check missing, ...)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


def now_ms() -> int:
    return int(time.time() * 1000)


def _bot(bot: str) -> str:
    if not BOT_ID.match(bot):
        raise VersionInvalid(f"invalid bot id {bot!r}")
    return bot


def _environment(name: str) -> str:
    if not ENV_NAME.match(name):
        raise VersionInvalid(f"invalid environment name {name!r} (a-z, 0-9, _ and -, "
                             "starting with a letter, at most 32)")
    return name


def _version_id(version: str) -> str:
    if not BOT_VERSION_ID.match(version):
        raise VersionInvalid(f"{version!r} is not a bot version id (v + 16 hex digits)")
    return version


def version_key(bot: str, version: str) -> str:
    return f"{VERSION_PREFIX}{_bot(bot)}.{_version_id(version)}"


def env_key(bot: str, environment: str) -> str:
    return f"{ENV_PREFIX}{_bot(bot)}.{_environment(environment)}"


def config_key(bot: str) -> str:
    return f"{CONFIG_PREFIX}{_bot(bot)}"


def checks_key(bot: str, version: str) -> str:
    return f"{CHECKS_PREFIX}{_bot(bot)}.{_version_id(version)}"


def content_id(files: dict[str, str], model: str, kb: str) -> str:
    """The version id: a hash of the canonical JSON of the files, the model and the index."""
    canonical = json.dumps({"files": files, "kb": kb, "model": model}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return "v" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BotVersion:
    """An immutable bot version (KV `v.<bot>.<id>`)."""

    bot: str
    id: str
    files: dict[str, str]
    model: str
    kb: str = ""
    description: str = ""
    actor: str = ""
    created_at_unix_ms: int = 0

    @classmethod
    def build(cls, bot: str, files: dict[str, str], model: str, kb: str = "", *,
              description: str = "", actor: str = "") -> BotVersion:
        _bot(bot)
        if not files:
            raise VersionInvalid("a version needs the bot's definition files")
        if not VERSION_ID.match(model):
            raise VersionInvalid(f"model {model!r} is not a model version id")
        if kb and not VERSION_ID.match(kb):
            raise VersionInvalid(f"kb {kb!r} is not a knowledge index version id")
        return cls(bot, content_id(files, model, kb), dict(sorted(files.items())), model, kb,
                   description[:500], actor, now_ms())

    def summary(self) -> dict[str, Any]:
        """The record without its files (listings)."""
        body = {k: v for k, v in asdict(self).items() if k != "files"}
        body["files"] = sorted(self.files)
        return body

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> BotVersion:
        try:
            data = json.loads(raw)
            record = cls(**data)
        except (ValueError, TypeError) as exc:
            raise VersionError(f"unreadable version record: {exc}") from exc
        if content_id(record.files, record.model, record.kb) != record.id:
            raise VersionError(f"version {record.id} of {record.bot!r} does not match its "
                               "content")
        return record


@dataclass(frozen=True)
class Change:
    """One change of an environment: `reason` promote, rollback, canary, canary_cleared."""

    version: str
    previous: str
    actor: str
    reason: str
    at_unix_ms: int


@dataclass(frozen=True)
class Environment:
    """What an environment serves (KV `env.<bot>.<name>`): `version` to new conversations,
    `canary_version` to a sticky `canary_share` of them."""

    bot: str
    name: str
    version: str = ""
    canary_version: str = ""
    canary_share: float = 0.0
    updated_at_unix_ms: int = 0
    actor: str = ""
    history: tuple[Change, ...] = ()

    def choose(self, conversation_id: str) -> str:
        """The version a new conversation starts on (sticky canary by conversation id)."""
        inside = (self.canary_version and self.canary_share > 0 and conversation_id
                  and canary_point(self.bot, self.canary_version, conversation_id)
                  < self.canary_share)
        return self.canary_version if inside else self.version

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["history"] = [asdict(c) for c in self.history]
        return body

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Environment:
        try:
            data = json.loads(raw)
            history = tuple(Change(**c) for c in data.pop("history", []))
            return cls(**data, history=history)
        except (ValueError, TypeError) as exc:
            raise VersionError(f"unreadable environment record: {exc}") from exc


@dataclass(frozen=True)
class EnvConfig:
    """One environment of a bot and the checks a version needs before promotion into it."""

    name: str
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class BotEnvironments:
    """A bot's environments (KV `config.<bot>`); the defaults when none was configured."""

    environments: tuple[EnvConfig, ...] = field(
        default_factory=lambda: tuple(EnvConfig(n) for n in DEFAULT_ENVIRONMENTS))
    default: str = DEFAULT_ENVIRONMENT

    def validate(self) -> BotEnvironments:
        names = [e.name for e in self.environments]
        if not names:
            raise VersionInvalid("a bot needs at least one environment")
        for env in self.environments:
            _environment(env.name)
            for check in env.requires:
                if not CHECK_NAME.match(check):
                    raise VersionInvalid(f"invalid check name {check!r}")
        if len(set(names)) != len(names):
            raise VersionInvalid("environment names must be unique")
        if self.default not in names:
            raise VersionInvalid(f"default environment {self.default!r} is not one of "
                                 f"{', '.join(names)}")
        return self

    def get(self, name: str) -> EnvConfig:
        for env in self.environments:
            if env.name == name:
                return env
        raise VersionNotFound(f"no environment {name!r}; the bot has "
                              f"{', '.join(e.name for e in self.environments)}")

    def to_json(self) -> dict[str, Any]:
        return {"default": self.default,
                "environments": [{"name": e.name, "requires": list(e.requires)}
                                 for e in self.environments]}

    @classmethod
    def from_json(cls, data: Any) -> BotEnvironments:
        try:
            envs = tuple(EnvConfig(str(e["name"]), tuple(str(c) for c in e.get("requires", ())))
                         for e in data["environments"])
            return cls(envs, str(data.get("default", DEFAULT_ENVIRONMENT))).validate()
        except (KeyError, TypeError, AttributeError) as exc:
            raise VersionInvalid(f"bad environment configuration: {exc!r}") from exc


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str = ""
    actor: str = ""
    at_unix_ms: int = 0


class VersionStore:
    """Versions, environments, their configuration and check results on the bus."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def _kv(self) -> Any:
        return await self._bus.kv(KV_BOT_VERSIONS)

    async def _get(self, key: str) -> tuple[bytes, int] | None:
        kv = await self._kv()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return entry.value, entry.revision or 0

    # versions

    async def create(self, version: BotVersion) -> tuple[BotVersion, bool]:
        """Store `version` if absent; (the stored version, whether this call created it)."""
        kv = await self._kv()
        try:
            await kv.create(version_key(version.bot, version.id),
                            json.dumps(version.to_json()).encode())
        except KeyWrongLastSequenceError:
            return await self.get(version.bot, version.id), False
        return version, True

    async def get(self, bot: str, version: str) -> BotVersion:
        found = await self._get(version_key(bot, version))
        if found is None:
            raise VersionNotFound(f"bot {bot!r} has no version {version!r}")
        return BotVersion.from_bytes(found[0])

    async def versions(self, bot: str) -> list[BotVersion]:
        """The bot's versions, oldest first."""
        kv = await self._kv()
        watcher = await kv.watch(f"{VERSION_PREFIX}{_bot(bot)}.*", ignore_deletes=True)
        versions = []
        try:
            async for entry in watcher:
                if entry is None:
                    break
                if entry.value:
                    versions.append(BotVersion.from_bytes(entry.value))
        finally:
            await watcher.stop()
        return sorted(versions, key=lambda v: (v.created_at_unix_ms, v.id))

    # environment configuration and checks

    async def config(self, bot: str) -> BotEnvironments:
        found = await self._get(config_key(bot))
        if found is None:
            return BotEnvironments()
        return BotEnvironments.from_json(json.loads(found[0]))

    async def configure(self, bot: str, config: BotEnvironments) -> BotEnvironments:
        kv = await self._kv()
        await kv.put(config_key(bot), json.dumps(config.validate().to_json()).encode())
        return config

    async def checks(self, bot: str, version: str) -> dict[str, CheckResult]:
        found = await self._get(checks_key(bot, version))
        if found is None:
            return {}
        return {name: CheckResult(**item) for name, item in json.loads(found[0]).items()}

    async def record_check(self, bot: str, version: str, result: CheckResult) -> CheckResult:
        """Record a check result on an existing version (the latest result of a check wins)."""
        if not CHECK_NAME.match(result.name):
            raise VersionInvalid(f"invalid check name {result.name!r}")
        await self.get(bot, version)
        result = replace(result, at_unix_ms=result.at_unix_ms or now_ms())
        kv = await self._kv()
        for _ in range(_CAS_TRIES):
            found = await self._get(checks_key(bot, version))
            current = json.loads(found[0]) if found else {}
            current[result.name] = asdict(result)
            try:
                if found is None:
                    await kv.create(checks_key(bot, version), json.dumps(current).encode())
                else:
                    await kv.update(checks_key(bot, version), json.dumps(current).encode(),
                                    last=found[1])
                return result
            except KeyWrongLastSequenceError:
                continue
        raise VersionConflict("the checks of this version keep changing; retry")

    # environments

    async def environment(self, bot: str, name: str) -> Environment:
        """The environment's record (an empty one, serving nothing, if never promoted)."""
        (await self.config(bot)).get(name)
        found = await self._get(env_key(bot, name))
        return Environment.from_bytes(found[0]) if found else Environment(bot, name)

    async def serving(self, bot: str, name: str) -> Environment | None:
        """The environment's record, None when it serves no version (no config check)."""
        found = await self._get(env_key(bot, name))
        if found is None:
            return None
        record = Environment.from_bytes(found[0])
        return record if record.version else None

    async def environments(self, bot: str) -> list[Environment]:
        config = await self.config(bot)
        return [await self.environment(bot, e.name) for e in config.environments]

    async def _change(self, bot: str, name: str, change: Any) -> Environment:
        """Apply `change(record) -> record` with compare-and-set on the KV revision."""
        (await self.config(bot)).get(name)
        kv = await self._kv()
        for _ in range(_CAS_TRIES):
            found = await self._get(env_key(bot, name))
            record = Environment.from_bytes(found[0]) if found else Environment(bot, name)
            updated = change(record)
            try:
                if found is None:
                    await kv.create(env_key(bot, name), updated.to_bytes())
                else:
                    await kv.update(env_key(bot, name), updated.to_bytes(), last=found[1])
                return updated  # type: ignore[no-any-return]
            except KeyWrongLastSequenceError:
                continue
        raise VersionConflict(f"environment {name!r} of {bot!r} keeps changing; retry")

    async def missing_checks(self, bot: str, name: str, version: str) -> list[str]:
        """The checks environment `name` requires that `version` has not passed."""
        required = (await self.config(bot)).get(name).requires
        results = await self.checks(bot, version)
        return [c for c in required if c not in results or not results[c].passed]

    async def promote(self, bot: str, name: str, version: str, *, actor: str,
                      reason: str = "promote") -> Environment:
        """Point environment `name` at `version` (which must exist and have passed the
        environment's required checks). A canary of that version ends."""
        await self.get(bot, version)
        missing = await self.missing_checks(bot, name, version)
        if missing:
            raise VersionConflict(f"version {version} has not passed {', '.join(missing)}, "
                                  f"which environment {name!r} requires")

        def change(record: Environment) -> Environment:
            canary = record.canary_version != version
            return _changed(record, version, actor, reason,
                            canary_version=record.canary_version if canary else "",
                            canary_share=record.canary_share if canary else 0.0)

        return await self._change(bot, name, change)

    async def promote_from(self, bot: str, source: str, target: str, *,
                           actor: str) -> Environment:
        """Promote the version environment `source` serves into `target`."""
        served = await self.environment(bot, source)
        if not served.version:
            raise VersionConflict(f"environment {source!r} of {bot!r} serves no version")
        return await self.promote(bot, target, served.version, actor=actor)

    async def rollback(self, bot: str, name: str, *, actor: str) -> Environment:
        """Point the environment back at the version it served before the promotion of the
        current one."""
        current = await self.environment(bot, name)
        # the version before the promotion that made the current one: repeated rollbacks
        # walk back along the promotions
        previous = next((c.previous for c in reversed(current.history)
                         if c.version == current.version and c.reason == "promote"), "")
        if not current.version or not previous:
            raise VersionConflict(f"environment {name!r} of {bot!r} has no earlier version "
                                  "to roll back to")

        def change(record: Environment) -> Environment:
            if record.version != current.version:
                raise VersionConflict(f"environment {name!r} changed meanwhile; retry")
            return _changed(record, previous, actor, "rollback", canary_version="",
                            canary_share=0.0)

        return await self._change(bot, name, change)

    async def set_canary(self, bot: str, name: str, version: str, share: float, *,
                         actor: str) -> Environment:
        """Start (or change) a canary: `share` of new conversations start on `version`."""
        if not isinstance(share, int | float) or isinstance(share, bool) \
                or not 0 < share <= 1:
            raise VersionInvalid("share must be a number above 0 and at most 1")
        await self.get(bot, version)
        missing = await self.missing_checks(bot, name, version)
        if missing:
            raise VersionConflict(f"version {version} has not passed {', '.join(missing)}, "
                                  f"which environment {name!r} requires")

        def change(record: Environment) -> Environment:
            if not record.version:
                raise VersionConflict(f"environment {name!r} serves no version to compare "
                                      "a canary with; promote one first")
            if record.version == version:
                raise VersionInvalid(f"{version} is already the version of {name!r}")
            entry = Change(version, record.version, actor, "canary", now_ms())
            return replace(record, canary_version=version, canary_share=float(share),
                           actor=actor, updated_at_unix_ms=entry.at_unix_ms,
                           history=(*record.history, entry)[-HISTORY_LIMIT:])

        return await self._change(bot, name, change)

    async def clear_canary(self, bot: str, name: str, *, actor: str) -> Environment:
        def change(record: Environment) -> Environment:
            if not record.canary_version:
                raise VersionConflict(f"environment {name!r} of {bot!r} has no canary")
            entry = Change(record.version, record.canary_version, actor, "canary_cleared",
                           now_ms())
            return replace(record, canary_version="", canary_share=0.0, actor=actor,
                           updated_at_unix_ms=entry.at_unix_ms,
                           history=(*record.history, entry)[-HISTORY_LIMIT:])

        return await self._change(bot, name, change)


def _changed(record: Environment, version: str, actor: str, reason: str, *,
             canary_version: str, canary_share: float) -> Environment:
    entry = Change(version, record.version, actor, reason, now_ms())
    return replace(record, version=version, canary_version=canary_version,
                   canary_share=canary_share, actor=actor, updated_at_unix_ms=entry.at_unix_ms,
                   history=(*record.history, entry)[-HISTORY_LIMIT:])


def diff(old: BotVersion, new: BotVersion) -> dict[str, Any]:
    """What changed from `old` to `new`: files added / removed / changed (unified diffs),
    and the model and knowledge-index versions."""
    added = sorted(set(new.files) - set(old.files))
    removed = sorted(set(old.files) - set(new.files))
    changed = {}
    for name in sorted(set(old.files) & set(new.files)):
        if old.files[name] != new.files[name]:
            changed[name] = "".join(difflib.unified_diff(
                old.files[name].splitlines(keepends=True),
                new.files[name].splitlines(keepends=True),
                fromfile=f"{old.id}/{name}", tofile=f"{new.id}/{name}"))
    return {
        "bot_id": new.bot, "from": old.id, "to": new.id,
        "files": {"added": added, "removed": removed, "changed": changed},
        "model": {"from": old.model, "to": new.model, "changed": old.model != new.model},
        "kb": {"from": old.kb, "to": new.kb, "changed": old.kb != new.kb},
    }


async def diff_report(bus: Bus, old: BotVersion, new: BotVersion) -> dict[str, Any]:
    """`diff` with what the store knows of the two models (their held-out metrics and gate
    summaries from metadata.json) and the checks recorded on both versions."""
    report = diff(old, new)
    infos = {v.version: v.to_json() for v in await list_versions(bus, new.bot)}
    report["model"]["metrics"] = {m: infos.get(m, {}).get("metrics", {})
                                  for m in (old.model, new.model)}
    store = VersionStore(bus)
    report["checks"] = {v.id: {n: asdict(c) for n, c in (await store.checks(v.bot, v.id)).items()}
                        for v in (old, new)}
    return report


async def publish_version(bus: Bus, bot: str, files: dict[str, str], model: str, kb: str = "",
                          *, actor: str, description: str = "") -> tuple[BotVersion, bool]:
    """Create the version of these files, model and index (both must be in the object store);
    (the version, whether it is new). The definition must have been validated by the caller."""
    version = BotVersion.build(bot, files, model, kb, actor=actor, description=description)
    await require_version(bus, ModelRef(bot, model))
    if kb and not await kb_exists(bus, ModelRef(bot, kb)):
        raise VersionNotFound(f"bot {bot!r} has no knowledge index {kb!r} in the store")
    return await VersionStore(bus).create(version)


async def kb_exists(bus: Bus, ref: ModelRef) -> bool:
    store = await bus.object_store(OBJ_MODELS)
    try:
        info = await store.get_info(kb_object_name(ref))
    except NotFoundError:
        return False
    return info is not None and not info.deleted


async def deployed_files(bus: Bus, bot: str) -> dict[str, str] | None:
    """The files of `def.<bot>` (KV `bots`), None when none is deployed."""
    kv = await bus.kv(KV_BOTS)
    try:
        entry = await kv.get(definition_key(bot))
    except KeyNotFoundError:
        return None
    return DefinitionStore.decode(entry.value) if entry.value else None


async def mirror_default(bus: Bus, environment: Environment, *, actor: str) -> bool:
    """When `environment` is the bot's default one, make its version what serves the bot the
    old way: `def.<bot>` (the dialogue's and the runner's definition), `model.<bot>` and
    `kb.<bot>` (KV `bots`). True when it was the default environment."""
    store = VersionStore(bus)
    config = await store.config(environment.bot)
    if environment.name != config.default or not environment.version:
        return False
    version = await store.get(environment.bot, environment.version)
    if await deployed_files(bus, version.bot) != version.files:  # a canary change: unchanged
        await DefinitionStore(bus).put(version.bot, version.files)
    if await active_version(bus, version.bot) != version.model:
        await activate(bus, ModelRef(version.bot, version.model), actor=actor,
                       reason="activate")
    if version.kb and await active_kb_version(bus, version.bot) != version.kb:
        await activate_kb(bus, ModelRef(version.bot, version.kb))
    return True
