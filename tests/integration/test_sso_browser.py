"""Single sign-on in a real browser (headless Chromium): the review page's "Sign in" link runs
the authorization code flow with PKCE against the local test issuer and comes back to the
page, whose API calls then carry the HttpOnly session cookie (docs/security.md, "Single
sign-on")."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from playwright.async_api import BrowserContext
from prometheus_client import CollectorRegistry

from services.gateway.http import GatewayMetrics, create_app
from services.gateway.owners import MemoryBotOwners
from tests.support.gateway import FakeHub, make_config
from tests.support.memstores import InMemoryKeyStore
from tests.support.oidc_issuer import CLIENT_ID, TestIssuer
from tests.support.webchat import TIMEOUT_MS


@pytest.fixture
async def issuer() -> AsyncIterator[TestIssuer]:
    running = await TestIssuer(user={"sub": "user-grace", "email": "grace@example.com",
                                     "botfactory_roles": ["acme:editor"]}).start()
    yield running
    await running.close()


@pytest.fixture
async def gateway_url(issuer: TestIssuer) -> AsyncIterator[str]:
    app = create_app(FakeHub(), InMemoryKeyStore(),
                     make_config(oidc_issuer=issuer.url, oidc_client_id=CLIENT_ID),
                     GatewayMetrics.create(CollectorRegistry()),
                     owners=MemoryBotOwners({"alpha": "acme", "beta": "globex"}))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


FETCH = """async ([path, method]) => {
  const response = await fetch(path, { method, credentials: "same-origin",
    headers: { "X-Requested-With": "botfactory", "Content-Type": "application/json" },
    body: method === "PUT" ? JSON.stringify({ version: "v1" }) : undefined });
  return response.status;
}"""


async def test_a_person_signs_in_from_the_review_page(browser: BrowserContext, issuer: TestIssuer,
                                                       gateway_url: str) -> None:
    page = await browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(f"{gateway_url}/static/review.html")
    await page.get_by_test_id("sign-in").click()
    await page.wait_for_url(f"{gateway_url}/static/review.html")
    assert issuer.token_requests and issuer.token_requests[-1]["code_verifier"]
    # the session cookie is there, out of the scripts' reach
    cookies = {c["name"]: c for c in await browser.cookies(gateway_url)}
    assert cookies["bf_session"]["httpOnly"] and cookies["bf_session"]["sameSite"] == "Strict"
    assert "bf_session" not in await page.evaluate("document.cookie")
    me = await page.evaluate("fetch('/auth/me').then(r => r.json())")
    assert (me["subject"], me["email"], me["roles"]) == (
        "user-grace", "grace@example.com", {"acme": ["editor"]})
    # the page's calls go through with the cookie: the editor's tenant's bot, not another's
    assert await page.evaluate(FETCH, ["/v1/admin/bots/alpha/owner", "GET"]) == 200
    assert await page.evaluate(FETCH, ["/v1/admin/bots/beta/owner", "GET"]) == 404
    assert await page.evaluate(FETCH, ["/v1/admin/bots/alpha/model", "PUT"]) == 403  # operate
    # signing out ends it
    await page.goto(f"{gateway_url}/auth/logout")
    assert await page.evaluate(FETCH, ["/v1/admin/bots/alpha/owner", "GET"]) == 401
