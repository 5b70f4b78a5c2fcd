"""Convert the official AudioFace generator checkpoint (``G_*.pth``) to our format.

The official file is a flat state dict with the prefixes ``coarse.`` (face U-Net and fusion),
``audioFeat.Enet.`` (Wen's voice net), ``audioFeat.Gnet.`` (Wen's voice-to-face generator),
``audioFeat.upsample.`` and ``mlp.``. Our modules have clearer names; ``OFFICIAL_TO_OURS`` is
the one table between the two. It is read with ``torch.load(weights_only=True)`` only: a
file that needs anything more than tensors and plain containers is refused, never unpickled.

Command line: ``python -m avinpaint.convert G_500000.pth -o paper.safetensors``.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from avinpaint.checkpoint import CheckpointError, build, check_tensors, expected_shapes, save
from avinpaint.config import PAPER
from avinpaint.files import file_sha256

# Per AVFF block: official sub-module -> ours (ARCHITECTURE.md section 2). The official
# Sequentials index their layers; ReLU and pooling have no weights.
_AVFF_PARTS: dict[str, str] = {
    "conv_in": "in_proj",
    "conv_cat": "cat_proj",
    "local_att.0": "local_gate.reduce",
    "local_att.1": "local_gate.reduce_norm",
    "local_att.3": "local_gate.expand",
    "local_att.4": "local_gate.expand_norm",
    "global_att.1": "global_gate.reduce",
    "global_att.2": "global_gate.reduce_norm",
    "global_att.4": "global_gate.expand",
    "global_att.5": "global_gate.expand_norm",
}


def _official_to_ours() -> dict[str, str]:
    table: dict[str, str] = {}
    # Face encoder: en_1 is a bare conv, en_2..en_8 are Sequential(LeakyReLU, Conv[, IN]).
    table["coarse.en_1"] = "encoder.convs.0"
    for k in range(2, 9):
        table[f"coarse.en_{k}.encode.1"] = f"encoder.convs.{k - 1}"
    table["coarse.linear_model.0"] = "fusion.linear"
    # Face decoder: de_8 (1 -> 2 px) is our block 0, de_1 (128 -> 256 px) our block 7.
    for k in range(2, 9):
        table[f"coarse.de_{k}.decode.1"] = f"decoder.ups.{8 - k}"
    table["coarse.de_1.1"] = "decoder.ups.7"
    # fusion1..fusion4 work at 16, 32, 64 and 128 px.
    for k in range(1, 5):
        for official, ours in _AVFF_PARTS.items():
            table[f"coarse.fusion{k}.{official}"] = f"decoder.fusions.{k - 1}.{ours}"
    # Wen's VoiceEmbedNet: Sequential(conv, BN, ReLU) x 4, then conv.
    for i, index in enumerate((0, 3, 6, 9, 12)):
        table[f"audioFeat.Enet.model.{index}"] = f"voice.convs.{i}"
    for i, index in enumerate((1, 4, 7, 10)):
        table[f"audioFeat.Enet.model.{index}"] = f"voice.norms.{i}"
    # Wen's Generator: Sequential(ConvT, ReLU) x 5 (4..64 px), then AudioFace's upsampler.
    for i, index in enumerate((0, 2, 4, 6, 8)):
        table[f"audioFeat.Gnet.model.{index}"] = f"audio_decoder.ups.{i}"
    table["audioFeat.upsample.0"] = "audio_decoder.ups.5"
    table["audioFeat.upsample.2"] = "audio_decoder.ups.6"
    table["audioFeat.upsample.4"] = "audio_decoder.to_rgb"
    table["mlp.0"] = "identity_head.hidden"
    table["mlp.2"] = "identity_head.out"
    return table


OFFICIAL_TO_OURS: dict[str, str] = _official_to_ours()
"""Official module path -> our module path; tensor names keep their last part (weight, ...)."""

DISCARDED: dict[str, tuple[int, ...]] = {
    # Wen's 64x64 RGB head: the official forward computes it and throws the result away, so
    # it cannot affect any output. Required in the file (it is there), dropped on conversion.
    "audioFeat.Gnet.model.10.weight": (64, 3, 1, 1),
    "audioFeat.Gnet.model.10.bias": (3,),
}
"""Official tensors that are checked for presence and shape, then dropped."""


_OURS_TO_OFFICIAL: dict[str, str] = {ours: official for official, ours in OFFICIAL_TO_OURS.items()}


def _ours_to_official_name(name: str) -> str:
    module, leaf = name.rsplit(".", 1)
    return f"{_OURS_TO_OFFICIAL[module]}.{leaf}"


def official_shapes() -> dict[str, tuple[int, ...]]:
    """Official tensor name -> shape of everything an official ``G_*.pth`` holds (210)."""
    shapes = {_ours_to_official_name(n): s for n, s in expected_shapes(PAPER).items()}
    shapes.update(DISCARDED)
    return shapes


def map_official_state_dict(official: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Rename an official state dict to ours, strictly: any missing, unexpected or mis-shaped
    official tensor raises ``StateDictMismatchError`` naming all of them (official names)."""
    check_tensors(official_shapes(), official, source)
    ours: dict[str, Tensor] = {}
    for name, tensor in official.items():
        if name in DISCARDED:
            continue
        module, leaf = name.rsplit(".", 1)
        ours[f"{OFFICIAL_TO_OURS[module]}.{leaf}"] = tensor
    return ours


def read_official(path: Path) -> dict[str, Tensor]:
    """The flat state dict in an official ``.pth``, read with ``weights_only=True``."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing {path}: it is not a PyTorch checkpoint, or it holds objects other than "
            "tensors and plain containers, which are never unpickled "
            f"(torch.load weights_only=True: {_unpickler_reason(exc)})"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from exc
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a state dict")
    not_tensors = sorted(str(k) for k, v in data.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise CheckpointError(
            f"{path} is not a flat state dict of tensors (entries {', '.join(not_tensors)} are "
            "not tensors); the official G_*.pth is one"
        )
    return {str(k): v for k, v in data.items()}


def _unpickler_reason(exc: Exception) -> str:
    # torch's message is a page of advice; the line after "WeightsUnpickler error:" says why.
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    # The first sentence; torch goes on to suggest allow-listing the offending global.
    return text.strip().split(". ", 1)[0].split("\n", 1)[0] or type(exc).__name__


def convert_audioface(pth_path: str | Path, out_path: str | Path) -> Path:
    """Convert an official AudioFace ``G_*.pth`` to a ``paper`` checkpoint at ``out_path``.

    The output records the source file's name and sha256 in its metadata.
    """
    source = Path(pth_path)
    out = Path(out_path)
    if out.resolve() == source.resolve():
        raise CheckpointError(f"output {out} is the input file")
    model = build(PAPER, map_official_state_dict(read_official(source), str(source)), str(source))
    metadata = {"source": source.name, "source_sha256": file_sha256(source)}
    return save(model, out, metadata)


def main(argv: Sequence[str] | None = None) -> int:
    """``avstream convert audioface`` as a function: 0 on success, 1 on failure, 2 on bad
    usage (argparse exits)."""
    parser = argparse.ArgumentParser(
        prog="avstream convert audioface",
        description="Convert the official AudioFace generator checkpoint (G_*.pth) to an "
        "avinpaint 'paper' checkpoint (safetensors with its config inside).",
    )
    parser.add_argument("checkpoint", type=Path, help="official generator file, e.g. G_500000.pth")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output .safetensors")
    args = parser.parse_args(argv)
    try:
        out = convert_audioface(args.checkpoint, args.output)
    except CheckpointError as exc:
        print(f"avstream: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} (preset 'paper')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
