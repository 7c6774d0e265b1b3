"""The web widget in headless Chromium (Playwright, Debian's `chromium`, as in
test_webchat_browser.py), embedded in a page of ANOTHER origin: the gateway app (a hub that
answers like a small bank bot, channel settings in memory) on http://127.0.0.1:<port>, the
shop's page on http://localhost:<other port>, with a script tag and hostile CSS. Desktop and
phone widths: open it, chat, press a button, reload and find the conversation resumed.

`BOTFACTORY_WIDGET_SCREENSHOTS=1` also writes docs/images/widget-desktop.png and
widget-phone.png (the screenshots docs/channels.md shows)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import BrowserContext, ConsoleMessage, Page, Request, expect

from services.gateway.channels.widget import WIDGET_CACHE
from services.gateway.http.state import STATE
from tests.support.webchat import (
    COMPOSITION_GUARD_MS,
    TIMEOUT_MS,
    commit,
    compose,
    held_back_enters,
)
from tests.support.widget import (
    ANSWERS,
    BOT,
    GREETING,
    WELCOME,
    BankHub,
    WidgetApp,
    publishable_key,
    refused,
    sessions,
    set_widget,
    widget_app,
)

ROOT = Path(__file__).resolve().parents[2]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
BLUE = "rgb(11, 95, 255)"  # the theme colour, #0b5fff
AVATAR = ("data:image/svg+xml;base64,"  # "AB" on a white disc
          "PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciIHZpZXdCb3g9IjAgMC"
          "AzMiAzMiI+PGNpcmNsZSBjeD0iMTYiIGN5PSIxNiIgcj0iMTYiIGZpbGw9IiNmZmYiLz48dGV4dCB4PS"
          "IxNiIgeT0iMjEiIGZvbnQtc2l6ZT0iMTMiIGZvbnQtd2VpZ2h0PSJib2xkIiB0ZXh0LWFuY2hvcj0ibW"
          "lkZGxlIiBmaWxsPSIjMGI1ZmZmIiBmb250LWZhbWlseT0ic2Fucy1zZXJpZiI+QUI8L3RleHQ+PC9zdm"
          "c+")

# The shop's page: its own CSS is hostile on purpose (it targets the widget's tag and class
# names and every button); none of it may reach the widget, and the widget's CSS must not
# reach the page's own `.bubble` / `.quick` element.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Alpha Bank</title>
<link rel="icon" href="data:,">
<style>
  * { font-family: Georgia, serif !important; }
  body { margin: 0; background: #faf7f2; color: #222; }
  header { background: #14213d; color: #fff; padding: 18px 32px; }
  main { padding: 24px 32px; max-width: 760px; }
  button { background: rgb(255, 0, 0) !important; color: #fff; border: 0; padding: 10px 18px; }
  botfactory-widget { display: none; opacity: 0; }
  .launcher, .panel, .log { display: none !important; }
</style></head>
<body>
<header><h1>Alpha Bank</h1></header>
<main>
  <h2>Open an account in five minutes</h2>
  <p>No fees for the first year. Questions? Our assistant answers around the clock.</p>
  <p><span class="bubble quick" data-testid="page-bubble">Savings 2.1 %</span></p>
  <button type="button" data-testid="page-button">Open an account</button>
</main>
<script src="{gateway}/widget.js" data-bot="{bot}" data-key="{key}" async></script>
</body></html>"""


@dataclass
class Site:
    gateway: str
    page: str  # the shop's origin
    widget: WidgetApp
    key: str
    requests: list[str] = field(default_factory=list)

    def url(self, bot: str = BOT, key: str | None = None) -> str:
        return f"{self.page}/?bot={bot}&key={key or self.key}"


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


def shop_app(gateway: str) -> web.Application:
    async def index(request: web.Request) -> web.Response:
        html = (PAGE.replace("{gateway}", gateway).replace("{bot}", request.query["bot"])
                .replace("{key}", request.query["key"]))
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    return app


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    async with aiohttp.ClientSession() as session:
        built = widget_app(session, hub=BankHub(delay_s=0.4))
        gateway_runner, gateway_port = await serve(built.app)
        gateway = f"http://127.0.0.1:{gateway_port}"
        shop_runner, shop_port = await serve(shop_app(gateway))
        shop = f"http://localhost:{shop_port}"  # another origin than the gateway's
        await set_widget(built.app, allowed_origins=f"https://shop.example.com,{shop}",
                         title="Alpha Bank", color="#0b5fff", greeting=GREETING,
                         avatar_url=AVATAR)
        try:
            yield Site(gateway, shop, built, await publishable_key(built.app))
        finally:
            await shop_runner.cleanup()
            await gateway_runner.cleanup()


async def open_page(browser: BrowserContext, site: Site, size: dict[str, int],
                    url: str | None = None) -> tuple[Page, list[str]]:
    page = await browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.set_viewport_size({"width": size["width"], "height": size["height"]})
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    def on_request(request: Request) -> None:
        site.requests.append(request.url)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", on_request)
    await page.goto(url or site.url())
    return page, errors


async def stored_conversation(page: Page) -> str:
    raw = await page.evaluate(f"localStorage.getItem('botfactory-widget:{BOT}')")
    conversation: str = json.loads(raw)["conversation_id"]
    return conversation


async def chat(page: Page, site: Site) -> None:
    """Say hello, see the bot type and answer with buttons, press one."""
    text = page.get_by_test_id("widget-input")
    await expect(text).to_be_focused()
    bot = page.get_by_test_id("widget-bot-message")
    await expect(bot).to_have_count(1)
    await expect(bot.first).to_contain_text(GREETING)
    await text.fill("hello")
    await text.press("Enter")
    await expect(page.get_by_test_id("widget-typing")).to_be_visible()
    await expect(bot.nth(1)).to_contain_text(WELCOME)
    await expect(page.get_by_test_id("widget-typing")).to_be_hidden()
    buttons = bot.nth(1).get_by_test_id("widget-quick-reply")
    await expect(buttons).to_have_text(["Check balance", "Transfer money"])
    await buttons.first.click()  # sends the payload, shows the title
    await expect(page.get_by_test_id("widget-user-message")).to_have_text(
        ["You: hello", "You: Check balance"])
    await expect(bot.nth(2)).to_contain_text(ANSWERS["/check_balance"])
    await expect(buttons.first).to_be_disabled()  # an earlier turn's buttons
    assert [m.text for m in site.widget.hub.sent] == ["hello", "/check_balance"]


async def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    shot = tmp_path / name
    await page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("BOTFACTORY_WIDGET_SCREENSHOTS"):
        (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, ROOT / "docs" / "images" / name)


async def test_the_widget_on_another_sites_page_at_desktop_width(
        site: Site, browser: BrowserContext, tmp_path: Path) -> None:
    page, errors = await open_page(browser, site, DESKTOP)
    launcher = page.get_by_test_id("widget-launcher")
    await expect(launcher).to_have_attribute("aria-label", "Open chat: Alpha Bank")
    # the page's CSS does not reach in, the widget's does not leak out
    assert await launcher.evaluate("e => getComputedStyle(e).backgroundColor") == BLUE
    font = await page.get_by_test_id("widget").evaluate("e => getComputedStyle(e).fontFamily")
    assert "Georgia" not in font
    assert await page.get_by_test_id("page-bubble").evaluate(
        "e => getComputedStyle(e).paddingTop") == "0px"
    assert await page.get_by_test_id("page-button").evaluate(
        "e => getComputedStyle(e).backgroundColor") == "rgb(255, 0, 0)"

    await launcher.focus()  # keyboard: open, chat, Escape closes and gives the focus back
    await page.keyboard.press("Enter")
    await expect(page.get_by_test_id("widget-panel")).to_be_visible()
    await expect(launcher).to_have_attribute("aria-expanded", "true")
    await chat(page, site)
    await screenshot(page, tmp_path, "widget-desktop.png")
    await page.keyboard.press("Escape")
    await expect(page.get_by_test_id("widget-panel")).to_be_hidden()
    await expect(launcher).to_be_focused()

    # a message while closed: the unread badge
    conversation = await stored_conversation(page)
    site.widget.hub.push(BOT, conversation, "By the way: savings now pay 2.1 %.")
    await expect(page.get_by_test_id("widget-unread")).to_have_text("1")
    await expect(launcher).to_have_attribute("aria-label",
                                             "Open chat: Alpha Bank, 1 unread message")

    # a reload resumes the conversation (its transcript, its live replies)
    await page.reload()
    await launcher.click()
    await expect(page.get_by_test_id("widget-unread")).to_be_hidden()
    await expect(page.get_by_test_id("widget-user-message")).to_have_text(
        ["You: hello", "You: Check balance"])
    bot = page.get_by_test_id("widget-bot-message")
    await expect(bot).to_have_count(3)
    await expect(bot.nth(2)).to_contain_text(ANSWERS["/check_balance"])
    assert await stored_conversation(page) == conversation
    await page.get_by_test_id("widget-input").fill("thanks")
    await page.get_by_test_id("widget-send").click()
    await expect(bot).to_have_count(4)
    assert {m.conversation_id for m in site.widget.hub.sent} == {conversation}
    site.widget.hub.push(BOT, conversation, "Anything else?")
    await expect(bot.nth(4)).to_contain_text("Anything else?")

    assert sessions(site.widget.metrics, "new") == 1
    assert sessions(site.widget.metrics, "resumed") == 1
    assert errors == []
    assert all(url.startswith((site.gateway, site.page, "ws://127.0.0.1"))
               for url in site.requests), site.requests


async def test_the_widget_fills_a_phone_screen_and_resumes(
        site: Site, browser: BrowserContext, tmp_path: Path) -> None:
    page, errors = await open_page(browser, site, PHONE)
    launcher = page.get_by_test_id("widget-launcher")
    await launcher.click()
    panel = page.get_by_test_id("widget-panel")
    await expect(panel).to_be_visible()
    assert await panel.bounding_box() == {"x": 0, "y": 0, **PHONE}
    await expect(launcher).to_be_hidden()  # under the full-screen panel
    await chat(page, site)
    await screenshot(page, tmp_path, "widget-phone.png")
    await page.get_by_test_id("widget-close").click()
    await expect(panel).to_be_hidden()
    await expect(launcher).to_be_visible()

    await page.reload()
    await page.get_by_test_id("widget-launcher").click()
    await expect(page.get_by_test_id("widget-bot-message")).to_have_count(3)
    await expect(page.get_by_test_id("widget-user-message")).to_have_text(
        ["You: hello", "You: Check balance"])
    assert errors == []


async def test_an_expired_session_starts_a_new_conversation_and_says_so(
        site: Site, browser: BrowserContext) -> None:
    page, errors = await open_page(browser, site, DESKTOP)
    await page.get_by_test_id("widget-launcher").click()
    await chat(page, site)
    before = await stored_conversation(page)
    tokens = site.widget.app[STATE].auth.tokens
    now = tokens.clock()
    tokens.clock = lambda: now + tokens.ttl_s + 60  # a visit the next day

    await page.reload()
    await page.get_by_test_id("widget-launcher").click()
    await expect(page.get_by_test_id("widget-notice")).to_contain_text("expired")
    await expect(page.get_by_test_id("widget-bot-message")).to_have_text(
        [f"Alpha Bank: {GREETING}"])
    await expect(page.get_by_test_id("widget-user-message")).to_have_count(0)
    assert await stored_conversation(page) != before
    await page.get_by_test_id("widget-input").fill("hello again")
    await page.get_by_test_id("widget-input").press("Enter")
    await expect(page.get_by_test_id("widget-bot-message")).to_have_count(2)
    assert site.widget.hub.sent[-1].conversation_id == await stored_conversation(page)
    assert sessions(site.widget.metrics, "restarted") == 1
    assert errors == []


async def test_a_page_of_an_origin_not_on_the_list_gets_no_widget(
        site: Site, browser: BrowserContext) -> None:
    await set_widget(site.widget.app, allowed_origins="https://shop.example.com")
    site.widget.app[WIDGET_CACHE].forget(BOT)
    page, _ = await open_page(browser, site, DESKTOP)
    await page.wait_for_load_state("networkidle")
    await expect(page.get_by_test_id("widget-launcher")).to_have_count(0)
    assert refused(site.widget.metrics, "preflight") >= 1  # the browser asks first
    assert sessions(site.widget.metrics, "new") == 0


async def test_the_enter_that_ends_an_input_method_composition_does_not_send(
        site: Site, browser: BrowserContext) -> None:
    page, errors = await open_page(browser, site, DESKTOP)
    await page.get_by_test_id("widget-launcher").click()
    field = page.get_by_test_id("widget-input")
    await expect(field).to_be_focused()
    await expect(page.get_by_test_id("widget-bot-message")).to_have_count(1)  # the greeting
    assert await held_back_enters(field) == {
        "plain": False, "keyCode229": True, "isComposing": True, "duringComposition": True,
        "rightAfterIt": True}

    await compose(page, "nihao")  # pinyin, then the Enter that picks the characters
    await expect(field).to_have_value("nihao")  # not sent: the form would have emptied it
    await commit(page, "你好")
    await expect(field).to_have_value("你好")
    await page.wait_for_timeout(3 * COMPOSITION_GUARD_MS)
    await field.press("Enter")  # a plain Enter sends
    await expect(page.get_by_test_id("widget-user-message")).to_have_text(["You: 你好"])
    await expect(page.get_by_test_id("widget-bot-message")).to_have_count(2)
    await expect(field).to_have_value("")
    assert [m.text for m in site.widget.hub.sent] == ["你好"]
    assert errors == []
