"""Per-track reuse of restored crops and the cross-fade; what ``restore_frame`` changes and
what it reports per face."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import cv2
import numpy as np
import pytest

from avinpaint.geometry import invert_affine
from avinpaint.spec import CROP_SIZE
from stream.align import PLACEMENT_FEATURES, CoveredPlacement, crop_at
from stream.composite import FEATHER_PX, changed_region, feather, inpaint_hole
from stream.inpaint import OpenCVInpainter
from stream.media import VideoReader
from stream.occlusion import FixedRegion
from stream.region import box_mask
from stream.restore import (
    FaceAnalyser,
    FaceDecision,
    FrameFaces,
    InpaintedFrame,
    PlannedFrame,
    ReuseCache,
    ReuseOptions,
    TrackedFace,
    composite_frame,
    inpaint_frame,
    plan_frame,
    restore_frame,
)
from stream.testclip import ClipTruth
from stream.types import AlignedFace, Image, InpaintResult, Mask, Occlusion, VideoFrame

_OCCLUDER_BOX = (32, 128, 192, 128)
"""The generated clip's occluder in the crop (as in ``tests/test_pipeline.py``)."""


def _crop(level: int) -> np.ndarray:
    rng = np.random.default_rng(level)
    base = rng.integers(0, 200, (256, 256, 3)).astype(np.int16)
    return np.clip(base + level, 0, 255).astype(np.uint8)


def test_reuses_while_the_visible_face_is_unchanged() -> None:
    cache = ReuseCache(ReuseOptions(change_levels=6.0, crossfade_frames=1))
    mask = box_mask()
    crop = _crop(0)
    assert not cache.reusable(1, crop, mask)  # unknown track
    face = np.full((256, 256, 3), 100, np.uint8)
    np.testing.assert_array_equal(cache.regenerated_crop(1, crop, mask, face), face)
    slightly = np.clip(crop.astype(np.int16) + 3, 0, 255).astype(np.uint8)
    assert cache.reusable(1, slightly, mask)
    np.testing.assert_array_equal(cache.next_reused(1), face)
    brighter = np.clip(crop.astype(np.int16) + 20, 0, 255).astype(np.uint8)
    assert not cache.reusable(1, brighter, mask)  # the visible face changed
    assert not cache.reusable(1, crop, box_mask((0, 0, 100, 100)))  # the region moved
    hidden_change = crop.copy()
    hidden_change[mask > 0] = 255  # changes only under the mask do not count
    assert cache.reusable(1, hidden_change, mask)
    assert (cache.reused, cache.regenerated) == (1, 1)


def test_max_age_forces_a_refresh_and_ended_tracks_are_forgotten() -> None:
    cache = ReuseCache(ReuseOptions(max_age_frames=3))
    mask, crop = box_mask(), _crop(0)
    cache.regenerated_crop(7, crop, mask, crop)
    for _ in range(3):
        assert cache.reusable(7, crop, mask)
        cache.next_reused(7)
    assert not cache.reusable(7, crop, mask)
    cache.keep_only(set())
    assert not cache.reusable(7, crop, mask)


def test_cross_fade_goes_from_the_old_crop_to_the_new_one() -> None:
    cache = ReuseCache(ReuseOptions(crossfade_frames=4))
    mask, crop = box_mask(), _crop(0)
    old = np.zeros((256, 256, 3), np.uint8)
    new = np.full((256, 256, 3), 200, np.uint8)
    cache.regenerated_crop(1, crop, mask, old)
    shown = [int(cache.regenerated_crop(1, crop, mask, new)[0, 0, 0])]
    shown += [int(cache.next_reused(1)[0, 0, 0]) for _ in range(4)]
    assert shown == [50, 100, 150, 200, 200]


def test_a_failed_fill_holds_the_last_good_crop_while_it_is_young() -> None:
    cache = ReuseCache(ReuseOptions(max_age_frames=3, crossfade_frames=1))
    mask, crop = box_mask(), _crop(0)
    good = np.full((256, 256, 3), 90, np.uint8)
    safe = np.full((256, 256, 3), 30, np.uint8)
    assert cache.show_held(1) is None  # a new track has nothing to hold
    cache.regenerated_crop(1, crop, mask, good)
    held = cache.show_held(1)
    assert held is not None
    np.testing.assert_array_equal(held, good)
    for _ in range(2):  # reused frames age the crop held
        cache.next_reused(1)
    assert cache.show_held(1) is None  # made max_age_frames ago: too old to hold
    # A safe fill shown for want of a good crop is never held in its turn.
    np.testing.assert_array_equal(cache.show_regenerated(1, safe, fallback=True), safe)
    assert cache.show_held(1) is None
    np.testing.assert_array_equal(cache.show_regenerated(1, good), good)
    assert cache.show_held(1) is not None


def test_bad_options() -> None:
    with pytest.raises(ValueError):
        ReuseOptions(change_levels=-1)
    with pytest.raises(ValueError):
        ReuseOptions(crossfade_frames=0)


class _TwoFaces:
    """An occlusion model for two faces: the first covered by ``mask`` (with 2 px of
    context for the inpainter), the second not."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask

    def predict(
        self, faces: list[AlignedFace], track_ids: Sequence[int] | None = None
    ) -> list[Occlusion]:
        empty = np.zeros_like(self.mask)
        return [Occlusion(self.mask, 0.31, context_px=2), Occlusion(empty, 0.01)]

    def reset(self) -> None:
        pass


class _Recording(OpenCVInpainter):
    """Telea that keeps the holes it was given."""

    def __init__(self) -> None:
        super().__init__("telea")
        self.holes: list[np.ndarray] = []

    def inpaint(self, crops: Sequence[Image], masks: Sequence[Mask]) -> list[InpaintResult]:
        self.holes += list(masks)
        return super().inpaint(crops, masks)


_BOX = (0.0, 0.0, 10.0, 10.0)


def _face(image: np.ndarray, affine: np.ndarray, track_id: int) -> TrackedFace:
    crop = np.asarray(
        cv2.warpAffine(image, affine, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR), np.uint8
    )
    aligned = AlignedFace(crop=crop, affine=affine, inverse_affine=invert_affine(affine))
    return TrackedFace(track_id=track_id, box=_BOX, aligned=aligned)


@pytest.mark.parametrize("feather_px", [FEATHER_PX, 5.0])
def test_restore_frame_changes_only_the_covered_region_and_reports_every_face(
    feather_px: float,
) -> None:
    image = np.random.default_rng(3).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    # Two faces, frame -> crop: one enlarged and turned, one shrunk, side by side.
    first = np.array([[1.4, 0.3, -40.0], [-0.3, 1.4, -20.0]])
    second = np.array([[1.8, 0.0, -440.0], [0.0, 1.8, -250.0]])
    mask = box_mask((40, 120, 170, 110))
    work = FrameFaces(
        frame=VideoFrame(index=9, pts=9, time_base=Fraction(1, 25), image=image),
        faces=(_face(image, first, 3), _face(image, second, 4)),
    )
    inpainter = _Recording()
    restored = restore_frame(work, inpainter, _TwoFaces(mask), feather_px)
    # The inpainter saw the region and its 2 px of context; only the region is composited.
    (hole_seen,) = inpainter.holes
    np.testing.assert_array_equal(hole_seen, inpaint_hole(mask, 2))
    out = restored.frame.image
    hole = changed_region(feather(mask, feather_px), invert_affine(first), image.shape[:2])
    # Bit for bit outside the first face's warped hole (the second face is not covered).
    np.testing.assert_array_equal(out[~hole], image[~hole])
    assert np.any(out[hole] != image[hole])
    assert restored.track_ids == (3,)
    assert restored.decisions == (
        FaceDecision(track_id=3, coverage=0.31, covered=True, restored=True, box=_BOX),
        FaceDecision(track_id=4, coverage=0.01, covered=False, restored=False, box=_BOX),
    )
    # The restored face says exactly which frame pixels its composite replaced.
    (face,) = restored.faces
    assert face.region is not None
    np.testing.assert_array_equal(face.region.full(image.shape[:2]), hole)


def test_the_three_stages_run_apart_equal_restore_frame(clip: ClipTruth) -> None:
    """The file pipeline runs ``plan_frame``, ``inpaint_frame`` and ``composite_frame`` in
    three threads, so planning (the reuse decisions) can run up to a few queues ahead of the
    composite (the cross-fades). Planning every frame before compositing any must give the
    same frames, bit for bit, and the same decisions as ``restore_frame`` one frame at a
    time."""
    with VideoReader(clip.path, threads=1) as reader:
        frames = list(reader)
    region = FixedRegion(box_mask(_OCCLUDER_BOX))
    telea = OpenCVInpainter("telea")
    # Tight enough that the generated face's motion regenerates some frames, not all.
    options = ReuseOptions(change_levels=2.0, crossfade_frames=3)

    analyser, cache = FaceAnalyser(), ReuseCache(options)
    one_by_one = [
        restore_frame(analyser.analyse(frame), telea, region, 0.0, cache) for frame in frames
    ]

    analyser, staged_cache = FaceAnalyser(), ReuseCache(options)
    plans = [plan_frame(analyser.analyse(frame), region, staged_cache) for frame in frames]
    inpainted = [inpaint_frame(plan, telea) for plan in plans]
    staged = [composite_frame(item, 0.0, staged_cache) for item in inpainted]

    assert 0 < cache.regenerated < len(frames)
    assert (staged_cache.reused, staged_cache.regenerated) == (cache.reused, cache.regenerated)
    for ours, theirs in zip(staged, one_by_one, strict=True):
        assert np.array_equal(ours.frame.image, theirs.frame.image)
        assert ours.track_ids == theirs.track_ids
        assert [f.result.backend for f in ours.faces] == [f.result.backend for f in theirs.faces]


class _Placing(_TwoFaces):
    """``_TwoFaces`` that places its covered face: the crop zoomed out by 10% about its
    centre, and a second pass that returns ``second``."""

    def __init__(self, mask: np.ndarray, second: Occlusion) -> None:
        super().__init__(mask)
        self.second = second
        self.placed: list[tuple[list[AlignedFace], list[int]]] = []

    def placement(self) -> CoveredPlacement:
        coefficients = np.zeros((PLACEMENT_FEATURES, 4))
        coefficients[0, 0] = np.log(1.1)  # the well-placed crop is 10% larger than this one
        return CoveredPlacement(coefficients)

    def predict_placed(self, faces: list[AlignedFace], track_ids: Sequence[int]) -> list[Occlusion]:
        self.placed.append((faces, list(track_ids)))
        return [self.second for _ in faces]


def test_plan_frame_crops_a_covered_face_again_where_its_mask_places_it() -> None:
    image = np.random.default_rng(6).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    first = np.array([[1.4, 0.3, -40.0], [-0.3, 1.4, -20.0]])
    second = np.array([[1.8, 0.0, -440.0], [0.0, 1.8, -250.0]])
    work = FrameFaces(
        frame=VideoFrame(index=0, pts=0, time_base=Fraction(1, 25), image=image),
        faces=(_face(image, first, 3), _face(image, second, 4)),
    )
    again = Occlusion(box_mask((50, 100, 150, 120)), 0.2, context_px=2)
    model = _Placing(box_mask((40, 120, 170, 110)), again)
    plan = plan_frame(work, model)
    # Only the covered face went through the second pass, in a crop zoomed out by 10%.
    ((faces, ids),) = model.placed
    assert ids == [3]
    placed = plan.work.faces[0].aligned
    assert faces[0] is placed
    np.testing.assert_allclose(
        np.linalg.det(placed.affine[:, :2]), np.linalg.det(first[:, :2]) / 1.21
    )
    expected = crop_at(image, model.placement().place(first, model.mask))
    np.testing.assert_array_equal(placed.crop, expected.crop)
    assert plan.occlusions[0] is again and plan.covered == (0,)
    assert plan.work.faces[1] is work.faces[1]


class _FailsSecond(OpenCVInpainter):
    """Telea whose second call stands for a fill the guard failed: a flat grey safe fill
    marked ``fallback``."""

    def __init__(self) -> None:
        super().__init__("telea")
        self.calls = 0

    def inpaint(self, crops: Sequence[Image], masks: Sequence[Mask]) -> list[InpaintResult]:
        self.calls += 1
        results = super().inpaint(crops, masks)
        if self.calls != 2:
            return results
        safe = np.full_like(crops[0], 128)
        return [InpaintResult(face_256=safe, backend="guarded", latency_ms=0.0, fallback=True)]


def test_a_failed_fill_shows_the_tracks_last_good_crop_not_the_safe_fill() -> None:
    base = np.random.default_rng(8).integers(40, 200, (360, 480, 3), dtype=np.uint8)
    affine = np.array([[1.4, 0.3, -40.0], [-0.3, 1.4, -20.0]])
    region = FixedRegion(box_mask((40, 120, 170, 110)))
    # Any change of the visible face regenerates, so each frame below is a fresh fill.
    cache = ReuseCache(ReuseOptions(change_levels=0.0, crossfade_frames=1))
    inpainter = _FailsSecond()
    shown = []
    for index, shift in enumerate((0, 12, 24)):
        image = np.clip(base.astype(np.int16) + shift, 0, 255).astype(np.uint8)
        work = FrameFaces(
            frame=VideoFrame(index=index, pts=index, time_base=Fraction(1, 25), image=image),
            faces=(_face(image, affine, 5),),
        )
        shown.append(restore_frame(work, inpainter, region, 0.0, cache))
    assert inpainter.calls == 3
    first, held, after = (frame.faces[0] for frame in shown)
    assert (held.result.backend, held.result.fallback) == ("guarded+held", True)
    assert held.result.held and not first.result.held
    assert after.result.backend == "opencv-telea" and not after.result.fallback
    assert not after.result.held
    # The held frame shows the first frame's restored pixels, not the grey safe fill.
    inside = first.region
    assert inside is not None and held.region is not None
    mask = inside.full(base.shape[:2])
    np.testing.assert_array_equal(shown[1].frame.image[mask], shown[0].frame.image[mask])


def test_composite_restores_the_soft_rim_in_part_and_records_it() -> None:
    """Where the crop is the frame (identity alignment), a region pixel takes the fill, a
    rim pixel the rim's share of it, and every other pixel stays as decoded."""
    frame = np.full((CROP_SIZE, CROP_SIZE, 3), 100, np.uint8)
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    face = TrackedFace(
        track_id=1, box=(0, 0, 256, 256), aligned=AlignedFace(frame, identity, identity)
    )
    region = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
    region[140:220, 60:196] = 1.0
    rim = np.zeros_like(region)
    rim[139, 60:196] = 0.5
    rim[138, 60:196] = 0.25
    work = FrameFaces(
        frame=VideoFrame(index=0, pts=0, time_base=Fraction(1, 25), image=frame), faces=(face,)
    )
    fill = np.full_like(frame, 200)
    result = InpaintResult(face_256=fill, backend="test", latency_ms=0.0)
    for occlusion, rows_changed in (
        (Occlusion(region, 0.3, context_px=2, rim_256=rim), (138, 220)),
        (Occlusion(region, 0.3, context_px=2), (140, 220)),
    ):
        plan = PlannedFrame(work=work, occlusions=(occlusion,), covered=(0,), fresh=(0,))
        restored = composite_frame(InpaintedFrame(plan, (result,), "test"), feather_px=0.0)
        image = restored.frame.image[..., 0].astype(int)
        assert (image[140:220, 60:196] == 200).all()
        if occlusion.rim_256 is not None:
            assert (image[139, 62:194] == 150).all() and (image[138, 62:194] == 125).all()
        changed = image != 100
        top, bottom = rows_changed
        assert not changed[:top].any() and not changed[bottom:].any()
        recorded = restored.faces[0].region
        assert recorded is not None
        assert np.array_equal(recorded.full(changed.shape) | changed, recorded.full(changed.shape))
