"""TensorRT: the parts that need no TensorRT (precision gating, FP32 layer choice, profiles,
engine files, cached builds with a fake builder) run everywhere; the ``tensorrt``-marked test
builds real engines and compares them with torch on a GPU host (skipped elsewhere)."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from avinpaint.config import preset
from avinpaint.model import Generator
from engines.backends import BackendOptions, TorchBackend
from engines.cache import BatchProfile, EngineCache, Precision
from engines.export import (
    ExportedGraph,
    example_faces,
    example_speaker_input,
    export_model,
    inpaint_spec,
    max_relative_error,
)
from engines.tensorrt import (
    ENGINE_FILE,
    ENGINE_MAGIC,
    BuildResult,
    EngineFileError,
    EngineMetadata,
    GpuInfo,
    PrecisionError,
    TensorRTFactory,
    ensure_engine,
    has_fast_fp16,
    profile_shapes,
    read_engine_file,
    resolve_precision,
    supported_version,
    unavailable_reason,
    write_engine_file,
)

H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))


def test_fp16_is_hardware_gated() -> None:
    assert has_fast_fp16((9, 0)) and has_fast_fp16((7, 5)) and has_fast_fp16((6, 0))
    assert not has_fast_fp16((6, 1))  # consumer Pascal: FP16 at 1/64 rate
    assert not has_fast_fp16((5, 2))
    assert resolve_precision("auto", fast_fp16=True) == "fp16"
    assert resolve_precision("auto", fast_fp16=False) == "fp32"
    assert resolve_precision("fp32", fast_fp16=True) == "fp32"
    with pytest.raises(PrecisionError, match="no fast FP16"):
        resolve_precision("fp16", fast_fp16=False)


def test_tensorrt_10_and_11_are_supported() -> None:
    assert supported_version("10.16.1.11") and supported_version("11.4.0.106")
    assert not supported_version("8.6.1") and not supported_version("12.0.0")
    assert not supported_version("") and not supported_version("dev")


def test_profile_shapes() -> None:
    low, opt, high = profile_shapes((-1, 3, 256, 256), BatchProfile.up_to(8))
    assert (low, opt, high) == ((1, 3, 256, 256), (1, 3, 256, 256), (8, 3, 256, 256))
    with pytest.raises(ValueError, match="dynamic batch"):
        profile_shapes((1, 3, 256, 256), BatchProfile.up_to(8))


def _metadata(precision: Precision = "fp16") -> EngineMetadata:
    return EngineMetadata(
        graph="inpaint",
        inputs=("face", "mask"),
        outputs=("inpainted",),
        precision=precision,
        profile=BatchProfile(1, 1, 8),
        tensorrt_version="10.3.0",
        gpu_name=H100.name,
        compute_capability=H100.compute_capability,
        onnx_sha256="ab" * 32,
        model_config=preset("lite").to_dict(),
        fp32_layers=12,
    )


def test_engine_file_round_trip_and_damage(tmp_path: Path) -> None:
    path = tmp_path / ENGINE_FILE
    write_engine_file(path, _metadata(), b"PLAN" * 10)
    metadata, plan = read_engine_file(path)
    assert metadata == _metadata() and plan == b"PLAN" * 10
    data = path.read_bytes()
    (tmp_path / "foreign").write_bytes(b"raw TensorRT plan without our header")
    with pytest.raises(EngineFileError, match="not an avstream"):
        read_engine_file(tmp_path / "foreign")
    (tmp_path / "short").write_bytes(data[:20])
    with pytest.raises(EngineFileError, match="truncated"):
        read_engine_file(tmp_path / "short")
    header = b"{}"
    (tmp_path / "bad").write_bytes(ENGINE_MAGIC + struct.pack("<I", 2) + header + b"x")
    with pytest.raises(EngineFileError, match="bad engine metadata"):
        read_engine_file(tmp_path / "bad")


def test_ensure_engine_builds_once_with_timing_cache(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    onnx = tmp_path / "inpaint.onnx"
    onnx.write_bytes(b"onnx")
    graph = ExportedGraph(inpaint_spec(), onnx, "cd" * 32)
    calls: list[tuple[Precision, BatchProfile, bytes]] = []

    def fake_builder(
        path: Path, precision: Precision, profile: BatchProfile, timing: bytes, workspace: int
    ) -> BuildResult:
        assert path == onnx and workspace == 1 << 20
        calls.append((precision, profile, timing))
        return BuildResult(plan=b"plan", timing_cache=timing + b"+", fp32_layers=7)

    def ensure(precision: Precision) -> Path:
        return ensure_engine(
            cache,
            graph,
            preset("lite"),
            precision,
            BatchProfile.up_to(8),
            H100,
            "10.3.0",
            workspace_bytes=1 << 20,
            builder=fake_builder,
        )

    first = ensure("fp16")
    assert ensure("fp16") == first  # cached: no second build
    second = ensure("fp32")  # another key: built, reusing the timing cache
    assert [c[0] for c in calls] == ["fp16", "fp32"]
    assert [c[2] for c in calls] == [b"", b"+"]
    timing = cache.timing_cache_path("trt10.3.0-NVIDIA-H100-80GB-HBM3-sm90")
    assert timing.read_bytes() == b"++"
    metadata, plan = read_engine_file(first)
    assert plan == b"plan" and metadata.precision == "fp16" and metadata.fp32_layers == 7
    assert metadata.inputs == graph.spec.inputs and metadata.onnx_sha256 == graph.sha256
    assert read_engine_file(second)[0].precision == "fp32"
    assert len(cache.entries(["tensorrt"])) == 2


def test_factory_reports_why_tensorrt_cannot_run_here(tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        pytest.skip("TensorRT and a GPU are present")
    reason = TensorRTFactory().unavailable_reason(BackendOptions(cache_dir=tmp_path))
    assert reason == unavailable_reason(0)
    assert reason is not None and ("tensorrt" in reason or "GPU" in reason)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_fp16_engine_matches_torch(tmp_path: Path) -> None:
    """On a GPU host with TensorRT 10 or 11: build FP16 (from the mixed FP16 graph,
    normalisation in FP32) and FP32 engines for a random lite model and compare them with
    torch. Never run so far (no such host)."""
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from engines.tensorrt import TensorRTBackend, build_engines

    torch.manual_seed(0)
    model = Generator(preset("lite")).eval()
    speaker_input = example_speaker_input(model.config, seed=1)
    face, mask = example_faces(model.config, 3, seed=2)
    with TorchBackend(model, "cpu") as reference:
        features = reference.speaker_features(speaker_input)
        expected = reference.inpaint(face, mask, features)
    export_model(model, tmp_path / "onnx")  # the export itself must work on the GPU host too
    tolerance = {"fp16": 2e-2, "fp32": 1e-3}
    for precision in ("fp16", "fp32"):
        options = BackendOptions(cache_dir=tmp_path / "cache", precision=precision, max_batch=4)
        speaker, inpaint, built, _ = build_engines(model, options)
        assert built == precision
        with TensorRTBackend(speaker, inpaint, model.config) as backend:
            assert backend.name == f"tensorrt-{precision}" and backend.max_batch == 4
            got_features = backend.speaker_features(speaker_input)
            for got, want in zip(got_features.arrays(), features.arrays(), strict=True):
                assert max_relative_error(got, want) <= tolerance[precision]
            out = backend.inpaint(face, mask, got_features)
            error = max_relative_error(out.inpainted, expected.inpainted)
            assert error <= tolerance[precision], (precision, error)
            known = np.broadcast_to(mask == 0, face.shape)
            assert np.abs(out.inpainted[known] - face[known]).max() <= tolerance[precision]
        # Built once: a second call finds both engines in the cache.
        assert build_engines(model, options)[:2] == (speaker, inpaint)
