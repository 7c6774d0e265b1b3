from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from services.common.config import ConfigError, load_config, require
from services.common.logging import bind_correlation_id, configure_logging, get_logger
from services.dialogue.config import DialogueConfig
from services.nlu.config import NluConfig


@dataclass(frozen=True)
class Sample:
    name: str = "x"
    port: int = 1
    ratio: float = 0.5
    enabled: bool = False
    path: Path | None = None
    items: tuple[str, ...] = ()

    def validate(self) -> None:
        require(self.port >= 0, "BOTFACTORY_SAMPLE_PORT", "must be >= 0")


def test_config_reads_prefixed_env_and_converts_types() -> None:
    env = {"BOTFACTORY_SAMPLE_NAME": "bot", "BOTFACTORY_SAMPLE_PORT": "8080",
           "BOTFACTORY_SAMPLE_RATIO": "0.25", "BOTFACTORY_SAMPLE_ENABLED": "yes",
           "BOTFACTORY_SAMPLE_PATH": "/tmp/m", "BOTFACTORY_SAMPLE_ITEMS": "a, b,,c",
           "BOTFACTORY_OTHER_PORT": "1"}
    config = load_config(Sample, "sample", env)
    assert config == Sample("bot", 8080, 0.25, True, Path("/tmp/m"), ("a", "b", "c"))


def test_config_defaults_when_unset() -> None:
    assert load_config(Sample, "sample", {}) == Sample()


@pytest.mark.parametrize(("var", "value", "message"), [
    ("BOTFACTORY_SAMPLE_PORT", "eighty", "BOTFACTORY_SAMPLE_PORT='eighty': expected an integer"),
    ("BOTFACTORY_SAMPLE_RATIO", "half", "expected a number"),
    ("BOTFACTORY_SAMPLE_ENABLED", "maybe", "expected a boolean"),
    ("BOTFACTORY_SAMPLE_PORT", "-1", "BOTFACTORY_SAMPLE_PORT: must be >= 0"),
])
def test_config_bad_values_fail_fast_with_the_variable_named(var: str, value: str,
                                                             message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(Sample, "sample", {var: value})


def test_nlu_config_needs_a_model_source() -> None:
    with pytest.raises(ConfigError, match="BOTFACTORY_NLU_MODELS"):
        load_config(NluConfig, "nlu", {})
    config = load_config(NluConfig, "nlu", {"BOTFACTORY_NLU_MODELS": "/m/a,/m/b",
                                            "BOTFACTORY_NLU_MAX_BATCH_SIZE": "8"})
    assert config.models == ("/m/a", "/m/b") and config.max_batch_size == 8
    with pytest.raises(ConfigError, match="MAX_BATCH_SIZE"):
        load_config(NluConfig, "nlu", {"BOTFACTORY_NLU_MODELS": "/m",
                                       "BOTFACTORY_NLU_MAX_BATCH_SIZE": "0"})
    assert config.ranking_length == 10
    with pytest.raises(ConfigError, match=r"RANKING_LENGTH: must be >= 0 \(0: every intent\)"):
        load_config(NluConfig, "nlu", {"BOTFACTORY_NLU_MODELS": "/m",
                                       "BOTFACTORY_NLU_RANKING_LENGTH": "-1"})


def test_dialogue_nlu_coalescing_settings_are_checked() -> None:
    config = load_config(DialogueConfig, "dialogue", {
        "BOTFACTORY_DIALOGUE_NLU_MAX_IN_FLIGHT": "4", "BOTFACTORY_DIALOGUE_NLU_MAX_BATCH": "8"})
    assert (config.nlu_max_in_flight, config.nlu_max_batch) == (4, 8)
    assert load_config(DialogueConfig, "dialogue", {}).nlu_max_in_flight == 1
    with pytest.raises(ConfigError, match="NLU_MAX_IN_FLIGHT: must be >= 1"):
        load_config(DialogueConfig, "dialogue", {"BOTFACTORY_DIALOGUE_NLU_MAX_IN_FLIGHT": "0"})
    with pytest.raises(ConfigError, match=r"NLU_MAX_BATCH: must be 1\.\.256"):
        load_config(DialogueConfig, "dialogue", {"BOTFACTORY_DIALOGUE_NLU_MAX_BATCH": "1000"})


def test_logs_are_json_with_service_and_correlation_id(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("nlu", "INFO")
    bind_correlation_id("abc123")
    get_logger("t").info("hello", bot="banking")
    get_logger("t").debug("hidden")
    structlog.contextvars.clear_contextvars()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    assert len(lines) == 1
    assert lines[0]["event"] == "hello" and lines[0]["service"] == "nlu"
    assert lines[0]["correlation_id"] == "abc123" and lines[0]["level"] == "info"
    assert lines[0]["bot"] == "banking" and "timestamp" in lines[0]


def test_library_logs_are_json_lines_too(capsys: pytest.CaptureFixture[str]) -> None:
    """nats-py and aiohttp log through `logging`: their lines are JSON like the services'."""
    configure_logging("gateway", "INFO")
    bind_correlation_id("corr-7")
    logging.getLogger("nats.aio.client").warning("nats: encountered error %s", "timeout")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    structlog.contextvars.clear_contextvars()
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line]
    assert [line["event"] for line in lines] == ["nats: encountered error timeout",
                                                 "Error handling request"]
    warning, error = lines
    assert warning["logger"] == "nats.aio.client" and warning["level"] == "warning"
    assert warning["service"] == "gateway" and warning["correlation_id"] == "corr-7"
    assert "timestamp" in warning
    assert error["level"] == "error" and "RuntimeError: boom" in error["exception"]
    structlog.reset_defaults()


def test_unknown_log_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("nlu", "LOUD")


def test_conversation_events_decode_one_event_or_a_whole_turn() -> None:
    from services.common.events import decode_events, encode_events
    from services.common.pb.botfactory.v1 import conversation_pb2
    from services.common.subjects import HEADER_KIND, KIND_EVENTS

    one = conversation_pb2.ConversationEvent(type="feedback", data_json='{"rating": 1}')
    turn = [conversation_pb2.ConversationEvent(type=t) for t in ("user_message", "slot_set")]
    assert [e.type for e in decode_events(one.SerializeToString(), None)] == ["feedback"]
    assert [e.type for e in decode_events(encode_events(turn),
                                          {HEADER_KIND: KIND_EVENTS})] == ["user_message",
                                                                           "slot_set"]


def test_printed_nats_urls_hide_their_passwords() -> None:
    from services.common.nats import without_passwords

    line = "publish M --nats nats://admin:s3cr3t@127.0.0.1:4222,nats://nlu:p4ss@h:4222 --x"
    masked = without_passwords(line)
    assert "s3cr3t" not in masked and "p4ss" not in masked
    assert masked == "publish M --nats nats://admin:***@127.0.0.1:4222,nats://nlu:***@h:4222 --x"
    assert without_passwords("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


def test_the_demo_bank_logs_json_lines(tmp_path: Path) -> None:
    import subprocess
    import sys

    from botfactory.local.processes import log_events, wait_for_event

    log = tmp_path / "demo_bank.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "botfactory.local.demo_bank",
                                    "--port", "0"], stdout=out, stderr=subprocess.STDOUT)
    try:
        started = wait_for_event(log, process, "demo_bank_started", timeout=30)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert str(started["url"]).startswith("http://127.0.0.1:")
    assert started["service"] == "demo_bank" and started["level"] == "info"
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), lines
    assert log_events(log)[0] == "demo_bank_started"
