"""The one configuration of the inpainting generator, and its two presets.

``paper`` is exactly the official AudioFace network (Sun et al., ACM MM 2024; the numbers
below are from its code, see ``shared/fixtures/audioface_parity/ARCHITECTURE.md``), so the
released ``G_500000.pth`` runs unchanged once converted. ``lite`` is the same code path,
narrower, with the mask as a fourth input channel: small enough for real time on one CPU core.

A checkpoint carries its ``ModelConfig`` (``to_dict``), so a model is rebuilt from the
checkpoint alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

SpeakerEncoder = Literal["wen2019", "ge2e"]
"""Where the speaker embedding I_a comes from.

``wen2019``: the model holds Wen et al.'s voice-embedding net and takes a log-mel window.
``ge2e``: the model holds no voice net and takes a 256-d GE2E d-vector computed outside it
(``avinpaint.ge2e``)."""

SPEAKER_ENCODERS: tuple[str, ...] = get_args(SpeakerEncoder)

GE2E_DIM = 256
"""Size of resemblyzer's GE2E d-vector: fixed by its pretrained weights."""

FACE_LEVELS = 8
"""Stride-2 levels of the face U-Net: 256 px down to a 1x1 bottleneck."""

AUDIO_LEVELS = 7
"""Stages of the audio face decoder: 1x1 -> 4 px (one 4x4 transposed conv), then doubling
to 8, 16, 32, 64, 128 and 256 px."""


@dataclass(frozen=True)
class ModelConfig:
    """Every number that shapes the generator. The defaults are the ``paper`` network.

    Attributes:
        face_widths: output channels of the 8 stride-2 encoder convs (256 px -> 1x1). The
            decoder mirrors them; the last one is the width of the face identity code I_f.
        mask_input: give the mask to the encoder as a 4th input channel. The paper does not
            (the hole is only filled with 0), which leaves a network that cannot tell a
            covered pixel from a mid-grey one: fine for its one fixed box, not for free-form
            holes.
        speaker_encoder: ``wen2019`` (voice net inside the model, log-mel input) or ``ge2e``
            (embedding computed outside, passed in).
        speaker_dim: size of the speaker embedding I_a.
        voice_widths: hidden channels of Wen's 1-D voice-embedding CNN (``wen2019`` only).
        n_mels: mel bins of the voice net's input (Wen's front end: 64).
        n_frames: frames of the voice net's input window. The net pools over time and runs on
            any length; this is the length the front end tiles to, and what exports use.
        freeze_voice: keep the voice net frozen (no gradient, always in eval mode), as the
            official code does: its weights in the released checkpoint equal Wen's.
        audio_widths: output channels of the 7 audio-face-decoder stages at 4, 8, 16, 32, 64,
            128 and 256 px. The 16..128 px ones are fused into the face decoder.
        fusion_reduction: channel reduction inside the AVFF attention branches.
        identity_hidden: hidden width of the identity head (fused code -> I_c).
        identity_dim: size of the predicted identity code I_c; it must equal the size of
            the face-recognition embedding it is trained against.
    """

    # 64..512 doubling then capped: pix2pix's U-Net, as AudioFace's CoarseNet (cnum 64).
    face_widths: tuple[int, ...] = (64, 128, 256, 512, 512, 512, 512, 512)
    # Official: the masked image only; the mask is used just to composite the output.
    mask_input: bool = False
    # Official: Wen et al. 2019's voice net inside the generator.
    speaker_encoder: SpeakerEncoder = "wen2019"
    # Wen's VoiceEmbedNet(64, [256, 384, 576, 864], 64): a 64-d voice embedding.
    speaker_dim: int = 64
    voice_widths: tuple[int, ...] = (256, 384, 576, 864)
    # Wen's front end: 64-band log filterbank, tiled to 1000 frames (10 s at 100 fps).
    n_mels: int = 64
    n_frames: int = 1000
    # Official: Enet runs under no_grad and stays in eval mode for the whole training.
    freeze_voice: bool = True
    # Wen's Generator(64, [1024, 512, 256, 128, 64], 3) to 64 px, then AudioFace's upsampler
    # (32, 16) to 256 px. x16..x128 have half the face decoder's channels at each size.
    audio_widths: tuple[int, ...] = (1024, 512, 256, 128, 64, 32, 16)
    # AVFFAttention(r=4), after Dai et al.'s attentional feature fusion.
    fusion_reduction: int = 4
    # Official mlp head: Linear(512, 1024), ReLU, Linear(1024, 2048), regressed onto 2048-d
    # VGGFace2 ResNet-50 features.
    identity_hidden: int = 1024
    identity_dim: int = 2048

    def __post_init__(self) -> None:
        _check_widths("face_widths", self.face_widths, FACE_LEVELS)
        _check_widths("voice_widths", self.voice_widths, None)
        _check_widths("audio_widths", self.audio_widths, AUDIO_LEVELS)
        for name in (
            "speaker_dim",
            "n_mels",
            "n_frames",
            "fusion_reduction",
            "identity_hidden",
            "identity_dim",
        ):
            _check_positive_int(name, getattr(self, name))
        for name in ("mask_input", "freeze_voice"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.speaker_encoder not in SPEAKER_ENCODERS:
            raise ValueError(
                f"speaker_encoder must be one of {', '.join(SPEAKER_ENCODERS)}, "
                f"got {self.speaker_encoder!r}"
            )
        if self.speaker_encoder == "ge2e" and self.speaker_dim != GE2E_DIM:
            raise ValueError(
                f"ge2e embeddings are {GE2E_DIM}-d, got speaker_dim {self.speaker_dim}"
            )
        for px, channels in zip((16, 32, 64, 128), self.fusion_widths, strict=True):
            if channels < self.fusion_reduction:
                raise ValueError(
                    f"audio_widths at {px} px ({channels}) must be >= fusion_reduction "
                    f"({self.fusion_reduction})"
                )

    @property
    def image_size(self) -> int:
        """Side of the square face crop: each encoder level halves it down to 1x1."""
        return int(2**FACE_LEVELS)

    @property
    def image_channels(self) -> int:
        """Channels of the face image (RGB)."""
        return 3

    @property
    def encoder_in_channels(self) -> int:
        """Channels the first encoder conv sees: RGB, plus the mask when ``mask_input``."""
        return self.image_channels + (1 if self.mask_input else 0)

    @property
    def fusion_widths(self) -> tuple[int, int, int, int]:
        """Channels of the audio features x16, x32, x64, x128 (and of each AVFF output)."""
        return (
            self.audio_widths[2],
            self.audio_widths[3],
            self.audio_widths[4],
            self.audio_widths[5],
        )

    @property
    def has_voice_net(self) -> bool:
        """Whether the model holds the voice-embedding net (and takes a log-mel window)."""
        return self.speaker_encoder == "wen2019"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``. Unknown or missing keys are errors: a config that does not
        describe every number of the network is not silently completed with defaults."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        missing = [n for n in names if n not in data]
        if unknown or missing:
            problems = []
            if unknown:
                problems.append(f"unknown keys {', '.join(unknown)}")
            if missing:
                problems.append(f"missing keys {', '.join(missing)}")
            raise ValueError(f"bad model config: {'; '.join(problems)}")
        values: dict[str, Any] = {}
        for name in names:
            value = data[name]
            if isinstance(getattr(PAPER, name), tuple):
                if not isinstance(value, list | tuple):
                    raise ValueError(f"{name} must be a list of ints, got {value!r}")
                value = tuple(value)
            values[name] = value
        return cls(**values)


def _check_positive_int(name: str, value: object) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_widths(name: str, widths: object, length: int | None) -> None:
    if not isinstance(widths, tuple) or not widths:
        raise ValueError(f"{name} must be a non-empty tuple of ints, got {widths!r}")
    if length is not None and len(widths) != length:
        raise ValueError(f"{name} needs {length} entries, got {len(widths)}")
    for i, w in enumerate(widths):
        _check_positive_int(f"{name}[{i}]", w)


PAPER = ModelConfig()
"""The official AudioFace generator: 74.05 M parameters, 16.5 GFLOPs per face."""

LITE = ModelConfig(
    # Base width 16 instead of 64: the large resolutions dominate the cost and it falls with
    # the square of their width (1.17 GFLOPs per face, half the 2 GFLOPs budget, leaving room
    # for slower hosts and several faces per frame). Capped at 256 rather than 128: the 1..8 px
    # levels cost little and carry the identity code. Multiples of 8 suit CPU kernels.
    face_widths=(16, 32, 64, 128, 256, 256, 256, 256),
    # Free-form holes: the network must know which pixels are missing.
    mask_input=True,
    # GE2E ships with weights (resemblyzer, Apache-2.0); Wen's come only in a paper checkpoint.
    speaker_encoder="ge2e",
    speaker_dim=GE2E_DIM,
    # Still half the face decoder's channels at 16..128 px, as in the paper; runs once per
    # speaker window, so its size matters little.
    audio_widths=(256, 128, 64, 32, 16, 8, 8),
    # SFace (128-d) is the identity network the losses and metrics use.
    identity_hidden=256,
    identity_dim=128,
)
"""The default that ships: the paper's parts, narrower, mask as an input channel."""

PRESETS: dict[str, ModelConfig] = {"paper": PAPER, "lite": LITE}


def preset(name: str) -> ModelConfig:
    """The named preset config (``paper`` or ``lite``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None
