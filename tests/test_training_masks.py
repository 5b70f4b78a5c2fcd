"""Hole-mask generators: determinism, shapes, coverage, and placement from the landmarks."""

from __future__ import annotations

import math
from typing import get_args

import cv2
import numpy as np
import pytest

from avinpaint.spec import CROP_SIZE, CROP_TEMPLATE_256, paper_hole_box
from training.config import HoleKind
from training.data import hole_generator
from training.masks import (
    FACE_MASK_KINDS,
    OVERHANG_UNITS,
    FaceMaskShape,
    FreeFormStrokes,
    HandBlob,
    MaskMixture,
    ObjectBlob,
    PaperBox,
    Scribble,
    ShapeGenerator,
    ShapeKind,
    default_hole_mixture,
    default_occluder_mixture,
    overhang_hole_mixture,
)

cv2.setNumThreads(1)

SEEDS = range(120)

GENERATORS: dict[str, ShapeGenerator] = {
    "paper_box": PaperBox(),
    "strokes": FreeFormStrokes(),
    "face_mask": FaceMaskShape(),
    "hand": HandBlob(),
    "object": ObjectBlob(),
    "scribble": Scribble(),
    "hole_mixture": default_hole_mixture(),
    "overhang_mixture": overhang_hole_mixture(),
    "occluder_mixture": default_occluder_mixture(),
}

# Fraction of the crop covered, [lowest, highest] over SEEDS (measured with margin).
COVERAGE_BOUNDS = {
    "strokes": (0.002, 0.5),
    "hand": (0.06, 0.45),
    "object": (0.02, 0.35),
    "scribble": (0.001, 0.15),
}


def _pixel(point: np.ndarray) -> tuple[int, int]:
    """(row, col) of an (x, y) point."""
    return round(float(point[1])), round(float(point[0]))


def _disk(center: np.ndarray, radius_px: int) -> np.ndarray:
    disk = np.zeros((CROP_SIZE, CROP_SIZE), np.uint8)
    cv2.circle(disk, (round(float(center[0])), round(float(center[1]))), radius_px, 1, -1)
    return disk.astype(bool)


@pytest.mark.parametrize("name", GENERATORS)
def test_shape_dtype_and_binary_values(name: str) -> None:
    generator = GENERATORS[name]
    for seed in range(10):
        mask = generator(np.random.default_rng(seed))
        assert mask.shape == (CROP_SIZE, CROP_SIZE)
        assert mask.dtype == np.float32
        assert set(np.unique(mask).tolist()) <= {0.0, 1.0}
        assert mask.any()


@pytest.mark.parametrize("name", GENERATORS)
def test_same_seed_same_mask_and_different_seeds_differ(name: str) -> None:
    generator = GENERATORS[name]
    first = generator(np.random.default_rng(7))
    again = generator(np.random.default_rng(7))
    np.testing.assert_array_equal(first, again)
    sample = generator.sample(np.random.default_rng(7))
    np.testing.assert_array_equal(sample.mask, first)
    if name != "paper_box":
        others = [generator(np.random.default_rng(seed)) for seed in range(8, 12)]
        assert all(not np.array_equal(first, other) for other in others)


def test_paper_box_equals_the_spec_box_exactly() -> None:
    x, y, w, h = paper_hole_box()
    expected = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
    expected[y : y + h, x : x + w] = 1.0
    sample = PaperBox().sample(np.random.default_rng(0))
    np.testing.assert_array_equal(sample.mask, expected)
    np.testing.assert_array_equal(sample.alpha, expected)  # hard edges, as in the paper


@pytest.mark.parametrize("name", ["strokes", "face_mask", "hand", "object", "scribble"])
def test_soft_edge_stays_within_two_pixels_and_parts_lie_inside(name: str) -> None:
    generator = GENERATORS[name]
    for seed in range(20):
        sample = generator.sample(np.random.default_rng(seed))
        assert sample.alpha.dtype == np.float32
        assert sample.alpha.min() >= 0.0 and sample.alpha.max() <= 1.0
        np.testing.assert_array_equal(sample.mask, (sample.alpha >= 0.5).astype(np.float32))
        band = cv2.dilate(sample.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert not sample.alpha[~band].any()
        assert not sample.part_ids[sample.mask == 0].any()
        assert (sample.alpha[(sample.alpha > 0) & (sample.alpha < 1)]).size > 0  # anti-aliased


@pytest.mark.parametrize("name", COVERAGE_BOUNDS)
def test_coverage_fraction_in_sane_range(name: str) -> None:
    low, high = COVERAGE_BOUNDS[name]
    coverage = [float(GENERATORS[name](np.random.default_rng(s)).mean()) for s in SEEDS]
    assert low <= min(coverage) and max(coverage) <= high, (min(coverage), max(coverage))


@pytest.mark.parametrize("style", FACE_MASK_KINDS)
def test_face_masks_cover_nose_and_mouth_but_never_the_eyes(style: ShapeKind) -> None:
    generator = FaceMaskShape(styles=(style,))
    eyes = _disk(CROP_TEMPLATE_256[0], 6) | _disk(CROP_TEMPLATE_256[1], 6)
    coverage = []
    for seed in SEEDS:
        sample = generator.sample(np.random.default_rng(seed))
        assert sample.kind == style
        mask = sample.mask
        coverage.append(float(mask.mean()))
        for point in CROP_TEMPLATE_256[2:]:  # nose tip and both mouth corners
            assert mask[_pixel(point)] == 1.0, (seed, point)
        assert not sample.alpha[eyes].any(), seed
        # The lower face: nothing above the eye row.
        rows = np.flatnonzero(sample.alpha.any(axis=1))
        assert rows[0] > CROP_TEMPLATE_256[:2, 1].max()
    assert min(coverage) >= 0.2 and max(coverage) <= 0.45, (min(coverage), max(coverage))


def test_face_masks_follow_given_landmarks() -> None:
    # A face rotated by 20 degrees, smaller and off-centre: the mask must move with it.
    angle = math.radians(20.0)
    rotation = 0.8 * np.array(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    )
    center = np.array([CROP_SIZE / 2.0, CROP_SIZE / 2.0])
    points = (CROP_TEMPLATE_256 - center) @ rotation.T + center + np.array([-10.0, 6.0])
    landmarks = tuple((float(x), float(y)) for x, y in points)
    generator = FaceMaskShape(landmarks5=landmarks)
    eyes = _disk(points[0], 5) | _disk(points[1], 5)
    for seed in range(40):
        mask = generator(np.random.default_rng(seed))
        assert all(mask[_pixel(p)] == 1.0 for p in points[2:]), seed
        assert not mask[eyes].any(), seed


def test_face_masks_are_pushed_off_eyes_placed_unusually_low() -> None:
    # Eyes only 20 px above the nose tip: the outline must still clear them.
    points = CROP_TEMPLATE_256.copy()
    points[:2, 1] = points[2, 1] - 20.0
    generator = FaceMaskShape(landmarks5=tuple((float(x), float(y)) for x, y in points))
    eyes = _disk(points[0], 4) | _disk(points[1], 4)
    for seed in range(40):
        assert not generator(np.random.default_rng(seed))[eyes].any(), seed


def _centre_x(mask: np.ndarray) -> float:
    """Column of the mask's centroid (straps are thin and hardly move it)."""
    return float(np.nonzero(mask)[1].mean())


def test_overhanging_face_masks_move_sideways_and_still_clear_the_eyes() -> None:
    # Face outline of the template, roughly: a frontal face is about two eye distances wide.
    eye_distance = float(CROP_TEMPLATE_256[1, 0] - CROP_TEMPLATE_256[0, 0])
    outline_x = (CROP_SIZE / 2 - eye_distance, CROP_SIZE / 2 + eye_distance)
    overhanging = FaceMaskShape(overhang=OVERHANG_UNITS)
    eyes = _disk(CROP_TEMPLATE_256[0], 6) | _disk(CROP_TEMPLATE_256[1], 6)
    plain_shift, shifts, past_outline, sides = [], [], [], set()
    for seed in SEEDS:
        plain = FaceMaskShape()(np.random.default_rng(seed))
        mask = overhanging(np.random.default_rng(seed))
        assert not mask[eyes].any(), seed
        assert mask[_pixel(CROP_TEMPLATE_256[2])] == 1.0, seed  # still over the nose tip
        plain_shift.append(abs(_centre_x(plain) - CROP_SIZE / 2))
        shift = _centre_x(mask) - CROP_SIZE / 2
        shifts.append(abs(shift))
        sides.add(shift > 0)
        columns = np.flatnonzero(mask.any(axis=0))
        past_outline.append(max(outline_x[0] - columns[0], columns[-1] - outline_x[1]))
    assert sides == {True, False}  # both ways
    assert np.median(plain_shift) < 0.1 * eye_distance
    assert np.median(shifts) > 0.3 * eye_distance, np.median(shifts)
    assert np.median(past_outline) > 0.3 * eye_distance, np.median(past_outline)


def test_overhang_is_validated_and_off_by_default() -> None:
    with pytest.raises(ValueError, match="overhang"):
        FaceMaskShape(overhang=(0.5, 0.2))
    with pytest.raises(ValueError, match="overhang"):
        FaceMaskShape(overhang=(-0.1, 0.2))
    # Off draws nothing extra: a seeded plain shape is what it always was.
    for seed in range(10):
        np.testing.assert_array_equal(
            FaceMaskShape()(np.random.default_rng(seed)),
            FaceMaskShape(overhang=(0.0, 0.0))(np.random.default_rng(seed)),
        )


def test_every_configured_hole_kind_has_a_generator() -> None:
    for kind in get_args(HoleKind):
        mask = hole_generator(kind)(np.random.default_rng(3))
        assert mask.shape == (CROP_SIZE, CROP_SIZE) and 0.0 < mask.mean() < 1.0, kind


def test_face_mask_styles_are_validated() -> None:
    with pytest.raises(ValueError, match="styles"):
        FaceMaskShape(styles=(ShapeKind.HAND,))
    with pytest.raises(ValueError, match="styles"):
        ObjectBlob(styles=())


def test_hands_enter_from_an_edge_of_the_crop() -> None:
    for seed in range(40):
        mask = HandBlob()(np.random.default_rng(seed))
        edges = mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
        assert edges, seed


def test_each_object_style_is_produced() -> None:
    kinds = {ObjectBlob().sample(np.random.default_rng(s)).kind for s in range(40)}
    assert kinds == {ShapeKind.MICROPHONE, ShapeKind.PHONE, ShapeKind.BLOBS, ShapeKind.CARD}


def test_mixture_follows_its_weights() -> None:
    only_box = MaskMixture(((1.0, PaperBox()), (0.0, Scribble())))
    assert all(only_box.sample(np.random.default_rng(s)).kind == ShapeKind.BOX for s in range(20))
    mixture = default_occluder_mixture()
    kinds = [mixture.sample(np.random.default_rng(s)).kind for s in range(400)]
    face_share = sum(k in FACE_MASK_KINDS for k in kinds) / len(kinds)
    assert 0.4 < face_share < 0.6  # weight 0.5


def test_mixture_rejects_bad_weights() -> None:
    with pytest.raises(ValueError):
        MaskMixture(())
    with pytest.raises(ValueError):
        MaskMixture(((-1.0, PaperBox()),))
    with pytest.raises(ValueError):
        MaskMixture(((0.0, PaperBox()),))


def test_stroke_and_scribble_widths_are_configurable() -> None:
    thin = Scribble(width_px=(2.0, 2.0), strokes=(1, 1))
    thick = FreeFormStrokes(width_px=(30.0, 30.0), strokes=(1, 1), vertices=(3, 3))
    assert float(thin(np.random.default_rng(0)).mean()) < 0.02
    assert float(thick(np.random.default_rng(0)).mean()) > 0.02
