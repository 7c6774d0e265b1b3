"""The sentence encoder at query and build time: an ONNX graph (mean pooling and L2
normalisation inside) run by onnxruntime over the `tokenizers` tokenizer.

Build and serving embed through this one class, so passages and queries live in the same space.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.common.textenc import load_tokenizer
from services.knowledge.errors import IndexLoadError

OUTPUT = "embeddings"


def onnx_session(path: Path, threads: int) -> ort.InferenceSession:
    """An onnxruntime CPU session with `threads` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise IndexLoadError(f"{path}: cannot load ONNX graph: {exc}") from exc


class SentenceEncoder:
    """Texts -> L2-normalised float32 vectors `[n, dim]`."""

    def __init__(self, model_path: Path, tokenizer_path: Path, max_length: int,
                 threads: int = 1) -> None:
        try:
            self._tokenizer = load_tokenizer(tokenizer_path, max_length)
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise IndexLoadError(f"{tokenizer_path}: {exc}") from exc
        self._session = onnx_session(model_path, threads)
        self.max_length = max_length
        try:
            probe = self._run(["warm up"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise IndexLoadError(f"{model_path}: inference failed: {exc}") from exc
        if probe.ndim != 2:
            raise IndexLoadError(f"{model_path}: output {OUTPUT!r} is not [batch, dim]")
        self.dim = int(probe.shape[1])

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings of `texts` in order, `batch_size` texts per run (sorted by length)."""
        result = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for offset in range(0, len(order), batch_size):
            chunk = order[offset:offset + batch_size]
            result[chunk] = self._run([texts[i] for i in chunk])
        return result

    def encode_one(self, text: str) -> np.ndarray:
        """The embedding of one text, `[dim]`."""
        vector: np.ndarray = self._run([text])[0]
        return vector

    def _run(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        outputs = self._session.run([OUTPUT], feeds)
        return np.ascontiguousarray(outputs[0], dtype=np.float32)
