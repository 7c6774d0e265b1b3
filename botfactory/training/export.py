"""ONNX export, the torch/ONNX and int8/fp32 checks, int8 quantisation, the version hash and
the atomic write of a model directory (docs/model-format.md)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from botfactory.training.data import Encoded, batches, collate
from botfactory.training.errors import ExportCheckError, TrainingError
from botfactory.training.model import ExportWrapper, JointModel
from services.common.modelformat import (
    METADATA_FILE,
)
from services.common.textenc import IGNORE_LABEL

OPSET = 18
INPUT_NAMES = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class CheckThresholds:
    """An export fails when ONNX fp32 differs from torch by more than `max_abs_diff`.

    The served precision (`botfactory.training.precision`) is int8 unless the share of texts
    whose intent differs from fp32's (or of words whose tag differs) is measurably above
    `max_int8_disagreement`; then int8 with the last weight matrices in fp32, or fp32.
    `require_int8`: fail (ExportCheckError) instead of serving anything but full int8."""

    max_abs_diff: float = 1e-3
    max_int8_disagreement: float = 0.01
    require_int8: bool = False


@dataclass(frozen=True)
class Outputs:
    """Logits of a set of items: classes `[n, n_classes]`, per item tags `[tokens, n_tags]`."""

    intent_logits: np.ndarray
    tag_logits: list[np.ndarray] | None


def export_onnx(model: JointModel, sample: Sequence[Encoded], pad_id: int, path: Path,
                temperature: float = 1.0) -> None:
    """Export the eval-mode model with `torch.onnx.export` (the dynamo exporter, opset 18,
    one self-contained file); inputs int64 `[batch, sequence]`, both axes dynamic; the
    intent logits divided by `temperature`."""
    model.eval()
    wrapper = ExportWrapper(model, temperature).eval()
    items = list(sample[:2]) if len(sample) >= 2 else [sample[0], sample[0]]
    example = collate(items, pad_id, min_length=3)  # sizes > 1: no specialisation
    try:
        export_module(wrapper, (example.input_ids, example.attention_mask), path,
                      wrapper.output_names)
    except Exception as exc:  # the exporter raises many exception types
        raise TrainingError(f"ONNX export failed: {exc}") from exc


def export_module(module: torch.nn.Module, inputs: tuple[torch.Tensor, torch.Tensor], path: Path,
                  output_names: Sequence[str]) -> None:
    """`torch.onnx.export` of a module taking (input_ids, attention_mask): the dynamo
    exporter, opset 18, one self-contained file, batch and sequence axes dynamic; the
    exporter's warnings and progress output silenced."""
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    log_level = logging.getLogger("torch").level
    logging.getLogger("torch").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, inputs, str(path), input_names=list(INPUT_NAMES),
                output_names=list(output_names),
                dynamic_shapes={"input_ids": dims, "attention_mask": dims},
                opset_version=OPSET, dynamo=True, external_data=False, optimize=True,
                verbose=False, report=False)
    finally:
        logging.getLogger("torch").setLevel(log_level)


def session(path: Path) -> Any:
    """An onnxruntime CPU session for `path`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: Path, items: Sequence[Encoded], pad_id: int,
             batch_size: int = 32) -> Outputs:
    """Logits of `items` from the ONNX model at `path`, in padded batches."""
    onnx_session = session(path)
    names = [output.name for output in onnx_session.get_outputs()]
    intents: list[np.ndarray] = []
    tags: list[np.ndarray] | None = [] if "tag_logits" in names else None
    for batch in batches(items, batch_size, pad_id):
        feeds = {"input_ids": batch.input_ids.numpy(),
                 "attention_mask": batch.attention_mask.numpy()}
        results = dict(zip(names, onnx_session.run(names, feeds), strict=True))
        intents.append(results["intent_logits"])
        if tags is not None:
            tags.extend(results["tag_logits"])
    return Outputs(np.concatenate(intents), tags)


def max_abs_diff(items: Sequence[Encoded], a: Outputs, b: Outputs) -> float:
    """Largest absolute difference of the logits (tag logits on each item's real tokens)."""
    diff = float(np.abs(a.intent_logits - b.intent_logits).max())
    if a.tag_logits is not None and b.tag_logits is not None:
        for item, x, y in zip(items, a.tag_logits, b.tag_logits, strict=True):
            n = len(item.encoding.ids)
            diff = max(diff, float(np.abs(x[:n] - y[:n]).max()))
    return diff


def intent_agreement(a: Outputs, b: Outputs) -> float:
    """Fraction of items whose class argmax is the same in both."""
    return float(np.mean(a.intent_logits.argmax(axis=-1) == b.intent_logits.argmax(axis=-1)))


def tag_disagreements(items: Sequence[Encoded], a: Outputs,
                      b: Outputs) -> tuple[int, int] | None:
    """(words whose tag argmax differs, words) over the items' labelled positions (the first
    piece of each word, where serving reads a word's tag); None for a classification-only
    model."""
    if a.tag_logits is None or b.tag_logits is None:
        return None
    differ = total = 0
    for item, x, y in zip(items, a.tag_logits, b.tag_logits, strict=True):
        positions = [i for i, label in enumerate(item.tag_labels) if label != IGNORE_LABEL]
        differ += int(np.sum(x[positions].argmax(axis=-1) != y[positions].argmax(axis=-1)))
        total += len(positions)
    return differ, total


def tag_agreement(items: Sequence[Encoded], a: Outputs, b: Outputs) -> float | None:
    """Fraction of the items' words whose tag argmax is the same in both (None for a
    classification-only model or no words)."""
    counts = tag_disagreements(items, a, b)
    if counts is None or counts[1] == 0:
        return None
    return 1.0 - counts[0] / counts[1]


def check_onnx(torch_outputs: Outputs, onnx_outputs: Outputs, items: Sequence[Encoded],
               thresholds: CheckThresholds) -> float:
    """The fp32 ONNX vs torch max abs diff; raises ExportCheckError above the threshold."""
    diff = max_abs_diff(items, torch_outputs, onnx_outputs)
    if not diff <= thresholds.max_abs_diff:  # NaN fails too
        raise ExportCheckError(f"ONNX fp32 output differs from torch by {diff:.3g} "
                               f"(> {thresholds.max_abs_diff:g}) on {len(items)} examples")
    return diff


def quantize_int8(source: Path, target: Path, fp32_share: float = 0.0) -> int:
    """Dynamic int8 quantisation (onnxruntime), one scale per weight column (per channel: on
    all-MiniLM-L6-v2 its logits stay much closer to fp32 than with one scale per matrix),
    after its pre-processing (ONNX shape inference and graph optimisation) when that
    succeeds. `fp32_share`: the last this share of the weight matrices in graph order (the
    heads and the top layers) stay fp32. Returns how many weight matrices stay fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_name(target.name + ".pre.onnx")
    quant_logger = logging.getLogger()
    level = quant_logger.level
    quant_logger.setLevel(logging.ERROR)  # quantize_dynamic logs advice on the root logger
    try:
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            model_input = prepared
        except Exception:  # pre-processing is an optimisation: quantise the export as is
            model_input = source
        kept = _last_weight_nodes(onnx.load(str(model_input)), fp32_share)
        quantize_dynamic(str(model_input), str(target), weight_type=QuantType.QInt8,
                         per_channel=True, nodes_to_exclude=kept,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    except Exception as exc:
        raise TrainingError(f"int8 quantisation failed: {exc}") from exc
    finally:
        quant_logger.setLevel(level)
        prepared.unlink(missing_ok=True)
    return len(kept)


WEIGHT_OPS = ("MatMul", "Gemm", "Attention")


def _last_weight_nodes(model: Any, share: float) -> list[str]:
    """Names of the last `share` of the nodes that multiply by a weight matrix, in graph
    (topological) order; at least one when `share` > 0."""
    if share <= 0:
        return []
    weights = {initializer.name for initializer in model.graph.initializer}
    names = [node.name for node in model.graph.node
             if node.op_type in WEIGHT_OPS and any(name in weights for name in node.input)]
    count = min(len(names), max(1, round(len(names) * share)))
    return names[len(names) - count:]


def fuse_checked(fp32_path: Path, fp32_outputs: Outputs, items: Sequence[Encoded], pad_id: int,
                 thresholds: CheckThresholds, target: Path) -> dict[str, Any]:
    """Write the ORT-fused form of the fp32 graph to `target` when it fuses and its logits
    match the plain graph's within `thresholds.max_abs_diff`; returns what was done (the
    `fusion` entry of metadata.json). On `{"fused": false}` nothing is at `target`."""
    from botfactory.training.fusion import FusionError, fuse_for_ort

    try:
        fused = fuse_for_ort(fp32_path, target)
        diff = max_abs_diff(items, fp32_outputs, run_onnx(target, items, pad_id))
    except (FusionError, OSError) as exc:
        target.unlink(missing_ok=True)
        return {"fused": False, "reason": str(exc)}
    except Exception as exc:  # onnxruntime raises its own types for a graph it cannot run
        target.unlink(missing_ok=True)
        return {"fused": False, "reason": f"the fused graph does not run: {exc}"}
    if not diff <= thresholds.max_abs_diff:  # NaN fails too
        target.unlink(missing_ok=True)
        return {"fused": False, "reason": f"fused logits differ by {diff:.3g}"}
    return {"fused": True, "max_abs_diff": diff, **fused.to_json()}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@contextlib.contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A fresh temp folder beside `out_dir`; on success it replaces `out_dir` (an existing
    model directory is swapped out and removed), on failure it is removed and `out_dir`
    is left as it was."""
    out_dir = out_dir.absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainingError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / METADATA_FILE).is_file():
        raise TrainingError(f"{out_dir}: not empty and not a model directory; "
                            "refusing to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    temp = out_dir.with_name(f".{out_dir.name}.tmp-{token}")
    temp.mkdir()
    try:
        yield temp
        old = out_dir.with_name(f".{out_dir.name}.old-{token}")
        if out_dir.exists():
            out_dir.rename(old)
        try:
            temp.rename(out_dir)
        except OSError:
            if old.exists():
                old.rename(out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
