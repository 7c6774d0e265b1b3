"""Deployed bot definitions in KV `bots` (key `def.<bot>`): the bot folder's files as JSON.

The gateway's admin API writes them; the dialogue service loads and follows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Generic, Protocol, TypeVar

from nats.js.errors import KeyNotFoundError

from services.common.logging import get_logger
from services.common.modelstore import BOT_ID
from services.common.nats import KV_BOTS, Bus

log = get_logger(__name__)
DEF_PREFIX = "def."


class DefinitionError(ValueError):
    """A deployed definition cannot be stored or unpacked."""


def definition_key(bot: str) -> str:
    if not BOT_ID.match(bot):
        raise DefinitionError(f"invalid bot id {bot!r}")
    return f"{DEF_PREFIX}{bot}"


KNOWLEDGE_FOLDER = "knowledge"
"""Not part of a deployed definition: the knowledge index carries it (docs/knowledge.md)."""


def read_folder(folder: Path) -> dict[str, str]:
    """All YAML files of a bot folder, by relative POSIX path (`knowledge/` left out)."""
    return {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in {".yml", ".yaml"}
            and p.relative_to(folder).parts[0] != KNOWLEDGE_FOLDER}


def write_folder(files: dict[str, str], target: Path) -> Path:
    """Write `files` under `target`, refusing absolute paths and `..`."""
    for name, text in files.items():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise DefinitionError(f"invalid file name {name!r}")
        path = target.joinpath(*relative.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target


@contextlib.contextmanager
def unpacked(files: dict[str, str]) -> Iterator[Path]:
    """The files as a bot folder in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="botdef-") as tmp:
        yield write_folder(files, Path(tmp))


class Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=Named)


def load_deployed(bot_id: str, files: dict[str, str], load: Callable[[Path], N]) -> N:
    """`load` a definition deployed as `bot_id`; it must name that bot."""
    with unpacked(files) as folder:
        loaded = load(folder)
    if loaded.name != bot_id:
        raise DefinitionError(f"definition names bot {loaded.name!r}, deployed as {bot_id!r}")
    return loaded


class DefinitionStore:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def put(self, bot: str, files: dict[str, str]) -> int:
        kv = await self._bus.kv(KV_BOTS)
        return int(await kv.put(definition_key(bot), json.dumps({"files": files}).encode()))

    async def exists(self, bot: str) -> bool:
        kv = await self._bus.kv(KV_BOTS)
        try:
            entry = await kv.get(definition_key(bot))
        except KeyNotFoundError:
            return False
        return bool(entry.value)

    @staticmethod
    def decode(data: bytes) -> dict[str, str]:
        raw = json.loads(data)
        files = raw.get("files") if isinstance(raw, dict) else None
        if not isinstance(files, dict):
            raise DefinitionError("stored definition has no files")
        return {str(k): str(v) for k, v in files.items()}


class DefinitionFollower:
    """Follows the deployed definitions (KV `bots`, keys `def.<bot>`): `apply(bot, files)` is
    called for each current one, then for every update. A deployment `apply` rejects is
    logged and skipped, so the service keeps what it had."""

    def __init__(self, apply: Callable[[str, dict[str, str]], None]) -> None:
        self._apply = apply
        self._task: asyncio.Task[None] | None = None

    async def start(self, bus: Bus) -> None:
        """Apply the current definitions, then follow updates in the background."""
        kv = await bus.kv(KV_BOTS)
        watcher = await kv.watch(f"{DEF_PREFIX}*")
        ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._follow(watcher, ready))
        await ready.wait()

    async def _follow(self, watcher: Any, ready: asyncio.Event) -> None:
        async for entry in watcher:
            if entry is None:
                ready.set()
                continue
            if entry.operation is not None or not entry.value:
                continue
            bot = entry.key[len(DEF_PREFIX):]
            try:
                self._apply(bot, DefinitionStore.decode(entry.value))
            except Exception as exc:  # a bad deployment keeps the previous definition
                log.error("bot_rejected", bot=bot, error=str(exc))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class DeployedBots(Generic[N]):
    """A service's bots by name: loaded from bot folders on disk (`load_folder`) and from the
    definitions deployed through the admin API, followed live (`follow`). `load` turns a bot
    folder into what the service keeps; `describe` adds fields to the `bot_loaded` log line."""

    def __init__(self, load: Callable[[Path], N],
                 describe: Callable[[N], dict[str, Any]] | None = None) -> None:
        self._load = load
        self._describe = describe or (lambda _: {})
        self._bots: dict[str, N] = {}
        self._follower: DefinitionFollower | None = None
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after each bot loaded from a deployed definition."""
        self._listeners.append(listener)

    def get(self, bot_id: str) -> N | None:
        return self._bots.get(bot_id)

    def names(self) -> list[str]:
        return sorted(self._bots)

    def add(self, bot: N) -> None:
        self._bots[bot.name] = bot

    def load_folder(self, folder: Path) -> str:
        bot = self._load(folder)
        self._bots[bot.name] = bot
        log.info("bot_loaded", bot=bot.name, source=str(folder), **self._describe(bot))
        return bot.name

    def load_files(self, bot_id: str, files: dict[str, str]) -> None:
        bot = load_deployed(bot_id, files, self._load)
        self._bots[bot_id] = bot
        log.info("bot_loaded", bot=bot_id, source="kv", **self._describe(bot))
        for listener in self._listeners:
            listener()

    async def follow(self, bus: Bus) -> None:
        """Load the deployed definitions and follow their updates."""
        self._follower = DefinitionFollower(self.load_files)
        await self._follower.start(bus)

    async def stop(self) -> None:
        if self._follower is not None:
            await self._follower.stop()
