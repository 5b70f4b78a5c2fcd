"""The covered-face placement network: sample geometry, network, export, training loop, and
the shipped network on real faces."""

from __future__ import annotations

import dataclasses
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
    RefinedPlacement,
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
    image = _smooth(9, 480)  # the frame: this placement does not read it
    (placed,) = runtime.place_faces(image, [face], [np.zeros((CROP_SIZE, CROP_SIZE), np.float32)])
    np.testing.assert_allclose(placed, undo_offset(affine, expected[0]), atol=1e-4)
    with pytest.raises(AvstreamError, match="placement network"):
        PlacementNetwork(tmp_path / "missing.onnx")
    # The detector runs the network it is given, not the shipped one.
    options = MaskDetectOptions(placement_from="crop", refine_passes=0, placement_weights=path)
    chosen = MaskDetector(options).placement()
    assert isinstance(chosen, PlacementNetwork)
    np.testing.assert_allclose(chosen.offsets(crops), expected, rtol=1e-4, atol=1e-5)
    shipped = MaskDetector(dataclasses.replace(options, placement_weights=None)).placement()
    assert isinstance(shipped, PlacementNetwork)
    assert not np.allclose(shipped.offsets(crops), expected, atol=1e-3)
    missing = dataclasses.replace(options, placement_weights=tmp_path / "missing.onnx")
    with pytest.raises(AvstreamError, match="placement network"):
        MaskDetector(missing).placement()


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
    assert isinstance(both, RefinedPlacement)
    assert (both.passes, both.step) == (1, 0.5)
    assert isinstance(both.first, AveragedPlacement)
    assert both.first.ridge == shipped_covered_placement()
    assert both.network is both.first.network
    unrefined = MaskDetector(MaskDetectOptions(refine_passes=0)).placement()
    assert isinstance(unrefined, AveragedPlacement)
    by_crop = MaskDetector(MaskDetectOptions(placement_from="crop", refine_passes=2)).placement()
    assert isinstance(by_crop, RefinedPlacement) and by_crop.passes == 2
    assert isinstance(by_crop.first, PlacementNetwork)
    by_mask = MaskDetector(MaskDetectOptions(placement_from="mask")).placement()
    assert isinstance(by_mask, CoveredPlacement)
    with pytest.raises(ValueError, match="placement_from"):
        MaskDetectOptions(placement_from="eyes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="refine_passes"):
        MaskDetectOptions(refine_passes=-1)
    with pytest.raises(ValueError, match="refine_step"):
        MaskDetectOptions(refine_step=0.0)


def test_the_refined_placement_moves_each_crop_by_the_network_s_second_look(
    tmp_path: Path,
) -> None:
    torch.manual_seed(2)
    path = tmp_path / "placement.onnx"
    export_onnx(PlacementNet().eval(), path)
    network = PlacementNetwork(path)
    coefficients = np.zeros((PLACEMENT_FEATURES, 4))
    coefficients[0] = [math.log(1.1), 0.05, -6.0, 12.0]
    ridge = CoveredPlacement(coefficients)
    image = _smooth(11, 480)
    affines = [
        np.array([[1.4, 0.3, -40.0], [-0.3, 1.4, -20.0]]),
        np.array([[0.9, -0.1, 20.0], [0.1, 0.9, -30.0]]),
    ]
    faces = [crop_at(image, a) for a in affines]
    masks = [np.zeros((CROP_SIZE, CROP_SIZE), np.float32)] * 2
    first = ridge.place_faces(image, faces, masks)
    # Each pass reads the crop the previous one made, in the frame, and moves it part way.
    once = RefinedPlacement(ridge, network, passes=1, step=0.5).place_faces(image, faces, masks)
    looks = network.offsets(np.stack([crop_at(image, a).crop for a in first]))
    for got, start, look in zip(once, first, looks, strict=True):
        np.testing.assert_allclose(got, undo_offset(start, 0.5 * look), atol=1e-9)
    twice = RefinedPlacement(ridge, network, passes=2, step=1.0).place_faces(image, faces, masks)
    full = [undo_offset(a, o) for a, o in zip(first, looks, strict=True)]
    again = network.offsets(np.stack([crop_at(image, a).crop for a in full]))
    for got, start, look in zip(twice, full, again, strict=True):
        np.testing.assert_allclose(got, undo_offset(start, look), atol=1e-9)
    unmoved = RefinedPlacement(ridge, network, passes=0).place_faces(image, faces, masks)
    np.testing.assert_allclose(np.stack(unmoved), np.stack(first))
    assert RefinedPlacement(ridge, network).place_faces(image, [], []) == []
    with pytest.raises(ValueError, match="passes"):
        RefinedPlacement(ridge, network, passes=-1)
    with pytest.raises(ValueError, match="step"):
        RefinedPlacement(ridge, network, step=1.5)


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
    image = _smooth(9, 480)
    (placed,) = AveragedPlacement(network, ridge).place_faces(image, [face], [mask])
    mean = (network.offsets(face.crop[None])[0] + coefficients[0]) / 2
    np.testing.assert_allclose(placed, undo_offset(affine, mean), atol=1e-9)
    assert AveragedPlacement(network, ridge).place_faces(image, [], []) == []


def _held_out_lfw(shared_data: Path) -> list[Path]:
    """Every 40th LFW photo of the test split, 12 of them: people the network never saw."""
    from training.segmenter import _group, split_of

    return [
        p
        for p in sorted((shared_data / "faces" / "lfw").rglob("*.jpg"))
        if split_of(_group("faces/lfw", p)) == "test"
    ][::40][:12]


@pytest.mark.realdata
def test_the_shipped_network_places_covered_photo_faces(shared_data: Path) -> None:
    """Held-out LFW faces (test split) with a surgical mask painted on, cropped zoomed in
    and moved down (as YuNet does under a mask) or zoomed out: the network's offset is close
    to the true one (measured: median log-scale error 0.031, shift 6.1 px; the crops
    themselves are off by 0.22 or 0.29 in log scale and 0 or 20 px)."""
    from stream.detect import DetectorOptions, FaceDetector
    from training.segmenter import find_face

    photos = _held_out_lfw(shared_data)
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


@pytest.mark.realdata
def test_a_second_look_places_covered_photo_faces_closer(shared_data: Path) -> None:
    """The same held-out LFW faces, masked, cropped zoomed in and moved down as YuNet does
    under a mask, or zoomed out, in a frame (their wide view): the network's second look at
    the crop that the default placement's first look made (``RefinedPlacement`` of the
    ``AveragedPlacement``) lands nearer the well-placed crop than the first look alone
    (measured: median centre error 8.5 -> 8.0 px)."""
    from stream.detect import DetectorOptions, FaceDetector
    from training.segmenter import find_face

    photos = _held_out_lfw(shared_data)
    finder = FaceDetector(DetectorOptions(min_face_px=32.0))
    network = PlacementNetwork()
    first = AveragedPlacement(network, shipped_covered_placement())
    refined = RefinedPlacement(first, network)
    well = np.array([[1.0, 0.0, -float(BORDER_PX)], [0.0, 1.0, -float(BORDER_PX)]])
    truth = cv2.invertAffineTransform(well) @ np.array([128.0, 128.0, 1.0])
    errors: dict[str, list[float]] = {"first": [], "refined": []}
    for path in photos:
        image = np.asarray(cv2.imread(str(path), cv2.IMREAD_COLOR), np.uint8)
        face = find_face(finder, image)
        assert face is not None
        view, _ = wide_view(image, face.landmarks5)
        painted = np.zeros(view.shape[:2], np.uint8)
        cv2.ellipse(painted, (128 + BORDER_PX, 190 + BORDER_PX), (95, 70), 0, 0, 360, 255, -1)
        view[painted > 0] = (190, 200, 205)
        for offset in ([math.log(1.25), 0.0, 0.0, 20.0], [math.log(0.8), 0.0, 0.0, -10.0]):
            affine = (offset_matrix(offset) @ np.vstack([well, [0, 0, 1]]))[:2]
            aligned = crop_at(view, affine)
            mask = crop_at(painted, affine).crop.astype(np.float32) / 255.0
            for name, placement in (("first", first), ("refined", refined)):
                (placed,) = placement.place_faces(view, [aligned], [mask])
                centre = cv2.invertAffineTransform(placed) @ np.array([128.0, 128.0, 1.0])
                errors[name].append(float(np.hypot(*(centre - truth))))
    assert np.median(errors["refined"]) < np.median(errors["first"])
