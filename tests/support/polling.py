"""The one polling helper of the tests: wait until a condition holds (no timed assertions: the
limit only ends a test that would otherwise hang)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(check: Callable[[], Awaitable[T | None]], what: str = ...,
                     within: float = ..., every: float = ...) -> T: ...


@overload
async def eventually(check: Callable[[], T | None], what: str = ..., within: float = ...,
                     every: float = ...) -> T: ...


async def eventually(check: Callable[[], Any], what: str = "the condition",
                     within: float = 20.0, every: float = 0.05) -> Any:
    """Call `check` (plain or async) until it returns something truthy, and return that; an
    AssertionError naming `what` after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        found = check()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found
        if loop.time() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(every)
