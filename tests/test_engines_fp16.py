"""The mixed FP16 graphs (``engines.fp16``): where the casts go, and that the shipped ``lite``
network's FP16 graphs compute what its FP32 graphs do, on onnxruntime's CPU provider.

onnxruntime's CPU provider has few FP16 kernels and computes the rest in FP32 behind casts it
inserts itself, so on CPU this measures the rounding of weights and of every tensor between
nodes to FP16, not FP16 arithmetic; FP16 arithmetic is checked by the GPU tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from avinpaint.checkpoint import load
from engines.backends import BackendOptions, OnnxRuntimeBackend
from engines.cache import EngineCache
from engines.export import (
    ExportedModel,
    ExportOptions,
    example_faces,
    example_speaker_input,
    export_cached,
    export_model,
    load_exported,
    max_relative_error,
)
from engines.fp16 import CAST_PREFIX, FP32_OPS, count_fp32_nodes, to_mixed_fp16

INPAINT_TOLERANCE = 5e-3
"""Max relative error of the FP16 inpaint graph against FP32 (measured on shipped lite:
2.9e-4 for the inpainted faces of this test's batch, 1.0e-3 for a batch of 2 with seed 0;
1.7e-4 for I_c)."""

SPEAKER_TOLERANCE = 2e-3
"""The same for the speaker graph's outputs (measured: <= 5.0e-4)."""


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExportedModel, ExportedModel]:
    model = load("lite").eval()
    root = tmp_path_factory.mktemp("fp16")
    fp32 = export_model(model, root / "fp32")
    fp16 = export_model(model, root / "fp16", ExportOptions(fp16=True))
    return fp32, fp16


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, ["CPUExecutionProvider"])


def test_shipped_lite_fp16_graphs_match_fp32(
    exports: tuple[ExportedModel, ExportedModel],
) -> None:
    fp32, fp16 = exports
    config = fp32.config
    speaker_input = example_speaker_input(config, seed=3)
    want_features = _session(fp32.speaker.path).run(None, {"speaker_input": speaker_input})
    got_features = _session(fp16.speaker.path).run(None, {"speaker_input": speaker_input})
    for got, want in zip(got_features, want_features, strict=True):
        assert got.dtype == np.float32  # FP32 at the graph's edges
        assert max_relative_error(got, want) <= SPEAKER_TOLERANCE
    face, mask = example_faces(config, 3, seed=4)
    names = ("embedding", "x16", "x32", "x64", "x128")
    feed = {"face": face, "mask": mask, **dict(zip(names, want_features, strict=True))}
    want = _session(fp32.inpaint.path).run(None, feed)
    got = _session(fp16.inpaint.path).run(None, feed)
    errors = [max_relative_error(g, w) for g, w in zip(got, want, strict=True)]
    assert max(errors) <= INPAINT_TOLERANCE, errors
    # FP16 is not a no-op: the rounding shows.
    assert min(errors) > 1e-6, errors
    known = np.broadcast_to(mask == 0, face.shape)
    assert np.abs(got[0][known] - face[known]).max() <= 2e-3  # known pixels are kept


def test_fp16_graph_keeps_normalisations_in_fp32(
    exports: tuple[ExportedModel, ExportedModel],
) -> None:
    fp32, fp16 = exports
    assert (fp32.inpaint.precision, fp16.inpaint.precision) == ("fp32", "fp16")
    assert load_exported(fp16.inpaint.path.parent).speaker.precision == "fp16"
    model = onnx.load(str(fp16.inpaint.path))
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    kept = [n for n in graph.node if n.op_type in FP32_OPS]
    # 13 instance norms and 4 AVFF global poolings in lite's inpaint graph.
    assert [n.op_type for n in kept].count("InstanceNormalization") == 13
    assert [n.op_type for n in kept].count("GlobalAveragePool") == 4
    assert count_fp32_nodes(model) == len(kept) == 17
    for node in kept:
        source = producers[node.input[0]]
        assert source.op_type == "Cast" and source.attribute[0].i == TensorProto.FLOAT
    weights = [t for t in graph.initializer if t.data_type in (TensorProto.FLOAT16, 1)]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
    for value in [*graph.input, *graph.output]:
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT, value.name
    # Half the bytes of the FP32 graph, give or take the casts.
    ratio = fp16.inpaint.path.stat().st_size / fp32.inpaint.path.stat().st_size
    assert 0.45 < ratio < 0.55


def test_casts_on_a_small_graph() -> None:
    """x -> Conv -> InstanceNormalization -> Relu -> y: the conv in FP16, the norm in FP32,
    one cast at each precision change, and the numbers of numpy's FP32 reference."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    scale = np.ones(4, np.float32)
    bias = np.zeros(4, np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("InstanceNormalization", ["c", "scale", "bias"], ["n"]),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [
            numpy_helper.from_array(a, n)
            for a, n in ((weight, "w"), (scale, "scale"), (bias, "bias"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    mixed = to_mixed_fp16(model)
    ops = [n.op_type for n in mixed.graph.node]
    assert ops == ["Cast", "Conv", "Cast", "InstanceNormalization", "Cast", "Relu", "Cast"]
    types = {t.name: t.data_type for t in mixed.graph.initializer}
    # The norm's parameters are used in FP32 only: they stay FP32; the conv's weight is FP16.
    assert types == {
        "w": TensorProto.FLOAT16,
        "scale": TensorProto.FLOAT,
        "bias": TensorProto.FLOAT,
    }
    assert all(n.name.startswith(CAST_PREFIX) for n in mixed.graph.node if n.op_type == "Cast")
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(mixed.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    reference = _conv_norm_relu(x, weight)
    assert y.dtype == np.float32
    assert 1e-5 < np.abs(y - reference).max() <= 1e-2


def _conv_norm_relu(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    padded = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((weight.shape[0], 8, 8), np.float64)
    for i in range(8):
        for j in range(8):
            patch = padded[:, i : i + 3, j : j + 3]
            out[:, i, j] = np.tensordot(weight, patch, axes=([1, 2, 3], [0, 1, 2]))
    mean = out.mean(axis=(1, 2), keepdims=True)
    var = out.var(axis=(1, 2), keepdims=True)
    return np.maximum((out - mean) / np.sqrt(var + 1e-5), 0.0)[None].astype(np.float32)


def test_conversion_errors() -> None:
    def scaled_by(factor: float) -> onnx.ModelProto:
        graph = helper.make_graph(
            [helper.make_node("Mul", ["x", "k"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
            [numpy_helper.from_array(np.array([factor], np.float32), "k")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    with pytest.raises(ValueError, match="beyond FP16's range"):
        to_mixed_fp16(scaled_by(1e6))
    original = scaled_by(2.0)
    mixed = to_mixed_fp16(original)
    assert original.graph.initializer[0].data_type == TensorProto.FLOAT  # input not modified
    with pytest.raises(ValueError, match="already holds FP16"):
        to_mixed_fp16(mixed)


def test_fp16_export_is_cached_apart_and_runs_in_the_cpu_backend(tmp_path: Path) -> None:
    model = load("lite").eval()
    cache = EngineCache(tmp_path)
    fp32 = export_cached(model, cache)
    fp16 = export_cached(model, cache, ExportOptions(fp16=True))
    assert fp32.inpaint.path.parent != fp16.inpaint.path.parent
    assert export_cached(model, cache, ExportOptions(fp16=True)) == fp16  # cached
    assert sorted(e.info["precision"] for e in cache.entries(["onnx"])) == ["fp16", "fp32"]
    options = BackendOptions(cache_dir=tmp_path, threads=1)
    face, mask = example_faces(model.config, 2, seed=5)
    speaker_input = example_speaker_input(model.config, seed=6)
    with (
        OnnxRuntimeBackend(fp32, "cpu", options) as reference,
        OnnxRuntimeBackend(fp16, "cpu", options) as half,
    ):
        assert (reference.name, half.name) == ("onnxruntime-cpu", "onnxruntime-cpu-fp16")
        features = reference.speaker_features(speaker_input)
        want = reference.inpaint(face, mask, features).inpainted
        got = half.inpaint(face, mask, half.speaker_features(speaker_input)).inpainted
    assert max_relative_error(got, want) <= INPAINT_TOLERANCE
