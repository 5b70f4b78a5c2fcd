"""5-point similarity alignment to the 256 crop template, and its exact inverse.

The transform maths lives in ``avinpaint.geometry`` (shared with the identity network). A
face the region model found covered is cropped again where the face really lies: the
detector misplaces an occluded face's landmarks. ``PlacementNetwork`` (shipped, the default)
reads that from the crop itself; ``CoveredPlacement`` (the earlier way) from the occluder
mask's coverage profile. Both are a ``Placement``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from avinpaint.files import shipped_weights
from avinpaint.geometry import invert_affine, similarity_transform
from avinpaint.spec import ALIGN_MOUTH_WEIGHT, ALIGN_YAW_RAMP, CROP_SIZE, CROP_TEMPLATE_256
from stream.ort_cpu import cpu_session
from stream.types import AlignedFace, FloatArray, Image, Mask


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


class Placement(Protocol):
    """Where a covered face's crop should lie."""

    def place_faces(
        self, image: Image, faces: list[AlignedFace], masks: list[Mask]
    ) -> list[FloatArray]:
        """The frame -> crop affine of the well-placed crop of each face of ``image`` (the
        frame the faces were cropped from; ``masks``: the occluder each was found to have,
        crop space), same order."""
        ...


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
        return undo_offset(affine, mask_features(mask) @ self.coefficients)

    def offsets(self, masks: list[Mask]) -> FloatArray:
        """(N, 4) ``offset_matrix`` parameters, from the well-placed crop to the crop each
        mask was found in."""
        if not masks:
            return np.zeros((0, 4), np.float64)
        return np.stack([mask_features(m) @ self.coefficients for m in masks])

    def place_faces(
        self, image: Image, faces: list[AlignedFace], masks: list[Mask]
    ) -> list[FloatArray]:
        """``place`` for each face (``Placement``; ``image`` is not read)."""
        return [self.place(f.affine, m) for f, m in zip(faces, masks, strict=True)]


def undo_offset(affine: FloatArray, offset: npt.ArrayLike) -> FloatArray:
    """The frame -> crop affine of the crop that ``offset`` (``offset_matrix``'s parameters:
    from the well-placed crop to this one) says is well placed, for a crop made by
    ``affine``."""
    full = np.eye(3)
    full[:2] = np.asarray(affine, np.float64)
    return np.asarray((np.linalg.inv(offset_matrix(offset)) @ full)[:2], np.float64)


@lru_cache(maxsize=1)
def shipped_covered_placement() -> CoveredPlacement:
    """The shipped placement (``COVERED_PLACEMENT_FILE``)."""
    data = json.loads(COVERED_PLACEMENT_FILE.read_text())
    return CoveredPlacement(np.asarray(data["coefficients"], dtype=np.float64))


# --- covered faces, placed from what stays visible (the default) -----------------------------

PLACEMENT_NETWORK_NAME = "placement_v1"
"""Base name of the shipped placement network, ``avinpaint/weights/placement_v1.onnx``
(trained by ``training.placement``; docs/MODEL_CARD_placement.md)."""

PLACEMENT_INPUT_PX = 128
"""Side the network pools a crop to before its first convolution."""

PLACEMENT_TARGET_SCALE = (10.0, 10.0, 0.1, 0.1)
"""The network's outputs are ``offset_matrix``'s parameters times these (log scale, angle
in radians, x and y in crop pixels): units of about one for each."""


class PlacementNetwork:
    """A ``Placement`` that reads, from a covered face's crop, how it sits against the
    well-placed crop (``training.placement``): eyes, brows, hair line, ears and the face's
    outline stay visible under a mask or a hand. One onnxruntime session on ``threads``
    threads; ``path`` replaces the shipped network. Raises ``AvstreamError`` when the file
    cannot be loaded."""

    def __init__(self, path: Path | None = None, threads: int = 1) -> None:
        if path is None:
            path = shipped_weights(f"{PLACEMENT_NETWORK_NAME}.onnx")
        self._session = cpu_session(path, threads, "placement network")

    def offsets(self, crops: npt.NDArray[np.uint8]) -> FloatArray:
        """(N, 4) ``offset_matrix`` parameters, from the well-placed crop to each crop
        (N, CROP_SIZE, CROP_SIZE, 3) uint8 BGR."""
        if len(crops) == 0:
            return np.zeros((0, 4), np.float64)
        batch = np.ascontiguousarray(np.asarray(crops).transpose(0, 3, 1, 2), dtype=np.float32)
        (raw,) = self._session.run(["offsets"], {"crops": batch})
        scaled = np.asarray(raw, np.float64) / np.asarray(PLACEMENT_TARGET_SCALE, np.float64)
        return np.asarray(scaled, np.float64)

    def place_faces(
        self, image: Image, faces: list[AlignedFace], masks: list[Mask]
    ) -> list[FloatArray]:
        """The well-placed crop's affine for each face (``Placement``; ``image`` and the
        masks are not read)."""
        if not faces:
            return []
        offsets = self.offsets(np.stack([f.crop for f in faces]))
        return [undo_offset(f.affine, o) for f, o in zip(faces, offsets, strict=True)]


@dataclass(frozen=True)
class AveragedPlacement:
    """A ``Placement`` from the mean of two offsets: the network's, read from the visible
    face, and the ridge's, read from the occluder mask. Their errors differ (the network's
    crops sit a little tight, the ridge's tails are wide), and leave-identity-out on the
    training-split clips the mean finds more of the occluder than either alone
    (docs/MODEL_CARD_placement.md)."""

    network: PlacementNetwork
    ridge: CoveredPlacement

    def place_faces(
        self, image: Image, faces: list[AlignedFace], masks: list[Mask]
    ) -> list[FloatArray]:
        """The well-placed crop's affine for each face (``Placement``; ``image`` is not
        read)."""
        if not faces:
            return []
        seen = self.network.offsets(np.stack([f.crop for f in faces]))
        offsets = (seen + self.ridge.offsets(masks)) / 2.0
        return [undo_offset(f.affine, o) for f, o in zip(faces, offsets, strict=True)]


@dataclass(frozen=True)
class RefinedPlacement:
    """A ``Placement`` (``first``) followed by ``passes`` looks of the placement network at
    the crop it made, each moving the crop ``step`` of the way the network says.

    The network's offsets fall short of large errors (trained with a smooth L1 over a wide
    range, it regresses towards no offset), so a crop it has moved still sits off the face
    in the direction it was off, and a second look sees that. Half steps keep a wrong second
    look from undoing the first. On the 33 training-split clips (``bench.quality``, lite),
    one half-step pass cut the median crop-centre error against the clean face's crop from
    5.0 to 4.2 px (per-clip bias 4.6 -> 3.9 px, worst clip 18 -> 13 px) and raised PSNR in
    the mask through ``--mask-detect`` from 20.53 to 20.84 dB (29 of 33 clips); a full step
    and two or three passes were no better (docs/MODEL_CARD_placement.md)."""

    first: Placement
    network: PlacementNetwork
    passes: int = 1
    step: float = 0.5

    def __post_init__(self) -> None:
        if self.passes < 0 or not 0.0 < self.step <= 1.0:
            raise ValueError(
                f"passes must be >= 0 and step within (0, 1]: {self.passes}, {self.step}"
            )

    def place_faces(
        self, image: Image, faces: list[AlignedFace], masks: list[Mask]
    ) -> list[FloatArray]:
        """The well-placed crop's affine for each face of ``image`` (``Placement``)."""
        affines = self.first.place_faces(image, faces, masks)
        for _ in range(self.passes if affines else 0):
            crops = np.stack([crop_at(image, affine).crop for affine in affines])
            offsets = self.step * self.network.offsets(crops)
            affines = [undo_offset(a, o) for a, o in zip(affines, offsets, strict=True)]
        return affines
