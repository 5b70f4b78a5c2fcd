"""The audio side: Wen et al. 2019's voice-embedding net and the audio face decoder.

The audio face decoder is Wen et al.'s voice-to-face generator (to 64x64, "Reconstructing
faces from voices", NeurIPS 2019) followed by AudioFace's upsampler to 256x256. Its features
at 16, 32, 64 and 128 px are what the face decoder fuses; its 256x256 output is the "audio
face" x_a, used only by the training losses.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

FEATURE_STAGES = (2, 3, 4, 5)
"""Audio-decoder stages whose outputs are x16, x32, x64 and x128 (stage s outputs 4*2^s px)."""


class VoiceEmbedNet(nn.Module):
    """Wen's ``VoiceEmbedNet``: log-mel (B, n_mels, T) -> voice embedding (B, dim).

    Five 1-D convs, kernel 3, stride 2, padding 1; the hidden ones have no bias and are
    followed by BatchNorm and ReLU, the last one has a bias and nothing after it. The
    result is averaged over time, so any T >= 1 works. Not normalised: the generator
    L2-normalises it.
    """

    def __init__(self, n_mels: int, widths: Sequence[int], dim: int) -> None:
        super().__init__()
        channels = [n_mels, *widths]
        self.convs = nn.ModuleList(
            nn.Conv1d(channels[i], channels[i + 1], 3, stride=2, padding=1, bias=False)
            for i in range(len(widths))
        )
        self.convs.append(nn.Conv1d(channels[-1], dim, 3, stride=2, padding=1, bias=True))
        self.norms = nn.ModuleList(nn.BatchNorm1d(c) for c in widths)

    def forward(self, log_mel: Tensor) -> Tensor:
        """(B, n_mels, T) -> (B, dim)."""
        h = log_mel
        for conv, norm in zip(self.convs[:-1], self.norms, strict=True):
            h = nn.functional.relu(norm(conv(h)))
        last: Tensor = self.convs[-1](h)  # (B, dim, ceil(T / 32))
        return last.mean(dim=2)


class AudioFaceDecoder(nn.Module):
    """Speaker embedding (B, D) -> audio features x16..x128 and the audio face (B, 3, 256, 256).

    Stage 0 is a 4x4 transposed conv from 1x1 to 4 px; stages 1-6 are 4x4 stride-2
    transposed convs doubling to 8..256 px; each is followed by ReLU. Stages 0-4 are Wen's
    generator, 5-6 AudioFace's upsampler, and ``to_rgb`` (a 1x1 transposed conv, no output
    nonlinearity: the audio face is unbounded) its last layer. Wen's own 64 px RGB head is
    not part of this module: the official model computes it and throws the result away.
    """

    def __init__(self, speaker_dim: int, widths: Sequence[int], out_channels: int) -> None:
        super().__init__()
        channels = [speaker_dim, *widths]
        self.ups = nn.ModuleList([nn.ConvTranspose2d(channels[0], channels[1], 4, 1, 0)])
        self.ups.extend(
            nn.ConvTranspose2d(channels[i], channels[i + 1], 4, stride=2, padding=1)
            for i in range(1, len(widths))
        )
        self.to_rgb = nn.ConvTranspose2d(channels[-1], out_channels, 1, stride=1, padding=0)

    def forward(self, embedding: Tensor) -> tuple[list[Tensor], Tensor]:
        """embedding (B, D) -> ([x16, x32, x64, x128], audio face (B, 3, 256, 256)).

        The features are post-ReLU, as the official in-place ReLUs leave them.
        """
        h = embedding[:, :, None, None]  # (B, D) -> (B, D, 1, 1)
        features: list[Tensor] = []
        for stage, up in enumerate(self.ups):
            h = nn.functional.relu(up(h))
            if stage in FEATURE_STAGES:
                features.append(h)
        out: Tensor = self.to_rgb(h)
        return features, out
