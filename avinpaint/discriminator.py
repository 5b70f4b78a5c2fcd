"""The PatchGAN discriminator AudioFace trains against (pix2pix 70x70 style, pair input).

It judges a PAIR of images stacked on the channel axis: the official training feeds it
``D(inpainted, ground_truth)`` and ``D(ground_truth, inpainted)`` and compares the two with a
relativistic LSGAN loss (see ``avinpaint.losses``). The layers, norms and state-dict names are
those of the official ``PatchDiscriminator`` (ARCHITECTURE.md section 5), so an official
``PD_*.pth`` loads with ``load_state_dict`` unchanged when the config is the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

# Official: every conv is 4x4 with padding 1; LeakyReLU slope 0.2.
_KERNEL = 4
_PADDING = 1
_LEAKY_SLOPE = 0.2


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Shape of the patch discriminator; the defaults are the official network.

    Attributes:
        in_channels: channels of the concatenated pair (official: two RGB images, 6). A
            discriminator that also sees the mask would use 7 and concatenate it itself.
        base_width: channels of the first conv; the four convs are 1x, 2x, 4x, 8x this
            (official 64: 2,767,809 parameters). A narrower one suits the ``lite`` model.
        spectral_norm: wrap every conv in spectral normalisation. Off for parity (the official
            discriminator has none); the state-dict names change when it is on.
    """

    in_channels: int = 6
    base_width: int = 64
    spectral_norm: bool = False

    def __post_init__(self) -> None:
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.base_width < 1:
            raise ValueError(f"base_width must be >= 1, got {self.base_width}")


def _conv(config: DiscriminatorConfig, in_ch: int, out_ch: int, stride: int) -> nn.Module:
    conv = nn.Conv2d(in_ch, out_ch, _KERNEL, stride=stride, padding=_PADDING, bias=True)
    return spectral_norm(conv) if config.spectral_norm else conv


class PatchDiscriminator(nn.Module):
    """pix2pix 70x70 PatchGAN on a channel-concatenated image pair.

    Layers (official, ARCHITECTURE.md section 5; IN = non-affine InstanceNorm2d):
    conv(in->w, s2), LReLU; conv(w->2w, s2), IN, LReLU; conv(2w->4w, s2), IN, LReLU;
    conv(4w->8w, s1), IN, LReLU; conv(8w->1, s1). No sigmoid: the loss is least squares.

    A 256x256 pair gives a (B, 1, 30, 30) map of raw scores, one per 70x70 input patch.
    """

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else DiscriminatorConfig()
        w = self.config.base_width
        slope = _LEAKY_SLOPE
        # One Sequential called ``discriminator`` with the official layer order, so the
        # official state-dict keys (discriminator.0/.2/.5/.8/.11) line up index for index.
        self.discriminator = nn.Sequential(
            _conv(self.config, self.config.in_channels, w, stride=2),
            nn.LeakyReLU(slope),
            _conv(self.config, w, 2 * w, stride=2),
            nn.InstanceNorm2d(2 * w),
            nn.LeakyReLU(slope),
            _conv(self.config, 2 * w, 4 * w, stride=2),
            nn.InstanceNorm2d(4 * w),
            nn.LeakyReLU(slope),
            _conv(self.config, 4 * w, 8 * w, stride=1),
            nn.InstanceNorm2d(8 * w),
            nn.LeakyReLU(slope),
            _conv(self.config, 8 * w, 1, stride=1),
        )

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        """Score the pair ``cat([first, second], dim=1)``; returns (B, 1, h, w) raw scores.

        Order matters: the official loss scores both ``(fake, real)`` and ``(real, fake)``.
        """
        if first.ndim != 4 or second.ndim != 4:
            raise ValueError(f"need NCHW tensors, got {tuple(first.shape)}, {tuple(second.shape)}")
        if first.shape[0] != second.shape[0] or first.shape[2:] != second.shape[2:]:
            raise ValueError(
                f"pair must share batch and size, got {tuple(first.shape)}, {tuple(second.shape)}"
            )
        channels = first.shape[1] + second.shape[1]
        if channels != self.config.in_channels:
            raise ValueError(
                f"pair has {channels} channels, discriminator expects {self.config.in_channels}"
            )
        out: Tensor = self.discriminator(torch.cat([first, second], dim=1))
        return out


def patch_grid_size(image_size: int) -> int:
    """Side of the score map for a square ``image_size`` input: three stride-2 4x4 convs
    (n -> n // 2) then two stride-1 4x4 convs with padding 1 (n -> n - 1). 256 -> 30."""
    size = image_size
    for _ in range(3):
        size = (size + 2 * _PADDING - _KERNEL) // 2 + 1
    for _ in range(2):
        size = size + 2 * _PADDING - _KERNEL + 1
    if size < 1:
        raise ValueError(f"image_size {image_size} is too small for the patch discriminator")
    return size
