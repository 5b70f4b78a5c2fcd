"""5-point similarity alignment to the 256 crop template, and its exact inverse.

The transform maths lives in ``avinpaint.geometry`` (shared with the identity network)."""

from __future__ import annotations

import cv2
import numpy as np

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
