"""The audio-driven face inpainting generator, built from one ``ModelConfig``.

Data flow (shapes for one face, B = batch; ``paper`` channel counts in brackets)::

    speaker input ──> voice net (wen2019 only) ──> L2-normalise ──> I_a (B, D)
    I_a ──> audio face decoder ──> x16, x32, x64, x128 and the audio face (B, 3, 256, 256)
    masked face (+ mask) ──> face encoder ──> I_f (B, 512) and skips
    [I_f ; I_a] ──> identity fusion ──> fused code (B, 512) ──> identity head ──> I_c
    fused code, skips, x16..x128 ──> face decoder with AVFF ──> raw (B, 3, 256, 256), tanh
    inpainted = masked face * (1 - mask) + raw * mask

Everything on the speaker side depends on the speaker window only, so ``speaker_features``
runs once per window and its result is reused by ``inpaint`` for every face and frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Self

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from avinpaint.config import ModelConfig
from avinpaint.face import FaceDecoder, FaceEncoder, IdentityFusion, IdentityHead
from avinpaint.voice import AudioFaceDecoder, VoiceEmbedNet


class SpeakerFeatures(NamedTuple):
    """What the face side needs from the speaker: compute once per speaker window.

    A batch of 1 is shared by every face of an ``inpaint`` batch.
    """

    embedding: Tensor  # I_a (B, D), unit L2 norm
    x16: Tensor  # (B, audio_widths[2], 16, 16), post-ReLU
    x32: Tensor  # (B, audio_widths[3], 32, 32)
    x64: Tensor  # (B, audio_widths[4], 64, 64)
    x128: Tensor  # (B, audio_widths[5], 128, 128)
    audio_face: Tensor  # x_a (B, 3, 256, 256), unbounded; used by the training losses only


class InpaintOutput(NamedTuple):
    """The per-face part's results."""

    inpainted: Tensor  # (B, 3, 256, 256): known pixels kept exactly, hole from ``raw``
    raw: Tensor  # (B, 3, 256, 256) decoder output in [-1, 1] (tanh), before compositing
    identity_code: Tensor  # I_c (B, identity_dim)
    face_code: Tensor  # I_f (B, face_widths[-1]), the encoder bottleneck
    fused_code: Tensor  # (B, face_widths[-1]), the decoder's input


class GeneratorOutput(NamedTuple):
    """Everything one full forward pass gives (what the training losses need)."""

    inpainted: Tensor  # (B, 3, 256, 256), composited
    raw: Tensor  # (B, 3, 256, 256), before compositing
    audio_face: Tensor  # x_a (B, 3, 256, 256)
    identity_code: Tensor  # I_c (B, identity_dim)
    speaker_embedding: Tensor  # I_a (B, D), unit L2 norm


class Generator(nn.Module):
    """AudioFace's inpainting generator (``InpaintNet``), in the shape ``config`` gives.

    Images are RGB NCHW in [-1, 1]; masks are (B, 1, H, W) with 1 = hole. The speaker
    input is a log-mel window (B, n_mels, T) for ``wen2019`` or an embedding (B, 256) for
    ``ge2e``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.voice: VoiceEmbedNet | None = None
        if config.has_voice_net:
            self.voice = VoiceEmbedNet(config.n_mels, config.voice_widths, config.speaker_dim)
            if config.freeze_voice:
                self.voice.requires_grad_(False)
                self.voice.train(False)
        self.audio_decoder = AudioFaceDecoder(
            config.speaker_dim, config.audio_widths, config.image_channels
        )
        self.encoder = FaceEncoder(config.encoder_in_channels, config.face_widths)
        self.fusion = IdentityFusion(config.face_widths[-1], config.speaker_dim)
        self.identity_head = IdentityHead(
            config.face_widths[-1], config.identity_hidden, config.identity_dim
        )
        self.decoder = FaceDecoder(config)

    def train(self, mode: bool = True) -> Self:
        """Like ``nn.Module.train``, but a frozen voice net stays in eval mode (official:
        its BatchNorm running statistics are Wen's and are never updated)."""
        super().train(mode)
        if self.voice is not None and self.config.freeze_voice:
            self.voice.train(False)
        return self

    def speaker_embedding(self, speaker_input: Tensor) -> Tensor:
        """Speaker input -> I_a (B, D) with unit L2 norm (a GE2E d-vector already has it)."""
        if self.voice is not None:
            if speaker_input.ndim != 3 or speaker_input.shape[1] != self.config.n_mels:
                raise ValueError(
                    f"wen2019 speaker input must be a log-mel window (B, {self.config.n_mels}, "
                    f"T), got {tuple(speaker_input.shape)}"
                )
            raw = self.voice(speaker_input)
        else:
            if speaker_input.ndim != 2 or speaker_input.shape[1] != self.config.speaker_dim:
                raise ValueError(
                    f"{self.config.speaker_encoder} speaker input must be an embedding "
                    f"(B, {self.config.speaker_dim}), got {tuple(speaker_input.shape)}"
                )
            raw = speaker_input
        return nn.functional.normalize(raw, dim=1)

    def speaker_features(self, speaker_input: Tensor) -> SpeakerFeatures:
        """The speaker-only part: embedding, audio features x16..x128 and the audio face."""
        embedding = self.speaker_embedding(speaker_input)
        (x16, x32, x64, x128), audio_face = self.audio_decoder(embedding)
        return SpeakerFeatures(embedding, x16, x32, x64, x128, audio_face)

    def inpaint(
        self, masked_face: Tensor, mask: Tensor, features: SpeakerFeatures
    ) -> InpaintOutput:
        """The per-face part. ``masked_face`` (B, 3, 256, 256) in [-1, 1]; its hole pixels are
        zeroed here, so an unmasked face may be passed. ``mask`` (B, 1, 256, 256), 1 = hole.
        ``features`` from ``speaker_features``, batch 1 (shared by all faces) or B."""
        self._check_face_inputs(masked_face, mask)
        batch = masked_face.shape[0]
        embedding, *audio_features = self._expand_features(features, batch)
        masked = masked_face * (1.0 - mask)
        encoder_input = torch.cat([masked, mask], dim=1) if self.config.mask_input else masked
        face_code, skips = self.encoder(encoder_input)
        fused_code = self.fusion(face_code, embedding)
        raw = self.decoder(fused_code, skips, audio_features)
        # = face * (1 - mask) + raw * mask: known pixels exactly kept, and a soft (feathered)
        # mask gives a convex blend.
        inpainted = masked + raw * mask
        identity_code = self.identity_head(fused_code)
        return InpaintOutput(inpainted, raw, identity_code, face_code, fused_code)

    def forward(self, masked_face: Tensor, mask: Tensor, speaker_input: Tensor) -> GeneratorOutput:
        """Full pass: ``speaker_features`` then ``inpaint``; shapes as there."""
        features = self.speaker_features(speaker_input)
        out = self.inpaint(masked_face, mask, features)
        return GeneratorOutput(
            out.inpainted, out.raw, features.audio_face, out.identity_code, features.embedding
        )

    def _check_face_inputs(self, masked_face: Tensor, mask: Tensor) -> None:
        size = self.config.image_size
        channels = self.config.image_channels
        if masked_face.ndim != 4 or masked_face.shape[1:] != (channels, size, size):
            raise ValueError(
                f"face must be (B, {channels}, {size}, {size}), got {tuple(masked_face.shape)}"
            )
        if not (masked_face.is_floating_point() and mask.is_floating_point()):
            raise ValueError(
                f"face and mask must be floating point, got {masked_face.dtype} and {mask.dtype}"
            )
        if mask.shape != (masked_face.shape[0], 1, size, size):
            raise ValueError(
                f"mask must be ({masked_face.shape[0]}, 1, {size}, {size}), got {tuple(mask.shape)}"
            )

    @staticmethod
    def _expand_features(features: SpeakerFeatures, batch: int) -> list[Tensor]:
        """[embedding, x16, x32, x64, x128], broadcast from a batch of 1 to ``batch``."""
        tensors = [features.embedding, features.x16, features.x32, features.x64, features.x128]
        speaker_batch = features.embedding.shape[0]
        if speaker_batch == batch:
            return tensors
        if speaker_batch != 1:
            raise ValueError(f"speaker features have batch {speaker_batch}, faces {batch}")
        return [t.expand(batch, *t.shape[1:]) for t in tensors]


@dataclass(frozen=True)
class PartCost:
    """Size and compute of one part of the generator, for one face.

    ``flops`` counts convolutions, transposed convolutions and matrix products as
    2 x multiply-accumulates (``torch.utils.flop_counter``); norms and activations are left
    out. At B = 1 and the config's input sizes.
    """

    name: str
    params: int
    flops: int


def part_costs(model: Generator) -> list[PartCost]:
    """Parameters and FLOPs of each top-level part, the speaker side with a ``n_frames``
    window. The per-face part is ``encoder``, ``fusion``, ``decoder`` and ``identity_head``."""
    config = model.config
    size = config.image_size
    param = next(model.parameters())
    if model.voice is not None:
        speaker_input = torch.zeros(1, config.n_mels, config.n_frames, dtype=param.dtype)
    else:
        speaker_input = torch.ones(1, config.speaker_dim, dtype=param.dtype)
    face = torch.zeros(1, config.image_channels, size, size, dtype=param.dtype)
    mask = torch.zeros(1, 1, size, size, dtype=param.dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(face, mask, speaker_input)
    flops_by_module = counter.get_flop_counts()
    costs = []
    for name, module in model.named_children():
        counts = flops_by_module.get(f"{type(model).__name__}.{name}", {})
        params = sum(p.numel() for p in module.parameters())
        costs.append(PartCost(name, params, int(sum(counts.values()))))
    return costs
