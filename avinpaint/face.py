"""The face branch: U-Net encoder, identity fusion, identity head and the fusing decoder.

Layer for layer the official ``CoarseNet`` (a pix2pix-style 8-level U-Net) and its ``mlp``
head (ARCHITECTURE.md section 1). Blocks are pre-activation (activation -> conv -> norm);
InstanceNorm is non-affine with no running statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from avinpaint.config import ModelConfig
from avinpaint.layers import AVFF

LEAKY_SLOPE = 0.2
"""Encoder activation: LeakyReLU(0.2), pix2pix's."""

FUSION_BLOCKS = (3, 4, 5, 6)
"""Decoder blocks whose outputs (16, 32, 64 and 128 px) are fused with the audio features."""


class FaceEncoder(nn.Module):
    """8 stride-2 4x4 convs: (B, C_in, 256, 256) -> face code (B, C_8) and 7 skips.

    Block 1 is a bare conv; blocks 2-7 are LeakyReLU -> conv -> InstanceNorm; block 8 is
    LeakyReLU -> conv (a 1x1 map cannot be instance-normalised).
    """

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        channels = [in_channels, *widths]
        self.convs = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i + 1], kernel_size=4, stride=2, padding=1)
            for i in range(len(widths))
        )

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Returns the face code (B, C_8), the raw last conv flattened, and the skips
        out_1..out_7 (B, C_k, 256 / 2^k, 256 / 2^k).

        The official blocks use in-place activations, so the next block's LeakyReLU
        overwrites the tensor kept as a skip: every skip reaches the decoder already
        LeakyReLU-activated. Keeping the activated tensor reproduces that exactly.
        """
        last = len(self.convs) - 1
        skips: list[Tensor] = []
        h = self.convs[0](x)
        for k in range(1, last + 1):
            h = nn.functional.leaky_relu(h, LEAKY_SLOPE)
            skips.append(h)
            h = self.convs[k](h)
            if k < last:
                h = nn.functional.instance_norm(h)
        return h.flatten(1), skips  # (B, C_8, 1, 1) -> (B, C_8)


class IdentityFusion(nn.Module):
    """ReLU(Linear([face code I_f ; speaker embedding I_a])): the fused code that replaces the
    bottleneck (the paper's "unified identity embedding"; one Linear in the official code)."""

    def __init__(self, face_dim: int, speaker_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(face_dim + speaker_dim, face_dim)

    def forward(self, face_code: Tensor, speaker_embedding: Tensor) -> Tensor:
        """(B, C_f), (B, D) -> (B, C_f), non-negative."""
        return nn.functional.relu(self.linear(torch.cat([face_code, speaker_embedding], dim=1)))


class IdentityHead(nn.Module):
    """Linear -> ReLU -> Linear: fused code -> identity code I_c, trained against a
    face-recognition embedding of the ground truth. It does not feed the image path."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, out_dim)

    def forward(self, fused_code: Tensor) -> Tensor:
        """(B, C_f) -> (B, identity_dim)."""
        out: Tensor = self.out(nn.functional.relu(self.hidden(fused_code)))
        return out


class FaceDecoder(nn.Module):
    """U-Net decoder: 8 stride-2 4x4 transposed convs from the fused code (1x1) to the image,
    with encoder skips and, at 16, 32, 64 and 128 px, AVFF fusion with the audio features.

    Block i (i = 0..7, the official de_8..de_1) is ReLU -> ConvTranspose -> InstanceNorm,
    the last one ReLU -> ConvTranspose -> tanh. Its input is the channel concatenation
    [previous block output, encoder skip, fusion output] (the last two where present).
    The block outputs that go into concatenations and fusions are taken before activation.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        enc = config.face_widths
        levels = len(enc)
        # Block i outputs the width of encoder level (levels - 2 - i); the last one, RGB.
        out_channels = [enc[levels - 2 - i] for i in range(levels - 1)] + [config.image_channels]
        fused_after = dict(zip(FUSION_BLOCKS, config.fusion_widths, strict=True))
        in_channels = [enc[-1]]
        for i in range(1, levels):
            # [previous block output, skip from encoder level (levels - 1 - i), fusion output]
            skip = enc[levels - 1 - i]
            in_channels.append(out_channels[i - 1] + skip + fused_after.get(i - 1, 0))
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1)
            for c_in, c_out in zip(in_channels, out_channels, strict=True)
        )
        self.fusions = nn.ModuleList(
            AVFF(out_channels[block], channels, config.fusion_reduction)
            for block, channels in zip(FUSION_BLOCKS, config.fusion_widths, strict=True)
        )

    def forward(
        self, fused_code: Tensor, skips: Sequence[Tensor], audio_features: Sequence[Tensor]
    ) -> Tensor:
        """fused_code (B, C_8), skips out_1..out_7 from the encoder, audio_features x16, x32,
        x64, x128 -> raw prediction (B, 3, 256, 256) in [-1, 1]."""
        last = len(self.ups) - 1
        h = fused_code[:, :, None, None]  # (B, C_8) -> (B, C_8, 1, 1)
        out = nn.functional.instance_norm(self.ups[0](nn.functional.relu(h)))
        for i in range(1, last + 1):
            parts = [out, skips[last - i]]
            if i - 1 in FUSION_BLOCKS:
                k = FUSION_BLOCKS.index(i - 1)
                parts.append(self.fusions[k](out, audio_features[k]))
            out = self.ups[i](nn.functional.relu(torch.cat(parts, dim=1)))
            out = torch.tanh(out) if i == last else nn.functional.instance_norm(out)
        return out
