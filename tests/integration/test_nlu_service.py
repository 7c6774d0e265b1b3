"""The NLU service over real gRPC, with a real nats-server for the model store."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from botfactory.local.nats_server import NatsServer
from botfactory.local.processes import log_events, service_env, start_service, wait_for_event
from services.common.modelstore import ModelRef, activate, publish, upload
from services.common.nats import connect, provision
from services.common.pb.botfactory.v1 import nlu_pb2, nlu_pb2_grpc
from services.nlu.app import NluServer
from services.nlu.config import NluConfig
from services.nlu.engine import content_version
from tests.support.models import TinyModels
from tests.support.polling import eventually

ROOT = Path(__file__).resolve().parents[2]
Served = tuple[NluServer, nlu_pb2_grpc.NluServiceStub]
BASE = NluConfig(grpc_port=0, metrics_port=0, max_batch_wait_ms=2.0, shutdown_grace_s=2.0)


async def _serve(config: NluConfig) -> tuple[NluServer, grpc.aio.Channel]:
    server = NluServer(config)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    return server, channel


@pytest.fixture
async def local_server(tiny_models: TinyModels, tmp_path: Path) -> AsyncIterator[Served]:
    config = replace(BASE, models=(str(tiny_models.v1),), model_cache_dir=tmp_path / "cache",
                     max_text_chars=200, max_batch_texts=16)
    server, channel = await _serve(config)
    yield server, nlu_pb2_grpc.NluServiceStub(channel)
    await channel.close()
    await server.stop()


async def test_parse_returns_ranking_entities_and_version(local_server: Served,
                                                          tiny_models: TinyModels) -> None:
    _server, stub = local_server
    reply = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text="send 300 dollars to gina"))
    version = json.loads((tiny_models.v1 / "metadata.json").read_text())["version"]
    assert reply.model_version == version and reply.bot_id == "tiny"
    assert reply.intent.name == "transfer_money"
    assert next(r.name for r in reply.ranking) == "transfer_money"
    assert sorted(r.name for r in reply.ranking) == ["check_balance", "greet", "transfer_money"]
    confidences = [r.confidence for r in reply.ranking]
    assert confidences == sorted(confidences, reverse=True)
    assert abs(sum(confidences) - 1.0) < 1e-3
    found = {(e.entity, e.raw) for e in reply.entities}
    assert ("amount", "300") in found and ("recipient", "gina") in found
    for entity in reply.entities:
        assert reply.text[entity.start:entity.end] == entity.raw


async def test_ranking_length_lists_the_top_intents(local_server: Served) -> None:
    _, stub = local_server
    text = "send 300 dollars to gina"
    full = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text=text))
    top2 = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text=text, ranking_length=2))
    assert len(full.ranking) == 3  # the server's default (10) lists all of a small bot's
    assert [r.name for r in top2.ranking] == [r.name for r in full.ranking][:2]
    assert top2.intent == full.intent and top2.intent == top2.ranking[0]
    many = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text=text, ranking_length=50))
    assert [r.name for r in many.ranking] == [r.name for r in full.ranking]
    batch = await stub.ParseBatch(nlu_pb2.ParseBatchRequest(
        bot_id="tiny", texts=["hello", text], ranking_length=1))
    assert [[r.name for r in result.ranking] for result in batch.results] == [
        ["greet"], ["transfer_money"]]


async def test_server_ranking_length_is_the_default(tiny_models: TinyModels,
                                                    tmp_path: Path) -> None:
    server, channel = await _serve(replace(BASE, models=(str(tiny_models.v1),),
                                           model_cache_dir=tmp_path / "cache", ranking_length=1))
    try:
        stub = nlu_pb2_grpc.NluServiceStub(channel)
        default = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text="hello"))
        asked = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text="hello",
                                                      ranking_length=3))
        assert [r.name for r in default.ranking] == ["greet"]
        assert len(asked.ranking) == 3
    finally:
        await channel.close()
        await server.stop()


async def test_synonyms_normalise_and_regex_extractor_runs(local_server: Served) -> None:
    _, stub = local_server
    reply = await stub.Parse(nlu_pb2.ParseRequest(
        bot_id="tiny", text="what is the balance of my current account DE89370400440532013000"))
    by_entity = {e.entity: e for e in reply.entities}
    assert by_entity["account_type"].raw == "current"
    assert by_entity["account_type"].value == "checking"
    assert by_entity["iban"].extractor == "regex"
    assert by_entity["iban"].raw == "DE89370400440532013000"


async def test_parse_batch_keeps_request_order(local_server: Served) -> None:
    _, stub = local_server
    texts = ["hello", "send 50 dollars to anna", "what is the balance of my savings account"]
    reply = await stub.ParseBatch(nlu_pb2.ParseBatchRequest(bot_id="tiny", texts=texts))
    assert [r.text for r in reply.results] == texts
    assert [r.intent.name for r in reply.results] == ["greet", "transfer_money", "check_balance"]


@pytest.mark.parametrize(("request_factory", "code", "detail"), [
    (lambda: nlu_pb2.ParseRequest(bot_id="tiny", text=""), grpc.StatusCode.INVALID_ARGUMENT,
     "empty"),
    (lambda: nlu_pb2.ParseRequest(bot_id="tiny", text="   \n"), grpc.StatusCode.INVALID_ARGUMENT,
     "empty"),
    (lambda: nlu_pb2.ParseRequest(bot_id="tiny", text="x" * 201),
     grpc.StatusCode.INVALID_ARGUMENT, "limit is 200"),
    (lambda: nlu_pb2.ParseRequest(bot_id="nope", text="hi"), grpc.StatusCode.NOT_FOUND,
     "unknown bot"),
    (lambda: nlu_pb2.ParseRequest(bot_id="", text="hi"), grpc.StatusCode.INVALID_ARGUMENT,
     "bot_id"),
    (lambda: nlu_pb2.ParseRequest(bot_id="tiny", text="hi", ranking_length=-1),
     grpc.StatusCode.INVALID_ARGUMENT, "ranking_length is -1"),
])
async def test_bad_requests_get_clear_status(
        local_server: Served, request_factory: Callable[[], nlu_pb2.ParseRequest],
        code: grpc.StatusCode, detail: str) -> None:
    _, stub = local_server
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Parse(request_factory())
    assert error.value.code() == code
    assert detail in (error.value.details() or "")
    # the server still answers afterwards
    assert (await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text="hi"))).intent.name


async def test_batch_limits(local_server: Served) -> None:
    _, stub = local_server
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.ParseBatch(nlu_pb2.ParseBatchRequest(bot_id="tiny", texts=["hi"] * 17))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.ParseBatch(nlu_pb2.ParseBatchRequest(bot_id="tiny", texts=["hi", ""]))
    assert "texts[1] is empty" in (error.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.ParseBatch(nlu_pb2.ParseBatchRequest(bot_id="tiny", texts=["hi", "hello"],
                                                        conversation_ids=["c1"]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "one per text" in (error.value.details() or "")


async def test_concurrent_requests_are_batched_and_metrics_exposed(local_server: Served) -> None:
    server, stub = local_server
    texts = [f"send {n} dollars to bob" for n in range(64)]
    replies = await asyncio.gather(*(stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text=t))
                                     for t in texts))
    assert [r.text for r in replies] == texts
    assert server.metrics_server is not None
    url = f"http://127.0.0.1:{server.metrics_server.port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert 'botfactory_nlu_requests_total{bot="tiny",method="Parse",status="OK"}' in body
    assert "botfactory_nlu_batch_size_bucket" in body
    assert "botfactory_nlu_model_load_duration_seconds" in body
    assert 'botfactory_nlu_model_loaded{bot="tiny"' in body
    assert 'botfactory_nlu_intent_confidence_count{bot="tiny"}' in body
    sizes = server.metrics.batch_size.labels(bot="tiny")
    count = sizes._sum.get()  # texts inferred; batches are fewer than requests
    assert count >= 64


async def test_health_reports_serving(local_server: Served) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server, _ = local_server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service="botfactory.v1.NluService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _corrupt_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    (target / "model.int8.onnx").write_bytes(b"not an onnx graph")
    meta = json.loads((target / "metadata.json").read_text())
    meta["version"] = content_version(target)
    (target / "metadata.json").write_text(json.dumps(meta))
    return target


async def test_store_load_hot_swap_under_load_and_corrupt_model_rejected(
        tiny_models: TinyModels, nats_server: NatsServer, tmp_path: Path) -> None:
    bus = await connect(nats_server.url, name="test")
    await provision(bus)
    v1 = await publish(bus, tiny_models.v1)
    config = replace(BASE, nats_url=nats_server.url, model_cache_dir=tmp_path / "cache")
    server, channel = await _serve(config)
    stub = nlu_pb2_grpc.NluServiceStub(channel)
    try:
        reply = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text="hello"))
        assert reply.model_version == v1.version

        versions: list[str] = []
        failures: list[BaseException] = []
        stop = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                try:
                    r = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text="hi there"))
                    versions.append(r.model_version)
                except grpc.aio.AioRpcError as exc:
                    failures.append(exc)

        clients = [asyncio.create_task(client()) for _ in range(16)]
        await asyncio.sleep(0.3)
        v2 = await publish(bus, tiny_models.v2)
        assert v2.version != v1.version
        await eventually(lambda: bool(versions) and versions[-1] == v2.version)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*clients)
        assert failures == []
        assert v1.version in versions and v2.version in versions
        assert versions.index(v2.version) > 0
        # after the swap only v2 answers
        tail = versions[-20:]
        assert set(tail) == {v2.version}

        corrupt = await upload(bus, _corrupt_copy(tiny_models.v1, tmp_path / "corrupt"))
        before = server.metrics.load_failures.labels(source="store")._value.get()
        await activate(bus, ModelRef("tiny", corrupt.version))
        await eventually(lambda: server.metrics.load_failures.labels(
            source="store")._value.get() > before)
        reply = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text="hello"))
        assert reply.model_version == v2.version
        listed = await stub.ListModels(nlu_pb2.ListModelsRequest())
        assert [(m.bot_id, m.version) for m in listed.models] == [("tiny", v2.version)]
    finally:
        await channel.close()
        await server.stop()
        await bus.drain()


def test_process_fails_fast_on_bad_config() -> None:
    result = subprocess.run([sys.executable, "-m", "services.nlu"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60,
                            env=service_env(BOTFACTORY_NLU_MODELS="/x",
                                            BOTFACTORY_NLU_GRPC_PORT="http"))
    assert result.returncode == 2
    assert "BOTFACTORY_NLU_GRPC_PORT='http': expected an integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_process_serves_and_stops_on_sigterm(tiny_models: TinyModels, tmp_path: Path) -> None:
    log = tmp_path / "nlu.log"
    process = start_service("services.nlu", log, BOTFACTORY_NLU_MODELS=str(tiny_models.v1),
                            BOTFACTORY_NLU_GRPC_PORT="0", BOTFACTORY_NLU_METRICS_PORT="0")
    try:
        port = int(str(wait_for_event(log, process, "nlu_started")["grpc_port"]))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = nlu_pb2_grpc.NluServiceStub(channel)
            reply = stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text="hello"), timeout=10)
        assert reply.intent.name == "greet"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    events = log_events(log)
    assert "nlu_started" in events and "shutdown_requested" in events and "nlu_stopped" in events


def _tiny_sentiment(root: Path) -> Path:
    """A classification-only sentiment model on a tiny random encoder (meaningless scores,
    the real files and serving path)."""
    from botfactory.training import CheckThresholds, train_sentiment
    from tests.support.models import make_tiny_encoder, write_sentiment_csv

    data = write_sentiment_csv(root / "sentiment.csv")
    out = root / "sentiment"
    train_sentiment(data, out, base_model=str(make_tiny_encoder(root / "encoder")), epochs=1,
                    progress=False, checks=CheckThresholds(max_int8_disagreement=1.0))
    return out


async def test_a_sentiment_model_published_later_is_hot_swapped_into_every_parse(
        tiny_models: TinyModels, nats_server: NatsServer, tmp_path: Path) -> None:
    """`make run` starts the NLU with the bot's model and publishes the sentiment model when
    its background training ends: from then on every Parse carries a sentiment."""
    bus = await connect(nats_server.url, name="test")
    await provision(bus)
    await publish(bus, tiny_models.v1)
    config = replace(BASE, nats_url=nats_server.url, model_cache_dir=tmp_path / "cache")
    server, channel = await _serve(config)
    stub = nlu_pb2_grpc.NluServiceStub(channel)
    try:
        reply = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text="what a great day"))
        assert reply.sentiment.label == ""  # none yet: parses still answer
        sentiment = await publish(bus, _tiny_sentiment(tmp_path))
        labels: list[str] = []

        async def parsed_with_sentiment() -> bool:
            r = await stub.Parse(nlu_pb2.ParseRequest(bot_id="tiny", text="what a great day"))
            labels.append(r.sentiment.label)
            return r.sentiment.label != ""

        await eventually(parsed_with_sentiment, "a sentiment")
        assert labels[-1] in {"negative", "neutral", "positive"}
        listed = await stub.ListModels(nlu_pb2.ListModelsRequest())
        assert ("platform-sentiment", sentiment.version) in [
            (m.bot_id, m.version) for m in listed.models]
    finally:
        await channel.close()
        await server.stop()
        await bus.drain()
