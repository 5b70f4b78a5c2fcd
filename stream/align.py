"""5-point similarity alignment to the 256 crop template, and its exact inverse.

The transform maths lives in ``avinpaint.geometry`` (shared with the identity network). A
face the region model found covered is cropped again where its occluder mask says the face
lies (``CoveredPlacement``): the detector misplaces an occluded face's landmarks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from avinpaint.geometry import invert_affine, similarity_transform
from avinpaint.spec import ALIGN_MOUTH_WEIGHT, ALIGN_YAW_RAMP, CROP_SIZE, CROP_TEMPLATE_256
from stream.types import AlignedFace, FloatArray, Image


def align_face(image: Image, landmarks5: FloatArray) -> AlignedFace:
    """Warp the face with these 5 landmarks onto the CROP_SIZE template (a similarity fit
    weighted by ``landmark_weights``)."""
    weights = landmark_weights(landmarks5)
    return crop_at(image, similarity_transform(landmarks5, CROP_TEMPLATE_256, weights))


def landmark_weights(landmarks5: FloatArray) -> FloatArray:
    """Weights of the 5 landmarks (eyes, nose tip, mouth corners) in the crop's fit: the
    mouth corners weigh ``ALIGN_MOUTH_WEIGHT`` on a face that looks at the camera and rise to
    1 as the head turns (``ALIGN_YAW_RAMP``); eyes and nose weigh 1."""
    points = np.asarray(landmarks5, dtype=np.float64)
    left, right, nose = points[0], points[1], points[2]
    eye_distance = float(np.linalg.norm(right - left))
    mouth = 1.0
    if eye_distance > 0:
        sideways = abs(float(np.dot(nose - (left + right) / 2.0, right - left))) / eye_distance
        low, high = ALIGN_YAW_RAMP
        turned = min(1.0, max(0.0, (sideways / eye_distance - low) / (high - low)))
        mouth = ALIGN_MOUTH_WEIGHT + (1.0 - ALIGN_MOUTH_WEIGHT) * turned
    return np.array([1.0, 1.0, 1.0, mouth, mouth])


def crop_at(image: Image, affine: FloatArray) -> AlignedFace:
    """The CROP_SIZE crop of ``image`` under a known frame -> crop ``affine`` (borders
    replicated), with the exact inverse."""
    crop = np.asarray(
        cv2.warpAffine(
            image,
            affine,
            (CROP_SIZE, CROP_SIZE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        ),
        dtype=np.uint8,
    )
    return AlignedFace(crop=crop, affine=affine, inverse_affine=invert_affine(affine))


# --- covered faces, placed from their occluder mask -----------------------------------------

COVERED_PLACEMENT_FILE = Path(__file__).with_name("covered_placement.json")
"""Coefficients of ``CoveredPlacement`` (fitted by ``bench.mask_realign``)."""

PLACEMENT_ROW_BANDS = tuple(range(96, 256, 16))
"""Top rows of the 16-row bands (central columns 64-191) whose covered share is a feature."""

PLACEMENT_COLUMN_BANDS = tuple(range(0, 256, 32))
"""Left columns of the 32-column bands (rows 150-255) whose covered share is a feature."""

PLACEMENT_FEATURES = 2 + len(PLACEMENT_ROW_BANDS) + len(PLACEMENT_COLUMN_BANDS)
"""Length of ``mask_features``."""


def mask_features(mask: npt.ArrayLike) -> FloatArray:
    """What ``CoveredPlacement`` reads of a CROP_SIZE occluder mask: a constant, the covered
    share of the crop, of each row band and of each column band."""
    covered = np.asarray(mask) > 0.5
    rows = [covered[y : y + 16, 64:192].mean() for y in PLACEMENT_ROW_BANDS]
    columns = [covered[150:256, x : x + 32].mean() for x in PLACEMENT_COLUMN_BANDS]
    return np.array([1.0, covered.mean(), *rows, *columns], np.float64)


def offset_matrix(offset: npt.ArrayLike) -> FloatArray:
    """A crop -> crop similarity (3x3) from (log scale, angle in radians, x and y shift of the
    crop centre in crop pixels)."""
    log_scale, angle, dx, dy = (float(v) for v in np.asarray(offset, np.float64))
    turn = np.exp(log_scale) * np.array(
        [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    )
    centre = np.array([CROP_SIZE / 2.0, CROP_SIZE / 2.0])
    out = np.eye(3)
    out[:2, :2] = turn
    out[:2, 2] = centre + np.array([dx, dy]) - turn @ centre
    return out


@dataclass(frozen=True)
class CoveredPlacement:
    """Where a covered face's crop should lie, read from the occluder mask the segmenter
    found in it: the mask's coverage profile (``mask_features``) tells a crop that the
    detector's landmarks zoomed in and moved up (the occluder fills it and runs off its
    lower edge) from a well-placed one. A linear map of the features gives the similarity
    from the well-placed crop to this one (``offset_matrix``'s parameters);
    ``coefficients`` is (``PLACEMENT_FEATURES``, 4)."""

    coefficients: FloatArray

    def __post_init__(self) -> None:
        if np.shape(self.coefficients) != (PLACEMENT_FEATURES, 4):
            raise ValueError(
                f"coefficients must be ({PLACEMENT_FEATURES}, 4), got {np.shape(self.coefficients)}"
            )

    def place(self, affine: FloatArray, mask: npt.ArrayLike) -> FloatArray:
        """The frame -> crop affine of the well-placed crop of a face cropped by ``affine``
        with ``mask`` found in that crop."""
        moved = offset_matrix(mask_features(mask) @ self.coefficients)
        full = np.eye(3)
        full[:2] = np.asarray(affine, np.float64)
        return np.asarray((np.linalg.inv(moved) @ full)[:2], np.float64)


@lru_cache(maxsize=1)
def shipped_covered_placement() -> CoveredPlacement:
    """The shipped placement (``COVERED_PLACEMENT_FILE``)."""
    data = json.loads(COVERED_PLACEMENT_FILE.read_text())
    return CoveredPlacement(np.asarray(data["coefficients"], dtype=np.float64))
