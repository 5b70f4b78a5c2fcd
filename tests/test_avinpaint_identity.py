"""SFace in torch: weight decoding, parity with onnxruntime and OpenCV on real faces,
gradients, ArcFace alignment (cv2 and differentiable) and the cosine helpers."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper
from skimage import data

from avinpaint import identity
from avinpaint.geometry import apply_affine
from avinpaint.identity import (
    SFACE_COSINE_THRESHOLD,
    SFace,
    align_arcface,
    bgr_crops_to_tensor,
    cosine_distance,
    cosine_similarity,
    pairwise_cosine_similarity,
    warp_affine,
    warp_crop256_to_arcface,
)
from avinpaint.spec import ARCFACE_TEMPLATE_112, CROP_TEMPLATE_256
from stream.align import align_face
from stream.detect import FaceDetector

torch.set_num_threads(1)
cv2.setNumThreads(1)

Uint8Image = npt.NDArray[np.uint8]


@pytest.fixture(scope="module")
def net() -> SFace:
    return SFace.from_onnx()


@pytest.fixture(scope="module")
def session() -> onnxruntime.InferenceSession:
    return identity.sface_onnxruntime_session()


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def _package_photo(name: str) -> Uint8Image:
    """A scikit-image sample photo as BGR uint8 (greyscale replicated to 3 channels)."""
    image = np.asarray(getattr(data, name)(), dtype=np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., ::-1])


@pytest.fixture(scope="module")
def faces(detector: FaceDetector) -> dict[str, tuple[Uint8Image, npt.NDArray[np.float64]]]:
    """Two real people that ship with scikit-image (the astronaut, the cameraman): the BGR
    photo and its YuNet landmarks."""
    out = {}
    for name in ("astronaut", "camera"):
        photo = _package_photo(name)
        out[name] = (photo, detector.detect(photo)[0].landmarks5)
    return out


@pytest.fixture(scope="module")
def crops(faces: dict[str, tuple[Uint8Image, npt.NDArray[np.float64]]]) -> Uint8Image:
    """(2, 112, 112, 3) BGR ArcFace crops: astronaut, cameraman."""
    return np.stack([align_arcface(photo, lm) for photo, lm in faces.values()])


# --- the ONNX file and its weights ----------------------------------------------------------


def test_shipped_graph_needs_its_stale_inputs_dropped() -> None:
    raw = onnx.load(str(identity.sface_model_path()))
    initializers = {t.name for t in raw.graph.initializer}
    stale = [v.name for v in raw.graph.input if v.name != "data" and v.name not in initializers]
    assert len(stale) == 29  # the original float weights, read by no node
    cleaned = identity.sface_onnx_model()
    assert [v.name for v in cleaned.graph.input] == ["data"]
    assert len(raw.graph.input) == 175  # the file on disk is untouched


@pytest.mark.parametrize(
    ("shape", "scale_shape", "axis", "block_size"),
    [
        ((6, 20), (6, 3), 1, 8),  # blocked, last block short
        ((130,), (3,), 0, 64),  # blocked 1-D, like SFace's FC bias
        ((6, 20), (6,), 0, 0),  # per-axis
        ((6, 20), (), 1, 0),  # per-tensor
    ],
)
def test_dequantize_linear_is_bit_identical_to_onnxruntime(
    shape: tuple[int, ...], scale_shape: tuple[int, ...], axis: int, block_size: int
) -> None:
    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, size=shape, dtype=np.int8)
    scale = rng.uniform(1e-4, 1e-2, size=scale_shape).astype(np.float32)
    zero = rng.integers(-60, 60, size=scale_shape, dtype=np.int8)
    attrs: dict[str, Any] = {"axis": axis}
    if block_size:
        attrs["block_size"] = block_size
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "dq",
        [
            helper.make_tensor_value_info("q", TensorProto.INT8, shape),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, scale_shape),
            helper.make_tensor_value_info("z", TensorProto.INT8, scale_shape),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    ref = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(None, {"q": q, "s": scale, "z": zero})[0]
    ours = identity.dequantize_linear(q, scale, zero, axis=axis, block_size=block_size)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)


# --- parity -------------------------------------------------------------------------------


def test_torch_matches_onnxruntime_on_real_faces(
    net: SFace, session: onnxruntime.InferenceSession, crops: Uint8Image
) -> None:
    x = bgr_crops_to_tensor(crops)
    with torch.no_grad():
        ours = net(x).numpy()
    ref = session.run(None, {"data": x.numpy()})[0]
    assert ours.shape == (2, identity.SFACE_EMBEDDING_DIM)
    assert np.abs(ours - ref).max() < 1e-4  # measured 4.2e-6
    assert np.all(np.linalg.norm(ours, axis=1) > 5.0)  # raw, not unit-normalised


def test_torch_matches_opencv_face_recognizer(net: SFace, crops: Uint8Image) -> None:
    recognizer = cv2.FaceRecognizerSF.create(str(identity.sface_model_path()), "")
    ref = np.concatenate([recognizer.feature(crop) for crop in crops])
    with torch.no_grad():
        ours = net(bgr_crops_to_tensor(crops)).numpy()
    assert np.abs(ours - ref).max() < 1e-4  # measured 4.9e-6


def test_graph_input_is_rgb_as_opencv_feeds_it(
    session: onnxruntime.InferenceSession, crops: Uint8Image
) -> None:
    """OpenCV swaps its BGR crop to RGB before the graph: an RGB blob reproduces
    ``FaceRecognizerSF.feature``, a BGR blob does not."""
    recognizer = cv2.FaceRecognizerSF.create(str(identity.sface_model_path()), "")
    crop = crops[:1]
    ref = recognizer.feature(crop[0])
    rgb = session.run(None, {"data": bgr_crops_to_tensor(crop).numpy()})[0]
    bgr = session.run(None, {"data": crop.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    assert np.abs(rgb - ref).max() < 1e-4
    assert np.abs(bgr - ref).max() > 0.1


def test_unit_range_entry_point_equals_forward(net: SFace, crops: Uint8Image) -> None:
    x = bgr_crops_to_tensor(crops)
    with torch.no_grad():
        np.testing.assert_allclose(
            net.embed_rgb_unit(x / 127.5 - 1.0).numpy(), net(x).numpy(), atol=1e-4
        )


def test_features_pass_gives_the_same_embedding_and_the_tapped_maps(
    net: SFace, crops: Uint8Image
) -> None:
    x = bgr_crops_to_tensor(crops)
    with torch.no_grad():
        embedding, features = net.forward_features(x)
        np.testing.assert_allclose(embedding.numpy(), net(x).numpy(), atol=1e-5)
        crop256 = torch.nn.functional.interpolate(x / 127.5 - 1.0, size=(256, 256))
        np.testing.assert_allclose(
            net.features_crop256(crop256)[0].numpy(), net.embed_crop256(crop256).numpy(), atol=1e-5
        )
    n = x.shape[0]
    assert [tuple(f.shape) for f in features] == [
        (n, 128, 56, 56),
        (n, 256, 28, 28),
        (n, 512, 14, 14),
    ]


def test_rejects_wrong_input_shape(net: SFace) -> None:
    with pytest.raises(ValueError, match="112"):
        net(torch.zeros(1, 3, 128, 128))


# --- gradients and frozen state -------------------------------------------------------------


def _unit_rgb_256(photo: Uint8Image, lm: npt.NDArray[np.float64]) -> torch.Tensor:
    """The 256 crop ``stream`` makes, as the generator's (1, 3, 256, 256) RGB [-1, 1]."""
    crop = align_face(photo, lm).crop
    return torch.from_numpy(crop[..., ::-1].transpose(2, 0, 1)[None].copy()).float() / 127.5 - 1


def test_gradients_reach_the_input_and_not_the_weights(
    net: SFace, faces: dict[str, tuple[Uint8Image, npt.NDArray[np.float64]]]
) -> None:
    x = _unit_rgb_256(*faces["astronaut"]).requires_grad_(True)
    target = torch.randn(1, identity.SFACE_EMBEDDING_DIM)
    loss = cosine_distance(net.embed_crop256(x), target).sum()
    (grad,) = torch.autograd.grad(loss, [x])
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    assert grad[0, :, 100:200, 60:200].abs().mean() > 0  # the face itself, not just edges
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())


def test_train_mode_never_reaches_the_batchnorms(net: SFace, crops: Uint8Image) -> None:
    parent = torch.nn.ModuleDict({"psi": net})
    parent.train()
    try:
        assert not net.training
        assert not any(m.training for m in net.modules())
        before = net.bn1.running_mean.clone()  # type: ignore[union-attr]
        net(bgr_crops_to_tensor(crops))
        assert torch.equal(before, net.bn1.running_mean)  # type: ignore[arg-type]
    finally:
        parent.eval()


# --- alignment ----------------------------------------------------------------------------


def test_align_arcface_matches_opencv_align_crop(
    faces: dict[str, tuple[Uint8Image, npt.NDArray[np.float64]]],
) -> None:
    recognizer = cv2.FaceRecognizerSF.create(str(identity.sface_model_path()), "")
    for photo, lm in faces.values():
        row = np.concatenate([[0.0, 0.0, 1.0, 1.0], lm.ravel(), [1.0]]).astype(np.float32)
        ref = recognizer.alignCrop(photo, row[None]).astype(np.int16)
        ours = align_arcface(photo, lm)
        assert ours.shape == (112, 112, 3) and ours.dtype == np.uint8
        assert np.abs(ours.astype(np.int16) - ref).max() <= 2  # measured 2 (its own solver)


def test_crop256_to_arcface_maps_template_onto_template() -> None:
    affine = identity.crop256_to_arcface_affine()
    np.testing.assert_allclose(
        apply_affine(affine, CROP_TEMPLATE_256), ARCFACE_TEMPLATE_112, atol=1e-9
    )


@pytest.mark.parametrize(
    ("padding_mode", "border", "max_tol"),
    [("border", cv2.BORDER_REPLICATE, 1.5), ("zeros", cv2.BORDER_CONSTANT, 3.0)],
)
def test_torch_warp_256_to_112_matches_cv2(
    faces: dict[str, tuple[Uint8Image, npt.NDArray[np.float64]]],
    padding_mode: str,
    border: int,
    max_tol: float,
) -> None:
    photo, lm = faces["astronaut"]
    crop256 = align_face(photo, lm).crop.astype(np.float32)
    ref = cv2.warpAffine(
        crop256,
        identity.crop256_to_arcface_affine(),
        (112, 112),
        flags=cv2.INTER_LINEAR,
        borderMode=border,
    )
    x = torch.from_numpy(crop256.transpose(2, 0, 1)[None].copy())
    ours = warp_crop256_to_arcface(x, padding_mode)[0].numpy().transpose(1, 2, 0)
    # cv2 rounds sample positions to 1/32 px; measured max 0.85 (border), 2.5 (zeros edge).
    diff = np.abs(ours - ref)
    assert diff.max() < max_tol
    assert diff.mean() < 0.1


def test_torch_warp_affine_matches_cv2_with_rotation_on_a_wide_image(
    faces: dict[str, tuple[Uint8Image, npt.NDArray[np.float64]]],
) -> None:
    photo, lm = faces["astronaut"]
    wide = np.ascontiguousarray(photo[:400]).astype(np.float32)  # 400x512, not square
    affine = identity.arcface_affine(lm)
    assert abs(affine[0, 1]) > 0.01  # the astronaut's head is tilted: a real rotation
    ref = cv2.warpAffine(wide, affine, (112, 112), flags=cv2.INTER_LINEAR)
    x = torch.from_numpy(wide.transpose(2, 0, 1)[None].copy())
    ours = warp_affine(x, affine, (112, 112))[0].numpy().transpose(1, 2, 0)
    assert np.abs(ours - ref).max() < 3.0
    assert np.abs(ours - ref).mean() < 0.2


def test_embedding_through_the_256_crop_matches_direct_alignment(
    net: SFace, faces: dict[str, tuple[Uint8Image, npt.NDArray[np.float64]]]
) -> None:
    """What the losses see (generator crop -> torch warp) keeps the identity of a direct
    ArcFace alignment from the frame, despite the 17 rows the 256 crop lacks."""
    for photo, lm in faces.values():
        direct = bgr_crops_to_tensor(align_arcface(photo, lm))
        with torch.no_grad():
            similarity = cosine_similarity(net(direct), net.embed_crop256(_unit_rgb_256(photo, lm)))
        assert similarity.item() > 0.95  # measured 0.979 (astronaut), 0.984 (cameraman)


def test_same_person_is_closer_than_a_different_person(
    net: SFace,
    faces: dict[str, tuple[Uint8Image, npt.NDArray[np.float64]]],
    detector: FaceDetector,
) -> None:
    photo, lm = faces["astronaut"]
    mirrored = np.ascontiguousarray(photo[:, ::-1])
    shift_scale = np.array([[0.9, 0.0, 20.0], [0.0, 0.9, -10.0]])
    moved = np.asarray(cv2.warpAffine(photo, shift_scale, (512, 512)), dtype=np.uint8)
    other_photo, other_lm = faces["camera"]
    batch = np.stack(
        [
            align_arcface(photo, lm),
            align_arcface(mirrored, detector.detect(mirrored)[0].landmarks5),
            align_arcface(moved, detector.detect(moved)[0].landmarks5),
            align_arcface(other_photo, other_lm),
        ]
    )
    with torch.no_grad():
        sim = pairwise_cosine_similarity(net(bgr_crops_to_tensor(batch)))
    same = sim[0, 1:3]
    different = sim[:3, 3]
    assert same.min() > 0.9  # measured 0.948 (mirrored), 0.972 (scaled, shifted)
    assert different.max() < SFACE_COSINE_THRESHOLD  # measured 0.20
    assert same.min() > different.max()


# --- cosine helpers -----------------------------------------------------------------------


def test_cosine_helpers() -> None:
    a = torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 2.0], [6.0, 8.0], [-1.0, -1.0]])
    np.testing.assert_allclose(cosine_similarity(a, b).numpy(), [0.0, 1.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(cosine_distance(a, b).numpy(), [1.0, 0.0, 2.0], atol=1e-6)
    assert cosine_similarity(a, b[:1]).shape == (3,)  # broadcasts over the batch
    pairwise = pairwise_cosine_similarity(a)
    np.testing.assert_allclose(torch.diagonal(pairwise).numpy(), 1.0, atol=1e-6)
    zero = torch.zeros(1, 2, requires_grad=True)
    (grad,) = torch.autograd.grad(cosine_distance(zero, b[:1]).sum(), [zero])
    assert torch.isfinite(grad).all()  # a blank embedding must not poison a loss with NaN


# --- real data ----------------------------------------------------------------------------


@pytest.mark.realdata
def test_separates_identities_in_real_photos(
    shared_data: Path, net: SFace, detector: FaceDetector
) -> None:
    """deepface's test photos of public figures: two photos each of the people with two or
    more; measured accuracy 0.98 at OpenCV Zoo's 0.363 threshold."""
    root = shared_data / "identities" / "deepface"
    with (root / "identity_clusters.csv").open() as f:
        by_id: dict[str, list[str]] = defaultdict(list)
        for row in csv.DictReader(f):
            by_id[row["identity_cluster"]].append(row["file"])
    crops: list[Uint8Image] = []
    labels: list[str] = []
    for label, files in sorted(by_id.items()):
        if len(files) < 2:
            continue
        for name in files[:2]:
            photo = np.asarray(cv2.imread(str(root / name)), dtype=np.uint8)
            found = detector.detect(photo)
            if found:
                crops.append(align_arcface(photo, found[0].landmarks5))
                labels.append(label)
    assert len(crops) >= 20
    with torch.no_grad():
        sim = pairwise_cosine_similarity(net(bgr_crops_to_tensor(np.stack(crops)))).numpy()
    ids = np.array(labels)
    same = ids[:, None] == ids[None, :]
    off_diagonal = ~np.eye(len(ids), dtype=bool)
    assert sim[same & off_diagonal].mean() > sim[~same].mean() + 0.3
    accuracy = ((sim >= SFACE_COSINE_THRESHOLD) == same)[off_diagonal].mean()
    assert accuracy > 0.9
