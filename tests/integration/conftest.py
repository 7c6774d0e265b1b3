from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import BrowserContext, async_playwright
from prometheus_client import CollectorRegistry

from services.botdef import load_bot, write_bot
from services.gateway.http import GatewayMetrics, create_app
from tests.support.gateway import FakeHub, make_config
from tests.support.memstores import InMemoryKeyStore
from tests.support.models import (
    TINY_ENTITIES,
    TinyModels,
    make_tiny_encoder,
    tiny_examples,
    tiny_settings,
)
from tests.support.rpa import PIN, TOKEN
from tests.support.webchat import CHROMIUM, CHROMIUM_ARGS, Served, install_chromium


@pytest.fixture
def rpa_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo bank's token and PIN as the secrets CORE_TOKEN and LEGACY_PIN of in-process
    runners (they read BOTFACTORY_SECRET_* from the environment; tests/support/rpa.py)."""
    monkeypatch.setenv("BOTFACTORY_SECRET_CORE_TOKEN", TOKEN)
    monkeypatch.setenv("BOTFACTORY_SECRET_LEGACY_PIN", PIN)


def _train(bot_dir: Path, out: Path) -> Path:
    from botfactory.training import train_bot

    train_bot(load_bot(bot_dir), out, progress=False)
    return out


BANKING = Path(__file__).resolve().parents[2] / "bots" / "banking"


@pytest.fixture(scope="session")
def tiny_banking_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo bot's NLU on a tiny random encoder: real files, real serving path, meaningless
    predictions (conversation tests that need a given intent send `/intent` payloads)."""
    from botfactory.training import CheckThresholds, train_bot

    root = tmp_path_factory.mktemp("tiny-banking")
    encoder = make_tiny_encoder(root / "encoder")
    out = root / "model"
    train_bot(load_bot(BANKING), out, base_model=str(encoder), epochs=1, progress=False,
              checks=CheckThresholds(max_int8_disagreement=1.0))
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyModels]:
    """Two versions of a tiny bot's model (different seeds), trained once per session."""
    root = tmp_path_factory.mktemp("tiny")
    encoder = make_tiny_encoder(root / "encoder")
    dirs = []
    for seed in (7, 8):
        bot_dir = write_bot(root / f"bot{seed}", "tiny", tiny_examples(),
                            entities=TINY_ENTITIES, nlu=tiny_settings(encoder, seed=seed))
        dirs.append((bot_dir, _train(bot_dir, root / f"model{seed}")))
    yield TinyModels(v1=dirs[0][1], v2=dirs[1][1], bot_dir=dirs[0][0])


# --- the web chat page in Chromium (tests/support/webchat.py) ----------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        problem = install_chromium()
        if problem:
            pytest.fail(f"the web chat browser test needs {CHROMIUM} (Debian package "
                        f"`chromium`): {problem}", pytrace=False)
    return str(CHROMIUM)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    hub = FakeHub()
    app = create_app(hub, InMemoryKeyStore(), make_config(),
                     GatewayMetrics.create(CollectorRegistry()))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Served(f"http://{host}:{port}", hub, app)
    finally:
        await runner.cleanup()


@pytest.fixture
async def browser(chromium: str, tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True,
            args=CHROMIUM_ARGS)
        try:
            yield context
        finally:
            await context.close()
