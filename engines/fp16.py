"""Mixed FP16 ONNX graphs: precision lives in the graph, not in builder flags.

TensorRT 11 builds strongly typed networks only (``BuilderFlag.FP16`` and per-layer precision
constraints are gone), so an FP16 engine needs a graph whose tensors already have the types
to run in. ``to_mixed_fp16`` rewrites an exported FP32 graph:

- float weights, constants and intermediate tensors become FP16;
- the nodes in ``FP32_OPS`` (instance normalisation, reductions, global pooling) run in FP32:
  their statistics over up to 64k pixels overflow or lose precision in FP16. Explicit
  ``Cast`` nodes take their inputs to FP32 and their outputs back to FP16;
- graph inputs and outputs stay FP32 (a ``Cast`` after each input, before each output), so a
  backend feeds and reads the same arrays for both graphs.

The same file serves TensorRT 10 and 11 (strongly typed), and onnxruntime's TensorRT and CUDA
providers. Pure graph rewriting: onnx only, no torch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP32_OPS = frozenset(
    {
        "InstanceNormalization",
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "LpNormalization",
        "GlobalAveragePool",
        "ReduceMean",
        "ReduceSum",
        "ReduceSumSquare",
        "ReduceL2",
        "ReduceLogSumExp",
        "Softmax",
    }
)
"""ONNX ops kept in FP32 in a mixed FP16 graph: normalisations and reductions."""

FP32_INPUTS: Mapping[str, frozenset[int]] = {
    "Resize": frozenset({1, 2}),
    "Upsample": frozenset({1}),
}
"""Inputs that ONNX requires in FP32 whatever the data type (Resize's roi and scales)."""

CAST_PREFIX = "avstream_fp16_cast"
"""Name prefix of the Cast nodes and tensors ``to_mixed_fp16`` inserts."""

FP16_MAX = float(np.finfo(np.float16).max)

FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16


def to_mixed_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the FP32 ``model`` computing in FP16 except ``FP32_OPS`` (see the module
    docstring). Raises ``ValueError`` for a graph that already holds FP16 tensors."""
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    types = _elem_types(model)
    if FLOAT16 in types.values():
        raise ValueError("the graph already holds FP16 tensors; convert an FP32 export")
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers[name].append((node, index))
    input_names = {i.name for i in graph.input}

    def wanted(node: onnx.NodeProto, index: int) -> int:
        if node.op_type in FP32_OPS or index in FP32_INPUTS.get(node.op_type, frozenset()):
            return FLOAT
        return FLOAT16

    # The type each float tensor has after the rewrite.
    produced: dict[str, int] = {i.name: FLOAT for i in graph.input if types.get(i.name) == FLOAT}
    for name, tensor in initializers.items():
        if tensor.data_type == FLOAT:
            uses = [wanted(n, i) for n, i in consumers[name]]
            produced[name] = FLOAT if uses and all(u == FLOAT for u in uses) else FLOAT16
    for node in graph.node:
        keep = node.op_type in FP32_OPS
        for name in node.output:
            if types.get(name) == FLOAT:
                produced[name] = FLOAT if keep else FLOAT16
        if not keep:
            _node_to_fp16(node)

    for name, tensor in initializers.items():
        if produced.get(name) == FLOAT16:
            tensor.CopyFrom(_array_to_fp16(tensor))

    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            suffix = "fp32" if to == FLOAT else "fp16"
            casts[key] = f"{CAST_PREFIX}/{name}/{suffix}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], name=casts[key], to=to))
        return casts[key]

    # Inputs first, so every Cast precedes its consumers (topological order is kept).
    for graph_input in graph.input:
        if graph_input.name in produced:
            for node, index in consumers[graph_input.name]:
                if wanted(node, index) == FLOAT16:
                    node.input[index] = cast(graph_input.name, FLOAT16)
    rewritten: list[onnx.NodeProto] = list(new_nodes)
    for node in graph.node:
        new_nodes.clear()
        for index, name in enumerate(node.input):
            have = produced.get(name)
            if have is not None and name not in input_names:  # inputs: cast above
                want = wanted(node, index)
                if have != want:
                    node.input[index] = cast(name, want)
        rewritten += [*new_nodes, node]
    # Graph outputs stay FP32: the last FP16 producer writes to a renamed tensor.
    for output in graph.output:
        if produced.get(output.name) == FLOAT16:
            inner = f"{CAST_PREFIX}/{output.name}/fp16"
            for node in rewritten:
                node.output[:] = [inner if o == output.name else o for o in node.output]
                node.input[:] = [inner if i == output.name else i for i in node.input]
            rewritten.append(
                helper.make_node("Cast", [inner], [output.name], name=f"{inner}/out", to=FLOAT)
            )
    del graph.node[:]
    graph.node.extend(rewritten)
    # Inferred intermediate types are stale now; runtimes infer them again.
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return model


def count_fp32_nodes(model: onnx.ModelProto) -> int:
    """Nodes of ``FP32_OPS`` in ``model``: how many run in FP32 in its mixed FP16 form."""
    return sum(node.op_type in FP32_OPS for node in model.graph.node)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        types[value.name] = value.type.tensor_type.elem_type
    return types


def _array_to_fp16(tensor: onnx.TensorProto) -> onnx.TensorProto:
    array = numpy_helper.to_array(tensor)
    if np.abs(array).max(initial=0.0) > FP16_MAX:
        raise ValueError(f"{tensor.name}: values beyond FP16's range ({FP16_MAX})")
    return numpy_helper.from_array(array.astype(np.float16), tensor.name)


def _node_to_fp16(node: onnx.NodeProto) -> None:
    """Float constants and target types of a node that runs in FP16."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == FLOAT:
            attribute.t.CopyFrom(_array_to_fp16(attribute.t))
        if node.op_type == "Cast" and attribute.name == "to" and attribute.i == FLOAT:
            attribute.i = FLOAT16
