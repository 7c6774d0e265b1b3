"""benchmarks/nlu_quality.py's pure parts on tiny data: subsamples, the sentiment mapping of the
test split, the results JSON and table, missing data. Nothing is trained here."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from benchmarks import nlu_quality as q
from botfactory.evaluation import metrics as m
from services.botdef import import_bio, import_csv


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def snips_like(root: Path) -> Path:
    """data/snips/train with 10 PlayMusic and 20 GetWeather lines (tags on the first word)."""
    rows = [("play song", "O B-music_item", "PlayMusic")] * 10 + [
        ("weather in paris", "O O B-city", "GetWeather")] * 20
    q.write_bio(root / "snips" / "train", rows)
    return root


def test_bio_subsample_is_stratified_and_importable(tmp_path: Path) -> None:
    data = snips_like(tmp_path / "data")
    assert q.bio_train_source(data, tmp_path / "work", None) == data / "snips" / "train"
    folder = q.bio_train_source(data, tmp_path / "work", 6)
    assert folder == tmp_path / "work" / "train"
    examples = import_bio(folder)
    assert Counter(e.intent for e in examples) == {"PlayMusic": 2, "GetWeather": 4}
    assert examples[0].entities[0].entity in ("music_item", "city")
    assert q.bio_train_source(data, tmp_path / "again", 6).joinpath("seq.in").read_text() == (
        folder / "seq.in").read_text()  # seeded


def test_csv_subsample_keeps_header_and_published_labels(tmp_path: Path) -> None:
    rows = "".join(f"lost card {i},lost_card\n" for i in range(9))
    rows += "".join(f"reverted {i},reverted_card_payment?\n" for i in range(3))
    write(tmp_path / "data" / "banking77" / "train.csv", "text,category\n" + rows)
    path = q.csv_train_source(tmp_path / "data", tmp_path / "work", 4)
    header, sample = q.read_csv(path)
    assert header == ["text", "category"]
    assert Counter(row[1] for row in sample) == {"lost_card": 3, "reverted_card_payment?": 1}
    assert {e.intent for e in import_csv(path)} == {"lost_card", "reverted_card_payment"}


def test_subsample_none_keeps_everything() -> None:
    assert q.subsample([1, 2, 3], str, None) == [1, 2, 3]


def test_sentiment_test_split_mapped_like_train_sentiment(tmp_path: Path) -> None:
    folder = tmp_path / "goemotions"
    write(folder / "emotions.txt", "joy\nanger\nneutral\nsurprise\n")
    write(folder / "test.tsv", "great day\t0\ta1\nso angry\t1\ta2\nok then\t2\ta3\n"
          "wow\t3\ta4\nhappy but mad\t0,1\ta5\nyay wow\t0,3\ta6\n")
    examples = q.sentiment_examples(folder / "test.tsv")
    assert [(e.text, e.intent) for e in examples] == [
        ("great day", "positive"), ("so angry", "negative"), ("ok then", "neutral"),
        ("yay wow", "positive")]  # only ambiguous (wow) and mixed rows are dropped


def evaluation() -> m.Evaluation:
    def sample(gold: str, predicted: str, confidence: float) -> m.Sample:
        return m.Sample("x", m.Gold(gold), m.Predicted(predicted, (), confidence))

    return m.evaluate([sample("a", "a", 0.99), sample("a", "a", 0.99), sample("b", "b", 0.97),
                       sample("b", "a", 0.6)])


METADATA = {"version": "3f9c2a1b7e4d", "training": {"epochs_run": 7, "n_train": 85,
                                                    "n_heldout": 15}}


def test_result_json_and_table() -> None:
    figures = q.figures_of("banking77", evaluation())
    assert figures == {"intent_accuracy": 0.75, "ece": 0.1625}  # (3 * |1 - .9833| + .6) / 4
    result = q.result_of("banking77", figures, METADATA, 12.34, 4)
    assert result == {
        "intent_accuracy": 0.75, "ece": figures["ece"],
        "targets": {"intent_accuracy": ">= 0.937", "ece": "<= 0.03"},
        "met": {"intent_accuracy": False, "ece": False},
        "train_seconds": 12.3, "epochs": 7, "model_version": "3f9c2a1b7e4d",
        "precision": "int8", "n_train": 85, "n_heldout": 15, "n_test": 4}
    served = {**METADATA, "serving": {"precision": "mixed", "file": "model.int8.onnx"}}
    assert q.result_of("banking77", figures, served, 1.0, 4)["precision"] == "mixed"
    sentiment = q.result_of("sentiment", q.figures_of("sentiment", evaluation()), METADATA, 1, 4)
    assert set(sentiment["met"]) == {"macro_f1"} and "accuracy" in sentiment
    document = q.assemble({"banking77": result, "sentiment": sentiment}, Path("d"), True, [])
    assert document["quick"] is True and document["banking77"]["intent_accuracy"] == 0.75
    json.dumps(document)
    lines = q.table({"banking77": result, "sentiment": sentiment})
    assert lines[1].split() == ["banking77", "intent_accuracy", "0.7500", ">=", "0.937", "no"]
    assert lines[-1].split()[:2] == ["sentiment", "ece"] and lines[-1].endswith("-")


def test_snips_figures_include_slot_f1() -> None:
    assert set(q.figures_of("snips", evaluation())) == {"intent_accuracy", "slot_f1", "ece"}


def test_missing_data_exits_2_or_skips(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOTFACTORY_BENCH_IF_DATA", raising=False)
    out = tmp_path / "r.json"
    assert q.main(["--data", str(tmp_path), "--only", "banking77", "--out", str(out)]) == 2
    assert "error: banking77: not found in" in capsys.readouterr().err
    monkeypatch.setenv("BOTFACTORY_BENCH_IF_DATA", "1")
    assert q.main(["--data", str(tmp_path), "--only", "banking77", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("skipped: banking77: not found")
    assert not out.exists()


def test_training_is_the_cli_with_its_defaults(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []

    def cli(log: Path, *args: str) -> int:
        calls.append(args)
        return 0

    monkeypatch.setattr(q, "botfactory", cli)
    data, work = snips_like(tmp_path / "data"), tmp_path / "work"
    q.train("snips", data, work, quick=False)
    assert calls == [
        ("import", "bio", str(data / "snips" / "train"), "--out", str(work / "bot"),
         "--name", "snips", "--force"),
        ("train", str(work / "bot"), "--out", str(work / "model"), "--quiet")]
    calls.clear()
    q.train("sentiment", data, work, quick=True)
    assert calls == [("train-sentiment", "--data", str(data / "goemotions"), "--max-train",
                      "1500", "--max-heldout", "300", "--epochs", "2", "--out",
                      str(work / "model"), "--quiet")]


def cais_like(root: Path) -> Path:
    """data/cais/{train,test} in CAIS's layout: 8 PlayMusic and 3 GetWeather utterances
    (BIOES tags, one character a line), test 2 utterances."""
    music = "我 O\n要 O\n听 O\n王 B-singer\n菲 E-singer\n"
    weather = "北 B-city\n京 E-city\n天 O\n气 O\n"
    train = root / "cais" / "train"
    filler = "啊 O\n"  # makes each utterance different
    musics = [music + filler * i for i in range(8)]
    weathers = [weather + filler * i for i in range(3)]
    write(train / "ch.train", "\n".join(musics + weathers))
    write(train / "ch.train.intent", "PlayMusic\n" * 8 + "GetWeather\n" * 3)
    test = root / "cais" / "test"
    write(test / "ch.test", f"{music}\n{weather}")
    write(test / "ch.test.intent", "PlayMusic\nGetWeather\n")
    return root


def test_cais_subsample_is_stratified_topped_up_and_importable(tmp_path: Path) -> None:
    from services.botdef import import_conll

    data = cais_like(tmp_path / "data")
    assert q.missing_data(data, "cais") is None
    assert q.conll_train_source(data, tmp_path / "work", None) == (
        data / "cais" / "train" / "ch.train", data / "cais" / "train" / "ch.train.intent")
    tokens, intents = q.conll_train_source(data, tmp_path / "work", 4)
    examples = import_conll(tokens, intents)
    # 4 of 11 keeps 3 PlayMusic and 1 GetWeather; GetWeather is topped up to 2
    assert Counter(e.intent for e in examples) == {"PlayMusic": 3, "GetWeather": 2}
    assert examples[0].text == "我要听王菲"
    assert [(s.entity, examples[0].text[s.start:s.end]) for s in examples[0].entities] == [
        ("singer", "王菲")]
    test = q.labelled_test_split("cais", data)
    assert [(e.text, e.intent) for e in test] == [("我要听王菲", "PlayMusic"),
                                                  ("北京天气", "GetWeather")]


def test_cais_is_trained_from_a_conll_import_with_the_cli_defaults(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(q, "botfactory", lambda log, *args: calls.append(args) or 0)
    data, work = cais_like(tmp_path / "data"), tmp_path / "work"
    q.train("cais", data, work, quick=False)
    train = data / "cais" / "train"
    assert calls == [
        ("import", "conll", str(train / "ch.train"), "--intents", str(train / "ch.train.intent"),
         "--out", str(work / "bot"), "--name", "cais", "--force"),
        ("train", str(work / "bot"), "--out", str(work / "model"), "--quiet")]
    assert "cais" in q.SETS and q.QUICK_TRAIN["cais"] == 600
    figures = q.figures_of("cais", evaluation())
    assert set(figures) == {"intent_accuracy", "slot_f1", "ece"}
    result = q.result_of("cais", figures, {**METADATA, "training": {
        **METADATA["training"], "vocab_added": 1539}}, 1.0, 4)
    assert result["targets"] == {"intent_accuracy": ">= 0.945", "slot_f1": ">= 0.86"}
    assert result["vocab_added"] == 1539
