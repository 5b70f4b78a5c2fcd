"""The ``Inpainter`` interface and its first backend, OpenCV's classical inpainting.

OpenCV Telea and Navier-Stokes stay in the project as the baselines the trained model must
beat; the network backends (``engines``) implement the same Protocol.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal, Protocol

import cv2
import numpy as np

from avinpaint.spec import CROP_SIZE
from stream.types import Image, InpaintResult, Mask

OpenCVMethod = Literal["telea", "ns"]


class Inpainter(Protocol):
    """Restores the masked pixels of aligned CROP_SIZE crops, a batch at a time."""

    @property
    def name(self) -> str:
        """Short backend name recorded in every result."""
        ...

    def inpaint(self, crops: Sequence[Image], masks: Sequence[Mask]) -> list[InpaintResult]:
        """One result per (crop, mask) pair, same order. Masks are 1 where covered."""
        ...


def check_batch(crops: Sequence[Image], masks: Sequence[Mask]) -> None:
    """Raise ``ValueError`` unless crops and masks pair up and have the crop size."""
    if len(crops) != len(masks):
        raise ValueError(f"{len(crops)} crops but {len(masks)} masks")
    for crop, mask in zip(crops, masks, strict=True):
        if crop.shape != (CROP_SIZE, CROP_SIZE, 3) or crop.dtype != np.uint8:
            raise ValueError(f"crop must be uint8 {CROP_SIZE}x{CROP_SIZE}x3, got {crop.shape}")
        if mask.shape != (CROP_SIZE, CROP_SIZE):
            raise ValueError(f"mask must be {CROP_SIZE}x{CROP_SIZE}, got {mask.shape}")


def opencv_fill(
    crop: Image, mask: Mask, method: OpenCVMethod = "telea", radius_px: float = 5.0
) -> Image:
    """``cv2.inpaint`` of the hole (``mask`` > 0.5) of one crop: what ``OpenCVInpainter``
    draws, for callers that need one fill, not a backend."""
    flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
    hole = (mask > 0.5).astype(np.uint8)
    return np.asarray(cv2.inpaint(crop, hole, radius_px, flag), np.uint8)


class OpenCVInpainter:
    """``cv2.inpaint`` with Telea's fast marching method or the Navier-Stokes method.

    ``radius_px`` is the neighbourhood each restored pixel draws from."""

    def __init__(self, method: OpenCVMethod = "telea", radius_px: float = 5.0) -> None:
        if method not in ("telea", "ns"):
            raise ValueError(f"unknown OpenCV inpainting method {method!r}")
        self._method: OpenCVMethod = method
        self._radius_px = radius_px

    @property
    def name(self) -> str:
        return f"opencv-{self._method}"

    def inpaint(self, crops: Sequence[Image], masks: Sequence[Mask]) -> list[InpaintResult]:
        check_batch(crops, masks)
        results = []
        for crop, mask in zip(crops, masks, strict=True):
            start = time.perf_counter()
            face = opencv_fill(crop, mask, self._method, self._radius_px)
            latency_ms = (time.perf_counter() - start) * 1000.0
            results.append(InpaintResult(face_256=face, backend=self.name, latency_ms=latency_ms))
        return results
