"""``--mask-detect``: the shipped segmenter on generated clips, and the per-track logic."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from avinpaint.occlusion_net import shipped_path
from avinpaint.spec import CROP_SIZE
from stream.composite import FEATHER_PX
from stream.inpaint import OpenCVInpainter
from stream.mask_detect import (
    FaceCoverage,
    MaskDetectOptions,
    MaskDetector,
    face_region,
    fill_holes,
    guided_filter,
    load_predictor,
    soft_rim,
)
from stream.media import VideoReader
from stream.restore import FaceAnalyser, FrameFaces, restore_frame
from stream.testclip import ClipTruth
from stream.types import AlignedFace

CLIP_IOU_BOUND = 0.85
"""Mean per-frame IoU of the predicted mask (probability > 0.5, before dilation) with the
generated clip's true occluder, aligned to the crop with the same affine.

Measured with the shipped v1 weights on clips of seeds 0, 1, 2: mean 0.946-0.953, worst
single frame 0.87. The bound leaves room for float rounding and codec differences on other
platforms, not for a worse model."""

CLIP_RECALL_BOUND = 0.97
"""Share of the true occluder's pixels that the (undilated, default) mask restores: measured
0.9985 on seed 0, so the occluder's edge is restored without growing the mask."""

CLIP_PRECISION_BOUND = 0.93
"""Share of the restored mask that is the true occluder (the rest is visible face the fill
would replace): measured 0.953 on seed 0 with the default, undilated mask."""

SMOOTHING_GAIN_BOUND = 0.9
"""Frame-to-frame mask change with smoothing over that without. Measured 0.75-0.78: much of
the remaining change is real, the aligner's sub-pixel motion of the crop."""

Probabilities = npt.NDArray[np.float32]


def _aligned(affine_shift_px: float = 0.0) -> AlignedFace:
    affine = np.array([[1.0, 0.0, affine_shift_px], [0.0, 1.0, 0.0]])
    inverse = np.array([[1.0, 0.0, -affine_shift_px], [0.0, 1.0, 0.0]])
    crop = np.zeros((CROP_SIZE, CROP_SIZE, 3), np.uint8)
    return AlignedFace(crop=crop, affine=affine, inverse_affine=inverse)


def _box(y0: int, y1: int, x0: int = 60, x1: int = 196) -> Probabilities:
    p = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
    p[y0:y1, x0:x1] = 0.9
    return p


def _scripted(maps: list[Probabilities]) -> Callable[[npt.NDArray[np.uint8]], Probabilities]:
    """A predictor that returns the given maps, one per face, in order."""
    queue: Iterator[Probabilities] = iter(maps)

    def predict(crops: npt.NDArray[np.uint8]) -> Probabilities:
        return np.stack([next(queue) for _ in range(len(crops))])

    return predict


# --- per-track logic, with a scripted segmenter ------------------------------------------------


def test_uncovered_face_gets_an_all_zero_mask() -> None:
    small = _box(150, 156, 120, 130)  # 60 pixels: far below the face-level threshold
    detector = MaskDetector(MaskDetectOptions(), _scripted([small]))
    (occlusion,) = detector.predict([_aligned()])
    assert not occlusion.mask_256.any()
    assert 0.0 < occlusion.score < detector.options.covered_fraction


def test_covered_face_mask_is_exactly_the_covered_pixels_without_the_guide() -> None:
    assert MaskDetectOptions().dilate_px == 0
    probability = _box(130, 230)
    options = MaskDetectOptions(guide_radius_px=0)
    detector = MaskDetector(options, _scripted([probability]))
    (coverage,) = detector.analyse([_aligned()], [7])
    assert coverage.covered
    # No growth into the visible face: the region is the covered pixels, nothing more.
    np.testing.assert_array_equal(coverage.mask_256, (probability > 0.5).astype(np.float32))


def test_guided_region_moves_onto_the_occluders_edge_in_the_crop() -> None:
    """The network's map is soft and a few pixels off at the occluder's edge; the default
    region follows the edge the crop shows instead, and grows nowhere else."""
    face = _aligned()
    crop = np.full((CROP_SIZE, CROP_SIZE, 3), 150, np.uint8)  # visible skin
    crop[140:230, 60:196] = 235  # a white mask: its top edge is row 140
    face = AlignedFace(crop=crop, affine=face.affine, inverse_affine=face.inverse_affine)
    truth = np.zeros((CROP_SIZE, CROP_SIZE), bool)
    truth[140:230, 60:196] = True
    # A map whose 0.5 contour lies 2 px inside the top edge, blurred like a network's.
    soft = cv2.GaussianBlur(_box(142, 230) / np.float32(0.9), (0, 0), 3.0)
    plain = MaskDetector(MaskDetectOptions(guide_radius_px=0), _scripted([soft]))
    guided = MaskDetector(MaskDetectOptions(), _scripted([soft]))
    (plain_cov,) = plain.analyse([face], [1])
    (guided_cov,) = guided.analyse([face], [1])
    plain_mask, guided_mask = plain_cov.mask_256 > 0, guided_cov.mask_256 > 0
    centre = slice(70, 186)  # away from the box's corners, which the blur rounds
    assert not plain_mask[140:142, centre].any()  # the plain map misses the top rows
    assert guided_mask[140:230, centre].all()  # the guided region finds them
    assert not (guided_mask & ~truth).any()  # and grows into nothing visible


def test_soft_rim_restores_the_edge_in_proportion_to_its_probability() -> None:
    region = np.zeros((32, 32), bool)
    region[16:, :] = True  # rows 16.. are the region; its edge is row 15/16
    probability = np.zeros((32, 32), np.float32)
    probability[16:] = 0.9
    probability[15, :8] = 0.45  # at the threshold: all of it
    probability[15, 8:16] = 0.325  # halfway from the floor: half of it
    probability[15, 16:24] = 0.2  # at the floor: none
    probability[14] = 0.45  # second row out: within rim_px 2
    probability[13] = 0.45  # third row out: beyond the rim
    rim = soft_rim(region, probability, rim_px=2, floor=0.2, threshold=0.45)
    assert rim.dtype == np.float32 and rim.shape == (32, 32)
    assert not rim[16:].any()  # never inside the region: that is restored whole
    np.testing.assert_allclose(rim[15, :8], 1.0)
    np.testing.assert_allclose(rim[15, 8:16], 0.5, atol=1e-6)
    np.testing.assert_allclose(rim[15, 16:], 0.0)
    np.testing.assert_allclose(rim[14], 1.0)
    assert not rim[:14].any()


def test_covered_face_carries_its_soft_rim_into_the_occlusion() -> None:
    probability = _box(130, 230)
    probability[129, 60:196] = 0.35  # the occluder's soft top edge, under the threshold
    detector = MaskDetector(MaskDetectOptions(guide_radius_px=0), _scripted([probability]))
    (occlusion,) = detector.predict([_aligned()])
    region = probability > 0.5
    np.testing.assert_array_equal(occlusion.mask_256, region.astype(np.float32))
    assert occlusion.rim_256 is not None
    # (0.35 - floor 0.2) / (pixel_threshold 0.5 - 0.2): half of the edge row is restored.
    np.testing.assert_allclose(occlusion.rim_256[129, 62:194], 0.5, atol=1e-6)
    assert not occlusion.rim_256[region].any()
    assert not occlusion.rim_256[:126].any()  # nothing beyond rim_px
    # Off, and for a face not covered, there is no rim.
    hard = MaskDetector(
        MaskDetectOptions(guide_radius_px=0, rim_px=0), _scripted([probability])
    ).predict([_aligned()])
    assert hard[0].rim_256 is None and hard[0].mask_256.any()
    small = MaskDetector(MaskDetectOptions(), _scripted([_box(150, 156, 120, 130)]))
    assert small.predict([_aligned()])[0].rim_256 is None


def test_fill_holes_fills_only_small_enclosed_islands() -> None:
    region = np.zeros((64, 64), bool)
    region[20:60, 10:54] = True  # 1,760 pixels, touching no border
    region[30:34, 20:24] = False  # enclosed, 16 pixels: filled
    region[40:52, 30:46] = False  # enclosed, 192 pixels: over a tenth of the region
    region[56:64, 40:44] = False  # open to the crop's lower border: visible beyond
    filled = fill_holes(region, max_share=0.1)
    assert filled[30:34, 20:24].all()
    assert not filled[40:52, 30:46].any()
    assert not filled[56:64, 40:44].any()
    assert not filled[:20].any() and not filled[:, :10].any()  # nothing outside the region
    np.testing.assert_array_equal(fill_holes(region, max_share=0.2)[40:52, 30:46], True)
    # An island joined to the outside only diagonally is still enclosed (8-connected region).
    ring = np.zeros((16, 16), bool)
    ring[4:12, 4:12] = True
    ring[5:11, 5:11] = False
    ring[4, 4] = False  # a corner gap: the inside touches the outside only at a corner
    assert not fill_holes(ring, 2.0)[4, 4] and fill_holes(ring, 2.0)[5:11, 5:11].all()
    empty = np.zeros((8, 8), bool)
    np.testing.assert_array_equal(fill_holes(empty, 1.0), empty)


def test_covered_face_restores_the_islands_its_occluder_encloses() -> None:
    probability = _box(130, 230)
    probability[170:180, 100:120] = 0.1  # a light print the segmenter took for skin
    detector = MaskDetector(MaskDetectOptions(guide_radius_px=0), _scripted([probability]))
    (coverage,) = detector.analyse([_aligned()], [1])
    np.testing.assert_array_equal(coverage.mask_256, (_box(130, 230) > 0.5).astype(np.float32))
    assert coverage.rim_256 is not None and not coverage.rim_256[170:180, 100:120].any()
    off = MaskDetectOptions(guide_radius_px=0, hole_share=0.0)
    (kept,) = MaskDetector(off, _scripted([probability])).analyse([_aligned()], [1])
    assert not kept.mask_256[170:180, 100:120].any()


def test_guided_filter_keeps_a_flat_map_and_follows_a_step() -> None:
    guide = np.zeros((64, 64), np.float32)
    guide[:, 32:] = 1.0
    flat = np.full((64, 64), 0.3, np.float32)
    np.testing.assert_allclose(guided_filter(guide, flat, 4, 1e-3), flat, atol=1e-5)
    # A step one column off the guide's is moved onto the guide's.
    step = np.zeros((64, 64), np.float32)
    step[:, 33:] = 1.0
    out = guided_filter(guide, step, 4, 1e-4)
    assert (out[:, 32:] > 0.5).all() and (out[:, :32] < 0.5).all()


def test_options_reject_a_bad_region_threshold_or_guide() -> None:
    with pytest.raises(ValueError, match="region_threshold"):
        MaskDetectOptions(region_threshold=1.0)
    with pytest.raises(ValueError, match="guide_radius_px"):
        MaskDetectOptions(guide_radius_px=-1)


def test_occlusions_ask_the_inpainter_for_context_beyond_the_region() -> None:
    detector = MaskDetector(MaskDetectOptions(context_px=3), _scripted([_box(130, 230)]))
    (occlusion,) = detector.predict([_aligned()])
    assert occlusion.context_px == 3
    assert MaskDetectOptions().context_px == 2


def test_covered_face_mask_is_dilated_on_request() -> None:
    options = MaskDetectOptions(dilate_px=3, guide_radius_px=0)
    detector = MaskDetector(options, _scripted([_box(130, 230)]))
    (coverage,) = detector.analyse([_aligned()], [7])
    assert coverage.covered and coverage.track_id == 7
    assert coverage.mask_256[130:230, 60:196].all()
    assert coverage.mask_256[127, 128] == 1.0 and coverage.mask_256[126, 128] == 0.0
    assert coverage.mask_256[100, 128] == 0.0


def test_placed_faces_are_segmented_with_their_own_state() -> None:
    covered, lower, upper = _box(130, 230), _box(150, 250), _box(100, 200)
    maps = [covered, lower, covered, upper, covered, covered, upper]
    # The region unguided: rows of the smoothed map above 0.5 say what was averaged.
    options = MaskDetectOptions(refresh_every=1, guide_radius_px=0)
    detector = MaskDetector(options, _scripted(maps))
    assert detector.placement() is not None

    def rows(mask: npt.NDArray[np.float32]) -> tuple[int, int]:
        covered_rows = np.flatnonzero(mask.any(axis=1))
        return int(covered_rows[0]), int(covered_rows[-1]) + 1

    detector.predict([_aligned()], [7])
    # The second pass starts from its own crop's map, not the first pass's smoothed one ...
    (placed,) = detector.predict_placed([_aligned(5.0)], [7])
    assert rows(placed.mask_256) == (150, 250)
    # ... and smooths over its own calls (0.5 of each: only the overlap stays above 0.5).
    detector.predict([_aligned()], [7])
    (again,) = detector.predict_placed([_aligned(5.0)], [7])
    assert rows(again.mask_256) == (150, 200)
    # A track not placed on the previous call starts afresh.
    detector.predict([_aligned()], [7])
    detector.predict([_aligned()], [7])
    (fresh,) = detector.predict_placed([_aligned(5.0)], [7])
    assert rows(fresh.mask_256) == (100, 200)
    off = MaskDetector(MaskDetectOptions(place_covered=False), _scripted([]))
    assert off.placement() is None


def test_decision_has_hysteresis() -> None:
    region = face_region()
    # Every call segmented (refresh_every=1): these scripted crops never change, and the
    # per-track logic is what is tested here, not the cadence.
    options = MaskDetectOptions(
        smoothing=1.0, covered_fraction=0.1, release_ratio=0.5, refresh_every=1
    )

    def fraction_map(fraction: float) -> Probabilities:
        # Fill region pixels row by row up to the wanted fraction.
        p = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
        ys, xs = np.nonzero(region)
        count = round(fraction * len(ys))
        p[ys[:count], xs[:count]] = 1.0
        return p

    maps = [fraction_map(f) for f in (0.08, 0.12, 0.07, 0.04, 0.08)]
    detector = MaskDetector(options, _scripted(maps))
    decisions = [detector.analyse([_aligned()], [1])[0].covered for _ in maps]
    # Off below 0.1 at first; once on, it stays on down to 0.05; then needs 0.1 again.
    assert decisions == [False, True, True, False, False]


def test_smoothing_happens_in_the_face_frame() -> None:
    # The head moved 10 px in the frame and the crop followed it: a mask worn on the face
    # sits in the same crop place, and the running average must keep it exactly there.
    options = MaskDetectOptions(smoothing=0.5, refresh_every=1)
    detector = MaskDetector(options, _scripted([_box(130, 230), _box(130, 230)]))
    detector.analyse([_aligned(0.0)], [1])
    (second,) = detector.analyse([_aligned(10.0)], [1])
    np.testing.assert_allclose(second.probability_256, _box(130, 230), atol=1e-6)


def test_smoothing_damps_a_one_frame_glitch() -> None:
    options = MaskDetectOptions(smoothing=0.5, refresh_every=1)
    maps = [_box(130, 230), _box(130, 230), _box(110, 230), _box(130, 230)]
    smoothed = MaskDetector(options, _scripted(maps))
    raw = MaskDetector(MaskDetectOptions(smoothing=1.0, refresh_every=1), _scripted(list(maps)))

    def changes(detector: MaskDetector) -> float:
        masks = [detector.analyse([_aligned()], [1])[0].mask_256 for _ in maps]
        return float(sum(np.abs(b - a).sum() for a, b in itertools.pairwise(masks)))

    assert changes(smoothed) < changes(raw)


def test_tracks_are_matched_by_position_and_forgotten() -> None:
    options = MaskDetectOptions(smoothing=0.5, forget_after_frames=2, refresh_every=1)
    left, right = _aligned(0.0), _aligned(-300.0)  # crop centres 300 px apart in the frame
    maps = [_box(130, 230), np.zeros((CROP_SIZE, CROP_SIZE), np.float32)] * 2
    detector = MaskDetector(options, _scripted(maps))
    first = detector.predict([left, right])
    second = detector.predict([left, right])
    assert first[0].mask_256.any() and second[0].mask_256.any()
    assert not first[1].mask_256.any() and not second[1].mask_256.any()
    with pytest.raises(ValueError, match="repeat"):
        detector.analyse([left, right], [3, 3])


def _crop_of(level: int) -> AlignedFace:
    face = _aligned()
    crop = np.full((CROP_SIZE, CROP_SIZE, 3), level, np.uint8)
    return AlignedFace(crop=crop, affine=face.affine, inverse_affine=face.inverse_affine)


def test_cadence_segments_a_settled_track_only_every_refresh_every_calls() -> None:
    calls: list[int] = []

    def predict(crops: npt.NDArray[np.uint8]) -> Probabilities:
        calls.append(len(crops))
        return np.stack([_box(130, 230) for _ in crops])

    detector = MaskDetector(MaskDetectOptions(refresh_every=3), predict)
    masks = [detector.analyse([_crop_of(100)], [7])[0].mask_256 for _ in range(7)]
    # Segmented on calls 1, 4 and 7; the calls between reuse the track's mask as it was.
    assert calls == [1, 1, 1]
    assert (detector.segmented, detector.reused) == (3, 4)
    assert all(np.array_equal(m, masks[0]) for m in masks)
    assert masks[0].any()


def test_cadence_segments_again_at_once_when_the_crop_changes() -> None:
    calls: list[int] = []

    def predict(crops: npt.NDArray[np.uint8]) -> Probabilities:
        calls.append(len(crops))
        return np.stack([_box(130, 230) for _ in crops])

    detector = MaskDetector(MaskDetectOptions(refresh_every=10, change_levels=3.0), predict)
    detector.analyse([_crop_of(100)], [1])
    detector.analyse([_crop_of(102)], [1])  # 2 levels: settled, reused
    detector.analyse([_crop_of(110)], [1])  # 10 levels since the last segmentation
    detector.analyse([_crop_of(111), _crop_of(50)], [1, 2])  # settled again; a new track
    assert calls == [1, 1, 1]
    assert detector.segmented == 3 and detector.reused == 2


def test_cadence_keeps_looking_while_a_track_is_near_the_threshold() -> None:
    near = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
    region = face_region()
    ys, xs = np.nonzero(region)
    # 5% of the face region covered, against the 4% threshold: the decision may flip.
    count = int(0.05 * len(ys))
    near[ys[:count], xs[:count]] = 0.9
    calls: list[int] = []

    def predict(crops: npt.NDArray[np.uint8]) -> Probabilities:
        calls.append(len(crops))
        return np.stack([near for _ in crops])

    detector = MaskDetector(MaskDetectOptions(refresh_every=5), predict)
    for _ in range(4):
        detector.analyse([_crop_of(100)], [1])
    assert calls == [1, 1, 1, 1]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError):
        MaskDetectOptions(covered_fraction=0.0)
    with pytest.raises(ValueError):
        MaskDetectOptions(smoothing=0.0)
    with pytest.raises(ValueError):
        MaskDetectOptions(dilate_px=-1)
    with pytest.raises(ValueError):
        MaskDetectOptions(context_px=-1)
    with pytest.raises(ValueError):
        MaskDetectOptions(refresh_every=0)
    with pytest.raises(ValueError):
        MaskDetectOptions(change_levels=-1.0)
    with pytest.raises(ValueError, match="rim_px"):
        MaskDetectOptions(rim_px=3, context_px=2)  # the inpainter fills no farther
    with pytest.raises(ValueError, match="rim_floor"):
        MaskDetectOptions(rim_floor=0.45)
    with pytest.raises(ValueError, match="hole_share"):
        MaskDetectOptions(hole_share=1.5)


# --- the shipped segmenter -------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector_factory() -> Callable[..., MaskDetector]:
    predictor = load_predictor(MaskDetectOptions())

    def make(**fields: object) -> MaskDetector:
        return MaskDetector(MaskDetectOptions(**fields), predictor)  # type: ignore[arg-type]

    return make


def test_shipped_model_loads_offline_from_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the segmenter tried to use the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for suffix in ("onnx", "safetensors"):
        path = shipped_path(suffix)
        assert path.is_file() and path.stat().st_size < 4_000_000
    crop = np.full((1, CROP_SIZE, CROP_SIZE, 3), 128, np.uint8)
    crop[0, 140:220, 70:190] = (230, 200, 160)
    onnx = load_predictor(MaskDetectOptions(backend="onnxruntime"))(crop)
    torch_ = load_predictor(MaskDetectOptions(backend="torch"))(crop)
    assert onnx.shape == (1, CROP_SIZE, CROP_SIZE)
    np.testing.assert_allclose(onnx, torch_, atol=1e-3)


def _tracked_frames(path: Path) -> list[FrameFaces]:
    analyser = FaceAnalyser()
    with VideoReader(path, threads=1) as reader:
        return [analyser.analyse(frame) for frame in reader]


@pytest.fixture(scope="module")
def occluded_frames(clip: ClipTruth) -> list[FrameFaces]:
    frames = _tracked_frames(clip.path)
    assert all(len(f.faces) == 1 for f in frames)
    return frames


def _truth_in_crop(truth: npt.NDArray[np.bool_], face: AlignedFace) -> npt.NDArray[np.bool_]:
    warped = cv2.warpAffine(
        truth.astype(np.float32), face.affine, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR
    )
    return np.asarray(warped) >= 0.5


def _run(detector: MaskDetector, frames: list[FrameFaces]) -> list[FaceCoverage]:
    out = []
    for work in frames:
        (coverage,) = detector.analyse([f.aligned for f in work.faces], work.track_ids)
        out.append(coverage)
    return out


def test_predicted_mask_covers_the_clip_occluder(
    clip: ClipTruth,
    occluded_frames: list[FrameFaces],
    detector_factory: Callable[..., MaskDetector],
) -> None:
    detector = detector_factory()
    ious, recalls, precisions = [], [], []
    for work, coverage in zip(occluded_frames, _run(detector, occluded_frames), strict=True):
        truth = _truth_in_crop(clip.occluder_masks[work.frame.index], work.faces[0].aligned)
        predicted = coverage.probability_256 > 0.5
        ious.append((predicted & truth).sum() / (predicted | truth).sum())
        restored = coverage.mask_256.astype(bool)
        recalls.append((restored & truth).sum() / truth.sum())
        precisions.append((restored & truth).sum() / restored.sum())
        assert coverage.covered
    assert float(np.mean(ious)) >= CLIP_IOU_BOUND
    assert float(np.mean(recalls)) >= CLIP_RECALL_BOUND
    assert float(np.mean(precisions)) >= CLIP_PRECISION_BOUND


def test_smoothing_reduces_frame_to_frame_mask_change(
    occluded_frames: list[FrameFaces], detector_factory: Callable[..., MaskDetector]
) -> None:
    def change(detector: MaskDetector) -> float:
        coverages = _run(detector, occluded_frames)
        total = 0.0
        # The clip's occluder is worn on the face: in the aligned crop it hardly moves, so
        # what changes between frames is mostly the segmenter's jitter.
        for before, after in itertools.pairwise(coverages):
            total += float(np.abs(after.mask_256 - before.mask_256).sum())
        return total / (len(coverages) - 1)

    raw = change(detector_factory(smoothing=1.0))
    smoothed = change(detector_factory())
    assert smoothed < SMOOTHING_GAIN_BOUND * raw


def test_unoccluded_clip_changes_nothing_in_face_regions(
    make_clip: Callable[..., ClipTruth], detector_factory: Callable[..., MaskDetector]
) -> None:
    clean = make_clip("clean.mp4", occluder=False, audio=False, duration_s=1.0)
    frames = _tracked_frames(clean.path)
    detector = detector_factory()
    inpainter = OpenCVInpainter("telea")
    faces = 0
    for work in frames:
        restored = restore_frame(work, inpainter, detector, feather_px=FEATHER_PX)
        assert np.array_equal(restored.frame.image, work.frame.image)
        assert restored.faces == ()  # nothing covered: no face is restored at all
        for decision in restored.decisions:  # and the reason is reported
            assert not decision.covered and not decision.restored
            assert decision.coverage < detector.options.covered_fraction
        faces += len(work.faces)
    assert faces == len(frames)  # the face was tracked in every frame
