"""The occlusion segmenter: which pixels of an aligned 256x256 face crop are covered.

A compact U-Net. The crop is average-pooled to half size first (``input_px``, 128 by default):
coverage boundaries are smooth, so half resolution keeps almost all of the IoU and quarters
the cost. Logits come back at the full crop size, upsampled bilinearly inside the network, so
an exported graph takes a crop and returns a full-size map with no pre- or post-processing
outside it other than layout.

    net = load_occlusion_net()   # the shipped weights, offline
    logits = net(crops_bgr)      # (N, 3, 256, 256) BGR 0..255 -> (N, 1, 256, 256) logits

Pure torch; imports nothing else from the project. Weights are one safetensors file whose
metadata carries the ``OcclusionNetConfig`` (JSON), so a model is rebuilt from the file alone.
"""

from __future__ import annotations

import importlib.resources
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

FORMAT = "avinpaint.occlusion_net"
"""Value of the ``format`` metadata key: tells these files from other safetensors files."""

SHIPPED_NAME = "occlusion_v3"
"""Base name of the shipped weights: ``avinpaint/weights/occlusion_v3.{safetensors,onnx}``
(``occlusion_v2``, itself ``occlusion_v1`` fine-tuned for small faces in compressed video,
masks and hands, fine-tuned again against false flags on clean faces: hard negatives and
real-video lighting; see docs/MODEL_CARD_occlusion.md)."""


class OcclusionNetError(Exception):
    """A weights file that cannot be read, is not an occlusion net, or does not fit it."""


@dataclass(frozen=True)
class OcclusionNetConfig:
    """Shape of the network.

    ``crop_px``: side of the aligned crop it takes and the map it returns (the project's
    CROP_SIZE; repeated here because avinpaint's networks import nothing from the stream).
    ``input_px``: side the crop is pooled to before the first convolution; must divide
    ``crop_px``. ``widths``: channels at each of the encoder's levels; level 0 is at
    ``input_px / 2`` and each further level halves the size again. Five levels from 128 px
    reach 4x4, where a 3x3 convolution already sees the whole face: telling a mask from a
    beard needs that context. ``mean`` and ``std``: input normalisation in 0..255 grey
    levels, the same for the three channels (colour order is BGR, OpenCV's)."""

    crop_px: int = 256
    input_px: int = 128
    widths: tuple[int, ...] = (16, 32, 48, 80, 128)
    mean: float = 127.5
    std: float = 64.0

    def __post_init__(self) -> None:
        if self.crop_px % self.input_px != 0:
            raise ValueError(f"input_px {self.input_px} must divide crop_px {self.crop_px}")
        if self.input_px % (2 ** len(self.widths)) != 0:
            raise ValueError(f"input_px {self.input_px} is not divisible by 2^{len(self.widths)}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be positive, got {self.widths}")

    def to_json(self) -> str:
        """The config as JSON (tuples become lists)."""
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> OcclusionNetConfig:
        """Inverse of ``to_json``; raises ``OcclusionNetError`` on unknown or missing keys."""
        try:
            raw = json.loads(text)
            raw["widths"] = tuple(int(w) for w in raw["widths"])
            return OcclusionNetConfig(**raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise OcclusionNetError(f"bad occlusion net config {text!r}: {exc}") from exc


def _conv_bn(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    # BatchNorm folds into the convolution at export: free at inference time.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _pointwise(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class _SeparableBlock(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, residual when the shape allows: most of the
    spatial reasoning for a fraction of a full 3x3 convolution's cost."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = _conv_bn(c_in, c_in, stride, groups=c_in)
        self.pointwise = _pointwise(c_in, c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.pointwise(self.depthwise(x))
        return x + y if self.residual else y


class _Down(nn.Module):
    """Halve the size (strided separable block), then one more block at the new size."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.reduce = _SeparableBlock(c_in, c_out, stride=2)
        self.refine = _SeparableBlock(c_out, c_out)

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.refine(self.reduce(x))
        return y


class _Up(nn.Module):
    """Double the size, merge the encoder's skip at that size, refine."""

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.merge = _pointwise(c_in + c_skip, c_out)
        self.refine = _SeparableBlock(c_out, c_out)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        y: Tensor = self.refine(self.merge(torch.cat([x, skip], dim=1)))
        return y


class OcclusionNet(nn.Module):
    """Per-pixel coverage logits for aligned face crops.

    Input: (N, 3, crop_px, crop_px) float32 BGR in 0..255. Output: (N, 1, crop_px, crop_px)
    logits; sigmoid > 0.5 means covered."""

    def __init__(self, config: OcclusionNetConfig = OcclusionNetConfig()) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        self.stem = _conv_bn(3, widths[0], stride=2)  # input_px -> input_px / 2
        self.stem_refine = _SeparableBlock(widths[0], widths[0])
        self.downs = nn.ModuleList(_Down(widths[i], widths[i + 1]) for i in range(len(widths) - 1))
        # Global context: the pooled deepest features, added back everywhere at that level.
        self.context = nn.Sequential(nn.Conv2d(widths[-1], widths[-1], 1), nn.ReLU(inplace=True))
        self.ups = nn.ModuleList(
            _Up(widths[i + 1], widths[i], widths[i]) for i in reversed(range(len(widths) - 1))
        )
        # The last decoder level meets the pooled input itself, for sharp edges at input_px.
        self.full = _Up(widths[0], 3, widths[0])
        self.head = nn.Conv2d(widths[0], 1, 3, padding=1)

    def forward(self, crops: Tensor) -> Tensor:
        """(N, 3, crop_px, crop_px) BGR 0..255 -> (N, 1, crop_px, crop_px) logits."""
        config = self.config
        factor = config.crop_px // config.input_px
        x = (crops - config.mean) * (1.0 / config.std)
        if factor > 1:
            x = nn.functional.avg_pool2d(x, factor)  # (N, 3, input_px, input_px), anti-aliased
        skips = [x]
        y = self.stem_refine(self.stem(x))
        for down in self.downs:
            skips.append(y)
            y = down(y)
        y = y + self.context(y.mean(dim=(2, 3), keepdim=True))
        for up in self.ups:
            y = up(y, skips.pop())
        y = self.full(y, skips.pop())
        logits: Tensor = self.head(y)  # (N, 1, input_px, input_px)
        if factor > 1:
            logits = nn.functional.interpolate(
                logits, scale_factor=float(factor), mode="bilinear", align_corners=False
            )
        return logits


def save_occlusion_net(
    path: Path, net: OcclusionNet, extra_metadata: dict[str, str] | None = None
) -> None:
    """Write ``net``'s weights and config (and any ``extra_metadata``) to a safetensors file."""
    metadata = {"format": FORMAT, "config": net.config.to_json(), **(extra_metadata or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a weights file; raises ``OcclusionNetError`` if it is not ours."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except (OSError, SafetensorError) as exc:
        raise OcclusionNetError(f"cannot read occlusion net weights {path}: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise OcclusionNetError(f"{path} is not an occlusion net ({FORMAT}) file")
    return metadata


def load_occlusion_net(path: Path | None = None) -> OcclusionNet:
    """The network from a weights file (default: the shipped ``occlusion_v3``), in eval mode.

    Raises ``OcclusionNetError`` when the file is missing, not ours, or does not fit."""
    path = path if path is not None else shipped_path("safetensors")
    config = OcclusionNetConfig.from_json(read_metadata(path).get("config", ""))
    net = OcclusionNet(config)
    tensors: dict[str, Tensor] = {}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
            tensors[key] = handle.get_tensor(key)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mis_shaped = sorted(
        k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape
    )
    if missing or unexpected or mis_shaped:
        raise OcclusionNetError(
            f"{path} does not fit the network: missing {missing}, unexpected {unexpected}, "
            f"wrong shape {mis_shaped}"
        )
    net.load_state_dict(tensors)
    return net.eval()


def shipped_path(suffix: str) -> Path:
    """Path of the shipped weights with this suffix (``safetensors`` or ``onnx``).

    Raises ``OcclusionNetError`` where the package was installed without them."""
    path = Path(
        str(importlib.resources.files("avinpaint") / "weights" / f"{SHIPPED_NAME}.{suffix}")
    )
    if not path.is_file():
        raise OcclusionNetError(f"shipped occlusion weights missing from the package: {path}")
    return path


def export_onnx(net: OcclusionNet, path: Path, opset: int = 17) -> None:
    """Write ``net`` as ONNX: input ``crops`` (N, 3, crop_px, crop_px) float32 BGR 0..255,
    output ``logits`` (N, 1, crop_px, crop_px); the batch axis is dynamic."""
    export_crop_network(net, path, net.config.crop_px, "logits", opset)


def export_crop_network(
    net: nn.Module, path: Path, crop_px: int, output_name: str, opset: int = 17
) -> None:
    """Write a network of face crops as ONNX: input ``crops`` (N, 3, crop_px, crop_px)
    float32 BGR 0..255, one output ``output_name``; the batch axis is dynamic. Exported in
    eval mode (the mode is restored after), under a temporary name renamed on success."""
    example = torch.full((1, 3, crop_px, crop_px), 127.0)
    partial = path.with_suffix(".partial.onnx")
    was_training = net.training
    net.eval()
    try:
        # The TorchScript exporter: the dynamo one needs onnxscript, which we do not install
        # (and it warns that it is deprecated, which is known and not actionable here).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                net,
                (example,),
                str(partial),
                input_names=["crops"],
                output_names=[output_name],
                dynamic_axes={"crops": {0: "batch"}, output_name: {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
    finally:
        net.train(was_training)
    partial.replace(path)
