"""Generator checkpoints: one safetensors file that carries its ``ModelConfig``.

The config travels inside the file (safetensors metadata, key ``config``, JSON), so weights
and the numbers that shape them cannot be separated, and a model is rebuilt from the file
alone. No pickles: safetensors holds raw tensors only.

``load`` takes a path or a preset name; presets look for weights shipped inside the
package (``avinpaint/weights/<name>.safetensors``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from avinpaint.config import PRESETS, ModelConfig
from avinpaint.files import shipped_weights
from avinpaint.model import Generator

FORMAT = "avinpaint.generator"
"""Value of the ``format`` metadata key: tells our checkpoints from other safetensors files."""

FORMAT_VERSION = "1"
"""Bumped when the layout of the file (not the network) changes."""


class CheckpointError(Exception):
    """A checkpoint that cannot be read, is not ours, or does not fit the model."""


@dataclass(frozen=True)
class ShapeMismatch:
    """A tensor whose shape differs from the model's."""

    name: str
    found: tuple[int, ...]
    expected: tuple[int, ...]


class StateDictMismatchError(CheckpointError):
    """Tensors missing, unexpected or mis-shaped; every offending name is listed."""

    def __init__(
        self,
        source: str,
        missing: list[str],
        unexpected: list[str],
        mis_shaped: list[ShapeMismatch],
    ) -> None:
        self.missing = missing
        self.unexpected = unexpected
        self.mis_shaped = mis_shaped
        # One line, as command-line errors are.
        problems = []
        if missing:
            problems.append(f"missing ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected ({len(unexpected)}): {', '.join(unexpected)}")
        if mis_shaped:
            details = ", ".join(
                f"{m.name} (file {list(m.found)}, model {list(m.expected)})" for m in mis_shaped
            )
            problems.append(f"wrong shape ({len(mis_shaped)}): {details}")
        super().__init__(f"{source} does not match the model: {'; '.join(problems)}")


def check_tensors(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, Tensor], source: str
) -> None:
    """Raise ``StateDictMismatchError`` naming every missing, unexpected and mis-shaped tensor.

    ``expected`` maps names to shapes; ``source`` names the file in the message.
    """
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    mis_shaped = [
        ShapeMismatch(name, tuple(tensor.shape), expected[name])
        for name, tensor in found.items()
        if name in expected and tuple(tensor.shape) != expected[name]
    ]
    if missing or unexpected or mis_shaped:
        raise StateDictMismatchError(source, missing, unexpected, mis_shaped)


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the state dict of ``Generator(config)``."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = Generator(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def build(config: ModelConfig, state_dict: Mapping[str, Tensor], source: str) -> Generator:
    """A ``Generator(config)`` holding exactly ``state_dict`` (strict), in eval mode, on CPU.

    Floating-point tensors are cast to float32; integer buffers must stay integer.
    """
    check_tensors(expected_shapes(config), state_dict, source)
    with torch.device("meta"):
        model = Generator(config)
    reference = model.state_dict()
    tensors: dict[str, Tensor] = {}
    wrong_kind = []
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() != reference[name].is_floating_point():
            wrong_kind.append(f"{name} ({tensor.dtype}, model {reference[name].dtype})")
        tensors[name] = tensor.to(dtype=reference[name].dtype, device="cpu")
    if wrong_kind:
        raise CheckpointError(f"{source}: wrong tensor types: {', '.join(wrong_kind)}")
    # assign=True adopts the tensors instead of copying into the meta placeholders.
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()


def save(
    model: Generator,
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model``'s weights and config to ``path`` (safetensors), atomically.

    ``metadata`` adds string entries (e.g. provenance); ``format``, ``format_version`` and
    ``config`` are reserved. ``dtype`` (e.g. ``torch.float16``, for shipping: half the size)
    stores the floating-point tensors in that type, recorded as ``precision``; ``build``
    casts them back to float32 on load. Integer buffers are stored as they are.
    """
    path = Path(path)
    extra = dict(metadata or {})
    reserved = sorted({"format", "format_version", "config"} & set(extra))
    if reserved:
        raise ValueError(f"metadata keys {', '.join(reserved)} are reserved")
    if dtype is not None:
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, got {dtype}")
        extra["precision"] = str(dtype).removeprefix("torch.")
    header = {
        **extra,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(model.config.to_dict(), sort_keys=True),
    }
    # safetensors refuses tensors that share memory or are not contiguous.
    tensors = {
        k: v.detach()
        .to("cpu", dtype=dtype if dtype and v.is_floating_point() else v.dtype)
        .contiguous()
        .clone()
        for k, v in model.state_dict().items()
    }
    partial = path.with_name(f".{path.name}.partial.{os.getpid()}")
    try:
        save_file(tensors, str(partial), metadata=header)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of our checkpoint at ``path``, checked to be ours."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata: dict[str, str] = f.metadata() or {}
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read {path} as safetensors: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an avinpaint generator checkpoint (metadata format "
            f"{metadata.get('format')!r}, expected {FORMAT!r}); an official AudioFace "
            "G_*.pth must be converted first: avstream convert audioface G.pth -o out.safetensors"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {metadata.get('format_version')!r}; "
            f"this avinpaint reads version {FORMAT_VERSION}"
        )
    return metadata


def read_config(path: str | Path) -> ModelConfig:
    """The ``ModelConfig`` stored in the checkpoint at ``path``, without loading weights."""
    text = read_metadata(path).get("config")
    if text is None:
        raise CheckpointError(f"{path} has no 'config' metadata")
    try:
        return ModelConfig.from_dict(json.loads(text))
    except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: bad config: {exc}") from exc


def shipped_path(name: str) -> Path:
    """Where the package keeps the weights of preset ``name`` (the file may not exist)."""
    return shipped_weights(f"{name}.safetensors")


def resolve(name_or_path: str | Path) -> Path:
    """The checkpoint file for a path or a preset name, or a ``CheckpointError`` saying why
    there is none."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path)
    if name in PRESETS:
        shipped = shipped_path(name)
        if shipped.is_file():
            return shipped
        how = (
            "convert the released G_500000.pth with 'avstream convert audioface "
            "G_500000.pth -o paper.safetensors' and load that file"
            if name == "paper"
            else "train one (training package) and load it by path"
        )
        raise CheckpointError(f"no weights for preset {name!r} ship with this installation: {how}")
    raise CheckpointError(
        f"{name_or_path} is neither a checkpoint file nor a preset ({', '.join(PRESETS)})"
    )


def load(name_or_path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """The generator stored at a path, or shipped under a preset name, in eval mode."""
    path = resolve(name_or_path)
    config = read_config(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            state_dict = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read tensors from {path}: {exc}") from exc
    return build(config, state_dict, str(path)).to(device)
