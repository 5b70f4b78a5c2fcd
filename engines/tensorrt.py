"""TensorRT 10 and 11: build engines from the exported ONNX graphs, cache them, run them.

Written against the TensorRT 10 and 11 Python APIs and **never run**: TensorRT does not
install on our development machines (no GPU, and its libraries come only from NVIDIA's
index). The module imports without TensorRT; everything that needs it goes through
``load_tensorrt()``, which raises ``TensorRTUnavailableError`` with the reason. Every
TensorRT name it uses is listed in ``TENSORRT_API`` and checked against the 10.x and 11.x
bindings' own strings (``tests/test_tensorrt_api.py``).

Build (``build_engine``): precision lives in the graph. An FP16 engine is built from the
mixed FP16 export (``engines.fp16``: normalisations and reductions in FP32 behind explicit
casts, because instance-norm statistics over 64k pixels overflow or lose precision in FP16),
an FP32 engine from the FP32 export; the network is strongly typed
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, the only mode of TensorRT 11, where the
flag is kept and ignored), so TensorRT runs each tensor in the type the graph gives it. No
``BuilderFlag.FP16``, ``OBEY_PRECISION_CONSTRAINTS`` or per-layer precision: 11.x removed
them. ONNX parser with the native InstanceNorm; one optimisation profile for the face batch
1..N; a persistent timing cache per TensorRT version and GPU type. Engines are written with a
metadata header (``write_engine_file``) so that the runtime checks it got the graph,
precision, TensorRT version and GPU it expects, and are cached by ``EngineKey``
(``engines.cache``).

Run (``TensorRTEngine``): tensor-address API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``) on a private CUDA stream; buffers are torch CUDA tensors (torch is a
dependency already; no pycuda / cuda-python needed). Timings include host-device copies.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import re
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import torch

from avinpaint.config import ModelConfig
from avinpaint.model import Generator
from engines.backends import (
    Array,
    Backend,
    BackendError,
    BackendOptions,
    InpaintArrays,
    RequestedPrecision,
    SpeakerArrays,
    check_faces,
    check_speaker_input,
)
from engines.cache import (
    BatchProfile,
    EngineCache,
    EngineKey,
    Precision,
    atomic_write_bytes,
)
from engines.export import (
    FACE,
    FEATURE_NAMES,
    IDENTITY_CODE,
    INPAINTED,
    MASK,
    SPEAKER_INPUT,
    ExportedGraph,
    ExportOptions,
    export_cached,
    read_graph,
)
from engines.fp16 import count_fp32_nodes

log = logging.getLogger(__name__)

ENGINE_FILE = "engine.plan"
ENGINE_MAGIC = b"AVSTRT01"
"""First bytes of our engine files: magic, then a uint32 (LE) JSON length, JSON, the plan."""

ENGINE_FORMAT_VERSION = 2
"""2: engines built strongly typed from the graph's own precision (1: builder flags)."""

SUPPORTED_MAJORS: tuple[int, ...] = (10, 11)
"""TensorRT major versions this module is written for: one code path for both."""

TENSORRT_API: frozenset[str] = frozenset(
    {
        "__version__",
        "Builder",
        "Builder.create_network",
        "Builder.create_builder_config",
        "Builder.create_optimization_profile",
        "Builder.build_serialized_network",
        "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
        "INetworkDefinition.num_inputs",
        "INetworkDefinition.get_input",
        "ITensor.shape",
        "ITensor.name",
        "OnnxParser",
        "OnnxParser.set_flag",
        "OnnxParser.parse_from_file",
        "OnnxParser.num_errors",
        "OnnxParser.get_error",
        "OnnxParserFlag.NATIVE_INSTANCENORM",
        "IBuilderConfig.set_memory_pool_limit",
        "IBuilderConfig.clear_flag",
        "IBuilderConfig.add_optimization_profile",
        "IBuilderConfig.create_timing_cache",
        "IBuilderConfig.set_timing_cache",
        "IBuilderConfig.get_timing_cache",
        "IOptimizationProfile.set_shape",
        "ITimingCache.serialize",
        "MemoryPoolType.WORKSPACE",
        "BuilderFlag.TF32",
        "ILogger",
        "ILogger.__init__",
        "ILogger.log",
        "ILogger.Severity",
        "ILogger.Severity.INTERNAL_ERROR",
        "ILogger.Severity.ERROR",
        "ILogger.Severity.WARNING",
        "Runtime",
        "Runtime.deserialize_cuda_engine",
        "ICudaEngine.create_execution_context",
        "ICudaEngine.num_io_tensors",
        "ICudaEngine.get_tensor_name",
        "ICudaEngine.get_tensor_mode",
        "ICudaEngine.get_tensor_dtype",
        "TensorIOMode.INPUT",
        "IExecutionContext.set_input_shape",
        "IExecutionContext.set_tensor_address",
        "IExecutionContext.get_tensor_shape",
        "IExecutionContext.execute_async_v3",
        "float32",
        "float16",
        "int32",
        "int64",
        "bool",
    }
)
"""Every TensorRT name this module uses, as ``Class.member`` (``trt.`` omitted): checked
against the 10.x and 11.x bindings by ``tests/test_tensorrt_api.py``."""


class TensorRTUnavailableError(BackendError):
    """TensorRT, a CUDA GPU or a compatible version is missing."""


class EngineBuildError(BackendError):
    """TensorRT could not parse the ONNX graph or build the engine."""


class EngineFileError(BackendError):
    """An engine file that is not ours, is damaged, or does not fit this host."""


class PrecisionError(BackendError):
    """The requested precision is not supported by this GPU."""


def load_tensorrt() -> Any:
    """The ``tensorrt`` module, or ``TensorRTUnavailableError`` saying why not."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"the tensorrt Python package is not installed ({exc.msg}); on an NVIDIA GPU host: "
            "pip install 'avstream[tensorrt]'"
        ) from exc
    version = str(getattr(trt, "__version__", "0"))
    if not supported_version(version):
        majors = " and ".join(str(m) for m in SUPPORTED_MAJORS)
        raise TensorRTUnavailableError(
            f"TensorRT {version} is installed; this code is written for TensorRT {majors}"
        )
    return trt


def supported_version(version: str) -> bool:
    """Whether a TensorRT version string (``10.16.1.11``) has a major in ``SUPPORTED_MAJORS``."""
    major = version.split(".")[0]
    return major.isdigit() and int(major) in SUPPORTED_MAJORS


def unavailable_reason(device_id: int = 0) -> str | None:
    """None when TensorRT and a CUDA GPU are usable here; else why not, in one line."""
    try:
        load_tensorrt()
    except TensorRTUnavailableError as exc:
        return str(exc)
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        return f"no CUDA GPU visible to torch {torch.__version__} ({build})"
    if device_id >= torch.cuda.device_count():
        return f"CUDA device {device_id} does not exist ({torch.cuda.device_count()} visible)"
    return None


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built for: engines only run on the same model of GPU."""

    name: str
    compute_capability: tuple[int, int]

    def slug(self) -> str:
        """File-name-safe ``name-smXY``."""
        major, minor = self.compute_capability
        return f"{re.sub(r'[^A-Za-z0-9]+', '-', self.name).strip('-')}-sm{major}{minor}"


def gpu_info(device_id: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device_id`` (via torch)."""
    major, minor = torch.cuda.get_device_capability(device_id)
    return GpuInfo(torch.cuda.get_device_name(device_id), (int(major), int(minor)))


def has_fast_fp16(compute_capability: tuple[int, int]) -> bool:
    """Whether a GPU runs FP16 at least as fast as FP32: sm_53, sm_60, sm_62 and sm_70+.
    (Consumer Pascal, sm_61, runs FP16 at 1/64 rate: an FP16 engine would be slower.)"""
    return compute_capability in {(5, 3), (6, 0), (6, 2)} or compute_capability >= (7, 0)


def resolve_precision(requested: RequestedPrecision, fast_fp16: bool) -> Precision:
    """``auto`` -> FP16 where the GPU has fast FP16, else FP32; an explicit ``fp16`` on a GPU
    without it is a ``PrecisionError``."""
    if requested == "fp32":
        return "fp32"
    if fast_fp16:
        return "fp16"
    if requested == "fp16":
        raise PrecisionError("this GPU has no fast FP16; use --precision fp32 or auto")
    return "fp32"


def profile_shapes(
    shape: tuple[int, ...], profile: BatchProfile
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes of an input whose axis 0 is the dynamic batch (-1)."""
    if not shape or shape[0] != -1 or any(d < 0 for d in shape[1:]):
        raise ValueError(f"expected a shape with only a dynamic batch axis, got {shape}")
    rest = shape[1:]
    return ((profile.min, *rest), (profile.opt, *rest), (profile.max, *rest))


# --- engine files -------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineMetadata:
    """What an engine was built from and for; written in front of the plan."""

    graph: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    precision: Precision
    profile: BatchProfile
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    onnx_sha256: str
    model_config: Mapping[str, Any]
    fp32_layers: int
    format_version: int = ENGINE_FORMAT_VERSION

    def to_json(self) -> str:
        """JSON text (tuples as lists)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngineMetadata:
        """Inverse of ``to_json``; ``ValueError`` on anything else."""
        try:
            data = json.loads(text)
            profile = data["profile"]
            return cls(
                graph=str(data["graph"]),
                inputs=tuple(data["inputs"]),
                outputs=tuple(data["outputs"]),
                precision=data["precision"],
                profile=BatchProfile(profile["min"], profile["opt"], profile["max"]),
                tensorrt_version=str(data["tensorrt_version"]),
                gpu_name=str(data["gpu_name"]),
                compute_capability=(
                    int(data["compute_capability"][0]),
                    int(data["compute_capability"][1]),
                ),
                onnx_sha256=str(data["onnx_sha256"]),
                model_config=dict(data["model_config"]),
                fp32_layers=int(data["fp32_layers"]),
                format_version=int(data["format_version"]),
            )
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"bad engine metadata: {exc}") from exc


def write_engine_file(path: Path, metadata: EngineMetadata, plan: bytes) -> None:
    """Write header + plan to ``path`` atomically."""
    header = metadata.to_json().encode()
    atomic_write_bytes(path, ENGINE_MAGIC + struct.pack("<I", len(header)) + header + plan)


def read_engine_file(path: Path) -> tuple[EngineMetadata, bytes]:
    """The metadata and plan of an engine file written by ``write_engine_file``."""
    data = path.read_bytes()
    prefix = len(ENGINE_MAGIC) + 4
    if len(data) < prefix or not data.startswith(ENGINE_MAGIC):
        raise EngineFileError(f"{path} is not an avstream TensorRT engine file")
    (length,) = struct.unpack("<I", data[len(ENGINE_MAGIC) : prefix])
    if len(data) < prefix + length:
        raise EngineFileError(f"{path} is truncated")
    try:
        metadata = EngineMetadata.from_json(data[prefix : prefix + length].decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise EngineFileError(f"{path}: {exc}") from exc
    if metadata.format_version != ENGINE_FORMAT_VERSION:
        raise EngineFileError(f"{path}: engine format {metadata.format_version} is not supported")
    plan = data[prefix + length :]
    if not plan:
        raise EngineFileError(f"{path} holds no engine")
    return metadata, plan


# --- build ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildResult:
    """A serialised engine, the updated timing cache, and how many normalisation and reduction
    nodes the graph keeps in FP32 (0 for an FP32 engine)."""

    plan: bytes
    timing_cache: bytes
    fp32_layers: int


EngineBuilder = Callable[[Path, Precision, BatchProfile, bytes, int], BuildResult]
"""(onnx path, precision, profile, timing cache bytes, workspace bytes) -> ``BuildResult``;
``build_engine`` is the real one, tests pass fakes."""


def build_engine(
    onnx_path: Path,
    precision: Precision,
    profile: BatchProfile,
    timing_cache: bytes,
    workspace_bytes: int,
) -> BuildResult:
    """Build a TensorRT engine from an exported graph whose precision (``read_graph``) is
    ``precision``. Never run (see the module docstring)."""
    graph_precision = read_graph(onnx_path)[1].precision
    if graph_precision != precision:
        raise EngineBuildError(
            f"{onnx_path.name} is an {graph_precision} graph, not the {precision} one asked for"
        )
    trt = load_tensorrt()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    # Strongly typed: every tensor runs in the type the graph gives it (the mixed FP16 export
    # keeps normalisations in FP32). TensorRT 11 is always strongly typed and ignores the flag.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    # The native layer (INormalizationLayer) rather than the InstanceNormalization plugin:
    # it computes in the type of its input, FP32 behind the graph's casts.
    parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp32":
        # TF32 is on by default on Ampere and later; "fp32" means FP32.
        builder_config.clear_flag(trt.BuilderFlag.TF32)
    dynamic = [
        network.get_input(i)
        for i in range(network.num_inputs)
        if tuple(network.get_input(i).shape)[:1] == (-1,)
    ]
    if dynamic:
        optimisation = builder.create_optimization_profile()
        for network_input in dynamic:
            low, opt, high = profile_shapes(tuple(network_input.shape), profile)
            optimisation.set_shape(network_input.name, low, opt, high)
        builder_config.add_optimization_profile(optimisation)
    timing = builder_config.create_timing_cache(timing_cache)
    builder_config.set_timing_cache(timing, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, builder_config)
    if plan is None:
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path.name}")
    updated = builder_config.get_timing_cache().serialize()
    fp32_nodes = fp32_node_count(onnx_path) if precision == "fp16" else 0
    log.info("TensorRT %s: %d normalisation/reduction nodes in FP32", precision, fp32_nodes)
    return BuildResult(bytes(memoryview(plan)), bytes(memoryview(updated)), fp32_nodes)


def fp32_node_count(onnx_path: Path) -> int:
    """The normalisation and reduction nodes of an exported graph (``engines.fp16``): those a
    mixed FP16 graph computes in FP32."""
    import onnx

    return count_fp32_nodes(onnx.load(str(onnx_path), load_external_data=False))


@functools.cache
def _logger(trt: Any) -> Any:
    """One ``trt.ILogger`` per process, routing TensorRT's messages to ``logging`` (the base
    class only exists once tensorrt is imported, hence defined here)."""
    severity = trt.ILogger.Severity

    class Logger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, level: Any, msg: str) -> None:
            if level in (severity.INTERNAL_ERROR, severity.ERROR):
                log.error("TensorRT: %s", msg)
            elif level == severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return Logger()


def timing_cache_name(tensorrt_version: str, gpu: GpuInfo) -> str:
    """Timing caches are only valid for one TensorRT version on one GPU type."""
    return f"trt{tensorrt_version}-{gpu.slug()}"


def ensure_engine(
    cache: EngineCache,
    graph: ExportedGraph,
    config: ModelConfig,
    precision: Precision,
    profile: BatchProfile,
    gpu: GpuInfo,
    tensorrt_version: str,
    workspace_bytes: int = 2 << 30,
    builder: EngineBuilder = build_engine,
) -> Path:
    """The cached engine file for ``graph``, built (once, across processes) when missing.

    Builds on one GPU type are serialised by the timing-cache lock: they share that file, and
    two builds timing kernels on one GPU at once would skew each other's measurements."""
    key = EngineKey(
        graph=graph.spec.name,
        onnx_sha256=graph.sha256,
        tensorrt_version=tensorrt_version,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=precision,
        profile=profile,
    )
    timing_path = cache.timing_cache_path(timing_cache_name(tensorrt_version, gpu))

    def create(directory: Path) -> dict[str, str]:
        with cache.locked(timing_path):
            timing = timing_path.read_bytes() if timing_path.is_file() else b""
            log.info("building TensorRT %s engine for %s", precision, graph.spec.name)
            result = builder(graph.path, precision, profile, timing, workspace_bytes)
            atomic_write_bytes(timing_path, result.timing_cache)
        metadata = EngineMetadata(
            graph=graph.spec.name,
            inputs=graph.spec.inputs,
            outputs=graph.spec.outputs,
            precision=precision,
            profile=profile,
            tensorrt_version=tensorrt_version,
            gpu_name=gpu.name,
            compute_capability=gpu.compute_capability,
            onnx_sha256=graph.sha256,
            model_config=config.to_dict(),
            fp32_layers=result.fp32_layers,
        )
        write_engine_file(directory / ENGINE_FILE, metadata, result.plan)
        return {"graph": graph.spec.name, "precision": precision, "gpu": gpu.name}

    return cache.get_or_create(key, create).path / ENGINE_FILE


# --- runtime --------------------------------------------------------------------------------


class TensorRTEngine:
    """One deserialised engine with its execution context and CUDA stream. Never run."""

    def __init__(self, path: Path, device_id: int = 0) -> None:
        trt = load_tensorrt()
        self.metadata, plan = read_engine_file(path)
        if self.metadata.tensorrt_version != trt.__version__:
            raise EngineFileError(
                f"{path} was built with TensorRT {self.metadata.tensorrt_version}, "
                f"this is {trt.__version__}: rebuild it (avstream engines build)"
            )
        gpu = gpu_info(device_id)
        if (gpu.name, gpu.compute_capability) != (
            self.metadata.gpu_name,
            self.metadata.compute_capability,
        ):
            raise EngineFileError(f"{path} was built for {self.metadata.gpu_name}, not {gpu.name}")
        self._device = torch.device("cuda", device_id)
        self._runtime = trt.Runtime(_logger(trt))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EngineFileError(f"TensorRT could not deserialise {path}")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream(device=self._device)  # type: ignore[no-untyped-call]
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = tuple(n for n in names if is_input[n])
        self.outputs = tuple(n for n in names if not is_input[n])
        if set(self.inputs) != set(self.metadata.inputs) or set(self.outputs) != set(
            self.metadata.outputs
        ):
            raise EngineFileError(f"{path}: engine tensors do not match its metadata")
        dtypes = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.int32: torch.int32,
            trt.int64: torch.int64,
            trt.bool: torch.bool,
        }
        self._dtypes = {n: dtypes[self._engine.get_tensor_dtype(n)] for n in names}

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run once; inputs on any device, outputs on the engine's GPU (synchronised)."""
        keep_alive = []
        outputs: dict[str, torch.Tensor] = {}
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            for name in self.inputs:
                tensor = inputs[name].to(self._device, self._dtypes[name]).contiguous()
                if not self._context.set_input_shape(name, tuple(tensor.shape)):
                    raise ValueError(
                        f"input {name} shape {tuple(tensor.shape)} is outside "
                        f"the engine's profile {self.metadata.profile.describe()}"
                    )
                self._context.set_tensor_address(name, tensor.data_ptr())
                keep_alive.append(tensor)  # the stream reads it until synchronised
            for name in self.outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                out = torch.empty(shape, dtype=self._dtypes[name], device=self._device)
                self._context.set_tensor_address(name, out.data_ptr())
                outputs[name] = out
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
        self._stream.synchronize()
        return outputs

    def close(self) -> None:
        """Free the context and engine (device memory) now rather than at garbage collection."""
        self._context = None
        self._engine = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class TensorRTBackend:
    """The speaker and inpaint engines of one model. Never run."""

    def __init__(
        self, speaker: Path, inpaint: Path, config: ModelConfig, device_id: int = 0
    ) -> None:
        self._config = config
        self._speaker = TensorRTEngine(speaker, device_id)
        try:
            self._inpaint = TensorRTEngine(inpaint, device_id)
        except BaseException:
            self._speaker.close()
            raise
        self._precision = self._inpaint.metadata.precision
        self._device = torch.device("cuda", device_id)
        # Execution contexts are not thread-safe; calls are serialised.
        self._lock = threading.Lock()
        self._features: tuple[SpeakerArrays, dict[str, torch.Tensor]] | None = None

    @property
    def name(self) -> str:
        return f"tensorrt-{self._precision}"

    @property
    def config(self) -> ModelConfig:
        return self._config

    @property
    def max_batch(self) -> int | None:
        return self._inpaint.metadata.profile.max

    def speaker_features(self, speaker_input: Array) -> SpeakerArrays:
        check_speaker_input(self._config, speaker_input)
        with self._lock:
            outputs = self._speaker.run({SPEAKER_INPUT: torch.from_numpy(speaker_input)})
        return SpeakerArrays.from_outputs(
            {n: outputs[n].float().cpu().numpy() for n in FEATURE_NAMES}
        )

    def inpaint(self, face: Array, mask: Array, features: SpeakerArrays) -> InpaintArrays:
        check_faces(self._config, face, mask, self.max_batch)
        with self._lock:
            # Copied to the GPU once per speaker window, not per call.
            if self._features is None or self._features[0] is not features:
                on_gpu = {
                    n: torch.from_numpy(a).to(self._device) for n, a in features.feed().items()
                }
                self._features = (features, on_gpu)
            feed = {FACE: torch.from_numpy(face), MASK: torch.from_numpy(mask)}
            feed.update(self._features[1])
            outputs = self._inpaint.run(feed)
        identity = outputs.get(IDENTITY_CODE)
        return InpaintArrays(
            np.ascontiguousarray(outputs[INPAINTED].float().cpu().numpy()),
            None if identity is None else np.ascontiguousarray(identity.float().cpu().numpy()),
        )

    def close(self) -> None:
        self._features = None
        self._speaker.close()
        self._inpaint.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def build_engines(
    model: Generator, options: BackendOptions
) -> tuple[Path, Path, Precision, GpuInfo]:
    """Export (cached) and build (cached) both engines of ``model`` for this host's GPU:
    (speaker engine, inpaint engine, precision, GPU)."""
    trt = load_tensorrt()
    reason = unavailable_reason(options.device_id)
    if reason is not None:
        raise TensorRTUnavailableError(reason)
    gpu = gpu_info(options.device_id)
    precision = resolve_precision(options.precision, has_fast_fp16(gpu.compute_capability))
    cache = EngineCache(options.cache_dir)
    # The graph carries the precision: the mixed FP16 export for FP16 engines.
    exported = export_cached(model, cache, ExportOptions(fp16=precision == "fp16"))
    workspace = options.workspace_mib * 1024 * 1024
    speaker = ensure_engine(
        cache,
        exported.speaker,
        model.config,
        precision,
        BatchProfile(1, 1, 1),  # one speaker window at a time
        gpu,
        trt.__version__,
        workspace,
    )
    inpaint = ensure_engine(
        cache,
        exported.inpaint,
        model.config,
        precision,
        BatchProfile.up_to(options.max_batch),
        gpu,
        trt.__version__,
        workspace,
    )
    return speaker, inpaint, precision, gpu


@dataclass(frozen=True)
class TensorRTFactory:
    """The native TensorRT backend."""

    name: str = "tensorrt"

    def unavailable_reason(self, options: BackendOptions) -> str | None:
        return unavailable_reason(options.device_id)

    def create(self, model: Generator, options: BackendOptions) -> Backend:
        try:
            speaker, inpaint, _, _ = build_engines(model, options)
            return TensorRTBackend(speaker, inpaint, model.config, options.device_id)
        except BackendError:
            raise
        except Exception as exc:  # TensorRT's bindings raise several undocumented types
            raise BackendError(f"TensorRT failed: {type(exc).__name__}: {exc}") from exc
