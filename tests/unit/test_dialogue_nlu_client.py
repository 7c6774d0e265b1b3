"""The dialogue's NLU client: Parse calls of concurrent turns coalesced into ParseBatch, each
text with its own result, conversation id, deadline and failure (a real grpc.aio server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.dialogue.nlu_client import NluClient, NluUnavailable
from tests.support.fake_nlu import FakeNlu, start_fake_nlu

INTENTS = {"hello": ("greet", 0.9), "my balance": ("check_balance", 0.8),
           "send 5 to bob": ("transfer_money", 0.7), "bye": ("goodbye", 0.95)}


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeNlu, str]]:
    nlu = FakeNlu(intents=dict(INTENTS))
    server, address = await start_fake_nlu(nlu)
    yield nlu, address
    await server.stop(None)


async def test_an_idle_client_sends_a_plain_parse_at_once(fake: tuple[FakeNlu, str]) -> None:
    nlu, address = fake
    calls: list[int] = []
    client = NluClient(address, timeout_s=2.0, on_call=calls.append)
    try:
        result = await client.parse("bank", "hello", "corr-1", "conv-1")
    finally:
        await client.close()
    assert (result.intent, result.confidence) == ("greet", pytest.approx(0.9))
    assert nlu.parses == [("Parse", ["hello"], ["conv-1"])]
    assert calls == [1]


async def test_texts_of_concurrent_turns_go_as_one_batch_with_their_conversations(
        fake: tuple[FakeNlu, str]) -> None:
    nlu, address = fake
    nlu.parse_delay_s["hello"] = 0.2  # the first call is still out while the others arrive
    calls: list[int] = []
    client = NluClient(address, timeout_s=5.0, max_in_flight=1, stall_s=5.0,
                       on_call=calls.append)
    texts = ["hello", "my balance", "send 5 to bob", "bye"]
    try:
        results = await asyncio.gather(*(client.parse("bank", text, f"corr-{i}", f"conv-{i}")
                                         for i, text in enumerate(texts)))
    finally:
        await client.close()
    assert [r.intent for r in results] == ["greet", "check_balance", "transfer_money", "goodbye"]
    assert nlu.parses == [("Parse", ["hello"], ["conv-0"]),
                          ("ParseBatch", texts[1:], ["conv-1", "conv-2", "conv-3"])]
    assert calls == [1, 3]


async def test_batches_are_per_bot_and_no_bigger_than_max_batch(
        fake: tuple[FakeNlu, str]) -> None:
    nlu, address = fake
    nlu.parse_delay_s["hello"] = 0.2
    client = NluClient(address, timeout_s=5.0, max_in_flight=1, max_batch=2, stall_s=5.0)
    asked = [("a", "hello"), ("a", "my balance"), ("b", "bye"), ("a", "send 5 to bob"),
             ("a", "bye"), ("b", "my balance")]
    try:
        results = await asyncio.gather(*(client.parse(bot, text, "", f"{bot}-{i}")
                                         for i, (bot, text) in enumerate(asked)))
    finally:
        await client.close()
    assert [r.intent for r in results] == [INTENTS[text][0] for _, text in asked]
    assert nlu.parses == [("Parse", ["hello"], ["a-0"]),
                          ("ParseBatch", ["my balance", "send 5 to bob"], ["a-1", "a-3"]),
                          ("ParseBatch", ["bye", "my balance"], ["b-2", "b-5"]),
                          ("Parse", ["bye"], ["a-4"])]


async def test_a_rejected_batch_is_asked_again_text_by_text(fake: tuple[FakeNlu, str]) -> None:
    nlu, address = fake
    nlu.parse_delay_s["hello"] = 0.2
    nlu.rejected.add("x" * 50)
    client = NluClient(address, timeout_s=5.0, max_in_flight=1, stall_s=5.0)
    try:
        results = await asyncio.gather(
            client.parse("bank", "hello", ""), client.parse("bank", "my balance", ""),
            client.parse("bank", "x" * 50, ""), client.parse("bank", "bye", ""),
            return_exceptions=True)
    finally:
        await client.close()
    assert [getattr(r, "intent", None) for r in results] == ["greet", "check_balance", None,
                                                             "goodbye"]
    assert isinstance(results[2], NluUnavailable)
    assert "INVALID_ARGUMENT" in str(results[2])
    assert [method for method, _, _ in nlu.parses] == ["Parse", "ParseBatch", "Parse", "Parse",
                                                       "Parse"]


async def test_a_stalled_call_does_not_hold_back_the_next_turns(
        fake: tuple[FakeNlu, str]) -> None:
    nlu, address = fake
    nlu.parse_delay_s["hello"] = 3.0  # a stuck replica
    client = NluClient(address, timeout_s=10.0, max_in_flight=1, stall_s=0.05)
    try:
        stuck = asyncio.ensure_future(client.parse("bank", "hello", ""))
        await asyncio.sleep(0.01)
        later = asyncio.ensure_future(client.parse("bank", "bye", ""))
        done, _ = await asyncio.wait({stuck, later}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {later}
        assert later.result().intent == "goodbye"
        stuck.cancel()
    finally:
        await client.close()


async def test_texts_queued_past_their_deadline_fail_without_a_call(
        fake: tuple[FakeNlu, str]) -> None:
    nlu, address = fake
    nlu.parse_delay_s["hello"] = 1.0
    client = NluClient(address, timeout_s=0.3, max_in_flight=1, stall_s=5.0)
    try:
        results = await asyncio.gather(client.parse("bank", "hello", ""),
                                       client.parse("bank", "bye", ""), return_exceptions=True)
    finally:
        await client.close()
    assert all(isinstance(r, NluUnavailable) for r in results)
    assert "DEADLINE_EXCEEDED" in str(results[0]) and "DEADLINE_EXCEEDED" in str(results[1])
    assert nlu.parses == [("Parse", ["hello"], [""])]  # "bye" never went: its time was up


async def test_a_caller_that_gives_up_does_not_disturb_the_others(
        fake: tuple[FakeNlu, str]) -> None:
    nlu, address = fake
    nlu.parse_delay_s["hello"] = 0.2
    client = NluClient(address, timeout_s=5.0, max_in_flight=1, stall_s=5.0)
    try:
        first = asyncio.ensure_future(client.parse("bank", "hello", ""))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(client.parse("bank", "my balance", ""))
        kept = asyncio.ensure_future(client.parse("bank", "bye", ""))
        await asyncio.sleep(0.01)
        gone.cancel()
        assert (await first).intent == "greet"
        assert (await kept).intent == "goodbye"
    finally:
        await client.close()
    assert nlu.parses[1] == ("Parse", ["bye"], [""])  # the abandoned text was not sent


async def test_nlu_down_fails_every_waiting_text() -> None:
    client = NluClient("127.0.0.1:1", timeout_s=0.5, max_in_flight=1, stall_s=5.0)
    try:
        results = await asyncio.gather(*(client.parse("bank", t, "") for t in INTENTS),
                                       return_exceptions=True)
    finally:
        await client.close()
    assert all(isinstance(r, NluUnavailable) for r in results)
