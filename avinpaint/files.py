"""File helpers shared by the layers above (standard library only: the batch driver and the
engine cache hash files without importing torch)."""

from __future__ import annotations

import hashlib
import importlib.resources
from pathlib import Path

_BLOCK_BYTES = 1 << 20


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def shipped_weights(filename: str) -> Path:
    """Where the package keeps a shipped weights file (``avinpaint/weights/FILENAME``; the
    file may not exist in an install without it)."""
    return Path(str(importlib.resources.files("avinpaint") / "weights" / filename))
