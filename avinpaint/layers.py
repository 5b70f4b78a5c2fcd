"""AVFF: the audio-visual feature fusion block of AudioFace (``fusion.AVFFAttention``).

A variant of attentional feature fusion (AFF / MS-CAM, Dai et al. 2021): a local branch on
the concatenated features and a global branch on their pooled sum give a per-pixel,
per-channel weight w; the output mixes face and audio features with w.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AttentionGate(nn.Module):
    """1x1 conv -> BatchNorm -> ReLU -> 1x1 conv -> BatchNorm: MS-CAM's bottleneck branch."""

    def __init__(self, channels: int, inner_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, inner_channels, kernel_size=1)
        self.reduce_norm = nn.BatchNorm2d(inner_channels)
        self.expand = nn.Conv2d(inner_channels, channels, kernel_size=1)
        self.expand_norm = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W) attention logits."""
        hidden = nn.functional.relu(self.reduce_norm(self.reduce(x)))
        out: Tensor = self.expand_norm(self.expand(hidden))
        return out


class AVFF(nn.Module):
    """Fuse a face-decoder feature with the audio face decoder's feature of the same size.

    The official form (ARCHITECTURE.md section 2), with ``C`` the audio feature's channels::

        x' = in_proj(face)                              # face channels -> C
        L  = local_gate(cat_proj(cat[x', audio]))       # per pixel
        G  = global_gate(avgpool(x' + audio))           # per channel, broadcast over H x W
        w  = sigmoid(L + G)
        out = 2 * x' * w + 2 * audio * (1 - w)          # the factor 2 is the official code's

    BatchNorm uses running statistics in eval mode. In training mode the global branch
    normalises over a batch of 1x1 maps, so it needs a batch of at least 2.
    """

    def __init__(self, face_channels: int, channels: int, reduction: int) -> None:
        super().__init__()
        inner = channels // reduction
        if inner < 1:
            raise ValueError(f"AVFF with {channels} channels cannot reduce by {reduction}")
        self.in_proj = nn.Conv2d(face_channels, channels, kernel_size=1)
        self.cat_proj = nn.Conv2d(2 * channels, channels, kernel_size=1)
        self.local_gate = AttentionGate(channels, inner)
        self.global_gate = AttentionGate(channels, inner)

    def forward(self, face: Tensor, audio: Tensor) -> Tensor:
        """face (B, Cf, H, W), audio (B, C, H, W) -> fused (B, C, H, W)."""
        x: Tensor = self.in_proj(face)
        local = self.local_gate(self.cat_proj(torch.cat([x, audio], dim=1)))
        pooled = nn.functional.adaptive_avg_pool2d(x + audio, 1)  # (B, C, 1, 1)
        weight = torch.sigmoid(local + self.global_gate(pooled))
        return 2.0 * x * weight + 2.0 * audio * (1.0 - weight)
