"""Video-gap augmentation of training crops (training.augment) on a real photo."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import skimage.data

from avinpaint.spec import CROP_SIZE, CROP_TEMPLATE_256
from training import augment
from training.augment import AugmentOptions, augment_crop

NONE = AugmentOptions(
    jitter_probability=0.0,
    rescale_probability=0.0,
    blur_probability=0.0,
    jpeg_probability=0.0,
    colour_probability=0.0,
    light_probability=0.0,
    glasses_probability=0.0,
)


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    """scikit-image's astronaut (NASA, public domain) as a 256 BGR crop."""
    rgb = skimage.data.astronaut()[:300, 100:400]
    return np.ascontiguousarray(cv2.resize(rgb, (CROP_SIZE, CROP_SIZE))[:, :, ::-1])


def _detail(image: np.ndarray) -> float:
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float64)
    return float(np.abs(cv2.Laplacian(grey, cv2.CV_64F)).mean())


def test_same_generator_state_gives_the_same_crop(crop: np.ndarray) -> None:
    a = augment_crop(crop, np.random.default_rng([3, 1, 7]), AugmentOptions())
    b = augment_crop(crop, np.random.default_rng([3, 1, 7]), AugmentOptions())
    c = augment_crop(crop, np.random.default_rng([3, 1, 8]), AugmentOptions())
    assert a.shape == crop.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_all_off_is_the_identity_and_leaves_the_input_alone(crop: np.ndarray) -> None:
    before = crop.copy()
    assert np.array_equal(augment_crop(crop, np.random.default_rng(0), NONE), crop)
    everything = AugmentOptions(
        jitter_probability=1.0,
        rescale_probability=1.0,
        blur_probability=1.0,
        jpeg_probability=1.0,
        colour_probability=1.0,
        light_probability=1.0,
        glasses_probability=1.0,
    )
    out = augment_crop(crop, np.random.default_rng(0), everything)
    assert np.array_equal(crop, before) and not np.array_equal(out, crop)


def test_resolution_blur_and_compression_remove_detail(crop: np.ndarray) -> None:
    sharp = _detail(crop)
    assert _detail(augment.rescale(crop, 64)) < 0.6 * sharp
    assert _detail(augment.blur(crop, 1.5)) < 0.6 * sharp
    assert np.array_equal(augment.rescale(crop, CROP_SIZE), crop)
    jpeg = augment.compress(crop, 30)
    assert abs(float(jpeg.mean()) - float(crop.mean())) < 2.0  # same picture, less detail
    assert np.abs(jpeg.astype(int) - crop.astype(int)).mean() > 1.0


def test_colour_gains_brightness_and_saturation(crop: np.ndarray) -> None:
    warm = augment.colour(
        crop, np.array([0.9, 1.0, 1.1]), brightness=0.0, contrast=1.0, saturation=1.0
    )
    means, warm_means = crop.reshape(-1, 3).mean(0), warm.reshape(-1, 3).mean(0)
    assert warm_means[0] < means[0] - 3 and warm_means[2] > means[2] + 3  # B down, R up
    grey = augment.colour(crop, np.ones(3), brightness=0.0, contrast=1.0, saturation=0.0).astype(
        int
    )
    assert np.abs(grey[..., 0] - grey[..., 2]).max() <= 1
    brighter = augment.colour(crop, np.ones(3), brightness=0.1, contrast=1.0, saturation=1.0)
    assert brighter.mean() > crop.mean() + 15


def test_light_gradient_lights_one_side(crop: np.ndarray) -> None:
    left_lit = augment.light_gradient(crop, math.pi, 0.3)  # light from the left (-x)
    half = CROP_SIZE // 2
    gain_left = left_lit[:, :half].mean() / crop[:, :half].mean()
    gain_right = left_lit[:, half:].mean() / crop[:, half:].mean()
    assert gain_left > 1.05 and gain_right < 0.95


def test_glasses_are_drawn_around_the_template_eyes(crop: np.ndarray) -> None:
    changed = np.zeros(CROP_SIZE, bool)
    for seed in range(5):
        out = augment.draw_glasses(crop, np.random.default_rng(seed))
        diff = np.abs(out.astype(int) - crop.astype(int)).sum(2) > 0
        rows = np.nonzero(diff.any(1))[0]
        eye_row = CROP_TEMPLATE_256[0][1]
        assert rows.min() > eye_row - 40 and rows.max() < eye_row + 40
        assert not diff[150:].any()  # never on the mouth and chin
        changed |= diff.any(0)
    assert changed[80:180].any()


def test_jitter_moves_the_face_by_a_few_pixels(crop: np.ndarray) -> None:
    moved = augment.jitter(crop, np.random.default_rng(1), 0.0, 0.0, 4.0)
    shift, _ = cv2.phaseCorrelate(
        cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float64),
        cv2.cvtColor(moved, cv2.COLOR_BGR2GRAY).astype(np.float64),
    )
    assert 0.3 < math.hypot(*shift) <= 4.0 * math.sqrt(2) + 0.5
    still = augment.jitter(crop, np.random.default_rng(1), 0.0, 0.0, 0.0)
    assert np.array_equal(still, crop)


def test_bad_options_and_inputs_raise(crop: np.ndarray) -> None:
    with pytest.raises(ValueError, match="blur_probability"):
        AugmentOptions(blur_probability=1.5)
    with pytest.raises(ValueError, match="jpeg_quality"):
        AugmentOptions(jpeg_quality=(90, 30))
    with pytest.raises(ValueError, match="crop"):
        augment_crop(crop[:100], np.random.default_rng(0), AugmentOptions())


def test_specular_highlight_brightens_a_soft_spot_on_the_skin(crop: np.ndarray) -> None:
    before = crop.copy()
    out = augment.specular_highlight(crop, np.random.default_rng(5))
    assert out.shape == crop.shape and out.dtype == np.uint8
    assert np.array_equal(crop, before)
    change = out.astype(np.int16) - crop.astype(np.int16)
    assert change.min() >= -12  # towards a near-white tint: already-white pixels barely move
    lifted = change.max(axis=2) > 8
    assert 0 < lifted.mean() < 0.25  # a spot, not the whole crop
    same = augment.specular_highlight(crop, np.random.default_rng(5))
    assert np.array_equal(out, same)


def test_side_light_lights_one_side_of_the_face(crop: np.ndarray) -> None:
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float64)
    for seed in range(4):
        out = augment.side_light(crop, np.random.default_rng(seed))
        lit = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY).astype(np.float64) - grey
        half = CROP_SIZE // 2
        left, right = lit[:, :half].mean(), lit[:, half:].mean()
        assert abs(left - right) > 10.0
