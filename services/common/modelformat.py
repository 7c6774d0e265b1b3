"""The model directory format (docs/model-format.md), shared by training and serving."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

MODEL_FORMAT = 1
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
LABELS_FILE = "labels.json"
ENTITIES_FILE = "entities.json"
METADATA_FILE = "metadata.json"
# The training texts held out of fine-tuning, as example ids (`example_id`): `botfactory test`
# on a bot folder evaluates on them. Absent in models trained before it was written.
HELDOUT_FILE = "heldout.json"
# PyTorch weights of the fine-tuned model (benchmarks, warm-start retraining); not served,
# not part of the version hash nor of the published artifact.
TORCH_DIR = "torch"
# The precisions a model can be served at (metadata.json `serving.precision`): int8 everywhere,
# int8 with the last weight matrices (heads, top layers) in fp32, or fp32.
PRECISIONS = ("int8", "mixed", "fp32")


def served_file(metadata: dict[str, object]) -> str:
    """The graph file the NLU serves for a model directory: `serving.file` of its metadata;
    model.int8.onnx for models written before training chose the precision."""
    serving = metadata.get("serving")
    if isinstance(serving, dict) and serving.get("file") in (FP32_FILE, INT8_FILE):
        return str(serving["file"])
    return INT8_FILE


def content_version(directory: Path) -> str:
    """The version of a model directory: the first 12 hex digits of sha256 over the bytes of
    every top-level file but metadata.json, in sorted name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir()
                       if p.is_file() and p.name != METADATA_FILE):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def example_id(intent: str, text: str) -> str:
    """The id of a labelled text in HELDOUT_FILE: 16 hex digits of sha256 over
    `intent TAB text` (the text is not kept in the model directory)."""
    return hashlib.sha256(f"{intent}\t{text}".encode()).hexdigest()[:16]


def heldout_record(pairs: Iterable[tuple[str, str]]) -> dict[str, object]:
    """The content of HELDOUT_FILE for (intent, text) pairs: sorted distinct ids."""
    return {"id": "sha256(intent TAB text)[:16]",
            "ids": sorted({example_id(intent, text) for intent, text in pairs})}
