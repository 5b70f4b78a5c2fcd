"""Runtime backends behind one Protocol, and the selection that picks one for this host.

A ``Backend`` runs the two exported graphs (``engines.export``) on host numpy arrays:
``speaker_features`` once per speaker window, ``inpaint`` per batch of faces. Backends:

=======================  ==============================================================
``tensorrt``             TensorRT engines built from the ONNX graphs (``engines.tensorrt``)
``onnxruntime-tensorrt`` onnxruntime with its TensorRT execution provider (+ CUDA fallback)
``onnxruntime-cuda``     onnxruntime with its CUDA execution provider
``onnxruntime-cpu``      onnxruntime on the CPU
``torch``                the ``Generator`` itself, eager (CUDA when torch sees a GPU)
=======================  ==============================================================

``select_backend(preference, model)`` walks the preference's list in that order, logs why each
backend it passes over was skipped, and returns the first that starts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self

import numpy as np
import numpy.typing as npt
import torch

from avinpaint.config import ModelConfig
from avinpaint.model import Generator, SpeakerFeatures
from engines.cache import EngineCache, default_cache_dir
from engines.export import (
    FACE,
    FEATURE_NAMES,
    IDENTITY_CODE,
    INPAINTED,
    MASK,
    SPEAKER_INPUT,
    ExportedGraph,
    ExportedModel,
    ExportOptions,
    export_cached,
    speaker_input_shape,
)

log = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]
RequestedPrecision = Literal["auto", "fp16", "fp32"]

BACKEND_NAMES: tuple[str, ...] = (
    "tensorrt",
    "onnxruntime-tensorrt",
    "onnxruntime-cuda",
    "onnxruntime-cpu",
    "torch",
)
"""Every backend, fastest first: the order ``auto`` tries them in."""

PREFERENCES: dict[str, tuple[str, ...]] = {
    "auto": BACKEND_NAMES,
    "tensorrt": ("tensorrt",),
    "onnxruntime": ("onnxruntime-tensorrt", "onnxruntime-cuda", "onnxruntime-cpu"),
    "torch": ("torch",),
}
"""What ``--backend`` accepts besides a single backend name, and the backends each one tries."""


class BackendError(Exception):
    """A backend cannot run here, or failed to start; the message says why in one line."""


class BackendUnavailableError(BackendError):
    """No backend of a preference could start; ``skipped`` holds every reason."""

    def __init__(self, preference: str, skipped: Sequence[Skipped]) -> None:
        self.preference = preference
        self.skipped = tuple(skipped)
        reasons = "; ".join(f"{s.backend}: {s.reason}" for s in skipped)
        super().__init__(f"no backend for '{preference}' can run here ({reasons})")


@dataclass(frozen=True, eq=False)
class SpeakerArrays:
    """The speaker graph's outputs for one window, batch 1, float32: what every face of every
    frame in that window shares."""

    embedding: Array
    x16: Array
    x32: Array
    x64: Array
    x128: Array

    def feed(self) -> dict[str, Array]:
        """Name -> array, as the inpaint graph's inputs are named."""
        return dict(zip(FEATURE_NAMES, self.arrays(), strict=True))

    def arrays(self) -> tuple[Array, Array, Array, Array, Array]:
        """The five arrays in graph order."""
        return (self.embedding, self.x16, self.x32, self.x64, self.x128)

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, Array]) -> SpeakerArrays:
        """From a name -> array mapping holding at least ``FEATURE_NAMES``."""
        return cls(*(np.ascontiguousarray(outputs[n], dtype=np.float32) for n in FEATURE_NAMES))


@dataclass(frozen=True, eq=False)
class InpaintArrays:
    """The inpaint graph's outputs: faces (B, 3, 256, 256) RGB in [-1, 1], known pixels kept,
    and I_c (B, identity_dim) when the graph has it."""

    inpainted: Array
    identity_code: Array | None


class Backend(Protocol):
    """Runs the speaker and inpaint graphs of one model. Not thread-safe: one caller at a time
    (``stream.model_inpainter.ModelInpainter`` serialises its calls)."""

    @property
    def name(self) -> str:
        """Backend and device, e.g. ``onnxruntime-cpu``, ``tensorrt-fp16``."""
        ...

    @property
    def config(self) -> ModelConfig:
        """The config of the model it runs."""
        ...

    @property
    def max_batch(self) -> int | None:
        """Most faces per ``inpaint`` call (an engine's profile), or None for no limit."""
        ...

    def speaker_features(self, speaker_input: Array) -> SpeakerArrays:
        """Speaker input of ``speaker_input_shape(config)`` -> features for one window."""
        ...

    def inpaint(self, face: Array, mask: Array, features: SpeakerArrays) -> InpaintArrays:
        """face (B, 3, 256, 256) RGB in [-1, 1], mask (B, 1, 256, 256) 1 = hole."""
        ...

    def close(self) -> None:
        """Release sessions, engines and device memory."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


@dataclass(frozen=True)
class BackendOptions:
    """How backends are built and run.

    Attributes:
        cache_dir: where exported graphs and engines are kept (``engines.cache``).
        max_batch: most faces per inpaint call; TensorRT profiles cover 1..max_batch.
        precision: TensorRT precision; ``auto`` is FP16 where the GPU has fast FP16.
        threads: onnxruntime intra-op threads, 0 = onnxruntime's default. Torch's thread
            count is process-wide: the caller sets it (``torch.set_num_threads``).
        device_id: CUDA device for the GPU backends.
        workspace_mib: TensorRT builder workspace.
    """

    cache_dir: Path = field(default_factory=default_cache_dir)
    max_batch: int = 8
    precision: RequestedPrecision = "auto"
    threads: int = 0
    device_id: int = 0
    workspace_mib: int = 2048

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.precision not in ("auto", "fp16", "fp32"):
            raise ValueError(f"precision must be auto, fp16 or fp32, got {self.precision!r}")
        if self.threads < 0 or self.device_id < 0 or self.workspace_mib < 1:
            raise ValueError("threads and device_id must be >= 0, workspace_mib >= 1")


class BackendFactory(Protocol):
    """Says whether one backend can run on this host, and starts it."""

    @property
    def name(self) -> str:
        """The backend's name in ``BACKEND_NAMES``."""
        ...

    def unavailable_reason(self, options: BackendOptions) -> str | None:
        """None when the backend can be tried here; else why not, in one line. Cheap: no
        export, no build."""
        ...

    def create(self, model: Generator, options: BackendOptions) -> Backend:
        """Export and build what is needed (cached) and start the backend; raises
        ``BackendError`` when that fails."""
        ...


@dataclass(frozen=True)
class Skipped:
    """A backend passed over by ``select_backend``, and why."""

    backend: str
    reason: str


@dataclass(frozen=True, eq=False)
class BackendSelection:
    """The backend ``select_backend`` started, and the ones it skipped before it."""

    backend: Backend
    skipped: tuple[Skipped, ...]


def resolve_preference(preference: str) -> tuple[str, ...]:
    """The backends a ``--backend`` value tries, in order: a preference in ``PREFERENCES`` or
    a single backend name."""
    if preference in PREFERENCES:
        return PREFERENCES[preference]
    if preference in BACKEND_NAMES:
        return (preference,)
    choices = ", ".join([*PREFERENCES, *BACKEND_NAMES[1:-1]])
    raise ValueError(f"unknown backend {preference!r}; choose one of {choices}")


def default_factories() -> tuple[BackendFactory, ...]:
    """One factory per name in ``BACKEND_NAMES``, in that order."""
    from engines.tensorrt import TensorRTFactory  # imports this module: import here, not above

    return (
        TensorRTFactory(),
        OnnxRuntimeFactory("tensorrt"),
        OnnxRuntimeFactory("cuda"),
        OnnxRuntimeFactory("cpu"),
        TorchFactory(),
    )


def select_backend(
    preference: str,
    model: Generator,
    options: BackendOptions | None = None,
    factories: Sequence[BackendFactory] | None = None,
) -> BackendSelection:
    """Start the first backend of ``preference`` that can run here.

    Each backend passed over is logged (INFO) with the reason: not installed, no GPU, or its
    start failed. Raises ``BackendUnavailableError`` listing every reason when none starts.
    """
    options = options or BackendOptions()
    by_name = {f.name: f for f in (factories if factories is not None else default_factories())}
    skipped: list[Skipped] = []
    for name in resolve_preference(preference):
        factory = by_name.get(name)
        reason = "not registered" if factory is None else factory.unavailable_reason(options)
        if factory is not None and reason is None:
            try:
                backend = factory.create(model, options)
            except BackendError as exc:
                reason = f"failed to start: {exc}"
            else:
                log.info("backend %s selected (%s)", backend.name, preference)
                return BackendSelection(backend, tuple(skipped))
        assert reason is not None
        log.info("backend %s skipped: %s", name, reason)
        skipped.append(Skipped(name, reason))
    raise BackendUnavailableError(preference, skipped)


# --- checks shared by every backend -----------------------------------------------------


def check_speaker_input(config: ModelConfig, speaker_input: Array) -> None:
    """Raise ``ValueError`` unless the speaker input has the graph's shape and is float32."""
    expected = speaker_input_shape(config)
    if speaker_input.shape != expected or speaker_input.dtype != np.float32:
        raise ValueError(
            f"speaker input must be float32 {expected}, got {speaker_input.dtype} "
            f"{speaker_input.shape}"
        )


def check_faces(config: ModelConfig, face: Array, mask: Array, max_batch: int | None) -> None:
    """Raise ``ValueError`` unless face and mask are float32 (B, 3, S, S) and (B, 1, S, S)."""
    size = config.image_size
    batch = face.shape[0] if face.ndim == 4 else -1
    if face.shape != (batch, config.image_channels, size, size) or batch < 1:
        raise ValueError(f"face must be (B, 3, {size}, {size}) with B >= 1, got {face.shape}")
    if mask.shape != (batch, 1, size, size):
        raise ValueError(f"mask must be ({batch}, 1, {size}, {size}), got {mask.shape}")
    if face.dtype != np.float32 or mask.dtype != np.float32:
        raise ValueError(f"face and mask must be float32, got {face.dtype} and {mask.dtype}")
    if max_batch is not None and batch > max_batch:
        raise ValueError(f"batch {batch} is larger than this backend's maximum {max_batch}")


# --- torch ------------------------------------------------------------------------------


class TorchBackend:
    """The ``Generator`` itself, eager: the reference the other backends are checked against.

    The model is moved to ``device`` and put in eval mode (the backend takes it over).
    ``autocast`` (``torch.float16`` or ``torch.bfloat16``) runs it under ``torch.autocast``:
    weights stay FP32, matrix products and convolutions run in that type, normalisations and
    reductions in FP32 (autocast's own op lists); outputs are FP32 arrays either way."""

    def __init__(
        self,
        model: Generator,
        device: str | torch.device = "cpu",
        autocast: torch.dtype | None = None,
    ) -> None:
        if autocast not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"autocast must be None, float16 or bfloat16, got {autocast}")
        self._device = torch.device(device)
        self._autocast = autocast
        self._model = model.to(self._device).eval()
        # The features of the last window on the device: reused while the window lasts.
        self._features: tuple[SpeakerArrays, SpeakerFeatures] | None = None

    @property
    def name(self) -> str:
        suffix = {None: "", torch.float16: "-fp16", torch.bfloat16: "-bf16"}[self._autocast]
        return f"torch-{self._device.type}{suffix}"

    @property
    def config(self) -> ModelConfig:
        return self._model.config

    @property
    def max_batch(self) -> int | None:
        return None

    def speaker_features(self, speaker_input: Array) -> SpeakerArrays:
        check_speaker_input(self.config, speaker_input)
        with torch.inference_mode(), self._autocasting():
            features = self._model.speaker_features(self._tensor(speaker_input))
            return SpeakerArrays(*(_numpy(t) for t in features[:5]))

    def inpaint(self, face: Array, mask: Array, features: SpeakerArrays) -> InpaintArrays:
        check_faces(self.config, face, mask, None)
        with torch.inference_mode(), self._autocasting():
            out = self._model.inpaint(
                self._tensor(face), self._tensor(mask), self._device_features(features)
            )
            return InpaintArrays(_numpy(out.inpainted), _numpy(out.identity_code))

    def close(self) -> None:
        self._features = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _autocasting(self) -> contextlib.AbstractContextManager[object]:
        if self._autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self._device.type, dtype=self._autocast)

    def _tensor(self, array: Array) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self._device)

    def _device_features(self, features: SpeakerArrays) -> SpeakerFeatures:
        if self._features is None or self._features[0] is not features:
            embedding, x16, x32, x64, x128 = (self._tensor(a) for a in features.arrays())
            empty = torch.zeros(0, device=self._device)
            self._features = (features, SpeakerFeatures(embedding, x16, x32, x64, x128, empty))
        return self._features[1]


def _numpy(tensor: torch.Tensor) -> Array:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())


@dataclass(frozen=True)
class TorchFactory:
    """The torch backend: always available; on CUDA when torch sees a GPU."""

    name: str = "torch"

    def unavailable_reason(self, options: BackendOptions) -> str | None:
        return None

    def create(self, model: Generator, options: BackendOptions) -> Backend:
        device = f"cuda:{options.device_id}" if torch.cuda.is_available() else "cpu"
        return TorchBackend(model, device)


# --- onnxruntime ------------------------------------------------------------------------

OrtProvider = Literal["tensorrt", "cuda", "cpu"]

ORT_EXECUTION_PROVIDERS: dict[OrtProvider, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}

ProviderList = list[tuple[str, dict[str, str]]]


def ort_providers(
    provider: OrtProvider,
    graph: ExportedGraph,
    options: BackendOptions,
    cache_root: Path,
) -> ProviderList:
    """onnxruntime's provider list for one graph. The TensorRT provider keeps its engines and
    timing cache under ``cache_root/ort-tensorrt`` (facefusion's set-up) and gets a profile
    for the dynamic face batch; CUDA runs what TensorRT cannot take.

    Precision lives in the graph (``ExportOptions.fp16``), never in provider flags: with
    ``trt_fp16_enable`` off onnxruntime builds a strongly typed TensorRT network (since
    onnxruntime 1.22, microsoft/onnxruntime#24298), which keeps the FP32 normalisations of the
    mixed FP16 graph where its FP16 flag would let TensorRT pick FP16 anywhere."""
    device = str(options.device_id)
    cuda: ProviderList = [("CUDAExecutionProvider", {"device_id": device})]
    if provider == "cpu":
        return [("CPUExecutionProvider", {})]
    if provider == "cuda":
        return cuda
    ort_cache = str(cache_root / "ort-tensorrt")
    trt_options = {
        "device_id": device,
        "trt_fp16_enable": "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": ort_cache,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": ort_cache,
        "trt_max_workspace_size": str(options.workspace_mib * 1024 * 1024),
    }
    if graph.spec.dynamic:
        inputs = [name for name in graph.spec.inputs if name in graph.spec.dynamic]
        shapes = {FACE: (3, 256, 256), MASK: (1, 256, 256)}

        def profile(batch: int) -> str:
            return ",".join(f"{n}:{'x'.join(map(str, (batch, *shapes[n])))}" for n in inputs)

        trt_options["trt_profile_min_shapes"] = profile(1)
        trt_options["trt_profile_opt_shapes"] = profile(1)
        trt_options["trt_profile_max_shapes"] = profile(options.max_batch)
    return [("TensorrtExecutionProvider", trt_options), *cuda]


class OnnxRuntimeBackend:
    """The two ONNX graphs in onnxruntime sessions with one execution provider.

    Raises ``BackendError`` when onnxruntime silently falls back to another provider (it does
    that when, e.g., the CUDA libraries are missing), so the name never lies."""

    def __init__(
        self,
        exported: ExportedModel,
        provider: OrtProvider,
        options: BackendOptions,
    ) -> None:
        import onnxruntime as ort

        self._ort: Any = ort
        self._config = exported.config
        self._provider = provider
        self._exported = exported
        cache = EngineCache(options.cache_dir)
        self._speaker = self._session(exported.speaker, options, cache)
        self._inpaint = self._session(exported.inpaint, options, cache)
        self._outputs = list(exported.inpaint.spec.outputs)

    @property
    def name(self) -> str:
        suffix = "-fp16" if self._exported.inpaint.precision == "fp16" else ""
        return f"onnxruntime-{self._provider}{suffix}"

    @property
    def config(self) -> ModelConfig:
        return self._config

    @property
    def max_batch(self) -> int | None:
        return None

    def speaker_features(self, speaker_input: Array) -> SpeakerArrays:
        check_speaker_input(self._config, speaker_input)
        outputs = self._speaker.run(list(FEATURE_NAMES), {SPEAKER_INPUT: speaker_input})
        return SpeakerArrays.from_outputs(dict(zip(FEATURE_NAMES, outputs, strict=True)))

    def inpaint(self, face: Array, mask: Array, features: SpeakerArrays) -> InpaintArrays:
        check_faces(self._config, face, mask, None)
        feed = {FACE: np.ascontiguousarray(face), MASK: np.ascontiguousarray(mask)}
        feed.update(features.feed())
        outputs = dict(zip(self._outputs, self._inpaint.run(self._outputs, feed), strict=True))
        return InpaintArrays(outputs[INPAINTED], outputs.get(IDENTITY_CODE))

    def close(self) -> None:
        # onnxruntime frees a session when the last reference goes.
        self._speaker = None
        self._inpaint = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _session(self, graph: ExportedGraph, options: BackendOptions, cache: EngineCache) -> Any:
        ort = self._ort
        session_options = ort.SessionOptions()
        if options.threads:
            session_options.intra_op_num_threads = options.threads
            session_options.inter_op_num_threads = 1
        session_options.log_severity_level = 3  # errors only: fallbacks are checked below
        providers = ort_providers(self._provider, graph, options, cache.root)
        try:
            if self._provider == "tensorrt":
                # onnxruntime builds and caches TensorRT engines itself: one process at a time.
                with cache.locked(cache.root / "ort-tensorrt" / f"{graph.sha256}.build"):
                    session = ort.InferenceSession(str(graph.path), session_options, providers)
            else:
                session = ort.InferenceSession(str(graph.path), session_options, providers)
        except Exception as exc:  # onnxruntime's errors are not one documented type
            raise BackendError(f"onnxruntime could not load {graph.path.name}: {exc}") from exc
        active = session.get_providers()
        wanted = ORT_EXECUTION_PROVIDERS[self._provider]
        if not active or active[0] != wanted:
            raise BackendError(
                f"onnxruntime could not start {wanted} (it fell back to {', '.join(active)}); "
                "are the CUDA / TensorRT libraries installed and a GPU visible?"
            )
        return session


@dataclass(frozen=True)
class OnnxRuntimeFactory:
    """onnxruntime with one execution provider."""

    provider: OrtProvider

    @property
    def name(self) -> str:
        return f"onnxruntime-{self.provider}"

    def unavailable_reason(self, options: BackendOptions) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed"
        wanted = ORT_EXECUTION_PROVIDERS[self.provider]
        available = list(ort.get_available_providers())
        if wanted in available:
            return None
        extra = {
            "tensorrt": "the onnxruntime-gpu package and TensorRT 10 libraries",
            "cuda": "the onnxruntime-gpu package and CUDA 12 libraries",
            "cpu": "a standard onnxruntime build",
        }[self.provider]
        return (
            f"onnxruntime {ort.__version__} has no {wanted} (it has {', '.join(available)}); "
            f"it needs {extra}"
        )

    def create(self, model: Generator, options: BackendOptions) -> Backend:
        fp16 = False
        if self.provider in ("tensorrt", "cuda"):
            # The GPU providers run the mixed FP16 graph where the GPU has fast FP16, the same
            # graph the native TensorRT backend builds from.
            from engines.tensorrt import gpu_info, has_fast_fp16, resolve_precision

            fast = torch.cuda.is_available() and has_fast_fp16(
                gpu_info(options.device_id).compute_capability
            )
            fp16 = resolve_precision(options.precision, fast) == "fp16"
        exported = export_cached(model, EngineCache(options.cache_dir), ExportOptions(fp16=fp16))
        return OnnxRuntimeBackend(exported, self.provider, options)
