"""The web chat page in headless Chromium (Playwright, Debian's `chromium` package), served by
the real gateway app with an in-memory echo hub on a free localhost port."""

from __future__ import annotations

from playwright.async_api import (
    BrowserContext,
    Page,
    Request,
    expect,
)

from services.gateway.http.state import STATE
from services.gateway.ports import Role
from tests.support.webchat import (
    COMPOSITION_GUARD_MS,
    Served,
    commit,
    compose,
    held_back_enters,
    open_chat,
)


async def send(page: Page, text: str) -> None:
    await page.get_by_test_id("text").fill(text)
    await page.get_by_test_id("send").click()


async def test_chat_send_buttons_feedback_and_live_messages(served: Served,
                                                            browser: BrowserContext) -> None:
    issued = await served.app[STATE].auth.issue("t1", ["alpha"], Role.CLIENT)
    page, errors = await open_chat(browser, served, issued.secret, "web-1")
    await expect(page.get_by_test_id("connection")).to_have_text("live")

    await send(page, "menu")
    bot_messages = page.get_by_test_id("bot-message")
    await expect(page.get_by_test_id("user-message")).to_have_text(["menu"])
    await expect(bot_messages.first.locator(".bubble")).to_have_text("echo: menu")
    buttons = bot_messages.first.get_by_test_id("quick-reply")
    await expect(buttons).to_have_text(["Yes", "No"])

    await buttons.first.click()  # sends the payload, shows the title
    await expect(bot_messages.nth(1).locator(".bubble")).to_have_text("echo: /affirm")
    await expect(page.get_by_test_id("user-message")).to_have_text(["menu", "Yes"])
    assert [m.text for m in served.hub.sent] == ["menu", "/affirm"]
    assert {m.conversation_id for m in served.hub.sent} == {"web-1"}
    await expect(bot_messages).to_have_count(2)  # replies come by HTTP and socket: shown once

    first = bot_messages.first
    await first.get_by_test_id("thumb-down").click()
    await first.get_by_test_id("feedback-comment").fill("not what I meant")
    await first.get_by_test_id("feedback-submit").click()
    await expect(first.get_by_test_id("feedback-thanks")).to_be_visible()
    feedback = served.hub.feedbacks[0]
    assert (feedback.message_id, feedback.rating, feedback.comment) == (
        f"r-{served.hub.sent[0].message_id}", -1, "not what I meant")
    await bot_messages.nth(1).get_by_test_id("thumb-up").click()
    await bot_messages.nth(1).get_by_test_id("feedback-submit").click()
    await expect(bot_messages.nth(1).get_by_test_id("feedback-thanks")).to_be_visible()
    assert (served.hub.feedbacks[1].rating, served.hub.feedbacks[1].comment) == (1, "")

    served.hub.push("alpha", "web-1", "Your transfer is done.")
    await expect(bot_messages.nth(2).locator(".bubble")).to_have_text("Your transfer is done.")
    assert errors == []


async def test_transcript_is_shown_when_a_conversation_is_resumed(
        served: Served, browser: BrowserContext) -> None:
    issued = await served.app[STATE].auth.issue("t1", ["alpha"], Role.CLIENT)
    page, _ = await open_chat(browser, served, issued.secret, "web-2")
    await send(page, "hello")
    await expect(page.get_by_test_id("bot-message")).to_have_count(1)
    again, errors = await open_chat(browser, served, issued.secret, "web-2")
    await expect(again.get_by_test_id("bot-message").locator(".bubble")).to_have_text(
        ["echo: hello"])
    await expect(again.get_by_test_id("user-message")).to_have_text(["hello"])
    assert errors == []


async def test_the_page_chats_with_a_visitor_token_and_renews_it(
        served: Served, browser: BrowserContext) -> None:
    issued = await served.app[STATE].auth.issue("t1", ["alpha"], Role.CLIENT)
    page, errors = await open_chat(browser, served, issued.secret, "web-4")
    sent_with: list[tuple[str, str]] = []

    def record(request: Request) -> None:  # at once, in the order the page sends them
        if "/v1/" in request.url:
            credential = request.headers.get("authorization", "")
            sent_with.append((request.url.rsplit("/", 1)[-1], credential[7:11]))

    page.on("request", record)
    await expect(page.get_by_test_id("connection")).to_have_text("live")
    await send(page, "hello")
    await expect(page.get_by_test_id("bot-message")).to_have_count(1)
    # the token expires: the page gets a new one with its key and goes on
    tokens = served.app[STATE].auth.tokens
    now = tokens.clock()
    tokens.clock = lambda: now + 601
    await send(page, "still there?")
    await expect(page.get_by_test_id("bot-message")).to_have_count(2)
    assert [m.text for m in served.hub.sent] == ["hello", "still there?"]
    # the key only ever asks for tokens; everything else goes with the visitor token
    assert {credential for url, credential in sent_with if url != "tokens"} == {"bfv_"}
    assert {credential for url, credential in sent_with if url == "tokens"} == {"bfk_"}
    # the expired token's message, a new token, the message again (the socket's reconnect
    # asks for a token of its own too, before or after)
    sends = [i for i, (url, _) in enumerate(sent_with) if url == "messages"]
    assert len(sends) >= 3 and sent_with[sends[-1]] == ("messages", "bfv_")
    assert ("tokens", "bfk_") in sent_with[sends[-2] + 1:sends[-1]]
    assert all("401" in error for error in errors)  # the browser logs the expired token's 401


async def test_a_wrong_key_is_reported_on_the_page(served: Served,
                                                   browser: BrowserContext) -> None:
    page, _ = await open_chat(browser, served, "bfk_not_a_key", "web-3")
    await expect(page.get_by_test_id("status")).to_contain_text("401")
    await expect(page.get_by_test_id("text")).to_be_disabled()
    assert served.hub.sent == []


async def test_the_enter_that_ends_an_input_method_composition_does_not_send(
        served: Served, browser: BrowserContext) -> None:
    issued = await served.app[STATE].auth.issue("t1", ["alpha"], Role.CLIENT)
    page, errors = await open_chat(browser, served, issued.secret, "web-5")
    field = page.get_by_test_id("text")
    await expect(field).to_be_focused()
    assert await held_back_enters(field) == {
        "plain": False, "keyCode229": True, "isComposing": True, "duringComposition": True,
        "rightAfterIt": True}

    await compose(page, "nihao")  # pinyin, then the Enter that picks the characters
    await expect(field).to_have_value("nihao")  # not sent: the form would have emptied it
    await commit(page, "你好")
    await expect(field).to_have_value("你好")
    await page.wait_for_timeout(3 * COMPOSITION_GUARD_MS)
    await field.press("Enter")  # a plain Enter sends
    await expect(page.get_by_test_id("bot-message").locator(".bubble")).to_have_text(
        ["echo: 你好"])
    await expect(page.get_by_test_id("user-message")).to_have_text(["你好"])
    await expect(field).to_have_value("")
    assert [m.text for m in served.hub.sent] == ["你好"]
    assert errors == []
