"""The compositor changes exactly the covered region: the blend ramp runs inside the hole,
and in frame space no pixel outside the warped hole changes."""

import numpy as np
import pytest

from avinpaint.geometry import invert_affine
from avinpaint.spec import CROP_SIZE
from stream.composite import (
    FEATHER_PX,
    changed_region,
    composite,
    composite_weight,
    feather,
    inpaint_hole,
)
from stream.region import box_mask
from stream.types import Occlusion


def _frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)


def test_feather_ramps_inside_the_hole_and_is_exactly_zero_outside() -> None:
    mask = box_mask((100, 100, 50, 50))
    w = feather(mask, 6.0)
    # Outside the hole: exactly 0, however close to its edge.
    assert (w[mask == 0] == 0.0).all()
    # The ramp: small but not 0 on the hole's outer ring, 1 from 6 px in.
    assert 0 < w[125, 100] < 0.2
    assert w[125, 101] > w[125, 100]
    assert (w[107:143, 107:143] == 1.0).all()
    assert (w[mask > 0] > 0).all()
    np.testing.assert_array_equal(feather(mask, 0.0), mask)


def test_feather_thresholds_a_soft_mask_at_one_half() -> None:
    soft = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
    soft[50:60, 50:60] = 0.4  # an anti-aliased rim below one half is not hole
    soft[60:100, 60:100] = 1.0
    for px in (0.0, 3.0):
        w = feather(soft, px)
        assert (w[soft <= 0.5] == 0).all() and (w[soft > 0.5] > 0).all()


def test_default_is_a_hard_edge() -> None:
    assert FEATHER_PX == 0.0


def _scaled(scale: float, angle_deg: float = 0.0) -> np.ndarray:
    """A frame -> crop affine: rotate by ``angle_deg``, shrink by ``scale``, shift."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / scale
    return np.hstack([rot, np.array([[-20.0], [-10.0]])])


@pytest.mark.parametrize("feather_px", [0.0, 4.0])
@pytest.mark.parametrize(("scale", "angle"), [(2.0, 0.0), (0.7, 0.0), (1.6, 17.0)])
def test_pixels_outside_the_warped_hole_are_bit_identical(
    feather_px: float, scale: float, angle: float
) -> None:
    frame = _frame()
    inverse = invert_affine(_scaled(scale, angle))
    crop = np.full((CROP_SIZE, CROP_SIZE, 3), 77, np.uint8)
    weight = feather(box_mask((64, 89, 128, 100)), feather_px)
    out = composite(frame, crop, weight, inverse)
    region = changed_region(weight, inverse, frame.shape[:2])
    changed = np.any(out != frame, axis=-1)
    assert changed.any()
    # Every changed pixel lies in the warped hole; every other pixel is exactly as it was.
    assert not (changed & ~region).any()
    np.testing.assert_array_equal(out[~region], frame[~region])
    assert frame is not out


def test_a_hard_hole_replaces_every_pixel_of_its_warped_region() -> None:
    frame = np.random.default_rng(1).integers(0, 256, size=(480, 480, 3), dtype=np.uint8)
    affine = np.array([[0.5, 0.0, -20.0], [0.0, 0.5, -10.0]])  # frame -> crop
    inverse = invert_affine(affine)
    crop = np.full((CROP_SIZE, CROP_SIZE, 3), 77, np.uint8)
    weight = feather(box_mask((64, 89, 128, 128)), 0.0)
    out = composite(frame, crop, weight, inverse)
    region = changed_region(weight, inverse, frame.shape[:2])
    # No fringe of partly blended pixels: inside, the crop; outside, the frame.
    assert (out[region] == 77).all()
    np.testing.assert_array_equal(out[~region], frame[~region])
    # Crop pixels 64..191 x 89..216 map to frame x = 2 * cx + 40, y = 2 * cy + 20: the
    # region is the box's own footprint (pixel centres within half a crop pixel), no more.
    ys, xs = np.nonzero(region)
    assert (xs.min(), xs.max()) == (2 * 64 + 40 - 1, 2 * 191 + 40 + 1)
    assert (ys.min(), ys.max()) == (2 * 89 + 20 - 1, 2 * 216 + 20 + 1)


def test_the_ramp_stays_inside_the_warped_hole() -> None:
    frame = np.zeros((480, 480, 3), np.uint8)
    inverse = invert_affine(np.array([[0.5, 0.0, -20.0], [0.0, 0.5, -10.0]]))
    crop = np.full((CROP_SIZE, CROP_SIZE, 3), 200, np.uint8)
    weight = feather(box_mask((64, 89, 128, 128)), 8.0)
    out = composite(frame, crop, weight, inverse)[..., 0].astype(int)
    region = changed_region(weight, inverse, frame.shape[:2])
    assert (out[~region] == 0).all()
    row = out[2 * 150 + 20]  # a row across the middle of the hole
    left = 2 * 64 + 40 - 1  # the first column of the warped hole
    # Rising from near 0 at the hole's edge to the full crop 8 crop px (16 frame px) inside.
    assert 0 <= row[left] < 40
    assert (np.diff(row[left : left + 34]) >= 0).all()
    assert row[left + 34] == 200


def test_empty_weight_or_offscreen_region_leaves_the_frame() -> None:
    frame = _frame()
    crop = np.zeros((CROP_SIZE, CROP_SIZE, 3), np.uint8)
    zero = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
    ident = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    np.testing.assert_array_equal(composite(frame, crop, zero, ident), frame)
    assert not changed_region(zero, ident, frame.shape[:2]).any()
    far = np.array([[1.0, 0, 5000.0], [0, 1.0, 5000.0]])
    np.testing.assert_array_equal(composite(frame, crop, box_mask(), far), frame)
    assert not changed_region(box_mask(), far, frame.shape[:2]).any()


def test_the_inpainters_hole_is_the_region_grown_by_its_context() -> None:
    mask = box_mask((100, 100, 50, 50))
    np.testing.assert_array_equal(inpaint_hole(mask, 0), mask)
    grown = inpaint_hole(mask, 2)
    assert (grown[mask > 0] == 1).all()
    assert grown[125, 98] == 1 and grown[125, 97] == 0  # 2 px beyond the left edge
    assert grown[98, 98] == 0  # a round kernel: the corner grows less


def test_composite_weight_is_the_ramp_inside_and_the_soft_rim_outside() -> None:
    region = box_mask((60, 140, 136, 80))
    rim = np.zeros_like(region)
    rim[139, 60:196] = 0.5
    np.testing.assert_array_equal(
        composite_weight(Occlusion(region, 0.3), 4.0), feather(region, 4.0)
    )
    weight = composite_weight(Occlusion(region, 0.3, context_px=2, rim_256=rim), 4.0)
    np.testing.assert_array_equal(weight, np.maximum(feather(region, 4.0), rim))
    assert (weight[139, 60:196] == 0.5).all() and weight[140, 100] > 0.0
