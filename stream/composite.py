"""Put restored crops back into the frame: inverse warp and a blend that changes exactly the
covered region.

The region restored is the hole and nothing more: pixels just outside an occluder (under the
eyes, on the nose bridge) carry identity, and growing a true-mask hole by only 4 px before
Telea cost 0.09 of SFace cosine on a real clip. So the blend ramp runs *inside* the hole
(weight 0 everywhere outside it), and in the frame the set of pixels that may change is the
warped hole itself: a frame pixel is in it when the bilinearly warped hole indicator is at
least 0.5. Every other pixel keeps its exact decoded value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from avinpaint.geometry import apply_affine
from stream.types import FloatArray, Image, Mask, Occlusion

BoolMask = npt.NDArray[np.bool_]

FEATHER_PX = 0.0
"""Default width of the blend ramp inside the hole, crop pixels (``--feather-px``). Measured
with Telea through ``--mask-detect`` on eight real LRS3, MEAD and PC-AVS clips
(``bench.restore_video``): a 2 px inner ramp lowered PSNR in the mask region on every clip
(0.16-1.1 dB) against a hard edge, since the ramp mixes the occluder's own pixels back in at
the hole's rim, and the fills (Telea; the model's, then Poisson-blended, now drawn so by the
network itself or blended where the guard fails it) are already continuous with the visible
skin there."""


def inpaint_hole(mask_256: Mask, context_px: int) -> Mask:
    """The hole to hand the inpainter for a region: its pixels (coverage > 0.5) grown by
    ``context_px`` (``Occlusion.context_px``). Only the inpainter's input; never what is
    composited."""
    hole = np.asarray(mask_256 > 0.5, dtype=np.uint8)
    if context_px > 0:
        side = 2 * context_px + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
        hole = np.asarray(cv2.dilate(hole, kernel), np.uint8)
    return hole.astype(np.float32)


def feather(mask_256: Mask, feather_px: float) -> Mask:
    """Blend weights from a coverage mask: exactly 0 outside the hole (coverage <= 0.5),
    rising from near 0 at the hole's edge to 1 at ``feather_px`` crop pixels inside it.

    The ramp runs inward so that the restored region never grows into visible skin; with
    ``feather_px <= 0`` the weight is the hole itself (1 inside, 0 outside)."""
    hole = np.asarray(mask_256 > 0.5, dtype=np.uint8)
    if feather_px <= 0 or not hole.any():
        return hole.astype(np.float32)
    # Distance of each hole pixel's centre to the nearest visible pixel's centre: 1 on the
    # hole's outer ring; the hole's boundary line lies half a pixel out, where the ramp is 0.
    depth = cv2.distanceTransform(hole, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    weight = np.clip((depth - 0.5) / float(feather_px), 0.0, 1.0)
    return np.where(hole > 0, weight, 0.0).astype(np.float32)


def composite_weight(occlusion: Occlusion, feather_px: float) -> Mask:
    """The blend weight a face is composited with: its region's inner ramp (``feather``)
    and, outside the region, the occluder's soft rim (``Occlusion.rim_256``)."""
    inside = feather(occlusion.mask_256, feather_px)
    return inside if occlusion.rim_256 is None else np.maximum(inside, occlusion.rim_256)


@dataclass(frozen=True, eq=False)
class FrameRegion:
    """Frame pixels a composite changed: ``inside`` (boolean, the ROI's shape) placed with
    its top-left corner at (``x``, ``y``) of the frame."""

    x: int
    y: int
    inside: BoolMask

    def full(self, shape: tuple[int, int]) -> BoolMask:
        """The region as an (H, W) boolean mask of a frame of ``shape`` (H, W)."""
        out = np.zeros(shape, dtype=bool)
        height, width = self.inside.shape
        out[self.y : self.y + height, self.x : self.x + width] = self.inside
        return out


def composite(frame: Image, crop: Image, weight_256: Mask, inverse_affine: FloatArray) -> Image:
    """Blend ``crop`` (aligned space) into a copy of ``frame`` inside the hole of
    ``weight_256`` (its pixels > 0, as ``feather`` makes it), with the weight as alpha.

    Only the frame pixels of the warped hole (``changed_region``) can change. Within them the
    alpha is the weight averaged over the hole's own crop pixels, so a hard hole (weight 1
    inside) replaces every one of its frame pixels completely, with no bilinear fringe of
    partly blended pixels around it. Only the hole's bounding box is touched, so the cost
    does not grow with the frame size."""
    return composite_region(frame, crop, weight_256, inverse_affine)[0]


def composite_region(
    frame: Image, crop: Image, weight_256: Mask, inverse_affine: FloatArray
) -> tuple[Image, FrameRegion | None]:
    """``composite``, and the frame pixels it replaced (None: the hole is empty or falls
    outside the frame). The provenance record is made from exactly this region, so it
    cannot drift from what was drawn."""
    out = frame.copy()
    roi = _roi(weight_256, inverse_affine, frame.shape[1], frame.shape[0])
    if roi is None:
        return out, None
    x0, y0, x1, y1 = roi
    inside, alpha = _warp_weight(weight_256, inverse_affine, roi)
    if not inside.any():
        return out, None
    shift = _shifted(inverse_affine, x0, y0)
    warped_crop = cv2.warpAffine(
        crop, shift, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    region = out[y0:y1, x0:x1]
    # Where the weight is 1 the blend would give exactly the crop's pixels: copy them, and
    # blend only the rest (a ramp or a soft rim, a thin band of the hole).
    whole = inside & (alpha >= 1.0)
    np.copyto(region, warped_crop, where=whole[:, :, None])
    part = inside & ~whole
    if part.any():
        a = alpha[part][:, None]
        blended = region[part].astype(np.float32) * (1.0 - a) + warped_crop[part] * a
        region[part] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out, FrameRegion(x0, y0, inside)


def changed_region(
    weight_256: Mask, inverse_affine: FloatArray, shape: tuple[int, int]
) -> BoolMask:
    """The frame pixels ``composite`` may change for this weight: an (H, W) boolean mask of
    the warped hole, for tests and benchmarks that check what a restoration touched."""
    height, width = shape
    out = np.zeros((height, width), dtype=bool)
    roi = _roi(weight_256, inverse_affine, width, height)
    if roi is None:
        return out
    x0, y0, x1, y1 = roi
    out[y0:y1, x0:x1] = _warp_weight(weight_256, inverse_affine, roi)[0]
    return out


def _shifted(inverse_affine: FloatArray, x0: int, y0: int) -> FloatArray:
    shift = inverse_affine.copy()
    shift[:, 2] -= (x0, y0)
    return shift


def _warp_weight(
    weight_256: Mask, inverse_affine: FloatArray, roi: tuple[int, int, int, int]
) -> tuple[BoolMask, Mask]:
    """The warped hole (bilinear indicator >= 0.5) and the alpha on it, in the ROI.

    Hole indicator and weight are warped together; dividing the warped weight by the warped
    indicator averages the weight over hole samples only (outside samples are 0 in both),
    which is 1 wherever the weight is 1 and never reads a weight from outside the hole."""
    x0, y0, x1, y1 = roi
    hole = (weight_256 > 0).astype(np.float32)
    both = cv2.merge([hole, weight_256.astype(np.float32)])
    warped = cv2.warpAffine(
        both,
        _shifted(inverse_affine, x0, y0),
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0.0, 0.0, 0.0, 0.0),
    )
    warped = warped.reshape(y1 - y0, x1 - x0, 2)
    inside = np.asarray(warped[..., 0] >= 0.5)
    alpha = np.zeros(inside.shape, np.float32)
    alpha[inside] = np.clip(warped[..., 1][inside] / warped[..., 0][inside], 0.0, 1.0)
    return inside, alpha


def _roi(
    weight_256: Mask, inverse_affine: FloatArray, width: int, height: int
) -> tuple[int, int, int, int] | None:
    x, y, w, h = cv2.boundingRect((weight_256 > 0).view(np.uint8))
    if w == 0:
        return None
    # The bilinear support of the weight's pixels reaches one crop pixel beyond them.
    left, top, right, bottom = x - 1, y - 1, x + w, y + h
    corners = np.array(
        [[left, top], [right, top], [left, bottom], [right, bottom]], dtype=np.float64
    )
    mapped = apply_affine(inverse_affine, corners)
    x0 = max(0, math.floor(mapped[:, 0].min()) - 1)
    y0 = max(0, math.floor(mapped[:, 1].min()) - 1)
    x1 = min(width, math.ceil(mapped[:, 0].max()) + 2)
    y1 = min(height, math.ceil(mapped[:, 1].max()) + 2)
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)
