"""The path every training job takes: load the base encoder, fine-tune, export to ONNX,
check, quantise, evaluate through the int8 model and write the model directory.

NLU (`botfactory.training.nlu`) and sentiment (`botfactory.training.sentiment`) jobs only
differ in their data and in the head set (`Job.with_tags`).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from botfactory.training import export, precision, threshold, vocab
from botfactory.training.data import Encoded, LabeledText, Labels, encode, make_labels, pad_id_of
from botfactory.training.errors import BaseModelError, DataError, TrainingError
from botfactory.training.export import CheckThresholds, Outputs
from botfactory.training.metrics import Metrics, evaluate
from botfactory.training.model import (
    JointModel,
    Parent,
    load_encoder,
    load_parent,
    resolve_base_model,
    save_torch,
    tokenizer_json,
    warm_start,
)
from botfactory.training.temperature import Calibration, fit_temperature
from botfactory.training.trainer import (
    OnEvent,
    TrainConfig,
    deterministic,
    fit,
    predict,
    seed_everything,
)
from services.common.modelformat import (
    ENTITIES_FILE,
    FP32_FILE,
    HELDOUT_FILE,
    INT8_FILE,
    LABELS_FILE,
    METADATA_FILE,
    MODEL_FORMAT,
    TOKENIZER_FILE,
    TORCH_DIR,
    content_version,
    heldout_record,
)
from services.common.textenc import load_tokenizer

EMPTY_ENTITIES: dict[str, Any] = {"synonyms": {}, "regex": {}, "lookup": {}}
CHECK_TEXTS = 1024  # texts the exports and the served precision are checked on
EXPORTER = "torch.onnx.export(dynamo=True)"
QUANTIZATION = ("onnxruntime.quantization.quantize_dynamic(weight_type=QInt8, per_channel=True"
                ", nodes_to_exclude=the fp32 matrices of serving.fp32_matrices)")
FUSED_FILE = "model.fused.onnx"  # the fp32 graph fused for onnxruntime; quantised, not kept


@dataclass(frozen=True)
class Job:
    """What to train: the split data, the head set and what goes into metadata.json."""

    kind: str  # "nlu" or "sentiment"
    bot: str
    train: list[LabeledText]
    heldout: list[LabeledText]
    with_tags: bool
    max_length: int
    test: list[LabeledText] = field(default_factory=list)
    confidence_threshold: float | None = None  # None: chosen from the held-out split
    out_of_scope_intent: str | None = None
    entities_config: dict[str, Any] = field(default_factory=lambda: dict(EMPTY_ENTITIES))
    info: dict[str, Any] = field(default_factory=dict)  # extra `training` entries
    # Add word pieces for the training texts' characters the tokenizer maps to [UNK]
    # (botfactory.training.vocab).
    extend_vocab: bool = False


def _start(base_model: str | None, init_from: Path | None,
           progress: bool) -> tuple[Any, bytes, str, Parent | None]:
    """(encoder, tokenizer.json bytes, base model description, warm-start parent)."""
    if init_from is not None:
        _say(progress, f"warm start from {init_from}")
        parent = load_parent(init_from)
        return parent.model.encoder, parent.tokenizer, parent.base_model, parent
    base = resolve_base_model(base_model)
    _say(progress, f"loading base model {base.description}")
    return load_encoder(base), tokenizer_json(base), base.description, None


def run(job: Job, out_dir: Path, *, base_model: str | None, config: TrainConfig,
        checks: CheckThresholds | None = None, progress: bool = True,
        init_from: Path | None = None, on_event: OnEvent | None = None) -> dict[str, Any]:
    """Train, export, check and write `out_dir` (atomically); returns the metadata.

    `init_from`: a model directory to fine-tune from (its encoder and heads; `base_model` is
    then not used), else the base encoder with fresh heads. `on_event`: progress events
    (trainer.OnEvent): the stages and every epoch."""
    checks = checks or CheckThresholds()
    stage = _stages(on_event)
    stage("loading")
    started = time.perf_counter()
    labels = make_labels([*job.train, *job.heldout], with_tags=job.with_tags)
    encoder, tokenizer_bytes, base_description, parent = _start(base_model, init_from, progress)
    extension = _extend(job, encoder, tokenizer_bytes, config.seed, progress)
    tokenizer_bytes = vocab.extended_tokenizer(tokenizer_bytes, extension)
    with deterministic(), export.staging_dir(out_dir) as staging:
        (staging / TOKENIZER_FILE).write_bytes(tokenizer_bytes)
        tokenizer = load_tokenizer(staging / TOKENIZER_FILE, job.max_length)
        _check_vocab(encoder, tokenizer.get_vocab_size(), base_description)
        pad_id = pad_id_of(tokenizer)
        train = encode(job.train, tokenizer, labels)
        heldout = encode(job.heldout, tokenizer, labels)
        test = encode(job.test, tokenizer, labels)

        seed_everything(config.seed)
        model = JointModel(encoder, len(labels.intents), len(labels.tags), config.dropout)
        warm = None if parent is None else warm_start(model, parent, labels.intents,
                                                      labels.tags)
        _say(progress, f"fine-tuning on {len(train)} examples, {len(heldout)} held out")
        stage("training", n_train=len(train), n_heldout=len(heldout))
        result = fit(model, train, heldout, labels, config, pad_id, progress=progress,
                     on_event=on_event)
        vocab.merge(encoder)

        checked = check_set(heldout, train, config.seed)
        calibration = _calibrate(model, heldout, pad_id, progress)
        temperature = 1.0 if calibration is None else calibration.temperature
        _say(progress, "exporting to ONNX")
        stage("exporting")
        intent_logits, tag_logits, _ = predict(model, checked, pad_id)
        torch_outputs = Outputs(intent_logits / temperature, tag_logits)
        fp32_path, int8_path = staging / FP32_FILE, staging / INT8_FILE
        export.export_onnx(model, checked, pad_id, fp32_path, temperature)
        fp32_outputs = export.run_onnx(fp32_path, checked, pad_id)
        diff = export.check_onnx(torch_outputs, fp32_outputs, checked, checks)
        _say(progress, f"fusing, quantising and choosing the served precision "
                       f"(checked on {len(checked)} texts)")
        fusion, choice = _quantize(fp32_path, fp32_outputs, checked, pad_id, checks, int8_path)
        _say(progress, f"served precision: {precision.summary(choice.to_json())}")
        served_path = staging / choice.file
        int8_trial = choice.trials[0]

        stage("evaluating")
        metrics: dict[str, Any] = {"heldout": None}
        served = _heldout_outputs(choice.outputs, heldout, checked, served_path, pad_id)
        if served is not None:
            metrics["heldout"] = _metrics(heldout, labels, served).to_json()
        fallback = _threshold(job, labels, heldout, served)
        if test:
            _say(progress, f"evaluating the served model on {len(test)} test examples")
            test_outputs = export.run_onnx(served_path, test, pad_id)
            metrics["test"] = _metrics(test, labels, test_outputs).to_json()

        save_torch(model, staging / TORCH_DIR)
        export.write_json(staging / LABELS_FILE, labels.to_json())
        export.write_json(staging / ENTITIES_FILE, job.entities_config)
        export.write_json(staging / HELDOUT_FILE,
                          heldout_record((t.label, t.text) for t in job.heldout))
        metadata = {
            "format": MODEL_FORMAT,
            "kind": job.kind,
            "bot": job.bot,
            "version": content_version(staging),
            "base_model": base_description,
            "parent": None if parent is None else {"version": parent.version,
                                                   "path": str(parent.path)},
            "max_length": job.max_length,
            "confidence_threshold": fallback.value,
            "threshold": fallback.to_json(),
            "out_of_scope_intent": job.out_of_scope_intent,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "training": {
                "seed": config.seed,
                "epochs": result.epochs,
                "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch,
                "stopped_early": result.stopped_early,
                "n_train": len(train),
                "n_heldout": len(heldout),
                "n_test": len(test),
                "batch_size": config.batch_size,
                "learning_rate": config.learning_rate,
                "head_learning_rate": config.heads_lr,
                "added_token_learning_rate": config.added_lr if extension.added else None,
                "weight_decay": config.weight_decay,
                "warmup_ratio": config.warmup_ratio,
                "max_grad_norm": config.max_grad_norm,
                "patience": config.patience,
                "seconds_per_epoch": result.seconds_per_epoch,
                "duration_s": round(time.perf_counter() - started, 1),
                "exporter": EXPORTER,
                "opset": export.OPSET,
                "fusion": fusion,
                "quantization": QUANTIZATION,
                "versions": _versions(),
                "warm_start": warm,
                "vocab_added": extension.added,
                "vocabulary": extension.to_json(),
                **job.info,
                "history": result.history,
            },
            "metrics": metrics,
            "serving": {**choice.to_json(), **_decoding(extension, labels)},
            "calibration": None if calibration is None else calibration.to_json(),
            "checks": {
                "onnx_max_abs_diff": diff,
                "int8_intent_agreement": int8_trial.intent_agreement,
                "int8_tag_agreement": int8_trial.tag_agreement,
                "served_intent_agreement": export.intent_agreement(fp32_outputs,
                                                                   choice.outputs),
                "served_tag_agreement": export.tag_agreement(checked, fp32_outputs,
                                                             choice.outputs),
                "checked_on": "heldout+train" if heldout else "train",
                "n_checked": len(checked),
                "max_abs_diff_limit": checks.max_abs_diff,
                "max_int8_disagreement": checks.max_int8_disagreement,
            },
        }
        export.write_json(staging / METADATA_FILE, metadata)
    return metadata


def _stages(on_event: OnEvent | None) -> Callable[..., None]:
    """A function that reports a stage (and its details) to `on_event`, if any."""
    def stage(name: str, **details: Any) -> None:
        if on_event is not None:
            on_event({"event": "stage", "stage": name, **details})

    return stage


def _extend(job: Job, encoder: Any, tokenizer_bytes: bytes, seed: int,
            progress: bool) -> vocab.Extension:
    """Find the word pieces to add for the job's training texts and give the encoder their
    embedding rows (nothing for a job without `extend_vocab`)."""
    if not job.extend_vocab:
        return vocab.Extension((), 0, 0, 0, 0, reason="not done for this kind of model")
    extension = vocab.find(tokenizer_bytes, (text.text for text in job.train))
    if extension.added:
        try:
            vocab.extend_embeddings(encoder, extension, seed)
        except ValueError as exc:
            raise BaseModelError(f"cannot extend the vocabulary: {exc}") from exc
        capped = (f"; {extension.left_out} left out by the cap of {vocab.MAX_ADDED_TOKENS}"
                  if extension.left_out else "")
        _say(progress, f"vocabulary: added {extension.added} word pieces for characters the "
                       f"tokenizer read as unknown ({extension.unknown_words} unknown words in "
                       f"the training texts, {extension.unknown_after} left{capped})")
    return extension


def _decoding(extension: vocab.Extension, labels: Labels) -> dict[str, str]:
    """`serving.tag_decoding` for the engine: BIO-constrained Viterbi for a tagger that reads
    added pieces (characters: on CAIS it fragments fewer spans, entity F1 +0.07), else the
    per-word argmax (absent: models tagging English words keep their outputs)."""
    return {"tag_decoding": "bio-viterbi"} if extension.added and labels.has_tags else {}


def _quantize(fp32_path: Path, fp32_outputs: Outputs, checked: list[Encoded], pad_id: int,
              checks: CheckThresholds,
              int8_path: Path) -> tuple[dict[str, Any], precision.Choice]:
    """Choose the served precision (`botfactory.training.precision`), quantising the fused
    graph when it fuses and checks out, else the plain export; returns the `fusion` record of
    metadata.json and the choice. With fp32 chosen, nothing is left at `int8_path`."""
    fused_path = fp32_path.with_name(FUSED_FILE)
    fusion = export.fuse_checked(fp32_path, fp32_outputs, checked, pad_id, checks, fused_path)

    def quantize(share: float) -> int:
        nonlocal fusion
        if fusion["fused"]:
            try:
                return export.quantize_int8(fused_path, int8_path, share)
            except TrainingError as exc:
                fusion = {"fused": False, "reason": str(exc)}
        return export.quantize_int8(fp32_path, int8_path, share)

    try:
        choice = precision.choose(quantize, lambda: export.run_onnx(int8_path, checked, pad_id),
                                  checked, fp32_outputs, checks)
    finally:
        fused_path.unlink(missing_ok=True)
    if choice.file != INT8_FILE:
        int8_path.unlink(missing_ok=True)
    return fusion, choice


def _heldout_outputs(checked_outputs: Outputs, heldout: list[Encoded], checked: list[Encoded],
                     served_path: Path, pad_id: int) -> Outputs | None:
    """The served graph's logits on the held-out split: the first rows of those on the check
    texts (which start with it), run again only when it did not fit there."""
    if not heldout:
        return None
    n = len(heldout)
    if checked[:n] != heldout:
        return export.run_onnx(served_path, heldout, pad_id)
    tags = checked_outputs.tag_logits
    return Outputs(checked_outputs.intent_logits[:n], None if tags is None else tags[:n])


def _threshold(job: Job, labels: Labels, heldout: list[Encoded],
               served: Outputs | None) -> threshold.Threshold:
    logits = served.intent_logits if served is not None else np.zeros((0, len(labels.intents)))
    return threshold.choose(logits, [item.label_id for item in heldout], labels.intents,
                            job.out_of_scope_intent, job.confidence_threshold)


def _calibrate(model: JointModel, heldout: list[Encoded], pad_id: int,
               progress: bool) -> Calibration | None:
    """Temperature scaling fitted on the held-out split (None without one)."""
    if not heldout:
        return None
    logits, _, _ = predict(model, heldout, pad_id)
    labels = np.array([item.label_id for item in heldout], dtype=np.int64)
    calibration = fit_temperature(logits, labels)
    _say(progress, f"calibrated on {len(heldout)} held-out texts: temperature "
                   f"{calibration.temperature:.2f}, ECE {calibration.ece_before:.3f} -> "
                   f"{calibration.ece_after:.3f}")
    return calibration


def check_set(heldout: list[Encoded], train: list[Encoded], seed: int,
              size: int = CHECK_TEXTS) -> list[Encoded]:
    """The texts the exports are checked on: the held-out split, then a seeded sample of the
    training texts not already in it, `size` in all (fewer when there are fewer)."""
    chosen = list(heldout[:size])
    seen = {item.text.text for item in chosen}
    rest = [item for item in train if item.text.text not in seen]
    random.Random(seed).shuffle(rest)
    for item in rest:
        if len(chosen) >= size:
            break
        if item.text.text not in seen:
            seen.add(item.text.text)
            chosen.append(item)
    return chosen


def _metrics(items: list[Encoded], labels: Labels, outputs: Outputs) -> Metrics:
    return evaluate(items, labels, outputs.intent_logits, outputs.tag_logits)


def _check_vocab(encoder: Any, vocab_size: int, description: str) -> None:
    embeddings = encoder.get_input_embeddings()
    rows = int(embeddings.weight.shape[0]) if embeddings is not None else vocab_size
    if vocab_size > rows:
        raise BaseModelError(f"base model {description!r}: tokenizer has {vocab_size} tokens, "
                             f"the encoder's embeddings only {rows}")


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("torch", "transformers", "onnx", "onnxruntime", "tokenizers"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


def require(condition: bool, message: str) -> None:
    """Raise DataError(message) unless `condition`."""
    if not condition:
        raise DataError(message)
