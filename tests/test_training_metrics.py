"""``training.metrics`` against references: scikit-image's SSIM and PSNR, hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from training.metrics import (
    DlibFace,
    cosine_distance_np,
    descriptor_distance,
    dlib_available,
    l1,
    l1_in_mask,
    landmark_distance,
    psnr,
    retrieval_accuracy,
    ssim,
)


def _noisy_pair(seed: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    noise = rng.integers(-40, 41, shape)
    return a, np.clip(a.astype(np.int64) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(64, 80, 3), (256, 256, 3), (33, 47), (7, 7)])
def test_ssim_matches_scikit_image(shape: tuple[int, ...]) -> None:
    a, b = _noisy_pair(len(shape) + shape[0], shape)
    channel_axis = 2 if len(shape) == 3 else None
    expected = structural_similarity(a, b, channel_axis=channel_axis)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-12)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_on_a_real_photo_and_its_blur() -> None:
    photo = skdata.astronaut()
    blurred = np.asarray(
        np.clip(photo.astype(np.float64) * 0.8 + 20, 0, 255), np.uint8
    )  # contrast change: structure kept, luminance and contrast terms fall
    expected = structural_similarity(photo, blurred, channel_axis=2)
    assert ssim(photo, blurred) == pytest.approx(expected, abs=1e-12)


def test_psnr_hand_values_and_scikit_image() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 10, np.uint8)  # MSE 100
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-12)  # 28.1308 dB
    c = a.copy()
    c[0, 0, 0] = 255  # MSE 255^2 / 48
    assert psnr(a, c) == pytest.approx(10 * math.log10(48), abs=1e-12)  # 16.8124 dB
    assert psnr(a, a) == math.inf
    x, y = _noisy_pair(3, (32, 32, 3))
    assert psnr(x, y) == pytest.approx(peak_signal_noise_ratio(x, y), abs=1e-12)


def test_l1_whole_and_in_mask() -> None:
    a = np.zeros((2, 2, 3), np.uint8)
    b = np.full((2, 2, 3), 255, np.uint8)
    b[0, 0] = 0
    assert l1(a, b) == pytest.approx(0.75)
    mask = np.zeros((2, 2), np.float32)
    mask[0, 0] = 1.0
    assert l1_in_mask(a, b, mask) == 0.0
    mask[1, 1] = 1.0
    assert l1_in_mask(a, b, mask) == pytest.approx(0.5)
    assert math.isnan(l1_in_mask(a, b, np.zeros((2, 2), np.float32)))
    with pytest.raises(ValueError, match="shape"):
        l1(a, b[:1])


def test_cosine_distance() -> None:
    a = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    b = np.array([[0.0, 3.0], [-1.0, 0.0], [5.0, 0.0]])
    np.testing.assert_allclose(cosine_distance_np(a, b), [1.0, 2.0, 0.0], atol=1e-12)


def test_retrieval_accuracy_ranks_identity_centroids() -> None:
    e = np.eye(4)
    gallery = np.stack([e[0], e[0] + 0.1 * e[3], e[1], e[2]])
    labels = ["a", "a", "b", "c"]
    queries = np.stack([e[0], e[1] + 0.01 * e[0], e[2] * 0.5 + e[0], e[3]])
    query_labels = ["a", "b", "c", "a"]
    acc = retrieval_accuracy(queries, query_labels, gallery, labels, ks=(1, 2, 3, 10))
    # q0 -> a first; q1 -> b first; q2 (c) ranks second behind a; q3 (e3) nearest a.
    assert acc == {1: 0.75, 2: 1.0, 3: 1.0, 10: 1.0}
    # Unknown identities never hit.
    assert retrieval_accuracy(queries[:1], ["z"], gallery, labels, ks=(1, 3)) == {1: 0.0, 3: 0.0}


def test_retrieval_leaves_the_query_own_ground_truth_out() -> None:
    e = np.eye(3)
    other_a = 0.2 * e[0] + e[1]
    gallery = np.stack([e[0], other_a / np.linalg.norm(other_a), e[0] + e[2]])
    labels = ["a", "a", "b"]
    query = e[0][None]
    # With its own ground truth (row 0) in the centroid, identity a wins (cos 0.77 vs 0.71);
    # without it, a is represented by row 1 alone (cos 0.20) and b wins.
    assert retrieval_accuracy(query, ["a"], gallery, labels, ks=(1,)) == {1: 1.0}
    assert retrieval_accuracy(query, ["a"], gallery, labels, [0], ks=(1,)) == {1: 0.0}


@pytest.mark.skipif(not dlib_available(), reason="needs the eval extra (dlib)")
def test_dlib_distances_on_a_real_face() -> None:
    photo = np.ascontiguousarray(skdata.astronaut()[:, :, ::-1])  # BGR
    face = DlibFace()
    box = face.face_box(photo)
    assert face.fallbacks == 0
    reference = face.measure(photo, box)
    assert reference.descriptor.shape == (128,) and reference.landmarks.shape == (68, 2)
    same = face.measure(photo.copy(), box)
    assert descriptor_distance(same, reference) == 0.0
    assert landmark_distance(same, reference) == 0.0
    shifted = np.roll(photo, 6, axis=1)  # the face moves 6 px right, the box stays
    moved = face.measure(shifted, box)
    assert 3.0 < landmark_distance(moved, reference) < 9.0
    assert 0.0 < descriptor_distance(moved, reference) < 0.6  # still the same person
