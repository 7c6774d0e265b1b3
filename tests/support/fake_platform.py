"""A local fake of a messaging platform's API (tests/integration/test_channel_*.py): records
every call and answers it, or fails it as scripted (`fail_next`), so a test can check what the
gateway sent, that it honours a 429's Retry-After, and that it gives up after its attempts."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

Answer = Callable[[str, Any], Any]


@dataclass
class Call:
    path: str
    body: Any  # the JSON body (or the form, as a dict; or the raw text)
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


@dataclass
class Failure:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class FakePlatform:
    """`answer(path, body)` makes the JSON of a successful call (default `{"ok": true}`)."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.calls: list[Call] = []
        self.failed: list[Call] = []
        self._answer = answer or (lambda path, body: {"ok": True})
        self._failures: deque[Failure] = deque()
        self._server: TestServer | None = None
        self._changed = asyncio.Event()

    def fail_next(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
                  times: int = 1) -> None:
        for _ in range(times):
            self._failures.append(Failure(status, body if body is not None else {},
                                          headers or {}))

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = TestServer(app, host="127.0.0.1", port=0)
        await self._server.start_server()
        return f"http://127.0.0.1:{self._server.port}"

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()

    def to(self, suffix: str) -> list[Call]:
        """The successful calls whose path ends with `suffix`."""
        return [call for call in self.calls if call.path.endswith(suffix)]

    async def wait_for(self, suffix: str, count: int = 1, within: float = 20.0) -> list[Call]:
        deadline = time.monotonic() + within
        while len(self.to(suffix)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} call(s) to {suffix} expected, got "
                                     f"{[c.path for c in self.calls]}")
            await asyncio.sleep(0.05)
        return self.to(suffix)

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.text()
        body: Any
        if request.content_type == "application/x-www-form-urlencoded":
            body = dict(await request.post())
        else:
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw
        call = Call(request.path, body, dict(request.headers))
        if self._failures:
            failure = self._failures.popleft()
            self.failed.append(call)
            return web.json_response(failure.body, status=failure.status,
                                     headers=failure.headers)
        self.calls.append(call)
        return web.json_response(self._answer(request.path, body))
