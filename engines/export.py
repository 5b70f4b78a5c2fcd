"""Export the generator to two ONNX graphs, the contract every runtime backend builds on.

``speaker`` depends on the speaker window only and runs about once a second; ``inpaint`` runs
for every face and takes the speaker graph's outputs as plain inputs::

    speaker:  speaker_input (1, 256) ge2e | (1, n_mels, n_frames) wen2019
              -> embedding (1, D), x16, x32, x64, x128 [, audio_face (1, 3, 256, 256)]
    inpaint:  face (B, 3, 256, 256) RGB in [-1, 1], mask (B, 1, 256, 256) 1 = hole,
              embedding (1, D), x16, x32, x64, x128 (batch 1, shared by every face)
              -> inpainted (B, 3, 256, 256) [, identity_code (B, identity_dim)]

The face batch ``B`` is dynamic; the speaker batch is fixed at 1 because one speaker window is
shared by every face of a batch (broadcast inside the graph), which keeps TensorRT profiles to
one dynamic axis. Names, the graph kind and the model config are written into each file's
``metadata_props`` so exporter and runtime agree on what a file holds.

``ExportOptions(fp16=True)`` writes the mixed FP16 form of both graphs (``engines.fp16``:
FP16 weights and activations, normalisations and reductions in FP32 behind explicit casts,
FP32 inputs and outputs): the graph TensorRT builds strongly typed FP16 engines from, and
that onnxruntime's TensorRT and CUDA providers run for FP16.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from avinpaint.config import ModelConfig
from avinpaint.files import file_sha256
from avinpaint.model import Generator, SpeakerFeatures
from engines.cache import EngineCache, Precision

GraphName = Literal["speaker", "inpaint"]

OPSET = 17
"""ONNX opset: supported by onnxruntime >= 1.14 and TensorRT 10's parser."""

EXPORT_FORMAT_VERSION = "2"
"""Bumped when names, inputs or outputs of the graphs change: part of every cache key."""

BATCH_AXIS = "batch"
"""Name of the dynamic face-batch axis of the ``inpaint`` graph."""

SPEAKER_INPUT = "speaker_input"
FEATURE_NAMES: tuple[str, ...] = ("embedding", "x16", "x32", "x64", "x128")
"""The speaker graph's outputs that the inpaint graph takes, in this order."""
AUDIO_FACE = "audio_face"
FACE = "face"
MASK = "mask"
INPAINTED = "inpainted"
IDENTITY_CODE = "identity_code"

METADATA_PREFIX = "avstream."


@dataclass(frozen=True)
class GraphSpec:
    """Names of one graph's inputs and outputs; ``dynamic`` names those whose axis 0 is the
    dynamic face batch."""

    name: GraphName
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic: tuple[str, ...]


@dataclass(frozen=True)
class ExportOptions:
    """Optional outputs. ``audio_face`` (speaker graph) is only needed by training losses;
    ``identity_code`` (inpaint graph) is I_c, for identity metrics and debugging. ``fp16``:
    the mixed FP16 graphs (``engines.fp16``) instead of FP32."""

    audio_face: bool = False
    identity_code: bool = True
    fp16: bool = False

    @property
    def precision(self) -> Precision:
        """``fp16`` or ``fp32``: what the graphs compute in."""
        return "fp16" if self.fp16 else "fp32"


def speaker_spec(options: ExportOptions = ExportOptions()) -> GraphSpec:
    """Inputs and outputs of the ``speaker`` graph."""
    outputs = FEATURE_NAMES + ((AUDIO_FACE,) if options.audio_face else ())
    return GraphSpec("speaker", (SPEAKER_INPUT,), outputs, ())


def inpaint_spec(options: ExportOptions = ExportOptions()) -> GraphSpec:
    """Inputs and outputs of the ``inpaint`` graph."""
    outputs = (INPAINTED,) + ((IDENTITY_CODE,) if options.identity_code else ())
    return GraphSpec("inpaint", (FACE, MASK, *FEATURE_NAMES), outputs, (FACE, MASK, *outputs))


@dataclass(frozen=True)
class ExportedGraph:
    """One ONNX file on disk and what it holds."""

    spec: GraphSpec
    path: Path
    sha256: str
    precision: Precision = "fp32"


@dataclass(frozen=True)
class ExportedModel:
    """The two graphs of one model (same weights, same options)."""

    config: ModelConfig
    speaker: ExportedGraph
    inpaint: ExportedGraph


class SpeakerGraph(nn.Module):
    """``Generator.speaker_features`` with a tuple output, as ONNX export wants."""

    def __init__(self, model: Generator, audio_face: bool) -> None:
        super().__init__()
        self.model = model
        self.audio_face = audio_face

    def forward(self, speaker_input: Tensor) -> tuple[Tensor, ...]:
        """speaker input (1, ...) -> embedding, x16, x32, x64, x128 [, audio face]."""
        features = self.model.speaker_features(speaker_input)
        outputs = tuple(features[:5])
        return (*outputs, features.audio_face) if self.audio_face else outputs


class InpaintGraph(nn.Module):
    """``Generator.inpaint`` with the speaker features as plain inputs of batch 1."""

    def __init__(self, model: Generator, identity_code: bool) -> None:
        super().__init__()
        self.model = model
        self.identity_code = identity_code

    def forward(
        self,
        face: Tensor,
        mask: Tensor,
        embedding: Tensor,
        x16: Tensor,
        x32: Tensor,
        x64: Tensor,
        x128: Tensor,
    ) -> tuple[Tensor, ...]:
        """face (B, 3, 256, 256), mask (B, 1, 256, 256), features (1, ...) -> inpainted [, I_c]."""
        batch = face.shape[0]
        # Broadcast in the graph, so the exported Expand follows the dynamic face batch.
        features = SpeakerFeatures(
            embedding.expand(batch, -1),
            x16.expand(batch, -1, -1, -1),
            x32.expand(batch, -1, -1, -1),
            x64.expand(batch, -1, -1, -1),
            x128.expand(batch, -1, -1, -1),
            audio_face=face.new_zeros(0),
        )
        out = self.model.inpaint(face, mask, features)
        return (out.inpainted, out.identity_code) if self.identity_code else (out.inpainted,)


def speaker_input_shape(config: ModelConfig) -> tuple[int, ...]:
    """Shape of the speaker graph's input: a GE2E d-vector or a log-mel window, batch 1."""
    if config.has_voice_net:
        return (1, config.n_mels, config.n_frames)
    return (1, config.speaker_dim)


def example_speaker_input(config: ModelConfig, seed: int = 0) -> npt.NDArray[np.float32]:
    """A deterministic speaker input of the right shape (for exports, tests and benchmarks)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(speaker_input_shape(config)).astype(np.float32)


def example_faces(
    config: ModelConfig, batch: int, seed: int = 0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Random faces in [-1, 1] and the paper's box hole, (B, 3, S, S) and (B, 1, S, S)."""
    rng = np.random.default_rng(seed)
    size = config.image_size
    face = rng.uniform(-1.0, 1.0, (batch, config.image_channels, size, size)).astype(np.float32)
    mask = np.zeros((batch, 1, size, size), dtype=np.float32)
    mask[:, :, 89:217, 64:192] = 1.0
    return face, mask


def export_speaker(
    model: Generator, path: Path, options: ExportOptions = ExportOptions()
) -> ExportedGraph:
    """Write the ``speaker`` graph of ``model`` (eval mode) to ``path``, atomically."""
    _require_eval(model)
    spec = speaker_spec(options)
    example = torch.from_numpy(example_speaker_input(model.config))
    graph = SpeakerGraph(model, options.audio_face).eval()
    _export(graph, (example,), spec, model.config, path, options.precision)
    return ExportedGraph(spec, path, file_sha256(path), options.precision)


def export_inpaint(
    model: Generator, path: Path, options: ExportOptions = ExportOptions()
) -> ExportedGraph:
    """Write the ``inpaint`` graph of ``model`` (eval mode) to ``path``, atomically."""
    _require_eval(model)
    spec = inpaint_spec(options)
    with torch.no_grad():
        speaker = torch.from_numpy(example_speaker_input(model.config))
        features = model.speaker_features(speaker)
    # Batch 2 while tracing: with batch 1 the broadcast of the batch-1 features would be a
    # no-op the tracer could fold away.
    face, mask = (torch.from_numpy(a) for a in example_faces(model.config, batch=2))
    inputs = (face, mask, *features[:5])
    graph = InpaintGraph(model, options.identity_code).eval()
    _export(graph, inputs, spec, model.config, path, options.precision)
    return ExportedGraph(spec, path, file_sha256(path), options.precision)


def export_model(
    model: Generator, directory: Path, options: ExportOptions = ExportOptions()
) -> ExportedModel:
    """Write ``speaker.onnx`` and ``inpaint.onnx`` into ``directory`` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    return ExportedModel(
        config=model.config,
        speaker=export_speaker(model, directory / "speaker.onnx", options),
        inpaint=export_inpaint(model, directory / "inpaint.onnx", options),
    )


@dataclass(frozen=True)
class ExportKey:
    """Cache key of an export: the same weights, config, options and exporter give the same
    ONNX files, so they are exported once per cache."""

    weights_sha256: str
    config_json: str
    audio_face: bool
    identity_code: bool
    fp16: bool = False
    opset: int = OPSET
    format_version: str = EXPORT_FORMAT_VERSION
    torch_version: str = torch.__version__

    @property
    def kind(self) -> str:
        """Cache folder of exports."""
        return "onnx"

    def describe(self) -> dict[str, str | int | bool]:
        """Every field, JSON-ready."""
        return {
            "weights_sha256": self.weights_sha256,
            "config": self.config_json,
            "audio_face": self.audio_face,
            "identity_code": self.identity_code,
            "fp16": self.fp16,
            "opset": self.opset,
            "format_version": self.format_version,
            "torch_version": self.torch_version,
        }


def export_key(model: Generator, options: ExportOptions = ExportOptions()) -> ExportKey:
    """The cache key of exporting ``model`` with ``options``."""
    return ExportKey(
        weights_sha256=weights_sha256(model),
        config_json=json.dumps(model.config.to_dict(), sort_keys=True),
        audio_face=options.audio_face,
        identity_code=options.identity_code,
        fp16=options.fp16,
    )


def export_cached(
    model: Generator, cache: EngineCache, options: ExportOptions = ExportOptions()
) -> ExportedModel:
    """``export_model`` into ``cache``: exported once per weights, config and options, even
    when several processes ask at the same time."""
    key = export_key(model, options)
    entry = cache.get_or_create(key, lambda directory: _export_files(model, directory, options))
    return load_exported(entry.path)


def _export_files(model: Generator, directory: Path, options: ExportOptions) -> dict[str, str]:
    exported = export_model(model, directory, options)
    return {
        "graph": "speaker+inpaint",
        "precision": options.precision,
        "speaker_sha256": exported.speaker.sha256,
    }


def load_exported(directory: Path) -> ExportedModel:
    """The ``ExportedModel`` in ``directory`` (from ``export_model``), read from the files'
    metadata; raises ``ValueError`` when a file is missing or not ours."""
    speaker = read_graph(directory / "speaker.onnx")
    inpaint = read_graph(directory / "inpaint.onnx")
    speaker_config, speaker_graph = speaker
    inpaint_config, inpaint_graph = inpaint
    if speaker_config != inpaint_config:
        raise ValueError(f"{directory}: speaker and inpaint graphs come from different configs")
    if speaker_graph.precision != inpaint_graph.precision:
        raise ValueError(f"{directory}: speaker and inpaint graphs have different precisions")
    if speaker_graph.spec.name != "speaker" or inpaint_graph.spec.name != "inpaint":
        raise ValueError(f"{directory}: speaker.onnx / inpaint.onnx hold the wrong graphs")
    return ExportedModel(speaker_config, speaker_graph, inpaint_graph)


def read_graph(path: Path) -> tuple[ModelConfig, ExportedGraph]:
    """The model config and graph description written into an exported ONNX file."""
    import onnx

    if not path.is_file():
        raise ValueError(f"no exported graph at {path}")
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}
    try:
        meta: dict[str, Any] = json.loads(props[METADATA_PREFIX + "graph"])
        config = ModelConfig.from_dict(json.loads(props[METADATA_PREFIX + "model_config"]))
        spec = GraphSpec(
            name=meta["name"],
            inputs=tuple(meta["inputs"]),
            outputs=tuple(meta["outputs"]),
            dynamic=tuple(meta["dynamic"]),
        )
        # Exports of format 1 predate FP16 graphs: all FP32.
        precision = meta.get("precision", "fp32")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not an avstream graph export: {exc}") from exc
    if spec.name not in ("speaker", "inpaint"):
        raise ValueError(f"{path}: unknown graph {spec.name!r}")
    if precision not in ("fp16", "fp32"):
        raise ValueError(f"{path}: unknown precision {precision!r}")
    return config, ExportedGraph(spec, path, file_sha256(path), precision)


def max_relative_error(actual: npt.ArrayLike, expected: npt.ArrayLike) -> float:
    """max |actual - expected| / max |expected|: the error relative to the output's scale.
    (Element-wise relative error is meaningless where the reference crosses zero.)"""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {e.shape}")
    scale = float(np.abs(e).max()) if e.size else 0.0
    return float(np.abs(a - e).max()) / scale if scale > 0 else float(np.abs(a - e).max())


def weights_sha256(model: Generator) -> str:
    """sha256 over the config, tensor names, dtypes, shapes and bytes of the state dict."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _require_eval(model: Generator) -> None:
    # Checked before wrapping: the wrappers are put in eval mode (recursively) because the
    # exporter restores the wrapper's mode afterwards, and a wrapper left in training mode
    # would switch the caller's model into training mode.
    if model.training:
        raise ValueError("export needs the model in eval mode (call model.eval() first)")


def _export(
    graph: nn.Module,
    inputs: tuple[Tensor, ...],
    spec: GraphSpec,
    config: ModelConfig,
    path: Path,
    precision: Precision = "fp32",
) -> None:
    import onnx

    from engines.fp16 import count_fp32_nodes, to_mixed_fp16

    partial = path.with_name(f".{path.name}.partial.{os.getpid()}")
    try:
        with torch.no_grad(), _quiet_exporter():
            torch.onnx.export(
                graph,
                inputs,
                str(partial),
                input_names=list(spec.inputs),
                output_names=list(spec.outputs),
                dynamic_axes={name: {0: BATCH_AXIS} for name in spec.dynamic},
                opset_version=OPSET,
                do_constant_folding=True,
                # The TorchScript exporter: onnxscript (needed by dynamo) is not installed.
                dynamo=False,
            )
        proto = onnx.load(str(partial))
        if precision == "fp16":
            proto = to_mixed_fp16(proto)
        graph_meta = {
            "name": spec.name,
            "inputs": list(spec.inputs),
            "outputs": list(spec.outputs),
            "dynamic": list(spec.dynamic),
            "format_version": EXPORT_FORMAT_VERSION,
            "opset": OPSET,
            "precision": precision,
            # Normalisation and reduction nodes: the ones an FP16 graph keeps in FP32.
            "fp32_nodes": count_fp32_nodes(proto),
        }
        onnx.helper.set_model_props(
            proto,
            {
                METADATA_PREFIX + "graph": json.dumps(graph_meta, sort_keys=True),
                METADATA_PREFIX + "model_config": json.dumps(config.to_dict(), sort_keys=True),
            },
        )
        onnx.save(proto, str(partial))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    # Known, harmless warnings of the TorchScript exporter: it is deprecated (we use it because
    # the dynamo exporter needs onnxscript); instance norm always normalises with the
    # instance's own statistics, which is what "train=True" means for it; and the tracer sees
    # the model's Python shape checks (model.py, instance_norm's size check), which only
    # validate inputs. That the graphs do generalise to other batch sizes is tested.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        warnings.filterwarnings("ignore", message=".*operator 'instance_norm' is set to train")
        yield
