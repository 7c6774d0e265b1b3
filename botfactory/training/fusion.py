"""Fuse an exported encoder graph into onnxruntime's transformer operators before int8
quantisation (docs/model-format.md).

The dynamo exporter writes each attention layer as some twenty small operators, and a
padding mask built from `attention_mask` by as many more. onnxscript's ORT rewrites fold
them into `Attention`, `SkipLayerNormalization` and `BiasGelu`. Two more steps make the
attention quantisable (`QAttention`): the additive padding mask becomes the raw
`attention_mask` as the `mask_index` input, and the redundant `qkv_hidden_sizes`
attribute (q, k and v of one size) is dropped. The caller checks the fused graph against
the plain export before it quantises it; anything unexpected raises `FusionError` and the
plain export is quantised instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper

MASK_INPUT = "attention_mask"
MASK_INDEX = "attention_mask_int32"
FOLD_SIZE_LIMIT = 1 << 26
"""Bytes up to which constants are folded: the q, k and v weights become one tensor."""


class FusionError(Exception):
    """The graph could not be fused; the plain export serves."""


@dataclass(frozen=True)
class Fused:
    """Counts of the fused operators in the written graph, and of all its nodes."""

    operators: dict[str, int]
    nodes_before: int
    nodes_after: int

    def to_json(self) -> dict[str, object]:
        return {"operators": self.operators, "nodes_before": self.nodes_before,
                "nodes_after": self.nodes_after}


FUSED_OPS = ("Attention", "SkipLayerNormalization", "BiasGelu")


def fuse_for_ort(source: Path, target: Path) -> Fused:
    """Write the fused form of the graph at `source` to `target`."""
    import onnx_ir as ir
    import onnxscript.optimizer
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    original = onnx.load(str(source))
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the rewriter logs each pattern it tries
    try:
        fused, _ = optimize_for_ort(ir.from_proto(original))
        fused = onnxscript.optimizer.optimize(fused, input_size_limit=FOLD_SIZE_LIMIT,
                                              output_size_limit=FOLD_SIZE_LIMIT)
        proto = ir.to_proto(fused)
    except Exception as exc:  # the rewriter raises many exception types
        raise FusionError(f"onnxscript fusion failed: {exc}") from exc
    finally:
        logging.getLogger().setLevel(level)
    attention = [n for n in proto.graph.node if n.op_type == "Attention"]
    if not attention:
        raise FusionError("no attention layer was fused")
    _use_mask_index(proto.graph, attention)
    _prune(proto.graph)
    onnx.save(proto, str(target))
    counts = Counter(n.op_type for n in proto.graph.node)
    return Fused({op: counts[op] for op in FUSED_OPS}, len(original.graph.node),
                 len(proto.graph.node))


def _use_mask_index(graph: onnx.GraphProto, attention: list[onnx.NodeProto]) -> None:
    """Feed each attention the raw padding mask instead of the additive bias built from it."""
    inputs_of_graph = {i.name for i in graph.input}
    if MASK_INPUT not in inputs_of_graph:
        raise FusionError(f"the graph has no {MASK_INPUT!r} input")
    producers = {out: node for node in graph.node for out in node.output}
    for node in attention:
        inputs = list(node.input) + [""] * (6 - len(node.input))
        if any(inputs[3:5]) or not inputs[5] or len(node.input) > 6:
            raise FusionError(f"attention {node.name!r} has inputs {list(node.input)}, "
                              "expected a padding bias only")
        if _sources(inputs[5], producers) & inputs_of_graph != {MASK_INPUT}:
            raise FusionError(f"attention {node.name!r}: its bias does not come from "
                              f"{MASK_INPUT!r} alone")
        _drop_equal_qkv_sizes(node)
        del node.input[:]
        node.input.extend([*inputs[:3], MASK_INDEX])
    cast = helper.make_node("Cast", [MASK_INPUT], [MASK_INDEX], to=TensorProto.INT32,
                            name="mask_index_cast")
    first = next(i for i, n in enumerate(graph.node) if n.op_type == "Attention")
    graph.node.insert(first, cast)


def _sources(name: str, producers: dict[str, onnx.NodeProto]) -> set[str]:
    """The names `name` is computed from that no node produces (inputs, initialisers)."""
    seen: set[str] = set()
    found: set[str] = set()
    stack = [name]
    while stack:
        current = stack.pop()
        if current in seen or not current:
            continue
        seen.add(current)
        node = producers.get(current)
        if node is None:
            found.add(current)
        else:
            stack.extend(node.input)
    return found


def _drop_equal_qkv_sizes(node: onnx.NodeProto) -> None:
    """`qkv_hidden_sizes` of three equal sizes says nothing new and blocks QAttention."""
    kept = []
    for attribute in node.attribute:
        if attribute.name == "qkv_hidden_sizes":
            if len(set(attribute.ints)) != 1:
                raise FusionError(f"attention {node.name!r}: q, k and v sizes differ")
            continue
        kept.append(attribute)
    del node.attribute[:]
    node.attribute.extend(kept)


def _prune(graph: onnx.GraphProto) -> None:
    """Remove the nodes and initialisers no graph output depends on (the old mask)."""
    needed = {output.name for output in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initialisers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initialisers)
