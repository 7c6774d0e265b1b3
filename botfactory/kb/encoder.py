"""The sentence encoder for the knowledge base: the base encoder (all-MiniLM-L6-v2 by
default) with mean pooling and L2 normalisation, exported to ONNX, checked against torch,
quantised to int8 and checked again. Exports are cached by a hash of the base model's files.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from botfactory.training import export
from botfactory.training.errors import ExportCheckError, TrainingError
from botfactory.training.model import BaseModel, load_encoder, resolve_base_model, tokenizer_json
from services.knowledge.encoder import OUTPUT, SentenceEncoder
from services.knowledge.index import ENCODER_FILE, TOKENIZER_FILE

EXPORT_RECIPE = "mean-pooling+l2/opset18/int8-dynamic/v1"
"""Part of the cache key: change it when the export changes."""
CHECK_TEXTS = (
    "How do I block my card?",
    "International transfers are free for amounts under 1,000 EUR.",
    "what's the weather like tomorrow",
    "Branch opening hours: Monday to Friday, 9:00 to 17:00.",
    "Savings accounts pay 2.1% interest per year, paid monthly.",
    "I want to talk to a human",
    "The XG-400 card reader needs firmware 3.2 or later.",
    "Cash withdrawals abroad cost 2 EUR each, plus the exchange rate margin.",
)
MAX_LENGTH = 256
CACHE_INFO = "export.json"


@dataclass(frozen=True)
class EncoderChecks:
    """An export fails when ONNX fp32 differs from torch by more than `max_abs_diff`, or
    when the int8 embeddings' cosine to fp32 falls under `min_int8_cosine` for any text."""

    max_abs_diff: float = 1e-4
    min_int8_cosine: float = 0.9


@dataclass(frozen=True)
class ExportedEncoder:
    """A checked export: the int8 graph and tokenizer, plus what metadata.json records."""

    directory: Path
    base_model: str
    base_hash: str
    max_length: int
    dim: int
    checks: dict[str, float]

    @property
    def model_path(self) -> Path:
        return self.directory / ENCODER_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / TOKENIZER_FILE

    def load(self, threads: int = 2) -> SentenceEncoder:
        return SentenceEncoder(self.model_path, self.tokenizer_path, self.max_length, threads)


class PooledEncoder(nn.Module):
    """`(input_ids, attention_mask)` -> mean of the token states over the mask, L2-normalised."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self._token_types = "token_type_ids" in inspect.signature(encoder.forward).parameters

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._token_types:
            kwargs["token_type_ids"] = torch.zeros_like(input_ids)
        states = self.encoder(**kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        summed = (states * mask).sum(dim=1)
        mean = summed / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(mean, p=2.0, dim=1)


def base_model_hash(base: BaseModel) -> str:
    """sha256 (16 hex digits) over the base model folder's files and the export recipe; a hub
    name is hashed by name."""
    digest = hashlib.sha256(EXPORT_RECIPE.encode())
    if not base.local:
        digest.update(base.source.encode())
        return digest.hexdigest()[:16]
    for path in sorted(p for p in Path(base.source).rglob("*") if p.is_file()):
        digest.update(path.relative_to(base.source).as_posix().encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def exported_encoder(cache_dir: Path, base_model: str | None = None, *,
                     checks: EncoderChecks | None = None,
                     progress: bool = False) -> ExportedEncoder:
    """The checked int8 sentence encoder for `base_model`, exported once into `cache_dir`."""
    base = resolve_base_model(base_model)
    key = base_model_hash(base)
    target = cache_dir / key
    cached = _read_cached(target)
    if cached is not None:
        return cached
    _say(progress, f"exporting the sentence encoder {base.description} (once; cached)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{key}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        info = _export(base, key, staging, checks or EncoderChecks())
        export.write_json(staging / CACHE_INFO, info)
        with contextlib.suppress(OSError):  # a concurrent build may have won the race
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result = _read_cached(target)
    if result is None:
        raise TrainingError(f"{target}: encoder export left no usable files")
    return result


def _read_cached(directory: Path) -> ExportedEncoder | None:
    try:
        info = json.loads((directory / CACHE_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (directory / ENCODER_FILE).is_file() or not (directory / TOKENIZER_FILE).is_file():
        return None
    return ExportedEncoder(directory, str(info["base_model"]), str(info["base_hash"]),
                           int(info["max_length"]), int(info["dim"]), dict(info["checks"]))


def _export(base: BaseModel, key: str, staging: Path, checks: EncoderChecks) -> dict[str, Any]:
    model = PooledEncoder(load_encoder(base)).eval()
    (staging / TOKENIZER_FILE).write_bytes(tokenizer_json(base))
    max_length = min(MAX_LENGTH, _max_positions(model))
    encoder_fp32 = staging / "encoder.fp32.onnx"
    _export_onnx(model, encoder_fp32)
    tokenizer = staging / TOKENIZER_FILE
    reference = _torch_embeddings(model, tokenizer, max_length)
    fp32 = SentenceEncoder(encoder_fp32, tokenizer, max_length).encode(list(CHECK_TEXTS))
    diff = float(np.abs(fp32 - reference).max())
    if not diff <= checks.max_abs_diff:
        raise ExportCheckError(f"ONNX fp32 embeddings differ from torch by {diff:.3g} "
                               f"(> {checks.max_abs_diff:g})")
    export.quantize_int8(encoder_fp32, staging / ENCODER_FILE)
    encoder_fp32.unlink()
    int8 = SentenceEncoder(staging / ENCODER_FILE, tokenizer, max_length).encode(
        list(CHECK_TEXTS))
    cosine = float((int8 * fp32).sum(axis=1).min())
    if not cosine >= checks.min_int8_cosine:
        raise ExportCheckError(f"int8 embeddings' cosine to fp32 is {cosine:.3f} on some text "
                               f"(< {checks.min_int8_cosine})")
    return {"base_model": base.description, "base_hash": key, "recipe": EXPORT_RECIPE,
            "max_length": max_length, "dim": int(fp32.shape[1]),
            "checks": {"onnx_max_abs_diff": diff, "int8_min_cosine": cosine,
                       "n_checked": len(CHECK_TEXTS)}}


def _max_positions(model: PooledEncoder) -> int:
    config = getattr(model.encoder, "config", None)
    return int(getattr(config, "max_position_embeddings", MAX_LENGTH) or MAX_LENGTH)


def _torch_embeddings(model: PooledEncoder, tokenizer_path: Path, max_length: int) -> np.ndarray:
    from services.common.textenc import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path, max_length)
    encodings = tokenizer.encode_batch(list(CHECK_TEXTS))
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings])
    with torch.inference_mode():
        result: np.ndarray = model(ids, mask).numpy()
    return result


def _export_onnx(model: PooledEncoder, path: Path) -> None:
    """`torch.onnx.export` (dynamo, opset 18, one file), batch and sequence axes dynamic."""
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
    try:
        export.export_module(model, (ids, (ids != 0).long()), path, [OUTPUT])
    except Exception as exc:  # the exporter raises many exception types
        raise TrainingError(f"ONNX export of the sentence encoder failed: {exc}") from exc


def _say(enabled: bool, message: str) -> None:
    if enabled:
        import sys

        print(message, file=sys.stderr, flush=True)
