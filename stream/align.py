"""5-point similarity alignment to the 256 crop template, and its exact inverse."""

from __future__ import annotations

import cv2
import numpy as np

from avinpaint.spec import CROP_SIZE, CROP_TEMPLATE_256
from stream.types import AlignedFace, FloatArray, Image


def similarity_transform(src: FloatArray, dst: FloatArray) -> FloatArray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` to
    ``dst``; both (N, 2). Umeyama (1991), closed form, so it is exact and deterministic
    (OpenCV's ``estimateAffinePartial2D`` is RANSAC by default). Returns a 2x3 matrix."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_c = src - src_mean
    dst_c = dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0  # forbid reflections
    rotation = u @ np.diag(d) @ vt
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 0:
        raise ValueError("source points are all identical")
    scale = float((s * d).sum() / src_var)
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def invert_affine(matrix: FloatArray) -> FloatArray:
    """Inverse of a 2x3 affine matrix."""
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply_affine(matrix: FloatArray, points: FloatArray) -> FloatArray:
    """Map (N, 2) points through a 2x3 affine matrix."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def align_face(image: Image, landmarks5: FloatArray) -> AlignedFace:
    """Warp the face with these 5 landmarks onto the CROP_SIZE template."""
    affine = similarity_transform(landmarks5, CROP_TEMPLATE_256)
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
