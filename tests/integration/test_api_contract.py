"""The HTTP API against its OpenAPI document on a real gateway: nats-server, the NLU (the demo
bot on a tiny encoder), a dialogue worker and the gateway, every server on port 0, fuzzed by
schemathesis with the same checks as tests/unit/test_fuzzing.py (no 5xx; statuses, content
types, headers and bodies as documented; what the document allows accepted, what it does not
allow refused with a 4xx). The path parameters' examples (bot `banking`, ...) lead the
fuzzer to the demo bot's handlers.

The stack runs in its own thread and event loop: schemathesis' HTTP client blocks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from schemathesis import checks as st_checks

from botfactory.local.nats_server import NatsServer
from services.gateway.channels.secrets import new_key
from tests.support.apicontract import CHECKS, SCHEMA, SEMANTIC, bounded
from tests.support.stack import BOOTSTRAP, running_stack

# The workflow run routes need the RPA runner, not in this stack (they answer 503): the unit
# fuzz test covers them with a fake runner.
REAL = SCHEMA.exclude(tag="runs")


class StackThread:
    """`running_stack` on a thread of its own until `stop()`."""

    def __init__(self, nats_url: str, model: Path) -> None:
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._nats_url, self._model = nats_url, model
        self.base_url = ""
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> str:
        self._thread.start()
        assert self._started.wait(120), "the stack did not start"
        if self.error is not None:
            raise self.error
        return self.base_url

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self._started.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with running_stack(self._nats_url, self._model, sync_wait_s=1.0,
                                 rpa_address="", channel_secrets_key=new_key()) as stack:
            self.base_url = stack.base_url
            self._started.set()
            await self._stop.wait()


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory,
                tiny_banking_model: Path) -> Iterator[str]:
    server = NatsServer(tmp_path_factory.mktemp("contract-nats"))
    server.start()
    stack = StackThread(server.url, tiny_banking_model)
    try:
        yield stack.start()
    finally:
        stack.stop()
        server.stop()


@REAL.parametrize()
@bounded(5, deadline_ms=None)
def test_the_real_gateway_matches_its_openapi_document(case: Any, gateway_url: str) -> None:
    response = case.call(base_url=gateway_url, timeout=30,
                         headers={"Authorization": f"Bearer {BOOTSTRAP}"})
    excluded = ([st_checks.positive_data_acceptance]
                if case.operation.definition.raw.get("operationId") in SEMANTIC else [])
    case.validate_response(response, checks=CHECKS, excluded_checks=excluded)
