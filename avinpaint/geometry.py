"""Point-set geometry shared by alignment in ``stream`` and in the identity network."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def similarity_transform(
    src: FloatArray, dst: FloatArray, weights: npt.ArrayLike | None = None
) -> FloatArray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` to
    ``dst``; both (N, 2). Umeyama (1991), closed form, so it is exact and deterministic
    (OpenCV's ``estimateAffinePartial2D`` is RANSAC by default). ``weights`` (N,), all 1 by
    default, weigh each point's squared error. Returns a 2x3 matrix."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(src),) or (w < 0).any() or np.count_nonzero(w) < 2:
        raise ValueError(f"weights must be {len(src)} non-negative values, two of them > 0")
    w = w / w.sum()
    src_mean = w @ src
    dst_mean = w @ dst
    src_c = src - src_mean
    dst_c = dst - dst_mean
    cov = (dst_c * w[:, None]).T @ src_c
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0  # forbid reflections
    rotation = u @ np.diag(d) @ vt
    src_var = float(w @ (src_c**2).sum(axis=1))
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
