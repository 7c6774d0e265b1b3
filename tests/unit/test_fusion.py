"""The ORT fusion pass refuses graphs it cannot fuse safely (its success path is tested by
the training tests, which fuse real exports)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from botfactory.training.fusion import FusionError, fuse_for_ort

HIDDEN = 8


def save(path: Path, nodes: list[onnx.NodeProto], inputs: list[str]) -> Path:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(name, TensorProto.INT64 if "mask" in name or "ids" in
                                       name else TensorProto.FLOAT, None) for name in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, [HIDDEN, 3 * HIDDEN],
                            [0.1] * (3 * HIDDEN * HIDDEN)),
         helper.make_tensor("b", TensorProto.FLOAT, [3 * HIDDEN], [0.0] * (3 * HIDDEN))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path))
    return path


def attention(bias: str) -> onnx.NodeProto:
    return helper.make_node("Attention", ["x", "w", "b", "", "", bias], ["y"], num_heads=2,
                            domain="com.microsoft", name="attention_0")


def test_a_graph_without_attention_is_refused(tmp_path: Path) -> None:
    source = save(tmp_path / "plain.onnx", [helper.make_node("Relu", ["x"], ["y"])], ["x"])
    with pytest.raises(FusionError, match="no attention layer was fused"):
        fuse_for_ort(source, tmp_path / "fused.onnx")
    assert not (tmp_path / "fused.onnx").exists()


def test_an_attention_bias_not_from_the_padding_mask_is_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("Cast", ["other"], ["bias"], to=TensorProto.FLOAT), attention("bias")]
    source = save(tmp_path / "model.onnx", nodes, ["x", "attention_mask", "other"])
    with pytest.raises(FusionError, match="does not come from 'attention_mask' alone"):
        fuse_for_ort(source, tmp_path / "fused.onnx")


def test_a_graph_without_the_mask_input_is_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("Cast", ["other"], ["bias"], to=TensorProto.FLOAT), attention("bias")]
    source = save(tmp_path / "model.onnx", nodes, ["x", "other"])
    with pytest.raises(FusionError, match="no 'attention_mask' input"):
        fuse_for_ort(source, tmp_path / "fused.onnx")
