"""The path every training job takes: load the base encoder, fine-tune, export to ONNX,
check, quantise, evaluate through the int8 model and write the model directory.

NLU (`botfactory.training.nlu`) and sentiment (`botfactory.training.sentiment`) jobs only
differ in their data and in the head set (`Job.with_tags`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from botfactory.training import export
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
from botfactory.training.trainer import (
    TrainConfig,
    deterministic,
    fit,
    predict,
    seed_everything,
)
from services.common.modelformat import (
    ENTITIES_FILE,
    FP32_FILE,
    INT8_FILE,
    LABELS_FILE,
    METADATA_FILE,
    MODEL_FORMAT,
    TOKENIZER_FILE,
    TORCH_DIR,
    content_version,
)
from services.common.textenc import load_tokenizer

EMPTY_ENTITIES: dict[str, Any] = {"synonyms": {}, "regex": {}, "lookup": {}}
CHECK_SAMPLE = 256  # training examples checked when there is no held-out split
EXPORTER = "torch.onnx.export(dynamo=True)"
QUANTIZATION = "onnxruntime.quantization.quantize_dynamic(weight_type=QInt8, per_channel=True)"
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
    confidence_threshold: float = 0.5
    out_of_scope_intent: str | None = None
    entities_config: dict[str, Any] = field(default_factory=lambda: dict(EMPTY_ENTITIES))
    info: dict[str, Any] = field(default_factory=dict)  # extra `training` entries


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
        init_from: Path | None = None) -> dict[str, Any]:
    """Train, export, check and write `out_dir` (atomically); returns the metadata.

    `init_from`: a model directory to fine-tune from (its encoder and heads; `base_model` is
    then not used), else the base encoder with fresh heads."""
    checks = checks or CheckThresholds()
    started = time.perf_counter()
    labels = make_labels([*job.train, *job.heldout], with_tags=job.with_tags)
    encoder, tokenizer_bytes, base_description, parent = _start(base_model, init_from, progress)
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
        result = fit(model, train, heldout, labels, config, pad_id, progress=progress)

        checked = heldout or train[:CHECK_SAMPLE]
        _say(progress, "exporting to ONNX")
        intent_logits, tag_logits, _ = predict(model, checked, pad_id)
        torch_outputs = Outputs(intent_logits, tag_logits)
        fp32_path, int8_path = staging / FP32_FILE, staging / INT8_FILE
        export.export_onnx(model, checked, pad_id, fp32_path)
        fp32_outputs = export.run_onnx(fp32_path, checked, pad_id)
        diff = export.check_onnx(torch_outputs, fp32_outputs, checked, checks)
        _say(progress, "fusing and quantising to int8")
        fusion = _quantize(fp32_path, fp32_outputs, checked, pad_id, checks, int8_path)
        int8_outputs = export.run_onnx(int8_path, checked, pad_id)
        agreement = export.check_int8(fp32_outputs, int8_outputs, checks)
        tags_agree = export.tag_agreement(checked, fp32_outputs, int8_outputs)

        metrics: dict[str, Any] = {"heldout": None}
        if heldout:
            metrics["heldout"] = _metrics(heldout, labels, int8_outputs).to_json()
        if test:
            _say(progress, f"evaluating the int8 model on {len(test)} test examples")
            test_outputs = export.run_onnx(int8_path, test, pad_id)
            metrics["test"] = _metrics(test, labels, test_outputs).to_json()

        save_torch(model, staging / TORCH_DIR)
        export.write_json(staging / LABELS_FILE, labels.to_json())
        export.write_json(staging / ENTITIES_FILE, job.entities_config)
        metadata = {
            "format": MODEL_FORMAT,
            "kind": job.kind,
            "bot": job.bot,
            "version": content_version(staging),
            "base_model": base_description,
            "parent": None if parent is None else {"version": parent.version,
                                                   "path": str(parent.path)},
            "max_length": job.max_length,
            "confidence_threshold": job.confidence_threshold,
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
                **job.info,
                "history": result.history,
            },
            "metrics": metrics,
            "checks": {
                "onnx_max_abs_diff": diff,
                "int8_intent_agreement": agreement,
                "int8_tag_agreement": tags_agree,
                "checked_on": "heldout" if heldout else "train",
                "n_checked": len(checked),
                "max_abs_diff_limit": checks.max_abs_diff,
                "min_int8_agreement": checks.min_int8_agreement,
            },
        }
        export.write_json(staging / METADATA_FILE, metadata)
    return metadata


def _quantize(fp32_path: Path, fp32_outputs: Outputs, checked: list[Encoded], pad_id: int,
              checks: CheckThresholds, int8_path: Path) -> dict[str, Any]:
    """Quantise the fused graph when it fuses and checks out, else the plain export;
    returns the `fusion` record of metadata.json."""
    fused_path = fp32_path.with_name(FUSED_FILE)
    fusion = export.fuse_checked(fp32_path, fp32_outputs, checked, pad_id, checks, fused_path)
    try:
        if fusion["fused"]:
            try:
                export.quantize_int8(fused_path, int8_path)
                return fusion
            except TrainingError as exc:
                fusion = {"fused": False, "reason": str(exc)}
        export.quantize_int8(fp32_path, int8_path)
        return fusion
    finally:
        fused_path.unlink(missing_ok=True)


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
