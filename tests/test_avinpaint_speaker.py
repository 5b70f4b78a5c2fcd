"""Speaker front ends by name, feeding the generator's speaker side."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avinpaint.config import preset
from avinpaint.model import Generator
from avinpaint.speaker import GE2ESpeaker, Wen2019Speaker, speaker_front_end


def _speech(seconds: float, f0_hz: float, seed: int) -> torch.Tensor:
    """A crude voiced signal: a pitch contour with harmonics and a syllable envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16_000 * seconds)) / 16_000
    f0 = f0_hz * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / 16_000
    wave = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
    noisy = wave * envelope * 0.1 + rng.normal(0, 0.002, t.shape)
    return torch.from_numpy(noisy.astype(np.float32))


def test_registry() -> None:
    assert isinstance(speaker_front_end("wen2019"), Wen2019Speaker)
    assert speaker_front_end("ge2e").name == "ge2e"
    with pytest.raises(ValueError, match="unknown speaker encoder"):
        speaker_front_end("xvector")


def test_each_front_end_drives_its_model_preset() -> None:
    torch.manual_seed(0)
    speech = _speech(3.0, 120.0, 0)
    for name in ("lite", "paper"):
        model = Generator(preset(name)).eval()
        front = speaker_front_end(model.config.speaker_encoder)
        speaker_input = front.speaker_input(speech)
        with torch.no_grad():
            features = model.speaker_features(speaker_input)
        assert features.embedding.shape == (1, model.config.speaker_dim)
        assert torch.allclose(features.embedding.norm(dim=1), torch.ones(1), atol=1e-5)


def test_ge2e_separates_different_voices() -> None:
    front = GE2ESpeaker()
    low_a = front.speaker_input(_speech(4.0, 100.0, 1))
    low_b = front.speaker_input(_speech(4.0, 102.0, 2))
    high = front.speaker_input(_speech(4.0, 230.0, 3))
    same = float((low_a * low_b).sum())
    different = float((low_a * high).sum())
    assert same > different


def test_bad_speech_is_refused() -> None:
    for front in (GE2ESpeaker(), Wen2019Speaker()):
        with pytest.raises(ValueError):
            front.speaker_input(torch.zeros(0))
        with pytest.raises(ValueError):
            front.speaker_input(torch.full((1600,), float("nan")))
        with pytest.raises(ValueError):
            front.speaker_input(torch.zeros(2, 1600))
