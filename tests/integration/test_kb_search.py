"""NluService.Search over real gRPC: indexes published to a real nats-server's model store,
hot-swapped on activation; the index version a request names (a bot version's), loaded beside
the active one; bad requests and bots without a knowledge base."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from botfactory.kb.build import BuildOptions, build_index
from botfactory.local.nats_server import NatsServer
from services.common.botversions import BotVersion, VersionStore
from services.common.nats import connect, provision
from services.common.pb.botfactory.v1 import nlu_pb2, nlu_pb2_grpc
from services.knowledge.store import activate_kb, publish_kb, upload_kb
from services.nlu import knowledge
from services.nlu.app import NluServer
from services.nlu.config import NluConfig
from tests.support.polling import eventually

FIXTURE = Path(__file__).resolve().parents[1] / "unit" / "data" / "knowledge" / "bot"
EXTRA_FAQ = """  - id: overdraft
    questions: [can I go overdrawn on my account?]
    answer: Yes, an arranged overdraft of up to 1,000 EUR costs 9.9% a year.
"""
SAVINGS_FAQ = """  - id: savings-rate
    questions: [what interest does a savings account pay?]
    answer: Our savings account pays 2.1% a year.
"""


@dataclass(frozen=True)
class Indexes:
    v1: Path
    v2: Path
    v3: Path  # v1 and another FAQ entry (not the overdraft one)


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> Indexes:
    """The fixture bot's index and a second version with one more FAQ entry."""
    root = tmp_path_factory.mktemp("kb-int")
    options = BuildOptions(cache_dir=tmp_path_factory.getbasetemp() / "kb-encoder-cache",
                           progress=False)
    bot2 = Path(shutil.copytree(FIXTURE, root / "bot2"))
    faq = bot2 / "knowledge" / "faq.yml"
    faq.write_text(faq.read_text() + EXTRA_FAQ)
    bot3 = Path(shutil.copytree(FIXTURE, root / "bot3"))
    faq3 = bot3 / "knowledge" / "faq.yml"
    faq3.write_text(faq3.read_text() + SAVINGS_FAQ)
    return Indexes(build_index(FIXTURE, root / "v1", options).directory,
                   build_index(bot2, root / "v2", options).directory,
                   build_index(bot3, root / "v3", options).directory)


async def test_search_hot_swaps_published_indexes(indexes: Indexes, nats_server: NatsServer,
                                                  tmp_path: Path) -> None:
    bus = await connect(nats_server.url, name="test")
    await provision(bus)
    v1 = await publish_kb(bus, indexes.v1)
    config = NluConfig(grpc_port=0, metrics_port=0, nats_url=nats_server.url,
                       model_cache_dir=tmp_path / "cache", max_text_chars=300,
                       shutdown_grace_s=2.0)
    server = NluServer(config)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = nlu_pb2_grpc.NluServiceStub(channel)
    try:
        reply = await stub.Search(nlu_pb2.SearchRequest(bot_id="kbtest", query="I lost my card"))
        assert reply.index_version == v1.version and len(reply.hits) == 5
        top = reply.hits[0]
        assert (top.kind, top.id, top.document) == ("faq", "faq:lost-card", "faq.yml")
        assert top.url == "https://bank.example/help/lost-card"
        assert [(b.title, b.payload) for b in top.buttons] == [("Block my card", "/block_card")]
        assert top.score > 0.9 and top.snippet == top.text

        query = nlu_pb2.SearchRequest(bot_id="kbtest", query="can I go overdrawn?", k=1)
        before = (await stub.Search(query)).hits[0]
        assert before.id != "faq:overdraft"
        v2 = await publish_kb(bus, indexes.v2)
        await eventually(lambda: (kb := server.knowledge.get("kbtest")) is not None
                        and kb.version == v2.version)
        after = await stub.Search(query)
        assert after.index_version == v2.version and after.hits[0].id == "faq:overdraft"

        corrupt = Path(shutil.copytree(indexes.v1, tmp_path / "corrupt"))
        (corrupt / "vectors.npy").write_bytes(b"garbage")
        meta = json.loads((corrupt / "metadata.json").read_text())
        meta["version"] = "0badc0ffee00"
        (corrupt / "metadata.json").write_text(json.dumps(meta))
        bad = await upload_kb(bus, corrupt)
        failures = server.metrics.load_failures.labels(source="kb-store")
        await activate_kb(bus, bad)
        await eventually(lambda: failures._value.get() >= 1)
        still = await stub.Search(query)
        assert still.index_version == v2.version and still.hits[0].id == "faq:overdraft"
    finally:
        await channel.close()
        await server.stop()
        await bus.drain()


async def test_search_answers_from_the_index_version_a_request_names(
        indexes: Indexes, nats_server: NatsServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    bus = await connect(nats_server.url, name="test")
    await provision(bus)
    v1 = (await publish_kb(bus, indexes.v1)).version  # active
    v2 = (await upload_kb(bus, indexes.v2)).version  # only a bot version names it
    server = NluServer(NluConfig(grpc_port=0, metrics_port=0, nats_url=nats_server.url,
                                 model_cache_dir=tmp_path / "cache", shutdown_grace_s=2.0))
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = nlu_pb2_grpc.NluServiceStub(channel)

    async def top(kb_version: str = "") -> tuple[str, str]:
        reply = await stub.Search(nlu_pb2.SearchRequest(
            bot_id="kbtest", query="can I go overdrawn?", k=1, kb_version=kb_version))
        return reply.index_version, reply.hits[0].id

    try:
        active = await top()
        assert active[0] == v1 and active[1] != "faq:overdraft"
        assert server.knowledge.version("kbtest", v2) is None
        # an environment serving a version with index v2: the NLU loads it before any request
        version = BotVersion.build("kbtest", {"bot.yml": "name: kbtest\n"}, "m1", v2,
                                   actor="t")
        await VersionStore(bus).create(version)
        await VersionStore(bus).promote("kbtest", "staging", version.id, actor="t")
        await eventually(lambda: server.knowledge.version("kbtest", v2), "v2 loaded ahead")
        assert list(await asyncio.gather(top(v2), top(v2))) == [(v2, "faq:overdraft")] * 2
        assert await top(v1) == active and await top() == active  # the active one is v1
        assert server.knowledge.get("kbtest").version == v1  # type: ignore[union-attr]
        assert await top("0123456789ab") == active  # not in the store: the active answers
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Search(nlu_pb2.SearchRequest(bot_id="kbtest", query="hi",
                                                    kb_version="../x"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        none = await stub.Search(nlu_pb2.SearchRequest(bot_id="nobot", query="hi",
                                                       kb_version=v2))
        assert none.index_version == "" and not none.hits  # no such index: no knowledge base
        # versions beside the active one are bounded per bot: the least recently used goes
        monkeypatch.setattr(knowledge, "PINNED_PER_BOT", 1)
        v3 = (await upload_kb(bus, indexes.v3)).version
        assert (await top(v3))[0] == v3
        assert server.knowledge.version("kbtest", v2) is None
        assert {e.version for e in server.knowledge.loaded()} == {v1, v3}
        assert await top(v2) == (v2, "faq:overdraft")  # loaded again on use
    finally:
        await channel.close()
        await server.stop()
        await bus.drain()


async def test_bad_requests_and_bots_without_a_knowledge_base(indexes: Indexes) -> None:
    config = NluConfig(grpc_port=0, metrics_port=0, knowledge=(str(indexes.v1),),
                       max_text_chars=50)
    config.validate()  # a server of local knowledge indexes only is a valid configuration
    server = NluServer(config)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = nlu_pb2_grpc.NluServiceStub(channel)
    try:
        empty = await stub.Search(nlu_pb2.SearchRequest(bot_id="other-bot", query="hello"))
        assert empty.bot_id == "other-bot" and empty.index_version == "" and not empty.hits
        for request, detail in [
            (nlu_pb2.SearchRequest(bot_id="", query="hi"), "bot_id is required"),
            (nlu_pb2.SearchRequest(bot_id="kbtest", query="  "), "query is empty"),
            (nlu_pb2.SearchRequest(bot_id="kbtest", query="x" * 51), "the limit is 50"),
            (nlu_pb2.SearchRequest(bot_id="kbtest", query="hi", k=51), "k must be 1..50"),
            (nlu_pb2.SearchRequest(bot_id="kbtest", query="hi", k=-1), "k must be 1..50"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.Search(request)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert detail in (error.value.details() or "")
        reply = await stub.Search(nlu_pb2.SearchRequest(bot_id="kbtest", query="XG-400", k=2))
        assert len(reply.hits) == 2 and reply.hits[0].document == "docs/products/xg-400.md"
        assert reply.hits[0].heading_path == ["Card readers", "XG-400"]
        assert server.metrics_server is not None
        url = f"http://127.0.0.1:{server.metrics_server.port}/metrics"
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        assert 'botfactory_nlu_search_requests_total{bot="kbtest",status="OK"} 1.0' in body
        assert ('botfactory_nlu_search_requests_total{bot="_unknown",status="OK"} 1.0'
                in body)
        assert 'status="INVALID_ARGUMENT"' in body
        assert "botfactory_nlu_search_duration_seconds_count 7.0" in body
        assert 'botfactory_nlu_kb_loaded{bot="kbtest"' in body
    finally:
        await channel.close()
        await server.stop()
