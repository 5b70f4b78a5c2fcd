"""The training configuration: one TOML or JSON file, every key checked.

A file names only what it changes; everything else takes the defaults below, which are the
recipe for the ``lite`` model on a CPU (the official AudioFace values where they apply:
Adam 2e-4, betas (0.5, 0.999), batch 4, the loss weights of ``avinpaint.losses``). An
unknown key, a wrong type or a bad value is an error naming the key, never silently ignored.
The resolved config (every key) is written beside every checkpoint as ``config.json``, so a
run is always reproducible from its own files.

Example (``python -m training train --print-config`` prints the full default)::

    seed = 0
    [model]
    preset = "lite"          # any other key overrides that field of the preset
    [data]
    dataset = "/tmp/avstream_dataset"
    [stage1]
    steps = 2000
    [stage2]
    steps = 20000
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from avinpaint.config import ModelConfig, preset
from avinpaint.discriminator import DiscriminatorConfig
from avinpaint.losses import LossWeights
from stream.errors import UsageError
from training.augment import AugmentOptions

T = TypeVar("T")

Device = Literal["auto", "cpu", "cuda"]
HoleKind = Literal["mixture", "mixture_overhang", "paper_box", "strokes", "face_mask"]
"""Which hole generator of ``training.masks`` makes the training masks: ``mixture`` is
``default_hole_mixture()`` (face masks, hands, objects, strokes, scribbles, some paper boxes);
``mixture_overhang`` the same with half of its face masks hanging past the face's outline
(``overhang_hole_mixture()``: turned heads)."""

LrSchedule = Literal["constant", "cosine"]
"""Stage 2's generator learning rate over the stage: ``constant``, or ``cosine`` from ``lr`` at
step 0 to 0 at the last step (a function of the step alone, so a resume stays exact)."""

FaceOnlyAudio = Literal["zero", "other_speaker", "mixed", "skip"]
"""What a stage-2 sample of an identity WITHOUT recorded speech gets as speaker input.

``zero``: the all-zero "no audio" input (a zero GE2E embedding, which stays zero after the
generator's L2 normalisation; a zero log-mel window for ``wen2019``, as the official code's
commented-out FFHQ pre-training did). The network learns a "no voice" regime and the
evaluation's no-audio condition is in distribution. ``other_speaker``: a random segment of
another speaker (teaches the network not to trust the voice blindly; dilutes the voice->face
link). ``mixed``: each sample draws ``zero`` or ``other_speaker`` with equal probability, so
the voice regime also sees the thousands of face-only people while the "no voice" regime
stays in distribution. ``skip``: leave face-only crops out of training."""

RESUMABLE_KEYS = frozenset(
    {
        "stage1.steps",
        "stage2.steps",
        "data.dataset",
        "data.workers",
        "log.every",
        "log.images_every",
        "log.checkpoint_every",
        "log.keep_checkpoints",
        "threads",
    }
)
"""Keys that may differ between a run's saved config and the one it is resumed with: more
steps, another place for the same dataset, logging. Anything else changes the experiment."""


@dataclass(frozen=True)
class DataConfig:
    """The dataset and how samples are drawn from it.

    Attributes:
        dataset: folder made by ``python -m training prepare``.
        holes: hole generator (see ``HoleKind``); seeded per sample, epoch and run seed.
        face_only_audio: speaker input of face-only identities in stage 2 (``FaceOnlyAudio``).
        flip: random horizontal flip of the face (official: p = 0.5).
        grayscale_probability: chance of a grey face (official: 0.1).
        augment: video-gap augmentation of every crop (``training.augment``: alignment
            jitter, glasses, lighting, colour, blur, resolution, compression); off keeps the
            official sampling.
        jitter_probability, jitter_rotation_deg, jitter_scale, jitter_shift_px: the
            alignment jitter of ``augment`` (``AugmentOptions``'s fields of the same names;
            the defaults are its defaults). A covered face in video is cropped where the
            placement network guesses, a few pixels and percent from where its clean crop
            would be, so a generator that reads only well-placed crops fills it worse.
        workers: DataLoader worker processes (0 loads in the training process).
    """

    dataset: str = ""
    holes: HoleKind = "mixture"
    face_only_audio: FaceOnlyAudio = "zero"
    flip: bool = True
    grayscale_probability: float = 0.1
    augment: bool = False
    jitter_probability: float = AugmentOptions.jitter_probability
    jitter_rotation_deg: float = AugmentOptions.jitter_rotation_deg
    jitter_scale: float = AugmentOptions.jitter_scale
    jitter_shift_px: float = AugmentOptions.jitter_shift_px
    workers: int = 0

    def __post_init__(self) -> None:
        _check_range("data.grayscale_probability", self.grayscale_probability, 0.0, 1.0)
        _check_range("data.jitter_probability", self.jitter_probability, 0.0, 1.0)
        _check_range("data.jitter_rotation_deg", self.jitter_rotation_deg, 0.0, 45.0)
        _check_range("data.jitter_scale", self.jitter_scale, 0.0, 0.5)
        _check_range("data.jitter_shift_px", self.jitter_shift_px, 0.0, 64.0)
        _check_range("data.workers", self.workers, 0, 64)


@dataclass(frozen=True)
class Stage1Config:
    """Stage 1: the audio face decoder alone learns voice -> face.

    The official code has no such stage: it starts from Wen et al.'s voice-to-face generator
    (pretrained by Wen as a 64 px conditional GAN with an identity classifier) and fine-tunes
    it inside the full model with ``0.01 * L1(audio face, face)`` at 256 px. Neither Wen's
    weights nor a 64-d Wen voice exist for ``lite``, so stage 1 trains the decoder from scratch
    on (speech, face) pairs with that same whole-image L1 at 256 px (weight 1 here), plus
    ``identity_weight`` times the SFace cosine distance between audio face and face.

    Attributes:
        steps: optimiser steps (0 skips the stage).
        batch_size: samples per step per process.
        lr, beta1, beta2: Adam (official: 2e-4, 0.5, 0.999).
        identity_weight: weight of psi(audio face) vs psi(face) (0: L1 only, fastest).
    """

    steps: int = 2000
    batch_size: int = 4
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    identity_weight: float = 0.0

    def __post_init__(self) -> None:
        _check_stage("stage1", self.steps, self.batch_size, self.lr, self.beta1, self.beta2)
        _check_range("stage1.identity_weight", self.identity_weight, 0.0, float("inf"))


@dataclass(frozen=True)
class Stage2Config:
    """Stage 2: the whole generator with every loss, against the patch discriminator.

    Attributes:
        steps: optimiser steps of G and D (0 skips the stage).
        batch_size: samples per step per process (official 4).
        lr, beta1, beta2: Adam for G (official: 2e-4, 0.5, 0.999).
        d_lr: Adam learning rate of D (official: same as G); D uses the same betas.
        lr_schedule: G's learning rate over the stage (``LrSchedule``; official: constant).
        ema_decay: exponential moving average of G's weights and buffers, updated after every
            step; when > 0 the checkpoints' ``generator.safetensors`` holds the average (the
            raw weights stay in ``state.pt`` for resuming). 0 turns it off (official).
    """

    steps: int = 20000
    batch_size: int = 4
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    d_lr: float = 2e-4
    lr_schedule: LrSchedule = "constant"
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        _check_stage("stage2", self.steps, self.batch_size, self.lr, self.beta1, self.beta2)
        _check_range("stage2.d_lr", self.d_lr, 0.0, 1.0)
        _check_range("stage2.ema_decay", self.ema_decay, 0.0, 1.0)
        if self.ema_decay >= 1.0:
            raise ValueError("stage2.ema_decay must be below 1 (1 never moves the average)")

    def lr_at(self, step: int) -> float:
        """G's learning rate for optimiser step ``step`` (0-based) of this stage."""
        if self.lr_schedule == "constant" or self.steps <= 1:
            return self.lr
        progress = min(max(step, 0), self.steps) / self.steps
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LogConfig:
    """How often the trainer reports and saves (in optimiser steps of the current stage).

    Attributes:
        every: CSV log row (losses averaged over processes).
        images_every: image grid of the current batch (0: never).
        checkpoint_every: checkpoint (also written at the end of each stage).
        keep_checkpoints: newest checkpoints kept (older ones are deleted; 0 keeps all).
    """

    every: int = 10
    images_every: int = 200
    checkpoint_every: int = 500
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        _check_range("log.every", self.every, 1, None)
        _check_range("log.images_every", self.images_every, 0, None)
        _check_range("log.checkpoint_every", self.checkpoint_every, 1, None)
        _check_range("log.keep_checkpoints", self.keep_checkpoints, 0, None)


def _lite_discriminator() -> DiscriminatorConfig:
    # The official width 64 costs 6.4 GFLOPs per pair at 256 px (more than the whole lite
    # generator five times over); 16 is a 16x cheaper PatchGAN with the same receptive field.
    return DiscriminatorConfig(base_width=16)


def _lite_losses() -> LossWeights:
    # Official weights, but the identity-consistency term (which has gradients here, unlike
    # the official one) at 0.1: a cosine distance in [0, 2] at weight 1 would outweigh the
    # pixel L1 (about 0.05 on the composited crop) and pull the hole towards the audio face.
    return LossWeights(identity_consistency=0.1)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; see the module docstring for the file format.

    Attributes:
        seed: seeds weights, data order, masks and augmentation.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: mixed precision (bfloat16, or float16 with loss scaling) on CUDA; ignored on CPU.
        threads: torch CPU threads per process (0: leave torch's default).
        init_generator: optional generator checkpoint (safetensors) to start from, e.g. a
            stage-1 result or shipped weights; its config must equal ``model``.
        model: the generator (``[model]`` in a file: ``preset`` plus field overrides).
        discriminator: the patch discriminator (``in_channels`` is fixed at 6: an RGB pair).
        losses: stage-2 loss weights.
    """

    seed: int = 0
    device: Device = "auto"
    amp: bool = True
    threads: int = 1
    init_generator: str = ""
    model: ModelConfig = field(default_factory=lambda: preset("lite"))
    discriminator: DiscriminatorConfig = field(default_factory=_lite_discriminator)
    losses: LossWeights = field(default_factory=_lite_losses)
    data: DataConfig = field(default_factory=DataConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        _check_range("threads", self.threads, 0, 256)
        if self.discriminator.in_channels != 6:
            raise UsageError("discriminator.in_channels must be 6 (an RGB image pair)")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict with every key (the resolved config)."""
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ModelConfig):
                data[f.name] = {"preset": _preset_name(value), **value.to_dict()}
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                data[f.name] = _plain(dataclasses.asdict(value))
            else:
                data[f.name] = value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a parsed file; absent keys take the defaults, unknown keys are errors."""
        top = {f.name: f for f in dataclasses.fields(cls)}
        _reject_unknown("", data, top)
        values: dict[str, Any] = {}
        for name, f in top.items():
            if name not in data:
                continue
            raw = data[name]
            if name == "model":
                values[name] = _model_config(raw)
            elif name == "losses":
                # Keys absent from [losses] keep the lite recipe, not LossWeights' defaults.
                values[name] = _section(LossWeights, raw, name, _lite_losses())
            elif name == "discriminator":
                values[name] = _section(DiscriminatorConfig, raw, name, _lite_discriminator())
            elif name in ("data", "stage1", "stage2", "log"):
                section_type = typing.get_type_hints(cls)[name]
                values[name] = _section(section_type, raw, name)
            else:
                values[name] = _typed(name, raw, typing.get_type_hints(cls)[f.name])
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"bad training config: {exc}") from exc


def _preset_name(model: ModelConfig) -> str:
    # The preset a model config equals, else the closest by speaker encoder: only a label.
    for name in ("lite", "paper"):
        if preset(name) == model:
            return name
    return "lite" if model.speaker_encoder == "ge2e" else "paper"


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _reject_unknown(section: str, data: Mapping[str, Any], known: Collection[str]) -> None:
    if not isinstance(data, Mapping):
        raise UsageError(f"config section [{section}] must be a table, got {data!r}")
    unknown = sorted(set(data) - set(known))
    if unknown:
        where = f"[{section}]" if section else "the top level"
        raise UsageError(
            f"unknown config key(s) {', '.join(unknown)} in {where}; "
            f"known: {', '.join(sorted(known))}"
        )


def _model_config(raw: Any) -> ModelConfig:
    if not isinstance(raw, Mapping):
        raise UsageError(f"config section [model] must be a table, got {raw!r}")
    fields_ = {f.name for f in dataclasses.fields(ModelConfig)}
    _reject_unknown("model", raw, {*fields_, "preset"})
    name = raw.get("preset", "lite")
    try:
        merged = {**preset(str(name)).to_dict(), **{k: v for k, v in raw.items() if k != "preset"}}
        return ModelConfig.from_dict(merged)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad [model] config: {exc}") from exc


def _section(cls: type[T], raw: Any, name: str, base: T | None = None) -> T:
    if not isinstance(raw, Mapping):
        raise UsageError(f"config section [{name}] must be a table, got {raw!r}")
    assert dataclasses.is_dataclass(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    _reject_unknown(name, raw, known)
    hints = typing.get_type_hints(cls)
    values = {key: _typed(f"{name}.{key}", raw[key], hints[key]) for key in raw}
    try:
        if base is not None:
            return dataclasses.replace(base, **values)  # type: ignore[type-var]
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad [{name}] config: {exc}") from exc


def _typed(key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against a field's annotation (bool, int, float, str, Literal,
    tuple[float, ...]); ints are accepted for floats, bools never for numbers."""
    origin = get_origin(hint)
    if origin is Literal:
        if value not in get_args(hint):
            choices = ", ".join(repr(a) for a in get_args(hint))
            raise UsageError(f"config key {key} must be one of {choices}, got {value!r}")
        return value
    if origin is tuple or hint is tuple:
        if not isinstance(value, list | tuple):
            raise UsageError(f"config key {key} must be a list, got {value!r}")
        item = get_args(hint)[0] if get_args(hint) else float
        return tuple(_typed(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise UsageError(f"config key {key} has an unsupported type {hint!r}")
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint)
    if ok is None:
        raise UsageError(f"config key {key} has an unsupported type {hint!r}")
    if not ok:
        raise UsageError(f"config key {key} must be {hint.__name__}, got {value!r}")
    return float(value) if hint is float else value


def _check_range(name: str, value: float, low: float, high: float | None) -> None:
    if not low <= value or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _check_stage(
    name: str, steps: int, batch_size: int, lr: float, beta1: float, beta2: float
) -> None:
    _check_range(f"{name}.steps", steps, 0, None)
    _check_range(f"{name}.batch_size", batch_size, 1, None)
    _check_range(f"{name}.lr", lr, 0.0, 1.0)
    _check_range(f"{name}.beta1", beta1, 0.0, 0.999999)
    _check_range(f"{name}.beta2", beta2, 0.0, 0.999999)


# --- files and command-line overrides -----------------------------------------------------


def read_config_dict(path: Path) -> dict[str, Any]:
    """The raw table of a ``.toml`` or ``.json`` config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot parse config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"config {path} must hold a table/object at the top level")
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``data`` with ``KEY=VALUE`` overrides applied (``stage1.steps=100``,
    ``data.dataset=/tmp/ds``). VALUE is parsed as JSON when it can be, else kept as text."""
    result: dict[str, Any] = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        key, sep, raw = text.partition("=")
        if not sep or not key:
            raise UsageError(f"an override must look like KEY=VALUE, got {text!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *sections, leaf = key.split(".")
        table = result
        for section in sections:
            table = table.setdefault(section, {})
            if not isinstance(table, dict):
                raise UsageError(f"override {key}: {section} is not a section")
        table[leaf] = value
    return result


def load_config(path: Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config of a file (None: the defaults) with ``KEY=VALUE`` overrides."""
    data = read_config_dict(path) if path is not None else {}
    return TrainConfig.from_dict(apply_overrides(data, overrides))


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (``to_dict`` output)."""
    keys = sorted(set(_flatten(old)) | set(_flatten(new)))
    flat_old, flat_new = _flatten(old), _flatten(new)
    return [k for k in keys if flat_old.get(k) != flat_new.get(k)]


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
