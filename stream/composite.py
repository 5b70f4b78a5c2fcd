"""Put restored crops back into the frame: inverse warp and a feathered blend that changes
only the covered region (every pixel outside it keeps its exact original value)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from avinpaint.geometry import apply_affine
from stream.types import FloatArray, Image, Mask


def feather(mask_256: Mask, feather_px: float) -> Mask:
    """Blend weights from a coverage mask: 1 on every covered pixel, falling smoothly to 0
    over about ``feather_px`` outside it. Feathering outward (never inward) means nothing of
    the occluder survives at the hole's edge."""
    mask = np.clip(mask_256.astype(np.float32), 0.0, 1.0)
    if feather_px <= 0:
        return mask
    sigma = feather_px / 2.0
    ksize = 2 * math.ceil(3 * sigma) + 1
    grown = cv2.dilate(mask, np.ones((3, 3), np.uint8), iterations=max(1, round(feather_px / 2)))
    soft = cv2.GaussianBlur(grown, (ksize, ksize), sigma)
    return np.clip(np.maximum(mask, soft), 0.0, 1.0)


def composite(frame: Image, crop: Image, weight_256: Mask, inverse_affine: FloatArray) -> Image:
    """Blend ``crop`` (aligned space) into a copy of ``frame`` with ``weight_256`` as alpha.

    Only the bounding box of the warped weight is touched, so the cost does not grow with
    the frame size."""
    out = frame.copy()
    roi = _roi(weight_256, inverse_affine, frame.shape[1], frame.shape[0])
    if roi is None:
        return out
    x0, y0, x1, y1 = roi
    shift = inverse_affine.copy()
    shift[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    warped_crop = cv2.warpAffine(
        crop, shift, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    warped_w = cv2.warpAffine(
        weight_256,
        shift,
        size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    region = out[y0:y1, x0:x1]
    touched = _touched(np.asarray(warped_w, np.float32))
    alpha = warped_w[..., None]
    blended = region.astype(np.float32) * (1.0 - alpha) + warped_crop.astype(np.float32) * alpha
    region[touched] = np.clip(np.rint(blended[touched]), 0, 255).astype(np.uint8)
    return out


def changed_region(
    weight_256: Mask, inverse_affine: FloatArray, shape: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    """The frame pixels ``composite`` may change for this weight: an (H, W) boolean mask,
    for tests and benchmarks that check what a restoration touched."""
    height, width = shape
    out = np.zeros((height, width), dtype=bool)
    roi = _roi(weight_256, inverse_affine, width, height)
    if roi is None:
        return out
    x0, y0, x1, y1 = roi
    shift = inverse_affine.copy()
    shift[:, 2] -= (x0, y0)
    warped_w = cv2.warpAffine(
        weight_256,
        shift,
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    out[y0:y1, x0:x1] = _touched(np.asarray(warped_w, np.float32))
    return out


def _touched(warped_w: Mask) -> npt.NDArray[np.bool_]:
    return np.asarray(warped_w > 0)


def _roi(
    weight_256: Mask, inverse_affine: FloatArray, width: int, height: int
) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(weight_256)
    if len(xs) == 0:
        return None
    corners = np.array(
        [
            [xs.min(), ys.min()],
            [xs.max() + 1, ys.min()],
            [xs.min(), ys.max() + 1],
            [xs.max() + 1, ys.max() + 1],
        ],
        dtype=np.float64,
    )
    mapped = apply_affine(inverse_affine, corners)
    x0 = max(0, math.floor(mapped[:, 0].min()) - 1)
    y0 = max(0, math.floor(mapped[:, 1].min()) - 1)
    x1 = min(width, math.ceil(mapped[:, 0].max()) + 2)
    y1 = min(height, math.ceil(mapped[:, 1].max()) + 2)
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)
