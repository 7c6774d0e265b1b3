"""The model directory format (docs/model-format.md), shared by training and serving."""

from __future__ import annotations

import hashlib
from pathlib import Path

MODEL_FORMAT = 1
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
LABELS_FILE = "labels.json"
ENTITIES_FILE = "entities.json"
METADATA_FILE = "metadata.json"
# PyTorch weights of the fine-tuned model (benchmarks, warm-start retraining); not served,
# not part of the version hash nor of the published artifact.
TORCH_DIR = "torch"


def content_version(directory: Path) -> str:
    """The version of a model directory: the first 12 hex digits of sha256 over the bytes of
    every top-level file but metadata.json, in sorted name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir()
                       if p.is_file() and p.name != METADATA_FILE):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
