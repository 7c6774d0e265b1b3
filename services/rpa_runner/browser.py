"""The `browser` step: UI automation with Playwright in headless Chromium, for systems that
have no API. One browser per runner process (started on first use), a fresh context per step;
every request of the page is held to the bot's allow-list; a screenshot is kept on failure."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, BrowserContext, Page, Playwright, Route, async_playwright
from playwright.async_api import Error as PlaywrightError

from services.botdef.expressions import ExpressionError, render_value, to_text
from services.botdef.hosts import HostAllowList
from services.botdef.workflows import BrowserAction, BrowserSpec
from services.common.logging import get_logger
from services.rpa_runner.outcomes import Done, Failed, Outcome, StepCall

log = get_logger(__name__)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
INTERNAL_SCHEMES = ("data:", "about:", "blob:")


class BrowserRefused(Exception):
    """A browser step asked for a host off the allow-list."""


class BrowserPool:
    def __init__(self, chromium_path: str, concurrency: int, screenshots_dir: Path) -> None:
        self.chromium_path = chromium_path
        self.screenshots_dir = screenshots_dir
        self._slots = asyncio.Semaphore(concurrency)
        self._lock = asyncio.Lock()
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None

    async def _get_browser(self) -> Browser:
        async with self._lock:
            if self._browser is not None and self._browser.is_connected():
                return self._browser
            if self._playwright is None:
                self._playwright = await async_playwright().start()
            self._browser = await self._playwright.chromium.launch(
                executable_path=self.chromium_path, headless=True, args=CHROMIUM_ARGS)
            log.info("browser_started", chromium=self.chromium_path)
            return self._browser

    async def close(self) -> None:
        async with self._lock:
            if self._browser is not None:
                await self._browser.close()
            if self._playwright is not None:
                await self._playwright.stop()
            self._browser, self._playwright = None, None

    async def run(self, call: StepCall, spec: BrowserSpec, timeout_s: float) -> Outcome:
        async with self._slots:
            try:
                browser = await self._get_browser()
            except PlaywrightError as exc:
                return Failed(f"cannot start the browser: {exc.message}", retryable=True)
            context = await browser.new_context()
            try:
                return await self._in_context(call, spec, context, timeout_s)
            finally:
                await context.close()

    async def _in_context(self, call: StepCall, spec: BrowserSpec, context: BrowserContext,
                          timeout_s: float) -> Outcome:
        allowed = call.rpa.allowed_hosts
        refused: list[str] = []
        await context.route("**/*", _guard(allowed, refused))
        page = await context.new_page()
        loop = asyncio.get_running_loop()
        # the actions share the step's timeout, less a reserve for the failure screenshot
        deadline = loop.time() + timeout_s - min(2.0, timeout_s * 0.2)
        outputs: dict[str, Any] = {}
        for index, action in enumerate(spec.actions):
            page.set_default_timeout(max(100.0, (deadline - loop.time()) * 1000))
            try:
                await perform(page, action, call, allowed, outputs)
            except (PlaywrightError, BrowserRefused, ExpressionError) as exc:
                shot = await self._screenshot(page, call)
                where = f"action {index + 1} ({action.kind} {action.selector or ''})".strip()
                message = exc.message if isinstance(exc, PlaywrightError) else str(exc)
                blocked = f"; blocked: {', '.join(refused)}" if refused else ""
                return Failed(f"browser {where}: {first_line(message)}{blocked}"
                              f" (screenshot: {shot})",
                              retryable=isinstance(exc, PlaywrightError) and not refused)
        return Done(outputs)

    async def _screenshot(self, page: Page, call: StepCall) -> str:
        self.screenshots_dir.mkdir(parents=True, exist_ok=True)
        name = f"{call.state.run_id}-{call.step_key}".replace("#", "-")
        path = self.screenshots_dir / f"{name}.png"
        try:
            await page.screenshot(path=str(path), full_page=True)
        except PlaywrightError as exc:
            return f"none ({first_line(exc.message)})"
        return str(path)


def _guard(allowed: HostAllowList, refused: list[str]) -> Any:
    async def handler(route: Route) -> None:
        url = route.request.url
        if url.startswith(INTERNAL_SCHEMES) or allowed.allows(url):
            await route.continue_()
        else:
            refused.append(url.split("?", 1)[0][:200])
            await route.abort("blockedbyclient")
    return handler


def render_text(value: str, call: StepCall) -> str:
    return to_text(render_value(value, call.scope))


async def perform(page: Page, action: BrowserAction, call: StepCall, allowed: HostAllowList,
                  outputs: dict[str, Any]) -> None:
    selector = render_text(action.selector, call) if action.selector else ""
    if action.kind == "goto":
        url = render_text(action.value, call)
        if not allowed.allows(url):
            raise BrowserRefused(f"{url.split('?', 1)[0]} is not on the bot's allow-list")
        response = await page.goto(url, wait_until="domcontentloaded")
        if response is not None and response.status >= 400:
            raise BrowserRefused(f"{url.split('?', 1)[0]} returned HTTP {response.status}")
    elif action.kind == "fill":
        await page.fill(selector, render_text(action.value, call))
    elif action.kind == "select":
        await page.select_option(selector, render_text(action.value, call))
    elif action.kind == "click":
        await page.click(selector)
    elif action.kind == "wait_for":
        await page.wait_for_selector(selector, state=action.value or "visible")  # type: ignore[arg-type]
    elif action.kind == "extract_text":
        text = await page.text_content(selector)
        outputs[action.output] = (text or "").strip()


def first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "error"
