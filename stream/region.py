"""The region to restore, in aligned-crop coordinates: a box, a mask image, or the paper's box."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from avinpaint.spec import CROP_SIZE, paper_hole_box
from stream.errors import UsageError
from stream.types import Mask


def parse_box(text: str) -> tuple[int, int, int, int]:
    """Parse ``"X,Y,W,H"`` (crop pixels) and check it lies inside the crop."""
    parts = text.replace(" ", "").split(",")
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--mask-box wants X,Y,W,H as four integers, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise UsageError(f"--mask-box width and height must be positive, got {text!r}")
    if x < 0 or y < 0 or x + w > CROP_SIZE or y + h > CROP_SIZE:
        raise UsageError(f"--mask-box {text!r} does not fit in the {CROP_SIZE}x{CROP_SIZE} crop")
    return (x, y, w, h)


def box_mask(box: tuple[int, int, int, int] | None = None) -> Mask:
    """A CROP_SIZE mask that is 1 inside ``box`` (x, y, w, h); the paper's hole by default."""
    x, y, w, h = box if box is not None else paper_hole_box()
    mask = np.zeros((CROP_SIZE, CROP_SIZE), dtype=np.float32)
    mask[y : y + h, x : x + w] = 1.0
    return mask


def load_mask_image(path: Path) -> Mask:
    """Read a CROP_SIZE x CROP_SIZE grey PNG: white (> 127) marks pixels to restore."""
    if not path.is_file():
        raise UsageError(f"--mask-image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise UsageError(f"--mask-image is not a readable image: {path}")
    if image.shape != (CROP_SIZE, CROP_SIZE):
        raise UsageError(
            f"--mask-image must be {CROP_SIZE}x{CROP_SIZE} (crop space), "
            f"got {image.shape[1]}x{image.shape[0]}: {path}"
        )
    mask = (image > 127).astype(np.float32)
    if not mask.any():
        raise UsageError(f"--mask-image marks no pixels (nothing > 127): {path}")
    return mask
