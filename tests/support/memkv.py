"""An in-memory stand-in for a JetStream KeyValue bucket (get / create / update / watch), for
unit tests of code written against nats-py's KeyValue without a server."""

from __future__ import annotations

import fnmatch
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    revision: int
    operation: str | None = None


class _Watcher:
    def __init__(self, entries: list[Entry]) -> None:
        self._entries = entries

    async def _iterate(self) -> AsyncIterator[Entry | None]:
        for entry in self._entries:
            yield entry
        yield None  # end of the initial values, as nats-py signals it

    def __aiter__(self) -> AsyncIterator[Entry | None]:
        return self._iterate()

    async def stop(self) -> None:
        return None


class MemoryKeyValue:
    def __init__(self) -> None:
        self._data: dict[str, Entry] = {}
        self._revision = 0
        self.writes = 0
        """Puts, creates and updates so far (a test counts the writes an operation costs)."""

    async def get(self, key: str) -> Entry:
        if key not in self._data:
            raise KeyNotFoundError()
        return self._data[key]

    async def put(self, key: str, value: bytes) -> int:
        self._revision += 1
        self.writes += 1
        self._data[key] = Entry(key, value, self._revision)
        return self._revision

    async def create(self, key: str, value: bytes) -> int:
        if key in self._data:
            raise KeyWrongLastSequenceError()
        return await self.put(key, value)

    async def delete(self, key: str) -> bool:
        self._data.pop(key, None)
        return True

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        current = self._data.get(key)
        if current is None or (last is not None and current.revision != last):
            raise KeyWrongLastSequenceError()
        return await self.put(key, value)

    async def watch(self, keys: str, **_: Any) -> _Watcher:
        pattern = keys.replace(">", "*")
        return _Watcher([e for k, e in sorted(self._data.items())
                         if fnmatch.fnmatchcase(k, pattern)])
