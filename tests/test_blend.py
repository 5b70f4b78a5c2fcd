"""Poisson blending of a fill into the visible face, on a real photo crop."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stream.blend import poisson_blend
from stream.types import Image, Mask


@pytest.fixture(scope="module")
def photo() -> Image:
    from skimage import data

    rgb = data.astronaut()[30:230, 150:350]  # the face: skin, eyes, mouth
    return np.ascontiguousarray(cv2.resize(rgb, (256, 256))[:, :, ::-1])


def _mouth_hole() -> Mask:
    mask = np.zeros((256, 256), np.float32)
    cv2.ellipse(mask, (128, 180), (70, 50), 0, 0, 360, 1.0, -1)
    return mask


def _hole_error(image: Image, truth: Image, mask: Mask) -> float:
    return float(np.abs(image.astype(np.float64) - truth)[mask > 0.5].mean())


def test_a_colour_cast_is_removed_and_the_structure_kept(photo: Image) -> None:
    mask = _mouth_hole()
    hole = mask > 0.5
    cast = photo.astype(np.int16)
    cast[hole] += np.array([-35, 25, 30], np.int16)  # a green-yellow cast, as the audio face's
    fill = np.clip(cast, 0, 255).astype(np.uint8)
    blended = poisson_blend(fill, photo, mask)
    # The cast is a constant offset: its gradients are the photo's, so the blend recovers most
    # of the photo; what is left comes from the 3 px rim where OpenCV's solver takes the
    # guide's (Telea's) smooth gradients instead of the photo's (measured: 27.5 -> 7.3).
    assert _hole_error(fill, photo, mask) > 25.0
    assert _hole_error(blended, photo, mask) < 0.35 * _hole_error(fill, photo, mask)
    assert np.array_equal(blended[~hole], fill[~hole])


def test_the_hole_of_the_crop_is_never_read(photo: Image) -> None:
    mask = _mouth_hole()
    fill = cv2.GaussianBlur(photo, (0, 0), 4)
    covered = photo.copy()
    covered[mask > 0.5] = np.random.default_rng(0).integers(0, 256, (int((mask > 0.5).sum()), 3))
    # What is under the hole (an occluder, or the ground truth in an evaluation) must not
    # leak into the result.
    assert np.array_equal(poisson_blend(fill, photo, mask), poisson_blend(fill, covered, mask))


def test_soft_edges_and_the_crop_border_keep_the_fill(photo: Image) -> None:
    mask = np.zeros((256, 256), np.float32)
    mask[200:, 60:200] = 1.0  # reaches the bottom edge of the crop
    mask[190:200, 60:200] = 0.4  # a feathered edge below one half
    fill = np.clip(photo.astype(np.int16) + 20, 0, 255).astype(np.uint8)
    blended = poisson_blend(fill, photo, mask)
    assert np.array_equal(blended[mask <= 0.5], fill[mask <= 0.5])
    assert np.array_equal(blended[-2:], fill[-2:])  # no known border for the solver there
    assert not np.array_equal(blended[mask > 0.5], fill[mask > 0.5])  # the rest is blended


def test_the_guide_is_smooth_continuous_and_reads_no_hole_pixel(photo: Image) -> None:
    from stream.blend import telea_guide

    mask = _mouth_hole()
    hole = mask > 0.5
    hole[1:9, 1:9] = True  # a hole at the corner and one with an odd-sized neighbour
    guide = telea_guide(photo, hole)
    assert np.array_equal(guide[~hole], photo[~hole])
    covered = photo.copy()
    covered[hole] = 255 - covered[hole]
    assert np.array_equal(telea_guide(covered, hole), guide)
    # The full-resolution Telea diffusion it stands in for: close in the hole, and closest
    # at the hole's edge, where the solver reads the guide's gradients.
    full = cv2.inpaint(photo, hole.astype(np.uint8) * 255, 3.0, cv2.INPAINT_TELEA)
    edge = hole & ~cv2.erode(hole.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=3)
    assert float(np.abs(guide.astype(np.int16) - full)[hole].mean()) < 6.0
    assert float(np.abs(guide.astype(np.int16) - full)[edge].mean()) < 6.0
    odd = telea_guide(photo[:255, :253], hole[:255, :253])
    assert odd.shape == (255, 253, 3)


def test_tiny_or_empty_holes_come_back_unchanged(photo: Image) -> None:
    fill = cv2.GaussianBlur(photo, (0, 0), 2)
    empty = np.zeros((256, 256), np.float32)
    assert poisson_blend(fill, photo, empty) is fill
    line = empty.copy()
    line[100, 50:150] = 1.0  # one pixel thin: nothing for the solver
    assert poisson_blend(fill, photo, line) is fill


def test_shapes_must_match(photo: Image) -> None:
    with pytest.raises(ValueError, match="do not match"):
        poisson_blend(photo, photo[:128], _mouth_hole())
    with pytest.raises(ValueError, match="do not match"):
        poisson_blend(photo, photo, _mouth_hole()[:128])


def _opencv_blend(fill: Image, crop: Image, mask: Mask) -> Image:
    """What ``poisson_blend`` computes, with OpenCV's own solver (ours until 2026-12-05) on
    the same guide."""
    from stream.blend import telea_guide

    hole = mask > 0.5
    clone = hole.astype(np.uint8) * 255
    clone[:2, :] = clone[-2:, :] = 0
    clone[:, :2] = clone[:, -2:] = 0
    x, y, w, h = cv2.boundingRect(clone)
    guide = telea_guide(crop, hole)
    centre = (x + w // 2, y + h // 2)
    blended = cv2.seamlessClone(fill, guide, clone.copy(), centre, cv2.NORMAL_CLONE)
    return np.where((clone > 0)[:, :, None], blended, fill).astype(np.uint8)


@pytest.mark.parametrize("with_scipy", [True, False])
def test_the_solver_agrees_with_opencvs_seamless_clone(
    photo: Image, with_scipy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stream.blend

    if not with_scipy:  # numpy's FFT path, where SciPy is not installed
        monkeypatch.setattr(stream.blend, "_scipy_fft", None)
    rng = np.random.default_rng(3)
    for mask in (_mouth_hole(), np.zeros((256, 256), np.float32)):
        mask[190:, 40:230] = 1.0  # reaches the crop's bottom edge, as a face mask's does
        cast = photo.astype(np.int16) + rng.integers(-30, 30, 3).astype(np.int16)
        fill = np.clip(cast, 0, 255).astype(np.uint8)
        ours, theirs = poisson_blend(fill, photo, mask), _opencv_blend(fill, photo, mask)
        # The same linear system; float rounding moves a few pixels by one level.
        assert int(np.abs(ours.astype(np.int16) - theirs).max()) <= 1
        assert float((ours != theirs).mean()) < 0.02
