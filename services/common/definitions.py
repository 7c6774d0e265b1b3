"""Deployed bot definitions in KV `bots` (key `def.<bot>`): the bot folder's files as JSON.

The gateway's admin API writes them; the dialogue service loads and follows them.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path, PurePosixPath

from services.common.modelstore import BOT_ID
from services.common.nats import KV_BOTS, Bus

DEF_PREFIX = "def."


class DefinitionError(ValueError):
    """A deployed definition cannot be stored or unpacked."""


def definition_key(bot: str) -> str:
    if not BOT_ID.match(bot):
        raise DefinitionError(f"invalid bot id {bot!r}")
    return f"{DEF_PREFIX}{bot}"


def read_folder(folder: Path) -> dict[str, str]:
    """All YAML files of a bot folder, by relative POSIX path."""
    return {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in {".yml", ".yaml"}}


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


def unpack_to_temp(files: dict[str, str]) -> Path:
    return write_folder(files, Path(tempfile.mkdtemp(prefix="botdef-")))


class DefinitionStore:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def put(self, bot: str, files: dict[str, str]) -> int:
        kv = await self._bus.kv(KV_BOTS)
        return int(await kv.put(definition_key(bot), json.dumps({"files": files}).encode()))

    @staticmethod
    def decode(data: bytes) -> dict[str, str]:
        raw = json.loads(data)
        files = raw.get("files") if isinstance(raw, dict) else None
        if not isinstance(files, dict):
            raise DefinitionError("stored definition has no files")
        return {str(k): str(v) for k, v in files.items()}
