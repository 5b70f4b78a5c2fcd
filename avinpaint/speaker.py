"""Speaker encoders by name: turn voiced 16 kHz speech into the model's speaker input.

``ge2e``: the pretrained GE2E d-vector (resemblyzer's weights, 256-d) computed here; the
model receives the embedding. ``wen2019``: the seed paper's voice net lives inside the model
(its weights come with a ``paper`` checkpoint); the model receives the Wen log-mel window.
Either way ``Generator.speaker_features(encoder.speaker_input(speech))`` is the speaker side.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from avinpaint.audio import wen_features
from avinpaint.config import SPEAKER_ENCODERS
from avinpaint.ge2e import GE2EEncoder, normalize_volume


class SpeakerFrontEnd(Protocol):
    """Maps voiced speech to what ``Generator.speaker_features`` takes for one speaker."""

    @property
    def name(self) -> str:
        """The registry name (``ge2e``, ``wen2019``)."""
        ...

    def speaker_input(self, speech_16k: Tensor) -> Tensor:
        """(N,) float voiced speech in [-1, 1] at 16 kHz -> a batch-1 speaker input."""
        ...


class GE2ESpeaker:
    """GE2E embedding of the speech (volume-normalised as resemblyzer does; the caller has
    already removed silence with its VAD): a (1, 256) unit vector."""

    name = "ge2e"

    def __init__(self, encoder: GE2EEncoder | None = None) -> None:
        self._encoder = encoder or GE2EEncoder.pretrained()

    def speaker_input(self, speech_16k: Tensor) -> Tensor:
        _check_speech(speech_16k)
        embedding = self._encoder.embed_utterance(normalize_volume(speech_16k.float()))
        return embedding.unsqueeze(0)


class Wen2019Speaker:
    """The Wen 2019 log-mel window the model's own voice net embeds: (1, 64, >= 1000)."""

    name = "wen2019"

    def speaker_input(self, speech_16k: Tensor) -> Tensor:
        _check_speech(speech_16k)
        return wen_features(speech_16k.float()).unsqueeze(0)


def speaker_front_end(name: str) -> SpeakerFrontEnd:
    """The front end registered under ``name`` (see ``avinpaint.config.SPEAKER_ENCODERS``)."""
    if name == "ge2e":
        return GE2ESpeaker()
    if name == "wen2019":
        return Wen2019Speaker()
    raise ValueError(f"unknown speaker encoder {name!r}; one of {', '.join(SPEAKER_ENCODERS)}")


def _check_speech(speech_16k: Tensor) -> None:
    if speech_16k.ndim != 1 or speech_16k.numel() == 0:
        raise ValueError(f"speech must be a non-empty (N,) tensor, got {tuple(speech_16k.shape)}")
    if not bool(torch.isfinite(speech_16k).all()):
        raise ValueError("speech contains NaN or infinity")
