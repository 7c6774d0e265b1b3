"""Knowledge-base answers end to end: gateway (HTTP, gRPC) → JetStream → dialogue worker →
NLU Search (a scripted NluService gRPC server) → the reply with its citation, in the HTTP
reply, the transcripts (HTTP and gRPC) and the analytics counters; a weak hit or a failing
Search is the normal fallback, and the message is still answered. A conversation pinned to a
bot version searches that version's knowledge index (docs/versions.md). And the web chat
page's "Source:" line (headless Chromium)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from playwright.async_api import BrowserContext, expect

from botfactory.local.nats_server import NatsServer
from services.common.botversions import BotVersion, VersionStore
from services.common.definitions import read_folder
from services.common.nats import connect
from services.common.pb.botfactory.v1 import (
    conversation_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    nlu_pb2,
)
from services.gateway.http.state import STATE
from services.gateway.ports import Role
from tests.support.fake_nlu import FakeNlu, start_fake_nlu
from tests.support.polling import eventually
from tests.support.stack import BOOTSTRAP, ROOT, Stack, running_stack
from tests.support.webchat import Served, open_chat

QUESTION = "how much does it cost to pay by card abroad?"
SNIPPET = ("Card payments abroad cost 1.5% of the amount. Cash withdrawals abroad cost 3 EUR. "
           "Partner banks charge nothing.")
HIT = nlu_pb2.SearchHit(kind="passage", id="docs/cards/fees.md#1", score=0.82,
                        document="docs/cards/fees.md", heading_path=["Card fees", "Abroad"],
                        position=1, text="Abroad. " + SNIPPET, snippet=SNIPPET, title="Card fees")
WEAK = nlu_pb2.SearchHit(kind="passage", id="docs/loans.md#0", score=0.2,
                         document="docs/loans.md", snippet="Loans.", title="Loans")
CITATION = {"title": "Card fees", "document": "docs/cards/fees.md",
            "heading_path": ["Card fees", "Abroad"], "url": ""}


@pytest.fixture
async def fake_nlu() -> AsyncIterator[tuple[FakeNlu, str]]:
    fake = FakeNlu(hits={QUESTION: [HIT], "what about crypto?": [WEAK]})
    server, address = await start_fake_nlu(fake)
    yield fake, address
    await server.stop(None)


@pytest.fixture
async def stack(nats_server: NatsServer, tiny_banking_model: Path,
                fake_nlu: tuple[FakeNlu, str]) -> AsyncIterator[Stack]:
    async with running_stack(nats_server.url, tiny_banking_model, dialogues=0) as running:
        await running.add_dialogue(nlu_address=fake_nlu[1], nlu_timeout_s=1.0)
        yield running


def counter(stack: Stack, name: str, **labels: str) -> float:
    value = stack.dialogues[0].metrics.registry.get_sample_value(name, {"bot": "banking",
                                                                        **labels})
    return value or 0.0


async def rate(stack: Stack, conversation: str, message_id: str) -> None:
    assert stack.session is not None
    url = (f"{stack.base_url}/v1/bots/banking/conversations/{conversation}/messages/"
           f"{message_id}/feedback")
    headers = {"Authorization": f"Bearer {stack.client_key}"}
    async with stack.session.post(url, json={"rating": 1}, headers=headers) as resp:
        assert resp.status == 202, await resp.text()


async def grpc_transcript(stack: Stack, conversation: str) -> gateway_pb2.GetTranscriptResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.gateway.grpc_port}") as channel:
        stub = gateway_pb2_grpc.ChatServiceStub(channel)
        request = gateway_pb2.GetTranscriptRequest(bot_id="banking", conversation_id=conversation)
        response: gateway_pb2.GetTranscriptResponse = await stub.GetTranscript(
            request, metadata=(("authorization", f"Bearer {stack.agent_key}"),), timeout=10)
        return response


async def test_answer_with_citation_fallbacks_and_feedback(
        stack: Stack, fake_nlu: tuple[FakeNlu, str]) -> None:
    fake, _ = fake_nlu
    status, weak = await stack.post("kb1", "what about crypto?")
    assert status == 200 and weak["replies"][0]["citations"] == []
    assert "rephrase" in weak["replies"][0]["text"] or "can't help" in weak["replies"][0]["text"]

    status, body = await stack.post("kb1", QUESTION)
    assert status == 200 and body["complete"], body
    [reply] = body["replies"]
    assert reply["text"] == ("Card payments abroad cost 1.5% of the amount. Cash withdrawals "
                             "abroad cost 3 EUR.")
    assert reply["citations"] == [CITATION]
    assert [(s.query, s.k, s.bot_id) for s in fake.searches][-1] == (QUESTION, 5, "banking")

    fake.search_error = grpc.StatusCode.UNAVAILABLE  # a KB answer ended the fallback run:
    status, failed = await stack.post("kb1", "is my money safe?")  # a fallback, no handoff
    assert status == 200 and failed["replies"][0]["citations"] == []
    assert "agent" not in failed["replies"][0]["text"]

    entries = await stack.transcript("kb1")
    answers = [e for e in entries if e.get("citations")]
    assert [(e["text"], e["citations"]) for e in answers] == [(reply["text"], [CITATION])]
    grpc_entries = (await grpc_transcript(stack, "kb1")).entries
    cited = [e for e in grpc_entries if e.citations]
    assert len(cited) == 1 and cited[0].citations[0].document == "docs/cards/fees.md"
    assert list(cited[0].citations[0].heading_path) == ["Card fees", "Abroad"]

    await rate(stack, "kb1", reply["message_id"])
    for _ in range(100):
        if counter(stack, "botfactory_feedback_events_total", rating="up") >= 1:
            break
        await asyncio.sleep(0.05)
    assert counter(stack, "botfactory_knowledge_answers_total") == 1
    assert counter(stack, "botfactory_feedback_events_total", rating="up") == 1
    assert counter(stack, "botfactory_dialogue_knowledge_searches_total", outcome="failed") == 1


def _fee_hit(snippet: str) -> nlu_pb2.SearchHit:
    return nlu_pb2.SearchHit(kind="passage", id="docs/cards/fees.md#1", score=0.82,
                             document="docs/cards/fees.md", snippet=snippet, text=snippet,
                             title="Card fees")


# The same question in three knowledge indexes: the active one and those of two bot versions.
ANSWERS = {"": "Card payments abroad cost 1.5% of the amount.",
           "kb0000000000a": "Card payments abroad cost 2% of the amount.",
           "kb0000000000b": "Card payments abroad are free of charge."}


async def _staging_key(stack: Stack) -> str:
    assert stack.session is not None
    body = {"tenant": "acme", "bots": ["banking"], "role": "client", "environment": "staging"}
    async with stack.session.post(f"{stack.base_url}/v1/admin/keys", json=body,
                                  headers={"Authorization": f"Bearer {BOOTSTRAP}"}) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["secret"])


async def test_a_conversation_searches_the_knowledge_index_of_its_bot_version(
        stack: Stack, nats_server: NatsServer, fake_nlu: tuple[FakeNlu, str]) -> None:
    fake, _ = fake_nlu
    fake.indexes = {kb: {QUESTION: [_fee_hit(text)]} for kb, text in ANSWERS.items()}

    async def answer(conversation: str, key: str | None = None) -> str:
        status, body = await stack.post(conversation, QUESTION, key=key)
        assert status == 200, body
        return str(body["replies"][0]["text"])

    # no version serves the bot yet: the active index answers
    assert await answer("plain") == ANSWERS[""]
    assert fake.searches[-1].kb_version == ""
    bus = await connect(nats_server.url, name="test")
    try:
        files, store = read_folder(ROOT / "bots" / "banking"), VersionStore(bus)
        a, b, bare = (BotVersion.build("banking", files, "m1", kb, actor="t")
                      for kb in ("kb0000000000a", "kb0000000000b", ""))
        for version in (a, b, bare):
            await store.create(version)
        await store.promote("banking", "prod", a.id, actor="t")
        await store.promote("banking", "staging", b.id, actor="t")
        staging = await _staging_key(stack)
        counter = iter(range(1000))
        await eventually(lambda: _answers(answer, f"p{next(counter)}", ANSWERS["kb0000000000a"]),
                         "prod serves version A")
        await eventually(lambda: _answers(answer, f"s{next(counter)}", ANSWERS["kb0000000000b"],
                                          staging), "staging serves version B")
        # the same question, answered by each conversation's version's index
        assert await answer("on-a") == ANSWERS["kb0000000000a"]
        assert fake.searches[-1].kb_version == a.kb
        assert await answer("on-b", staging) == ANSWERS["kb0000000000b"]
        assert fake.searches[-1].kb_version == b.kb
        # promote B into prod: the conversation started on A keeps A's index, new ones take B
        await store.promote("banking", "prod", b.id, actor="t")
        await eventually(lambda: _answers(answer, f"q{next(counter)}", ANSWERS["kb0000000000b"]),
                         "prod serves version B")
        assert await answer("on-a") == ANSWERS["kb0000000000a"]
        # a version without a knowledge index: the active index answers
        await store.promote("banking", "prod", bare.id, actor="t")
        await eventually(lambda: _answers(answer, f"r{next(counter)}", ANSWERS[""]),
                         "prod serves the version without an index")
        assert fake.searches[-1].kb_version == ""
    finally:
        await bus.drain()


async def _answers(answer: Any, conversation: str, expected: str,
                   key: str | None = None) -> bool | None:
    return await answer(conversation, key) == expected or None


async def test_web_chat_shows_the_source_of_an_answer(served: Served,
                                                      browser: BrowserContext) -> None:
    issued = await served.app[STATE].auth.issue("t1", ["alpha"], Role.CLIENT)
    page, errors = await open_chat(browser, served, issued.secret, "web-kb")
    await expect(page.get_by_test_id("connection")).to_have_text("live")
    answer = conversation_pb2.BotMessage(
        bot_id="alpha", conversation_id="web-kb", message_id="kb-1", text="It costs 1.5%.",
        role="bot", citations=[
            conversation_pb2.Citation(title="Card fees", document="docs/cards/fees.md",
                                      url="https://bank.example/fees"),
            conversation_pb2.Citation(title="Old fees", document="docs/old.md",
                                      url="javascript:alert(1)")])
    for queue in served.hub.subscribers[("alpha", "web-kb")]:
        queue.put_nowait(answer)
    sources = page.get_by_test_id("bot-message").first.get_by_test_id("citation")
    await expect(sources).to_have_text(["Source: Card fees", "Source: Old fees"])
    link = sources.first.locator("a")
    await expect(link).to_have_attribute("href", "https://bank.example/fees")
    await expect(sources.nth(1).locator("a")).to_have_count(0)  # not an http(s) link
    assert errors == []
