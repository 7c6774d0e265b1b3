"""The WhatsApp channel on its own: Meta's verification (the GET handshake, the webhook
signature), the webhook shapes of
https://developers.facebook.com/docs/whatsapp/cloud-api/webhooks/payload-examples, the
messages it builds, and how the Graph API's errors become retries or refusals (against a local
fake of the API, tests/support/fake_platform.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from services.common.errors import InvalidArgument
from services.gateway.channels import all_channels
from services.gateway.channels.base import (
    Button,
    ChannelRefused,
    Outgoing,
    SendRejected,
    SendRetry,
    SettingsInvalid,
)
from services.gateway.channels.whatsapp import WhatsApp, outgoing_bodies, signature
from tests.support.fake_platform import FakePlatform

SETTINGS: dict[str, Any] = {"access_token": "EAAG-token", "app_secret": "app-secret-123",
                            "verify_token": "verify-me-42", "phone_number_id": "106540352242922"}
WA_ID = "16315551234"
WAMID = "wamid.HBgLMTYzMTU1NTEyMzQVAgASGBQzQTRBNjVGNUU5QzA0RkRCRkY3MwA="
CHANNEL = WhatsApp()

# Verifying calls nobody: the session the route passes is not used.
NO_SESSION = cast("aiohttp.ClientSession", None)


def webhook(*messages: dict[str, Any], statuses: tuple[dict[str, Any], ...] = (),
            number: str = SETTINGS["phone_number_id"]) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": number},
        "contacts": [{"profile": {"name": "Kerry Fisher"}, "wa_id": WA_ID}]}
    if messages:
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    return {"object": "whatsapp_business_account", "entry": [
        {"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}]}


def text_message(body: str, wamid: str = WAMID) -> dict[str, Any]:
    return {"from": WA_ID, "id": wamid, "timestamp": "1714510003", "type": "text",
            "text": {"body": body}}


def interactive(kind: str, reply_id: str, title: str) -> dict[str, Any]:
    return {"context": {"from": "15550783881", "id": "wamid.context"}, "from": WA_ID,
            "id": WAMID, "timestamp": "1714510003", "type": "interactive",
            "interactive": {"type": kind, kind: {"id": reply_id, "title": title}}}


async def parse(payload: dict[str, Any]) -> list[tuple[str, str, str, dict[str, str]]]:
    body = json.dumps(payload).encode()
    async with aiohttp.ClientSession() as session:
        parsed = await CHANNEL.parse(make_mocked_request("POST", "/"), body, SETTINGS, session)
    assert parsed.response is None
    return [(m.native_id, m.conversation, m.text, m.address) for m in parsed.messages]


def signed(body: bytes, header: str | None) -> web.Request:
    headers = {} if header is None else {"X-Hub-Signature-256": header}
    return make_mocked_request("POST", "/v1/channels/whatsapp/banking", headers=headers)


def outgoing(text: str, *buttons: tuple[str, str]) -> Outgoing:
    return Outgoing(text, tuple(Button(title, payload) for title, payload in buttons), "m-1")


# --- registration and settings -----------------------------------------------------------------


def test_the_channel_is_registered_with_its_secrets() -> None:
    channel = all_channels()["whatsapp"]
    assert isinstance(channel, WhatsApp)
    assert set(channel.secrets) == {"access_token", "app_secret", "verify_token"}
    assert "phone_number_id" in channel.required and "phone_number_id" not in channel.secrets


@pytest.mark.parametrize("number", ["+1 555 0100", "1065-4035", "abc"])
def test_a_phone_number_id_is_digits(number: str) -> None:
    CHANNEL.check_settings(SETTINGS)
    with pytest.raises(SettingsInvalid, match="phone_number_id"):
        CHANNEL.check_settings({**SETTINGS, "phone_number_id": number})


# --- verification ------------------------------------------------------------------------------


async def test_a_signed_webhook_passes() -> None:
    body = json.dumps(webhook(text_message("hi"))).encode()
    header = "sha256=" + signature(SETTINGS["app_secret"], body)
    await CHANNEL.verify(signed(body, header), body, SETTINGS, NO_SESSION)


@pytest.mark.parametrize("header", [
    None, "", "sha256=", "sha256=" + "0" * 64,
    "sha256=" + signature("another-secret", b'{"entry": []}'),
    signature(SETTINGS["app_secret"], b'{"entry": []}'),  # without the sha256= prefix
])
async def test_a_missing_or_wrong_signature_is_refused(header: str | None) -> None:
    body = b'{"entry": []}'
    with pytest.raises(ChannelRefused) as refused:
        await CHANNEL.verify(signed(body, header), body, SETTINGS, NO_SESSION)
    assert refused.value.reason == "signature"


async def test_a_signature_covers_the_raw_body() -> None:
    body = b'{"entry": []}'
    header = "sha256=" + signature(SETTINGS["app_secret"], body)
    tampered = b'{"entry": [] }'
    with pytest.raises(ChannelRefused):
        await CHANNEL.verify(signed(tampered, header), tampered, SETTINGS, NO_SESSION)


async def test_the_handshake_answers_the_challenge() -> None:
    request = make_mocked_request(
        "GET", "/?hub.mode=subscribe&hub.verify_token=verify-me-42&hub.challenge=1158201444")
    response = await CHANNEL.handshake(request, SETTINGS)
    assert isinstance(response, web.Response)
    assert response.status == 200 and response.text == "1158201444"
    assert response.content_type == "text/plain"


@pytest.mark.parametrize("query", [
    "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1",
    "hub.mode=subscribe&hub.challenge=1",
    "hub.mode=unsubscribe&hub.verify_token=verify-me-42&hub.challenge=1",
])
async def test_a_handshake_without_the_verify_token_is_refused(query: str) -> None:
    with pytest.raises(ChannelRefused) as refused:
        await CHANNEL.handshake(make_mocked_request("GET", f"/?{query}"), SETTINGS)
    assert refused.value.reason == "verify_token" and refused.value.http_status == 401


# --- parsing -----------------------------------------------------------------------------------


async def test_a_text_message_is_taken() -> None:
    assert await parse(webhook(text_message("What is my balance?"))) == [
        (WAMID, WA_ID, "What is my balance?", {"to": WA_ID})]


async def test_a_reply_button_press_is_its_id() -> None:
    assert await parse(webhook(interactive("button_reply", "/transfer_money",
                                           "Transfer money"))) == [
        (WAMID, WA_ID, "/transfer_money", {"to": WA_ID})]


async def test_a_list_choice_is_its_row_id() -> None:
    assert await parse(webhook(interactive("list_reply", "/block_card", "Block a card"))) == [
        (WAMID, WA_ID, "/block_card", {"to": WA_ID})]


async def test_a_template_quick_reply_is_its_payload() -> None:
    message = {"from": WA_ID, "id": WAMID, "type": "button",
               "button": {"text": "Yes", "payload": "/affirm"}}
    assert [m[2] for m in await parse(webhook(message))] == ["/affirm"]


async def test_statuses_and_media_are_not_messages() -> None:
    status = {"id": WAMID, "status": "delivered", "timestamp": "1714510003",
              "recipient_id": WA_ID, "conversation": {"id": "c1", "origin": {"type": "service"}}}
    image = {"from": WA_ID, "id": "wamid.img", "type": "image",
             "image": {"mime_type": "image/jpeg", "sha256": "x", "id": "media-1"}}
    assert await parse(webhook(statuses=(status,))) == []
    assert await parse(webhook(image)) == []


async def test_several_messages_are_taken_in_order() -> None:
    payload = webhook(text_message("one", "wamid.1"), text_message("two", "wamid.2"))
    assert [(m[0], m[2]) for m in await parse(payload)] == [("wamid.1", "one"),
                                                            ("wamid.2", "two")]


async def test_a_message_to_another_number_of_the_app_is_not_the_bots() -> None:
    assert await parse(webhook(text_message("hi"), number="999999")) == []


async def test_a_body_that_is_not_json_is_a_bad_request() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(InvalidArgument):
            await CHANNEL.parse(make_mocked_request("POST", "/"), b"not json", SETTINGS, session)


# --- building messages -------------------------------------------------------------------------


def test_a_text_is_a_text_message() -> None:
    assert outgoing_bodies(WA_ID, outgoing("Hello")) == [{
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": WA_ID,
        "type": "text", "text": {"body": "Hello"}}]


def test_up_to_three_buttons_are_reply_buttons_under_the_text() -> None:
    [body] = outgoing_bodies(WA_ID, outgoing("Pick one", ("Check my balance", "/check_balance"),
                                             ("Transfer money", "/transfer_money"),
                                             ("Block a card", "/block_card")))
    assert body["type"] == "interactive" and body["to"] == WA_ID
    interactive = body["interactive"]
    assert interactive["type"] == "button" and interactive["body"] == {"text": "Pick one"}
    assert interactive["action"]["buttons"] == [
        {"type": "reply", "reply": {"id": "/check_balance", "title": "Check my balance"}},
        {"type": "reply", "reply": {"id": "/transfer_money", "title": "Transfer money"}},
        {"type": "reply", "reply": {"id": "/block_card", "title": "Block a card"}}]


def test_four_to_ten_buttons_are_a_list() -> None:
    buttons = [(f"Option {i}", f"/option_{i}") for i in range(4)]
    [body] = outgoing_bodies(WA_ID, outgoing("Pick one", *buttons))
    interactive = body["interactive"]
    assert interactive["type"] == "list" and interactive["action"]["button"] == "Choose"
    [section] = interactive["action"]["sections"]
    assert section["rows"] == [{"id": f"/option_{i}", "title": f"Option {i}"} for i in range(4)]


def test_more_than_ten_buttons_keep_the_first_ten() -> None:
    buttons = [(f"Option {i}", f"/option_{i}") for i in range(13)]
    [body] = outgoing_bodies(WA_ID, outgoing("Pick one", *buttons))
    rows = body["interactive"]["action"]["sections"][0]["rows"]
    assert [row["id"] for row in rows] == [f"/option_{i}" for i in range(10)]


def test_titles_are_cut_to_the_platform_limits() -> None:
    long_title = "Transfer money to a saved recipient"
    [buttons] = outgoing_bodies(WA_ID, outgoing("Pick", (long_title, "/transfer_money")))
    title = buttons["interactive"]["action"]["buttons"][0]["reply"]["title"]
    assert len(title) == 20 and title.endswith("…") and long_title.startswith(title[:-1].strip())
    [listed] = outgoing_bodies(WA_ID, outgoing("Pick", *[(long_title, f"/p{i}")
                                                         for i in range(4)]))
    row = listed["interactive"]["action"]["sections"][0]["rows"][0]
    assert len(row["title"]) <= 24 and row["title"].endswith("…")


def test_a_payload_too_long_for_an_id_is_sent_as_the_title() -> None:
    payload = "/inform" + json.dumps({"recipient": "x" * 300})
    [body] = outgoing_bodies(WA_ID, outgoing("Pick", ("Send to mom", payload)))
    assert body["interactive"]["action"]["buttons"][0]["reply"]["id"] == "Send to mom"


def test_a_long_text_is_split_and_the_buttons_go_on_the_last_piece() -> None:
    text = ("word " * 1000).strip() + "\n\n" + "Shall I go on?"  # about 5000 characters
    bodies = outgoing_bodies(WA_ID, outgoing(text, ("Yes", "/affirm")))
    assert [b["type"] for b in bodies] == ["text", "interactive"]
    assert len(bodies[0]["text"]["body"]) <= 4096
    last = bodies[1]["interactive"]["body"]["text"]
    assert last.endswith("Shall I go on?") and len(last) <= 1024
    assert (bodies[0]["text"]["body"] + " " + last).split() == text.split()


def test_a_text_too_long_for_a_buttons_body_goes_first_then_short_buttons() -> None:
    text = "x" * 2000  # one text piece, over the 1024 characters of a buttons body
    bodies = outgoing_bodies(WA_ID, outgoing(text, ("Yes", "/affirm"), ("No", "/deny")))
    assert [b["type"] for b in bodies] == ["text", "interactive"]
    assert bodies[0]["text"]["body"] == text
    assert 0 < len(bodies[1]["interactive"]["body"]["text"]) <= 20


def test_a_long_text_without_buttons_is_several_text_messages() -> None:
    text = "\n".join(f"line {i:05d} " + "y" * 90 for i in range(100))  # about 10 000 chars
    bodies = outgoing_bodies(WA_ID, outgoing(text))
    assert len(bodies) == 3 and all(len(b["text"]["body"]) <= 4096 for b in bodies)
    assert " ".join(b["text"]["body"] for b in bodies).split() == text.split()


# --- sending -----------------------------------------------------------------------------------


@pytest.fixture
async def graph() -> AsyncIterator[tuple[FakePlatform, dict[str, Any]]]:
    fake = FakePlatform(answer=lambda path, body: {
        "messaging_product": "whatsapp", "contacts": [{"input": WA_ID, "wa_id": WA_ID}],
        "messages": [{"id": "wamid.sent"}]})
    base = await fake.start()
    yield fake, {**SETTINGS, "api_base": base}
    await fake.stop()


async def send(settings: dict[str, Any], message: Outgoing) -> None:
    async with aiohttp.ClientSession() as session:
        await CHANNEL.send(session, settings, {"to": WA_ID}, message)


async def test_a_send_posts_to_the_numbers_messages_with_the_token(
        graph: tuple[FakePlatform, dict[str, Any]]) -> None:
    fake, settings = graph
    await send(settings, outgoing("Hello", ("Yes", "/affirm")))
    [call] = fake.calls
    assert call.path == f"/{SETTINGS['phone_number_id']}/messages"
    assert call.headers["Authorization"] == f"Bearer {SETTINGS['access_token']}"
    assert call.body["interactive"]["action"]["buttons"][0]["reply"]["id"] == "/affirm"


def graph_error(code: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "OAuthException", "code": code,
                      "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam"}}


async def test_a_429_is_retried_after_its_retry_after(
        graph: tuple[FakePlatform, dict[str, Any]]) -> None:
    fake, settings = graph
    fake.fail_next(429, graph_error(130429, "(#130429) Rate limit hit"), {"Retry-After": "7"})
    with pytest.raises(SendRetry) as retry:
        await send(settings, outgoing("Hello"))
    assert retry.value.retry_after_s == 7.0


@pytest.mark.parametrize("code", [130429, 131048, 131056])
async def test_a_throttling_code_on_a_400_is_retried(
        graph: tuple[FakePlatform, dict[str, Any]], code: int) -> None:
    fake, settings = graph
    fake.fail_next(400, graph_error(code, "Spam rate limit hit"))
    with pytest.raises(SendRetry) as retry:
        await send(settings, outgoing("Hello"))
    assert retry.value.retry_after_s is None  # the outbox's backoff


async def test_a_5xx_is_retried(graph: tuple[FakePlatform, dict[str, Any]]) -> None:
    fake, settings = graph
    fake.fail_next(503, graph_error(2, "Service temporarily unavailable"))
    with pytest.raises(SendRetry):
        await send(settings, outgoing("Hello"))


async def test_another_4xx_is_refused_with_metas_message(
        graph: tuple[FakePlatform, dict[str, Any]]) -> None:
    fake, settings = graph
    fake.fail_next(400, graph_error(131030, "Recipient phone number not in allowed list"))
    with pytest.raises(SendRejected, match="not in allowed list"):
        await send(settings, outgoing("Hello"))
