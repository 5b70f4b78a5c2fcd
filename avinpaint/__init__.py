"""avinpaint: the audio-driven identity-preserving face-inpainting network.

    import avinpaint
    model = avinpaint.load("paper.safetensors")   # or a shipped preset name
    out = model(masked_face, mask, speaker_input)  # GeneratorOutput

The public names are imported lazily: ``avinpaint.spec`` (constants only) is imported by the
video pipeline, which should not pay for importing torch until it runs the network.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avinpaint.checkpoint import CheckpointError, load, save
    from avinpaint.config import ModelConfig, preset
    from avinpaint.model import Generator, GeneratorOutput, InpaintOutput, SpeakerFeatures

_EXPORTS = {
    "load": "avinpaint.checkpoint",
    "save": "avinpaint.checkpoint",
    "CheckpointError": "avinpaint.checkpoint",
    "ModelConfig": "avinpaint.config",
    "preset": "avinpaint.config",
    "Generator": "avinpaint.model",
    "GeneratorOutput": "avinpaint.model",
    "InpaintOutput": "avinpaint.model",
    "SpeakerFeatures": "avinpaint.model",
}

__all__ = [
    "CheckpointError",
    "Generator",
    "GeneratorOutput",
    "InpaintOutput",
    "ModelConfig",
    "SpeakerFeatures",
    "load",
    "preset",
    "save",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'avinpaint' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
