"""The onnxruntime CPU sessions of the small shipped networks that ``--mask-detect`` runs
(the occlusion segmenter, the placement network): a fixed thread count and one clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stream.errors import AvstreamError


def cpu_session(path: Path, threads: int, what: str) -> Any:
    """An onnxruntime ``InferenceSession`` of ``path`` on the CPU with ``threads`` intra-op
    threads. Raises ``AvstreamError`` naming ``what`` when the file cannot be loaded."""
    import onnxruntime as ort  # heavy: only when a network is opened

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise AvstreamError(f"cannot load the {what} {path}: {exc}") from exc
