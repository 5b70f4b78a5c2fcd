import numpy as np

from avinpaint.geometry import invert_affine
from avinpaint.spec import CROP_SIZE
from stream.composite import composite, feather
from stream.region import box_mask


def _frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)


def test_feather_keeps_the_hole_at_one_and_falls_to_zero_outside() -> None:
    mask = box_mask((100, 100, 50, 50))
    w = feather(mask, 6.0)
    assert (w[mask > 0] == 1.0).all()
    assert 0 < w[100 + 25, 99] < 1  # ramp just outside the hole
    assert w[125, 80] == 0.0  # far outside: untouched
    np.testing.assert_array_equal(feather(mask, 0.0), mask)


def test_only_the_weighted_region_changes() -> None:
    frame = _frame()
    affine = np.array([[0.5, 0.0, -20.0], [0.0, 0.5, -10.0]])  # frame -> crop
    inverse = invert_affine(affine)
    crop = np.full((CROP_SIZE, CROP_SIZE, 3), 77, np.uint8)
    weight = feather(box_mask((64, 89, 128, 128)), 4.0)
    out = composite(frame, crop, weight, inverse)
    changed = np.any(out != frame, axis=-1)
    ys, xs = np.nonzero(changed)
    # crop (64..192, 89..217) maps to frame x = 2*cx + 40, y = 2*cy + 20
    assert xs.min() >= 2 * (64 - 8) + 40 and xs.max() <= 2 * (192 + 8) + 40
    assert ys.min() >= 2 * (89 - 8) + 20 and ys.max() <= 2 * (217 + 8) + 20
    # well inside the hole the crop replaces the frame completely
    assert (out[2 * 150 + 20 - 100, 2 * 128 + 40] == 77).all()
    assert (out[0:150, 0:100] == frame[0:150, 0:100]).all()
    assert frame is not out


def test_empty_weight_or_offscreen_region_leaves_the_frame() -> None:
    frame = _frame()
    crop = np.zeros((CROP_SIZE, CROP_SIZE, 3), np.uint8)
    zero = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
    ident = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    np.testing.assert_array_equal(composite(frame, crop, zero, ident), frame)
    far = np.array([[1.0, 0, 5000.0], [0, 1.0, 5000.0]])
    np.testing.assert_array_equal(composite(frame, crop, box_mask(), far), frame)
