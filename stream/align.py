"""5-point similarity alignment to the 256 crop template, and its exact inverse.

The transform maths lives in ``avinpaint.geometry`` (shared with the identity network)."""

from __future__ import annotations

import cv2
import numpy as np

from avinpaint.geometry import invert_affine, similarity_transform
from avinpaint.spec import CROP_SIZE, CROP_TEMPLATE_256
from stream.types import AlignedFace, FloatArray, Image


def align_face(image: Image, landmarks5: FloatArray) -> AlignedFace:
    """Warp the face with these 5 landmarks onto the CROP_SIZE template."""
    return crop_at(image, similarity_transform(landmarks5, CROP_TEMPLATE_256))


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
