"""Vocabulary extension (botfactory.training.vocab): characters the base tokenizer reads as
[UNK] get word pieces and embedding rows of their own, through training, export and serving.

Tiny models: a 2-layer random BERT with the MiniLM vocabulary (tests/support/models.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from tokenizers import Tokenizer

from botfactory.training import TrainConfig, train_bot, vocab
from botfactory.training.model import load_torch_model
from botfactory.training.trainer import _optimizer
from services.botdef import EntitySpan, Example, NluSettings, load_bot, write_bot
from services.nlu.engine import NluModel
from tests.support.models import MINILM, make_tiny_encoder

UNK = "[UNK]"


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"))


def base_tokenizer() -> bytes:
    return (MINILM / "tokenizer.json").read_bytes()


def tokens(tokenizer_bytes: bytes, text: str) -> list[str]:
    tokenizer = Tokenizer.from_str(tokenizer_bytes.decode("utf-8"))
    tokenizer.no_padding()
    return list(tokenizer.encode(text, add_special_tokens=False).tokens)


def annotated(text: str, intent: str, **entities: str) -> Example:
    spans = []
    for entity, value in entities.items():
        start = text.index(value)
        spans.append(EntitySpan(start, start + len(value), entity))
    return Example(text, intent, tuple(sorted(spans, key=lambda s: s.start)))


SINGERS = ["周杰伦", "王菲", "陈奕迅", "邓紫棋", "林俊杰", "张学友", "刘德华", "孙燕姿"]
CITIES = ["北京", "上海", "广州", "深圳", "杭州", "成都", "武汉", "西安"]


def chinese_examples() -> list[Example]:
    examples = [annotated(f"我想听{s}的歌" if i % 2 else f"播放{s}的音乐", "play_music",
                          singer=s) for i, s in enumerate(SINGERS)]
    examples += [annotated(f"{c}明天天气怎么样" if i % 2 else f"查一下{c}的天气", "weather",
                           city=c) for i, c in enumerate(CITIES)]
    return examples


def write_zh_bot(directory: Path, examples: list[Example] | None = None) -> Path:
    settings = NluSettings(epochs=30, batch_size=8, learning_rate=1e-3, seed=7)
    return write_bot(directory, "zh", examples or chinese_examples(), nlu=settings)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# --- finding and adding pieces -------------------------------------------------------------


def test_unknown_cjk_characters_get_pieces_and_known_ones_do_not() -> None:
    base = base_tokenizer()
    assert tokens(base, "我想听周杰伦") == ["我", UNK, UNK, UNK, UNK, UNK]  # 1 of 6 known
    extension = vocab.find(base, ["我想听周杰伦", "我想听王菲"])
    assert extension.tokens == ("想", "听", "周", "杰", "伦", "菲")  # 想 and 听 twice: first
    assert extension.first_id == 30522
    assert extension.unknown_words == 8 and extension.unknown_after == 0
    extended = vocab.extended_tokenizer(base, extension)
    assert tokens(extended, "我想听周杰伦") == ["我", "想", "听", "周", "杰", "伦"]
    tokenizer = Tokenizer.from_str(extended.decode("utf-8"))
    assert tokenizer.get_vocab_size() == 30522 + 6
    assert tokenizer.token_to_id("伦") == 30522 + 4
    assert tokens(extended, "我想听张学友") == ["我", "想", "听", UNK, "学", UNK]  # unseen: UNK


def test_a_script_without_per_character_words_is_spelt_with_continuation_pieces() -> None:
    base = base_tokenizer()
    assert tokens(base, "ሰላም ወዳጅ") == [UNK, UNK]  # Ethiopic: whole words
    extension = vocab.find(base, ["ሰላም ወዳጅ", "ሰላም"])
    assert extension.tokens == ("ሰ", "##ላ", "##ም", "ወ", "##ዳ", "##ጅ")  # the most frequent first
    extended = vocab.extended_tokenizer(base, extension)
    assert tokens(extended, "ሰላም ወዳጅ") == ["ሰ", "##ላ", "##ም", "ወ", "##ዳ", "##ጅ"]
    assert tokens(extended, "ወላም hello") == ["ወ", "##ላ", "##ም", "hello"]


def test_english_text_adds_nothing_and_keeps_the_tokenizer_bytes() -> None:
    base = base_tokenizer()
    extension = vocab.find(base, ["book a flight to paris", "send 20 dollars to anna!"])
    assert extension.added == 0 and extension.unknown_words == 0
    assert vocab.extended_tokenizer(base, extension) is base


def test_a_mixed_bot_adds_only_what_the_tokenizer_cannot_read() -> None:
    base = base_tokenizer()
    texts = ["book a flight to paris", "我想听周杰伦", "play 周杰伦 please"]
    extension = vocab.find(base, texts)
    assert extension.tokens == ("周", "杰", "伦", "想", "听")
    extended = vocab.extended_tokenizer(base, extension)
    assert tokens(extended, "book a flight to paris") == tokens(base, "book a flight to paris")
    assert tokens(extended, "play 周杰伦 please") == ["play", "周", "杰", "伦", "please"]


def test_the_cap_keeps_the_most_frequent_pieces() -> None:
    extension = vocab.find(base_tokenizer(), ["周周周杰伦", "伦伦"], max_tokens=2)
    # 周 x3 (as a word each), 伦 x3, 杰 x1: ties keep the order first met
    assert extension.tokens == ("周", "伦")
    assert extension.left_out == 1 and extension.unknown_after == 1


def test_new_rows_start_at_the_mean_with_seeded_noise_and_merge_back(tiny_base: Path) -> None:
    from transformers import AutoModel

    extension = vocab.find(base_tokenizer(), chinese_examples_texts())
    encoders = [AutoModel.from_pretrained(str(tiny_base)) for _ in range(2)]
    for encoder in encoders:
        assert vocab.extend_embeddings(encoder, extension, seed=3) == extension.added
    rows = [e.get_input_embeddings().weight.detach() for e in encoders]
    assert torch.equal(rows[0], rows[1])  # seeded
    base = rows[0][:30522]
    added = rows[0][30522:]
    assert added.shape == (extension.added, 32)
    assert torch.allclose(added.mean(dim=0), base.mean(dim=0), atol=3 * float(base.std()))
    assert len({tuple(row.tolist()) for row in added}) == extension.added  # all distinct
    encoder = encoders[0]
    assert vocab.added_parameters(encoder) == [encoder.get_input_embeddings().added]
    vocab.merge(encoder)
    merged = encoder.get_input_embeddings()
    assert isinstance(merged, torch.nn.Embedding) and torch.equal(merged.weight, rows[0])
    assert encoder.config.vocab_size == 30522 + extension.added
    assert vocab.added_parameters(encoder) == []


def chinese_examples_texts() -> list[str]:
    return [example.text for example in chinese_examples()]


def test_added_rows_train_in_their_own_param_group(tiny_base: Path) -> None:
    from transformers import AutoModel

    from botfactory.training.model import JointModel

    encoder = AutoModel.from_pretrained(str(tiny_base))
    vocab.extend_embeddings(encoder, vocab.find(base_tokenizer(), ["周杰伦"]), seed=0)
    model = JointModel(encoder, 2, 3)
    optimizer = _optimizer(model, TrainConfig(learning_rate=1e-4,
                                              added_token_learning_rate=5e-3))
    groups = [g for g in optimizer.param_groups if g["lr"] == 5e-3]
    assert len(groups) == 1 and groups[0]["params"] == [encoder.get_input_embeddings().added]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


# --- through training, export and serving ------------------------------------------------


@pytest.fixture(scope="module")
def zh_model(tmp_path_factory: pytest.TempPathFactory,
             tiny_base: Path) -> tuple[Path, dict[str, Any]]:
    bot = load_bot(write_zh_bot(tmp_path_factory.mktemp("zh-bot")))
    out = tmp_path_factory.mktemp("zh") / "model"
    # the bot's learning rate (1e-3) suits the tiny random encoder; so does it the added rows
    config = TrainConfig(added_token_learning_rate=1e-3)
    return out, train_bot(bot, out, base_model=str(tiny_base), progress=False, config=config)


def test_a_chinese_bot_trains_with_its_characters_added(
        zh_model: tuple[Path, dict[str, Any]]) -> None:
    out, metadata = zh_model
    training = metadata["training"]
    texts = chinese_examples_texts()
    characters = {c for text in texts for c in text}
    assert 0 < training["vocab_added"] <= len(characters)
    assert training["vocabulary"]["added"] == training["vocab_added"]
    assert training["vocabulary"]["unknown_words_after"] == 0
    assert training["added_token_learning_rate"] > 0
    assert metadata["serving"]["tag_decoding"] == "bio-viterbi"
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    size = tokenizer.get_vocab_size()
    assert size == 30522 + training["vocab_added"]
    torch_model = load_torch_model(out)
    assert torch_model.encoder.get_input_embeddings().weight.shape[0] == size
    import onnx

    graph = onnx.load(str(out / "model.onnx"))
    shapes = [list(i.dims) for i in graph.graph.initializer if len(i.dims) == 2]
    assert [size, 32] in shapes  # the exported embedding matrix has a row per piece
    # the held-out texts' characters that training met are no longer [UNK]
    heldout = read_json(out / "heldout.json")
    assert heldout
    for text in ["我想听周杰伦的歌", "上海明天天气怎么样"]:
        assert UNK not in tokenizer.encode(text).tokens


def test_the_served_engine_predicts_on_chinese_text(
        zh_model: tuple[Path, dict[str, Any]]) -> None:
    out, _ = zh_model
    model = NluModel.load(out)
    examples = chinese_examples()
    predictions = model.predict([e.text for e in examples])
    right = sum(p.intent == e.intent for p, e in zip(predictions, examples, strict=True))
    assert right >= 12  # of 16 (one intent for all: 8)
    gold = {(s.entity, e.text[s.start:s.end]) for e in examples for s in e.entities}
    found = {(x.entity, x.text) for p in predictions for x in p.entities}
    assert found & gold  # the tagger finds Chinese names and cities


def test_a_warm_start_extends_the_parents_tokenizer_further(
        tmp_path: Path, zh_model: tuple[Path, dict[str, Any]]) -> None:
    parent, parent_metadata = zh_model
    parent_size = Tokenizer.from_file(str(parent / "tokenizer.json")).get_vocab_size()
    more = chinese_examples() + [annotated(f"给{n}打电话", "call", name=n)
                                 for n in ["小明", "老赵", "阿强", "小红", "大卫", "丽丽"]]
    bot = load_bot(write_zh_bot(tmp_path / "bot", more))
    out = tmp_path / "child"
    metadata = train_bot(bot, out, init_from=parent, progress=False)
    added = metadata["training"]["vocab_added"]
    new_characters = {c for e in more for c in e.text} - {c for t in chinese_examples_texts()
                                                          for c in t}
    assert 0 < added <= len(new_characters)
    assert metadata["training"]["vocabulary"]["first_id"] == parent_size
    child = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert child.get_vocab_size() == parent_size + added
    parent_vocab = Tokenizer.from_file(str(parent / "tokenizer.json")).get_vocab()
    assert all(child.token_to_id(t) == i for t, i in parent_vocab.items())  # ids kept
    assert load_torch_model(out).encoder.get_input_embeddings().weight.shape[0] == \
        parent_size + added
    parent_tokens = Tokenizer.from_file(str(parent / "tokenizer.json")).encode("给小明打电话")
    assert UNK in parent_tokens.tokens  # 给, 打, 电, 话 are new to the parent
    assert UNK not in child.encode("给小明打电话").tokens
    served = NluModel.load(out).predict(["给小明打电话"])[0]
    assert {name for name, _ in served.ranking} == {"play_music", "weather", "call"}
    assert parent_metadata["training"]["vocab_added"] > 0


def test_an_english_bot_adds_nothing(tmp_path: Path, tiny_base: Path) -> None:
    examples = [annotated(f"book a flight to {c}", "book", city=c)
                for c in ["paris", "rome", "oslo", "lima"]]
    examples += [Example(t, "greet") for t in ["hello", "hi there", "good morning", "hey"]]
    bot = load_bot(write_bot(tmp_path / "bot", "en", examples,
                             nlu=NluSettings(epochs=2, batch_size=4, seed=7)))
    metadata = train_bot(bot, tmp_path / "model", base_model=str(tiny_base), progress=False)
    assert metadata["training"]["vocab_added"] == 0
    assert metadata["training"]["added_token_learning_rate"] is None
    assert "tag_decoding" not in metadata["serving"]  # argmax, as before
    assert (tmp_path / "model" / "tokenizer.json").read_bytes() == \
        (tiny_base / "tokenizer.json").read_bytes()
    assert load_torch_model(tmp_path / "model").encoder.config.vocab_size == 30522


def test_botfactory_train_says_what_it_added(tmp_path: Path, tiny_base: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from botfactory.cli import main

    bot_dir = write_zh_bot(tmp_path / "bot")
    out = tmp_path / "model"
    assert main(["train", str(bot_dir), "--out", str(out), "--base-model", str(tiny_base),
                 "--epochs", "1", "--quiet"]) == 0
    added = read_json(out / "metadata.json")["training"]["vocab_added"]
    assert added > 0
    assert f"vocabulary: added {added} word pieces for characters the base tokenizer read " \
           "as [UNK]" in capsys.readouterr().out


def test_viterbi_decoding_keeps_a_span_whole_where_the_argmax_splits_it() -> None:
    import numpy as np

    from services.common.textenc import decode_spans
    from services.nlu.engine import viterbi_tags

    tokenizer = Tokenizer.from_str(base_tokenizer().decode("utf-8"))
    tokenizer.no_padding()
    encoding = tokenizer.encode("听周杰伦")  # [CLS] 听 周 杰 伦 [SEP]: one word a character
    tags = ["O", "B-city", "I-city", "B-singer", "I-singer"]
    probs = np.full((6, 5), 0.01)
    probs[1, 0] = 0.9  # 听: O
    probs[2, 3], probs[2, 1] = 0.6, 0.4  # 周: B-singer
    probs[3, 2], probs[3, 4] = 0.5, 0.45  # 杰: I-city by a little
    probs[4, 4] = 0.9  # 伦: I-singer
    argmax = decode_spans(encoding, [tags[i] for i in probs.argmax(axis=-1)])
    assert [(s.entity, s.start, s.end) for s in argmax] == [
        ("singer", 1, 2), ("city", 2, 3), ("singer", 3, 4)]
    decoded = viterbi_tags(encoding, probs, tags)
    assert decoded == ["O", "O", "B-singer", "I-singer", "I-singer", "O"]
    assert [(s.entity, s.start, s.end) for s in decode_spans(encoding, decoded)] == [
        ("singer", 1, 4)]
