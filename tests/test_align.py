import numpy as np
import pytest
from skimage import data
from skimage.transform import SimilarityTransform

from avinpaint.geometry import apply_affine, invert_affine, similarity_transform
from avinpaint.spec import CROP_SIZE, CROP_TEMPLATE_256
from stream.align import align_face
from stream.composite import composite
from stream.detect import FaceDetector


def test_recovers_a_known_similarity_exactly() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 300, size=(5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.5, -40.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T + shift
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-10)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)


def test_matches_scikit_image_least_squares_on_noisy_points() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 200, size=(5, 2))
    dst = src * 1.3 + 20 + rng.normal(0, 2.0, size=(5, 2))
    ours = similarity_transform(src, dst)
    ref = SimilarityTransform.from_estimate(src, dst).params[:2]
    np.testing.assert_allclose(ours, ref, atol=1e-8)


def test_rejects_degenerate_points() -> None:
    with pytest.raises(ValueError):
        similarity_transform(np.zeros((5, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError):
        similarity_transform(np.zeros((5, 2)), np.ones((4, 2)))


def test_inverse_is_exact() -> None:
    m = np.array([[1.2, -0.3, 40.0], [0.3, 1.2, -7.0]])
    pts = np.array([[0.0, 0.0], [100.0, 50.0], [-3.0, 7.5]])
    np.testing.assert_allclose(apply_affine(invert_affine(m), apply_affine(m, pts)), pts, atol=1e-9)


def test_aligns_the_astronaut_onto_the_template_and_back() -> None:
    image = np.ascontiguousarray(data.astronaut()[..., ::-1])
    faces = FaceDetector().detect(image)
    assert len(faces) == 1
    aligned = align_face(image, faces[0].landmarks5)
    assert aligned.crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    residual = apply_affine(aligned.affine, faces[0].landmarks5) - CROP_TEMPLATE_256
    # a similarity fits the astronaut (head turned ~20 degrees) to within ~10% of eye distance
    assert np.sqrt((residual**2).sum(axis=1).mean()) < 10.0
    # The inverse warp of the untouched crop reproduces the face (bilinear twice).
    weight = np.ones((CROP_SIZE, CROP_SIZE), np.float32)
    back = composite(image, aligned.crop, weight, aligned.inverse_affine)
    x, y, w, h = (int(v) for v in faces[0].box)
    diff = np.abs(back[y : y + h, x : x + w].astype(int) - image[y : y + h, x : x + w])
    assert diff.mean() < 4.0
