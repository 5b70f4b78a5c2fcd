"""The covered-face placement network: sample geometry, network, export, training loop, and
the shipped network on real faces."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avinpaint.spec import CROP_SIZE, CROP_TEMPLATE_256
from stream.align import (
    PLACEMENT_FEATURES,
    PLACEMENT_TARGET_SCALE,
    AveragedPlacement,
    CoveredPlacement,
    PlacementNetwork,
    crop_at,
    offset_matrix,
    shipped_covered_placement,
    undo_offset,
)
from stream.errors import AvstreamError
from stream.mask_detect import MaskDetectOptions, MaskDetector
from stream.types import AlignedFace
from training.occluders import OccluderRenderer
from training.placement import (
    BORDER_PX,
    WIDE_PX,
    OffsetRange,
    PlacementNet,
    TrainConfig,
    crop_from_wide,
    export_onnx,
    make_sample,
    offset_errors,
    to_batch,
    train,
    wide_affine,
    wide_view,
)
from training.segmenter import SampleMaker


def _smooth(seed: int, side: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 220, (12, 12, 3), dtype=np.uint8)
    return np.asarray(cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC), np.uint8)


def _landmarks_in(frame_side: int) -> np.ndarray:
    """The crop template placed in a frame: scaled by 0.8, turned 0.1 rad, moved."""
    turn = 0.8 * np.array([[math.cos(0.1), -math.sin(0.1)], [math.sin(0.1), math.cos(0.1)]])
    return CROP_TEMPLATE_256 @ turn.T + np.array([frame_side / 2 - 100.0, frame_side / 2 - 110.0])


def test_no_offset_crops_the_centre_of_a_wide_view() -> None:
    wide = _smooth(0, WIDE_PX)
    centre = wide[BORDER_PX : BORDER_PX + CROP_SIZE, BORDER_PX : BORDER_PX + CROP_SIZE]
    np.testing.assert_array_equal(crop_from_wide(wide, np.zeros(4)), centre)


def test_a_sample_offset_is_the_crop_the_aligner_would_make_and_undo_offset_inverts_it() -> None:
    frame = _smooth(1, 640)
    landmarks = _landmarks_in(640)
    view, inside = wide_view(frame, landmarks)
    assert view.shape == (WIDE_PX, WIDE_PX, 3) and inside == 1.0
    aligned = wide_affine(landmarks)
    aligned[:, 2] -= BORDER_PX  # the aligner's own crop
    offset = np.array([math.log(1.25), 0.06, 7.0, -12.0])
    moved = (offset_matrix(offset) @ np.vstack([aligned, [0, 0, 1]]))[:2]
    ours = crop_from_wide(view, offset)
    direct = crop_at(frame, moved).crop
    # Two bilinear warps against one: the same picture up to interpolation.
    assert np.abs(ours.astype(int) - direct.astype(int)).mean() < 2.0
    np.testing.assert_allclose(undo_offset(moved, offset), aligned, atol=1e-9)


def test_a_view_partly_outside_the_photo_says_how_much() -> None:
    frame = _smooth(2, 300)
    _, inside = wide_view(frame, _landmarks_in(300) + np.array([140.0, 0.0]))
    assert 0.4 < inside < 0.9


def test_samples_are_seeded_and_offsets_stay_in_range() -> None:
    wide = _smooth(3, WIDE_PX)
    maker = SampleMaker(OccluderRenderer(), degrade=False)
    first = make_sample(wide, maker, np.random.default_rng(5))
    again = make_sample(wide, maker, np.random.default_rng(5))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    limits = OffsetRange()
    offsets = np.stack([limits.draw(np.random.default_rng(s)) for s in range(200)])
    assert np.all(np.exp(offsets[:, 0]) >= limits.scale[0])
    assert np.all(np.exp(offsets[:, 0]) <= limits.scale[1])
    assert np.all((offsets[:, 3] >= limits.y_px[0]) & (offsets[:, 3] <= limits.y_px[1]))


def test_offset_errors_are_medians_and_percentiles() -> None:
    truth = np.zeros((4, 4))
    predicted = np.array([[0.1, 0, 3, 4], [0.2, 0, 0, 0], [0.0, 0, 6, 8], [0.1, 0, 0, 0]])
    errors = offset_errors(predicted, truth)
    assert errors["median_log_scale"] == pytest.approx(0.1)
    assert errors["median_shift_px"] == pytest.approx(2.5)


def test_the_exported_network_matches_torch_and_places_faces(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = PlacementNet().eval()
    path = tmp_path / "placement.onnx"
    export_onnx(net, path)
    crops = np.stack([_smooth(s, CROP_SIZE) for s in range(3)])
    with torch.no_grad():
        expected = net(to_batch(crops)).numpy() / np.asarray(PLACEMENT_TARGET_SCALE)
    runtime = PlacementNetwork(path)
    np.testing.assert_allclose(runtime.offsets(crops), expected, rtol=1e-4, atol=1e-5)
    assert runtime.offsets(crops[:0]).shape == (0, 4)
    affine = np.array([[1.4, 0.3, -40.0], [-0.3, 1.4, -20.0]])
    face = AlignedFace(crops[0], affine, cv2.invertAffineTransform(affine))
    (placed,) = runtime.place_faces([face], [np.zeros((CROP_SIZE, CROP_SIZE), np.float32)])
    np.testing.assert_allclose(placed, undo_offset(affine, expected[0]), atol=1e-4)
    with pytest.raises(AvstreamError, match="placement network"):
        PlacementNetwork(tmp_path / "missing.onnx")


def test_training_checkpoints_and_resumes(tmp_path: Path) -> None:
    faces = tmp_path / "faces"
    faces.mkdir()
    np.save(faces / "wide.npy", np.stack([_smooth(i, WIDE_PX) for i in range(5)]))
    rows = [{"path": f"{i}.png", "group": f"g{i}", "split": s} for i, s in enumerate("tttvv")]
    for row in rows:
        row["split"] = "train" if row["split"] == "t" else "val"
    (faces / "index.json").write_text(json.dumps({"skipped": 0, "rows": rows}))
    maker = SampleMaker(OccluderRenderer(), degrade=False)
    run = tmp_path / "run"
    train(faces, run, maker, TrainConfig(steps=2, batch_size=2, checkpoint_every=1, val_faces=2))
    train(faces, run, maker, TrainConfig(steps=3, batch_size=2, checkpoint_every=1, val_faces=2))
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert torch.load(run / "state.pt")["step"] == 3


def test_mask_detect_chooses_where_placement_comes_from() -> None:
    both = MaskDetector(MaskDetectOptions()).placement()
    assert isinstance(both, AveragedPlacement)
    assert both.ridge == shipped_covered_placement()
    by_crop = MaskDetector(MaskDetectOptions(placement_from="crop")).placement()
    assert isinstance(by_crop, PlacementNetwork)
    by_mask = MaskDetector(MaskDetectOptions(placement_from="mask")).placement()
    assert isinstance(by_mask, CoveredPlacement)
    with pytest.raises(ValueError, match="placement_from"):
        MaskDetectOptions(placement_from="eyes")  # type: ignore[arg-type]


def test_the_averaged_placement_is_the_mean_of_both_offsets(tmp_path: Path) -> None:
    torch.manual_seed(1)
    path = tmp_path / "placement.onnx"
    export_onnx(PlacementNet().eval(), path)
    network = PlacementNetwork(path)
    coefficients = np.zeros((PLACEMENT_FEATURES, 4))
    coefficients[0] = [math.log(1.2), 0.0, 4.0, 10.0]  # a constant offset, whatever the mask
    ridge = CoveredPlacement(coefficients)
    affine = np.array([[1.4, 0.3, -40.0], [-0.3, 1.4, -20.0]])
    face = AlignedFace(_smooth(7, CROP_SIZE), affine, cv2.invertAffineTransform(affine))
    mask = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
    (placed,) = AveragedPlacement(network, ridge).place_faces([face], [mask])
    mean = (network.offsets(face.crop[None])[0] + coefficients[0]) / 2
    np.testing.assert_allclose(placed, undo_offset(affine, mean), atol=1e-9)
    assert AveragedPlacement(network, ridge).place_faces([], []) == []


@pytest.mark.realdata
def test_the_shipped_network_places_covered_photo_faces(shared_data: Path) -> None:
    """Held-out LFW faces (test split) with a surgical mask painted on, cropped zoomed in
    and moved down (as YuNet does under a mask) or zoomed out: the network's offset is close
    to the true one (measured: median log-scale error 0.031, shift 6.1 px; the crops
    themselves are off by 0.22 or 0.29 in log scale and 0 or 20 px)."""
    from stream.detect import DetectorOptions, FaceDetector
    from training.segmenter import _group, find_face, split_of

    photos = [
        p
        for p in sorted((shared_data / "faces" / "lfw").rglob("*.jpg"))
        if split_of(_group("faces/lfw", p)) == "test"
    ][::40][:12]
    assert len(photos) == 12
    finder = FaceDetector(DetectorOptions(min_face_px=32.0))
    network = PlacementNetwork()
    rng = np.random.default_rng(0)
    truths, crops = [], []
    for path in photos:
        image = np.asarray(cv2.imread(str(path), cv2.IMREAD_COLOR), np.uint8)
        face = find_face(finder, image)
        assert face is not None
        view, _ = wide_view(image, face.landmarks5)
        inner = slice(BORDER_PX, BORDER_PX + CROP_SIZE)
        lower = view[inner, inner]
        cv2.ellipse(lower, (128, 190), (95, 70), 0, 0, 360, (190, 200, 205), -1)
        for offset in ([math.log(1.25), 0.0, 0.0, 20.0], [math.log(0.75), 0.0, 0.0, 0.0]):
            truths.append(offset)
            crops.append(crop_from_wide(view, np.asarray(offset) + rng.normal(0, 0.01, 4)))
    errors = offset_errors(network.offsets(np.stack(crops)), np.asarray(truths))
    assert errors["median_log_scale"] < 0.08
    assert errors["median_shift_px"] < 10.0
