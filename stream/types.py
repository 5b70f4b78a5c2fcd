"""Frozen data types that flow between pipeline stages.

Images are numpy arrays in BGR channel order (OpenCV's convention), uint8, shape (H, W, 3).
Points are float (x, y) pixel coordinates. Affine matrices are 2x3 float64 arrays mapping
(x, y, 1) column vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from stream.guard import GuardVerdict
    from stream.past_crop import PastCropOptions

Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float64]
Mask = npt.NDArray[np.float32]
"""Coverage in [0, 1]; 1 means covered (to be restored)."""


@dataclass(frozen=True, eq=False)
class VideoFrame:
    """One decoded video frame with the demuxer's own timestamp (never a frame counter)."""

    index: int
    pts: int | None
    time_base: Fraction
    image: Image

    @property
    def time_s(self) -> float | None:
        """Presentation time in seconds, or None where the demuxer gave no timestamp."""
        return None if self.pts is None else float(self.pts * self.time_base)


@dataclass(frozen=True, eq=False)
class AudioChunk:
    """Mono 16 kHz speech samples starting at ``pts_s`` (float32 in [-1, 1])."""

    pts_s: float
    samples_16k: npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class FaceDetection:
    """A detected face: box (x, y, w, h), 5 landmarks (5, 2) in frame pixels, and a score."""

    box: tuple[float, float, float, float]
    landmarks5: FloatArray
    score: float


@dataclass(frozen=True, eq=False)
class Track:
    """A face followed across frames: stable id, the latest detection, smoothed landmarks."""

    track_id: int
    detection: FaceDetection
    smoothed_landmarks: FloatArray
    detected_this_frame: bool


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """A face warped to the CROP_SIZE template; ``inverse_affine`` maps crop -> frame."""

    crop: Image
    affine: FloatArray
    inverse_affine: FloatArray


@dataclass(frozen=True, eq=False)
class Occlusion:
    """Which pixels of an aligned crop are covered (``mask_256`` in [0, 1]) and how sure.

    ``context_px``: how far beyond the region the inpainter should treat pixels as unknown
    too (crop pixels), for a region whose edge may still hold some of the occluder (a
    segmenter's); only the region itself is ever composited. 0 for a region given exactly.
    ``past_crop``: follow the occluder past the crop's edge in the frame and fill it there
    too (``stream.past_crop``; None for a region given exactly, which is all there is).
    ``rim_256``: the occluder's soft edge just outside the region, as the share of each
    pixel to restore (0..1, 0 inside the region; within ``context_px`` of it, where the
    inpainter fills too; None for none)."""

    mask_256: Mask
    score: float
    context_px: int = 0
    past_crop: PastCropOptions | None = None
    rim_256: Mask | None = None


@dataclass(frozen=True, eq=False)
class InpaintResult:
    """A restored aligned crop, the backend that made it, and how long it took.

    ``guard``: the fill guard's verdict on the backend's fill (None where no guard ran);
    ``fallback``: the guard failed it and ``face_256`` is the safe fill instead;
    ``blended``: ``face_256`` is the fill Poisson-blended into the visible face;
    ``held``: the guard failed it and ``face_256`` is the track's last good crop instead
    (``stream.restore.ReuseCache.show_held``; ``backend`` then ends in ``+held``)."""

    face_256: Image
    backend: str
    latency_ms: float
    guard: GuardVerdict | None = None
    fallback: bool = False
    blended: bool = False
    held: bool = False
