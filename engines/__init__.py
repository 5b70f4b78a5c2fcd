"""engines: the network as fast inference on whatever the host has.

    from engines import BackendOptions, select_backend
    selection = select_backend("auto", model, BackendOptions(cache_dir=path))
    features = selection.backend.speaker_features(speaker_input)   # once per speaker window
    out = selection.backend.inpaint(faces, masks, features)          # per batch of faces

- ``engines.export``: the two ONNX graphs (``speaker``, ``inpaint``) and their cached export.
- ``engines.tensorrt``: TensorRT 10/11 engine build and runtime (import-guarded; never run here).
- ``engines.cache``: the engine cache (key, file lock, atomic entries, list, clean); stdlib only.
- ``engines.backends``: the ``Backend`` Protocol, onnxruntime and torch backends, selection.

The command-line glue (``avstream engines``, ``--backend``) is ``stream.engines_cli``: engines
imports neither ``stream`` nor ``training`` (``tests/test_layering.py``).

Public names are imported lazily so ``engines.cache`` can be used without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engines.backends import (
        Backend,
        BackendError,
        BackendOptions,
        BackendSelection,
        BackendUnavailableError,
        InpaintArrays,
        SpeakerArrays,
        select_backend,
    )
    from engines.cache import BatchProfile, EngineCache, EngineKey
    from engines.export import ExportedModel, export_cached, export_model

_EXPORTS = {
    "Backend": "engines.backends",
    "BackendError": "engines.backends",
    "BackendOptions": "engines.backends",
    "BackendSelection": "engines.backends",
    "BackendUnavailableError": "engines.backends",
    "InpaintArrays": "engines.backends",
    "SpeakerArrays": "engines.backends",
    "select_backend": "engines.backends",
    "BatchProfile": "engines.cache",
    "EngineCache": "engines.cache",
    "EngineKey": "engines.cache",
    "ExportedModel": "engines.export",
    "export_cached": "engines.export",
    "export_model": "engines.export",
}

__all__ = [
    "Backend",
    "BackendError",
    "BackendOptions",
    "BackendSelection",
    "BackendUnavailableError",
    "BatchProfile",
    "EngineCache",
    "EngineKey",
    "ExportedModel",
    "InpaintArrays",
    "SpeakerArrays",
    "export_cached",
    "export_model",
    "select_backend",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engines' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
