"""`make run`'s background sentiment training (botfactory.local.stack.SentimentJob): it trains
at the lowest CPU priority, says what it does, and a failed training is reported, not raised."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from botfactory.local.stack import SentimentJob, _publish_sentiment
from tests.support.models import make_tiny_encoder, write_sentiment_csv


def _wait(job: SentimentJob, within: float = 300.0) -> int:
    deadline = time.monotonic() + within
    while True:
        assert job.process is not None
        code = job.process.poll()
        if code is not None:
            return code
        assert time.monotonic() < deadline, "the background training did not end"
        time.sleep(0.2)


def test_it_trains_in_the_background_at_the_lowest_priority(tmp_path: Path) -> None:
    encoder = make_tiny_encoder(tmp_path / "encoder")
    job = SentimentJob(write_sentiment_csv(tmp_path / "s.csv"), tmp_path / "models" / "sentiment",
                       tmp_path / "sentiment.log",
                       ("--base-model", str(encoder), "--epochs", "1"))
    assert not job.trained
    assert job.start().startswith("training the sentiment model in the background")
    assert job.process is not None
    assert os.getpriority(os.PRIO_PROCESS, job.process.pid) == 19
    assert _wait(job) == 0, (tmp_path / "sentiment.log").read_text()
    assert job.trained
    assert job.start() == f"sentiment model {job.target}"  # a later run serves it at once


def test_without_data_it_says_so_and_a_failed_training_is_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = SentimentJob(tmp_path / "none", tmp_path / "m", tmp_path / "log")
    assert missing.start().startswith("no sentiment model (no GoEmotions data")
    assert missing.process is None
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,happy\n", encoding="utf-8")
    job = SentimentJob(bad, tmp_path / "m", tmp_path / "sentiment.log")
    job.start()
    assert _wait(job) == 2
    _publish_sentiment(job, "nats://127.0.0.1:1")  # never reached: nothing to publish
    err = capsys.readouterr().err
    assert f"warning: sentiment training failed (exit 2); see {tmp_path / 'sentiment.log'}" in err
    assert "not one of" in (tmp_path / "sentiment.log").read_text()
    assert job.process is None
