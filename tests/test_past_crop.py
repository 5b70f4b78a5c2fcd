"""Following an occluder past the face crop's edge (``stream.past_crop``), on a real photo."""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest

from avinpaint.spec import CROP_SIZE
from stream.align import align_face
from stream.composite import FrameRegion
from stream.detect import FaceDetector
from stream.past_crop import (
    PastCropOptions,
    fill_past_crop,
    merge_regions,
    past_crop_region,
)
from stream.restore import FrameFaces, InpaintedFrame, PlannedFrame, TrackedFace, composite_frame
from stream.types import AlignedFace, Image, InpaintResult, Occlusion, VideoFrame

OCCLUDER_BGR = (200, 120, 40)
# A flat hand-like bar from the mouth down past the chin, over the astronaut's suit.
BAR = np.array([[196, 132], [252, 132], [260, 232], [204, 232]], np.int32)


@pytest.fixture(scope="module")
def photo() -> tuple[Image, AlignedFace]:
    """The astronaut photo and its face aligned to the crop."""
    from skimage import data

    rgb = np.asarray(data.astronaut(), np.uint8)  # type: ignore[no-untyped-call]
    bgr = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.uint8)
    return bgr, align_face(bgr, FaceDetector().detect(bgr)[0].landmarks5)


def _painted(frame: Image, polygon: np.ndarray) -> tuple[Image, np.ndarray]:
    truth = np.zeros(frame.shape[:2], np.uint8)
    cv2.fillPoly(truth, [polygon], 1)
    out = frame.copy()
    out[truth > 0] = OCCLUDER_BGR
    return out, truth > 0


def _footprint(aligned: AlignedFace, shape: tuple[int, int]) -> np.ndarray:
    ones = np.ones((CROP_SIZE, CROP_SIZE), np.float32)
    warped = cv2.warpAffine(ones, aligned.inverse_affine, (shape[1], shape[0]))
    return np.asarray(warped >= 0.5)


def _hole(aligned: AlignedFace, truth: np.ndarray) -> np.ndarray:
    """The truth as the region inside the crop (what the segmenter would give)."""
    warped = cv2.warpAffine(truth.astype(np.float32), aligned.affine, (CROP_SIZE, CROP_SIZE))
    return np.asarray(warped >= 0.5)


def test_the_part_past_the_crop_is_found(photo: tuple[Image, AlignedFace]) -> None:
    frame, aligned = photo
    painted, truth = _painted(frame, BAR)
    outside_truth = truth & ~_footprint(aligned, truth.shape)
    assert outside_truth.sum() > 1500  # the bar does reach well past the crop

    region = past_crop_region(
        painted, _hole(aligned, truth), aligned.inverse_affine, PastCropOptions()
    )

    assert region is not None
    found = region.full(truth.shape)
    assert not (found & _footprint(aligned, truth.shape)).any()  # only past the crop
    recall = (found & outside_truth).sum() / outside_truth.sum()
    precision = (found & truth).sum() / found.sum()
    # The corridor runs square to the crop's edge: a sliver of the slanted bar beside it stays.
    assert recall > 0.85 and precision > 0.97


def test_a_large_face_is_examined_downscaled_with_the_same_answer(
    photo: tuple[Image, AlignedFace],
) -> None:
    frame, aligned = photo
    painted, truth = _painted(frame, BAR)
    outside_truth = truth & ~_footprint(aligned, truth.shape)
    hole = _hole(aligned, truth)
    full = past_crop_region(painted, hole, aligned.inverse_affine, PastCropOptions())
    # The crop spans ~137 frame pixels: at 96 it is looked at at 70% of its size.
    small = past_crop_region(
        painted, hole, aligned.inverse_affine, PastCropOptions(work_side_px=96.0)
    )

    assert full is not None and small is not None
    found = small.full(truth.shape)
    assert not (found & _footprint(aligned, truth.shape)).any()
    assert (found & outside_truth).sum() / outside_truth.sum() > 0.8
    assert (found & truth).sum() / found.sum() > 0.9
    overlap = (found & full.full(truth.shape)).sum() / (found | full.full(truth.shape)).sum()
    assert overlap > 0.85


def test_a_region_inside_the_crop_is_not_followed(photo: tuple[Image, AlignedFace]) -> None:
    frame, aligned = photo
    painted, truth = _painted(frame, np.array([[200, 135], [245, 135], [245, 170], [200, 170]]))

    assert (
        past_crop_region(painted, _hole(aligned, truth), aligned.inverse_affine, PastCropOptions())
        is None
    )


def test_a_background_of_the_occluders_colour_is_not_taken(
    photo: tuple[Image, AlignedFace],
) -> None:
    frame, aligned = photo
    painted, truth = _painted(frame, BAR)
    # Everything below the crop is the occluder's colour (a wall, a shirt): no way to tell.
    painted[215:] = OCCLUDER_BGR
    hole = _hole(aligned, truth)
    beside = (225, 150)  # below the crop, well to the side of the bar

    region = past_crop_region(painted, hole, aligned.inverse_affine, PastCropOptions())
    assert region is None or not region.full(truth.shape)[beside]
    # Free to spread sideways, the part is too large for what the crop holds: dropped.
    wide = PastCropOptions(slack=1.0)
    assert past_crop_region(painted, hole, aligned.inverse_affine, wide) is None
    # Without that limit it takes the wall beside the bar, as far as the reach goes.
    loose = PastCropOptions(slack=1.0, max_ratio=100.0)
    region = past_crop_region(painted, hole, aligned.inverse_affine, loose)
    assert region is not None and region.full(truth.shape)[beside]


def test_fill_changes_only_the_region_and_removes_the_occluder(
    photo: tuple[Image, AlignedFace],
) -> None:
    frame, aligned = photo
    painted, truth = _painted(frame, BAR)
    region = past_crop_region(
        painted, _hole(aligned, truth), aligned.inverse_affine, PastCropOptions()
    )
    assert region is not None
    inside = region.full(truth.shape)

    filled = fill_past_crop(painted, region, radius_px=3)

    assert np.array_equal(filled[~inside], painted[~inside])
    error_before = np.abs(painted[inside].astype(int) - frame[inside]).mean()
    error_after = np.abs(filled[inside].astype(int) - frame[inside]).mean()
    assert error_after < 0.6 * error_before


def test_merge_regions_is_the_union() -> None:
    first = FrameRegion(2, 3, np.ones((2, 2), bool))
    second = FrameRegion(5, 1, np.array([[True, False]]))

    merged = merge_regions(first, second)

    assert merged is not None
    assert np.array_equal(merged.full((6, 8)), first.full((6, 8)) | second.full((6, 8)))
    assert merge_regions(None, second) is second and merge_regions(first, None) is first


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="reach"):
        PastCropOptions(reach=0.0)
    with pytest.raises(ValueError, match="clusters"):
        PastCropOptions(clusters=0)
    with pytest.raises(ValueError, match="slack"):
        PastCropOptions(slack=-0.1)
    with pytest.raises(ValueError, match="work_side_px"):
        PastCropOptions(work_side_px=8.0)


@pytest.mark.parametrize("follow", [True, False])
def test_composite_restores_past_the_crop_only_when_asked(
    photo: tuple[Image, AlignedFace], follow: bool
) -> None:
    frame, aligned = photo
    painted, truth = _painted(frame, BAR)
    hole = _hole(aligned, truth)
    crop = cv2.warpAffine(painted, aligned.affine, (CROP_SIZE, CROP_SIZE))
    face = TrackedFace(
        track_id=1,
        box=(150, 50, 300, 200),
        aligned=AlignedFace(crop, aligned.affine, aligned.inverse_affine),
    )
    occlusion = Occlusion(
        hole.astype(np.float32), 0.3, past_crop=PastCropOptions() if follow else None
    )
    work = FrameFaces(
        frame=VideoFrame(index=0, pts=0, time_base=Fraction(1, 25), image=painted), faces=(face,)
    )
    plan = PlannedFrame(work=work, occlusions=(occlusion,), covered=(0,), fresh=(0,))
    fill = np.full_like(crop, 128)
    result = InpaintResult(face_256=fill, backend="test", latency_ms=0.0)

    restored = composite_frame(InpaintedFrame(plan, (result,), "test"), feather_px=0.0)

    changed = np.any(restored.frame.image != painted, axis=-1)
    outside = truth & ~_footprint(aligned, truth.shape)
    region = restored.faces[0].region
    assert region is not None
    assert np.array_equal(region.full(truth.shape) | changed, region.full(truth.shape))
    if follow:
        assert changed[outside].mean() > 0.85
    else:
        assert not changed[outside].any()
