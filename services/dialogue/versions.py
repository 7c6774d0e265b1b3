"""Which bot version serves a conversation (docs/versions.md).

A conversation is pinned at its first turn (and again when its session idles out) to the
version its environment serves then, or to the environment's canary version for a sticky
share of conversations; the pin is kept in its tracker record, so later turns run on that
version whatever is promoted meanwhile. Environments are followed live from KV
`bot_versions` (`env.<bot>.<env>`, `config.<bot>`); a version's definition is compiled once
per replica (the versions in use are loaded ahead of their first conversation), its model
version is named in each Parse call and its knowledge-index version in each Search. A bot
whose environment serves no version runs on its deployed definition (`def.<bot>`) as before
versions existed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.botdef import load_bot
from services.common.botversions import (
    CONFIG_PREFIX,
    DEFAULT_ENVIRONMENT,
    ENV_PREFIX,
    BotEnvironments,
    Environment,
    VersionStore,
)
from services.common.definitions import load_deployed
from services.common.logging import get_logger
from services.common.nats import KV_BOT_VERSIONS, Bus
from services.dialogue.bots import BotRegistry
from services.dialogue.engine import DialogueEngine

log = get_logger(__name__)
ENGINES_KEPT = 32  # compiled versions kept per replica (least recently used dropped)


@dataclass(frozen=True)
class Serving:
    """What runs a conversation's turn: `version` "" is the deployed definition; `model` and
    `kb` name the version's model and knowledge index ("": the bot's active one)."""

    engine: DialogueEngine
    version: str = ""
    environment: str = ""
    model: str = ""
    kb: str = ""


@dataclass(frozen=True)
class _Compiled:
    """A version's compiled definition and the model and index it names."""

    engine: DialogueEngine
    model: str
    kb: str


class WrongEnvironment(Exception):
    """The conversation belongs to another environment than the sender's key."""


class VersionedBots:
    def __init__(self, bus: Bus, registry: BotRegistry) -> None:
        self._bus = bus
        self._registry = registry
        self._envs: dict[tuple[str, str], Environment] = {}
        self._defaults: dict[str, str] = {}
        self._engines: OrderedDict[tuple[str, str], _Compiled] = OrderedDict()
        self._loading: dict[tuple[str, str], asyncio.Future[_Compiled | None]]
        self._loading = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` when the bots served through environments may have changed."""
        self._listeners.append(listener)

    def bots(self) -> list[str]:
        """The bots an environment serves a version of (served without a deployed
        definition too)."""
        return sorted({bot for (bot, _), env in self._envs.items() if env.version})

    async def start(self) -> None:
        """Follow the environments (initial values first), then their updates."""
        kv = await self._bus.kv(KV_BOT_VERSIONS)
        loop = asyncio.get_running_loop()
        for prefix in (CONFIG_PREFIX, ENV_PREFIX):
            watcher = await kv.watch(f"{prefix}>")
            ready = asyncio.Event()
            self._tasks.append(loop.create_task(self._follow(watcher, prefix, ready)))
            await ready.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self, watcher: Any, prefix: str, ready: asyncio.Event) -> None:
        async for entry in watcher:
            if entry is None:
                ready.set()
                continue
            deleted = entry.operation is not None or not entry.value
            try:
                self._apply(prefix, entry.key[len(prefix):], None if deleted else entry.value)
            except Exception as exc:  # an unreadable record keeps what was there
                log.error("environment_rejected", key=entry.key, error=str(exc))

    def _apply(self, prefix: str, rest: str, value: bytes | None) -> None:
        if prefix == CONFIG_PREFIX:
            if value is None:
                self._defaults.pop(rest, None)
            else:
                self._defaults[rest] = BotEnvironments.from_json(json.loads(value)).default
            return
        bot, _, name = rest.partition(".")
        if value is None:
            self._envs.pop((bot, name), None)
            return
        record = Environment.from_bytes(value)
        self._envs[(bot, name)] = record
        for version in {record.version, record.canary_version} - {""}:
            asyncio.get_running_loop().create_task(self._warm(bot, version))
        for listener in self._listeners:
            listener()

    async def _warm(self, bot: str, version: str) -> None:
        await self._engine(bot, version)

    def environment_of(self, bot: str, requested: str) -> str:
        return requested or self._defaults.get(bot, DEFAULT_ENVIRONMENT)

    async def serving(self, bot: str, conversation_id: str, requested_env: str | None,
                      pinned: tuple[str, str] | None) -> Serving | None:
        """What runs this turn: the pinned version (`(version, environment)` of the record,
        None for a new conversation or session), else the environment's choice, else the
        deployed definition. None when nothing serves the bot. `requested_env`: the sender's
        environment ("" for the default), None for messages that come from no key (workflow
        results, notices)."""
        environment = self.environment_of(bot, requested_env or "")
        if pinned is not None and pinned[0]:
            version, pinned_env = pinned
            if requested_env is not None and pinned_env and environment != pinned_env:
                raise WrongEnvironment(f"conversation belongs to environment {pinned_env!r}")
            loaded = await self._engine(bot, version)
            if loaded is not None:
                return Serving(loaded.engine, version, pinned_env, loaded.model, loaded.kb)
        current = self._envs.get((bot, environment))
        if current is not None and current.version:
            version = current.choose(conversation_id)
            loaded = await self._engine(bot, version)
            if loaded is not None:
                return Serving(loaded.engine, version, environment, loaded.model, loaded.kb)
        engine = self._registry.get(bot)
        return Serving(engine) if engine is not None else None

    async def _engine(self, bot: str, version: str) -> _Compiled | None:
        """The compiled engine of a version, its model and index (one load however many ask)."""
        key = (bot, version)
        found = self._engines.get(key)
        if found is not None:
            self._engines.move_to_end(key)
            return found
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load(bot, version))
            self._loading[key] = pending
            pending.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(pending)

    async def _load(self, bot: str, version: str) -> _Compiled | None:
        try:
            record = await VersionStore(self._bus).get(bot, version)
            engine = await asyncio.to_thread(
                load_deployed, bot, record.files, lambda folder: DialogueEngine(load_bot(folder)))
        except Exception as exc:  # the deployed definition serves instead
            log.error("version_rejected", bot=bot, version=version, error=str(exc))
            return None
        compiled = _Compiled(engine, record.model, record.kb)
        self._engines[(bot, version)] = compiled
        while len(self._engines) > ENGINES_KEPT:
            self._engines.popitem(last=False)
        log.info("version_loaded", bot=bot, version=version, model=record.model, kb=record.kb)
        return compiled
