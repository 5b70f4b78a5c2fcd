"""Backend selection (with the reasons it logs) and the onnxruntime and torch backends behind
the one Protocol."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from avinpaint.config import preset
from avinpaint.model import Generator
from engines.backends import (
    BACKEND_NAMES,
    Backend,
    BackendError,
    BackendOptions,
    BackendUnavailableError,
    OnnxRuntimeFactory,
    TorchBackend,
    TorchFactory,
    ort_providers,
    resolve_preference,
    select_backend,
)
from engines.export import (
    ExportedGraph,
    GraphSpec,
    example_faces,
    example_speaker_input,
    inpaint_spec,
    max_relative_error,
)


@pytest.fixture(scope="module")
def model() -> Generator:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return Generator(preset("lite")).eval()


@pytest.fixture(scope="module")
def options(tmp_path_factory: pytest.TempPathFactory) -> BackendOptions:
    return BackendOptions(cache_dir=tmp_path_factory.mktemp("cache"), threads=1, max_batch=4)


def test_auto_skips_tensorrt_and_cuda_here_with_reasons(
    model: Generator, options: BackendOptions, caplog: pytest.LogCaptureFixture
) -> None:
    """This host has no TensorRT and no GPU: auto lands on onnxruntime's CPU provider."""
    with caplog.at_level(logging.INFO, logger="engines"):
        selection = select_backend("auto", model, options)
    with selection.backend as backend:
        assert backend.name == "onnxruntime-cpu"
    reasons = {s.backend: s.reason for s in selection.skipped}
    assert list(reasons) == ["tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda"]
    assert "tensorrt" in reasons["tensorrt"]  # not installed (or no GPU, where it is)
    assert "TensorrtExecutionProvider" in reasons["onnxruntime-tensorrt"]
    assert "CUDAExecutionProvider" in reasons["onnxruntime-cuda"]
    logged = caplog.text
    for name, reason in reasons.items():
        assert f"backend {name} skipped: {reason}" in logged
    assert "backend onnxruntime-cpu selected" in logged


def test_explicit_preferences(model: Generator, options: BackendOptions) -> None:
    with select_backend("torch", model, options).backend as backend:
        assert backend.name == "torch-cpu"
    selection = select_backend("onnxruntime", model, options)
    with selection.backend as backend:
        assert backend.name == "onnxruntime-cpu"
    assert [s.backend for s in selection.skipped] == ["onnxruntime-tensorrt", "onnxruntime-cuda"]
    with pytest.raises(BackendUnavailableError, match="no backend for 'tensorrt'") as info:
        select_backend("tensorrt", model, options)
    assert [s.backend for s in info.value.skipped] == ["tensorrt"]


def test_resolve_preference() -> None:
    assert resolve_preference("auto") == BACKEND_NAMES
    assert resolve_preference("onnxruntime-cuda") == ("onnxruntime-cuda",)
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        resolve_preference("cuda")


@dataclass(frozen=True)
class _BrokenFactory:
    name: str

    def unavailable_reason(self, options: BackendOptions) -> str | None:
        return None

    def create(self, model: Generator, options: BackendOptions) -> Backend:
        raise BackendError("engine build failed: out of memory")


def test_a_backend_that_fails_to_start_is_skipped(
    model: Generator, options: BackendOptions
) -> None:
    factories = [_BrokenFactory("tensorrt"), TorchFactory()]
    selection = select_backend("auto", model, options, factories)
    assert selection.backend.name == "torch-cpu"
    skipped = {s.backend: s.reason for s in selection.skipped}
    assert skipped["tensorrt"] == "failed to start: engine build failed: out of memory"
    assert skipped["onnxruntime-cpu"] == "not registered"


def test_onnxruntime_matches_torch(model: Generator, options: BackendOptions) -> None:
    speaker_input = example_speaker_input(model.config, seed=4)
    face, mask = example_faces(model.config, 3, seed=5)
    with (
        TorchBackend(model) as reference,
        OnnxRuntimeFactory("cpu").create(model, options) as runtime,
    ):
        expected_features = reference.speaker_features(speaker_input)
        features = runtime.speaker_features(speaker_input)
        for got, want in zip(features.arrays(), expected_features.arrays(), strict=True):
            assert got.shape == want.shape and got.dtype == np.float32
            assert max_relative_error(got, want) <= 1e-4
        expected = reference.inpaint(face, mask, expected_features)
        out = runtime.inpaint(face, mask, features)
        assert out.inpainted.shape == (3, 3, 256, 256)
        assert max_relative_error(out.inpainted, expected.inpainted) <= 1e-4
        assert out.identity_code is not None and expected.identity_code is not None
        assert max_relative_error(out.identity_code, expected.identity_code) <= 1e-4


def test_input_checks(model: Generator) -> None:
    with TorchBackend(model) as backend:
        with pytest.raises(ValueError, match="speaker input must be float32"):
            backend.speaker_features(np.zeros((1, 64), np.float32))
        features = backend.speaker_features(example_speaker_input(model.config))
        face, mask = example_faces(model.config, 2)
        with pytest.raises(ValueError, match="mask must be"):
            backend.inpaint(face, mask[:1], features)
        with pytest.raises(ValueError, match="float32"):
            backend.inpaint(face.astype(np.float64), mask, features)  # type: ignore[arg-type]


def test_options_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        BackendOptions(cache_dir=tmp_path, max_batch=0)
    with pytest.raises(ValueError, match="precision"):
        BackendOptions(cache_dir=tmp_path, precision="int8")  # type: ignore[arg-type]


def test_onnxruntime_tensorrt_provider_setup(tmp_path: Path) -> None:
    """What the onnxruntime TensorRT provider is given (it cannot run here)."""
    spec = inpaint_spec()
    graph = ExportedGraph(spec, tmp_path / "inpaint.onnx", "ab" * 32)
    options = BackendOptions(cache_dir=tmp_path, max_batch=8)
    graph = ExportedGraph(spec, tmp_path / "inpaint.onnx", "ab" * 32, precision="fp16")
    providers = ort_providers("tensorrt", graph, options, tmp_path)
    assert [p for p, _ in providers] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    trt = providers[0][1]
    # Precision is in the graph: without the FP16 flag onnxruntime builds strongly typed.
    assert trt["trt_fp16_enable"] == "False"
    assert trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_timing_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "ort-tensorrt")
    assert trt["trt_profile_min_shapes"] == "face:1x3x256x256,mask:1x1x256x256"
    assert trt["trt_profile_max_shapes"] == "face:8x3x256x256,mask:8x1x256x256"
    speaker = ExportedGraph(
        GraphSpec("speaker", ("speaker_input",), ("embedding",), ()), tmp_path / "s", "cd" * 32
    )
    speaker_trt = ort_providers("tensorrt", speaker, options, tmp_path)[0][1]
    assert "trt_profile_min_shapes" not in speaker_trt  # static shapes need no profile
    assert ort_providers("cpu", graph, options, tmp_path) == [("CPUExecutionProvider", {})]


def test_torch_autocast_is_close_to_fp32_and_named(model: Generator) -> None:
    speaker_input = example_speaker_input(model.config, seed=7)
    face, mask = example_faces(model.config, 1, seed=8)
    with TorchBackend(model, "cpu") as fp32, TorchBackend(model, "cpu", torch.bfloat16) as bf16:
        assert (fp32.name, bf16.name) == ("torch-cpu", "torch-cpu-bf16")
        want = fp32.inpaint(face, mask, fp32.speaker_features(speaker_input)).inpainted
        got = bf16.inpaint(face, mask, bf16.speaker_features(speaker_input)).inpainted
    assert got.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: about 1e-2 relative, never the FP32 result itself.
    assert 1e-5 < max_relative_error(got, want) < 5e-2
    with pytest.raises(ValueError, match="autocast"):
        TorchBackend(model, "cpu", torch.int8)
