"""Per-frame restoration shared by every front end (file, live, ZeroMQ service):
track + align faces, then inpaint the covered region and composite it back."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from stream.align import align_face, crop_at
from stream.composite import FrameRegion, composite_region, composite_weight, inpaint_hole
from stream.detect import DetectorOptions, FaceDetector
from stream.inpaint import Inpainter
from stream.occlusion import OcclusionModel, PlacesCovered
from stream.past_crop import fill_past_crop, merge_regions, past_crop_region
from stream.track import FaceTracker, TrackerOptions
from stream.types import AlignedFace, Image, InpaintResult, Mask, Occlusion, VideoFrame


@dataclass(frozen=True, eq=False)
class TrackedFace:
    """One face of a frame, aligned to the crop template."""

    track_id: int
    box: tuple[float, float, float, float]
    aligned: AlignedFace


@dataclass(frozen=True, eq=False)
class FrameFaces:
    """A frame and the faces tracked in it, before restoration."""

    frame: VideoFrame
    faces: tuple[TrackedFace, ...]

    @property
    def track_ids(self) -> tuple[int, ...]:
        """Ids of the faces in this frame, in track-id order."""
        return tuple(f.track_id for f in self.faces)


@dataclass(frozen=True, eq=False)
class RestoredFace:
    """What was done to one face: its covered region, the inpainting result and the frame
    pixels the composite replaced (``region``; None when the hole fell outside the frame)."""

    track_id: int
    box: tuple[float, float, float, float]
    occlusion: Occlusion
    result: InpaintResult
    region: FrameRegion | None = None


@dataclass(frozen=True)
class FaceDecision:
    """What the region model decided for one face of one frame, for logs and reports (a
    user asking why a face was or was not restored needs these three numbers).

    ``coverage``: the fraction of the face region (``mask_detect.face_region``) that is
    covered (detected) or inside the fixed region; ``covered``: the region to restore is not
    empty; ``restored``: the face was composited (an uncovered face is left bit for bit)."""

    track_id: int
    coverage: float
    covered: bool
    restored: bool
    box: tuple[float, float, float, float]
    """The face's box (x, y, w, h) in frame pixels."""


@dataclass(frozen=True, eq=False)
class RestoredFrame:
    """The output frame and, per face, what was restored; ``decisions`` holds every face of
    the frame, covered or not."""

    frame: VideoFrame
    faces: tuple[RestoredFace, ...]
    decisions: tuple[FaceDecision, ...] = ()

    @property
    def track_ids(self) -> tuple[int, ...]:
        """Ids of the faces in this frame, in track-id order."""
        return tuple(f.track_id for f in self.faces)


class FaceAnalyser:
    """Tracks faces through one stream (stateful: feed frames in order)."""

    def __init__(
        self,
        detector: DetectorOptions | None = None,
        tracker: TrackerOptions | None = None,
    ) -> None:
        self._tracker = FaceTracker(
            FaceDetector(detector or DetectorOptions()), tracker or TrackerOptions()
        )

    def analyse(self, frame: VideoFrame) -> FrameFaces:
        """Track the faces of the next frame and align each to the crop template."""
        tracks = self._tracker.update(frame)
        faces = tuple(
            TrackedFace(
                track_id=t.track_id,
                box=t.detection.box,
                aligned=align_face(frame.image, t.smoothed_landmarks),
            )
            for t in tracks
        )
        return FrameFaces(frame=frame, faces=faces)


def place_covered_faces(
    image: Image,
    faces: Sequence[AlignedFace],
    occlusions: Sequence[Occlusion],
    track_ids: Sequence[int],
    model: PlacesCovered,
) -> tuple[list[AlignedFace], list[Occlusion]]:
    """Each covered face (a non-empty region) cropped again where the face really lies
    (``model.placement``) and segmented again there (``model.predict_placed``); the
    other faces as they were. Returns the crops and occlusions to use, same order."""
    placement = model.placement()
    out_faces, out_occlusions = list(faces), list(occlusions)
    chosen = [i for i, occ in enumerate(occlusions) if occ.mask_256.any()]
    if placement is None or not chosen:
        return out_faces, out_occlusions
    affines = placement.place_faces(
        image, [faces[i] for i in chosen], [occlusions[i].mask_256 for i in chosen]
    )
    placed = [crop_at(image, affine) for affine in affines]
    second = model.predict_placed(placed, [track_ids[i] for i in chosen])
    for i, aligned, occlusion in zip(chosen, placed, second, strict=True):
        out_faces[i], out_occlusions[i] = aligned, occlusion
    return out_faces, out_occlusions


def place_covered(
    work: FrameFaces, occlusions: Sequence[Occlusion], model: PlacesCovered
) -> tuple[FrameFaces, tuple[Occlusion, ...]]:
    """``place_covered_faces`` on a frame's tracked faces."""
    aligned, placed = place_covered_faces(
        work.frame.image, [f.aligned for f in work.faces], occlusions, work.track_ids, model
    )
    faces = tuple(
        f if a is f.aligned else dataclasses.replace(f, aligned=a)
        for f, a in zip(work.faces, aligned, strict=True)
    )
    return FrameFaces(frame=work.frame, faces=faces), tuple(placed)


@dataclass(frozen=True)
class ReuseOptions:
    """When to reuse a track's last restored crop instead of regenerating it.

    The covered region changes little between frames while regenerating it every frame
    flickers, so a track keeps its restored crop (in aligned space, where it does not move)
    until the visible face changes by more than ``change_levels`` (mean absolute difference
    in 8-bit levels over the uncovered pixels of the aligned crop), the covered region
    changes (IoU below ``min_mask_iou``), or ``max_age_frames`` pass; a regenerated crop is
    cross-faded in over ``crossfade_frames``.

    ``change_levels`` 8 (6 until 2026-12-05): on 8 unseen real clips (``bench.quality``, lite)
    it regenerates 25% fewer faces (140 -> 105 of 346) for 0.15 dB less PSNR in the mask and
    the same identity (SFace 0.7947 -> 0.7944); 9 cut 37% for 0.2 dB. The network and its
    blend are most of the restore path's cost (issue 17)."""

    change_levels: float = 8.0
    min_mask_iou: float = 0.9
    max_age_frames: int = 50
    crossfade_frames: int = 4

    def __post_init__(self) -> None:
        if self.change_levels < 0 or not 0 <= self.min_mask_iou <= 1:
            raise ValueError("change_levels must be >= 0 and min_mask_iou within 0..1")
        if self.max_age_frames < 1 or self.crossfade_frames < 1:
            raise ValueError("max_age_frames and crossfade_frames must be >= 1")


@dataclass
class _Reference:
    """What a track's current crop was made from (the decision half of the cache)."""

    crop: Image  # the aligned crop the current target was made from
    covered: npt.NDArray[np.bool_]  # its region (mask > 0.5)
    age: int


@dataclass
class _Shown:
    """What a track shows (the display half of the cache)."""

    target: Image  # the latest regenerated crop
    shown: Image  # what was composited last (differs from target during a cross-fade)
    fade_from: Image
    fade_step: int
    fallback: bool = False  # target is a safe fill that replaced a fill the guard failed
    age: int = 0  # frames shown since target was made


class ReuseCache:
    """Per-track memory of restored crops for one stream (see ``ReuseOptions``).

    Two halves, so that deciding and showing can run in different pipeline stages: the
    decision half (``reusable``, ``note_reused``, ``note_regenerated``,
    ``forget_references``) needs only the crops and masks, the display half
    (``show_reused``, ``show_regenerated``, ``forget_shown``) the inpainter's results. Each
    half is fed every frame in order by one thread; ``next_reused``, ``regenerated_crop``
    and ``keep_only`` do both at once."""

    def __init__(self, options: ReuseOptions | None = None) -> None:
        self.options = options or ReuseOptions()
        self._references: dict[int, _Reference] = {}
        self._shown: dict[int, _Shown] = {}
        self.reused = 0
        self.regenerated = 0

    def reusable(self, track_id: int, crop: Image, mask: Mask) -> bool:
        """True when ``track_id``'s cached crop still fits this frame's face and region."""
        entry = self._references.get(track_id)
        if entry is None or entry.age >= self.options.max_age_frames:
            return False
        covered_now, covered_then = mask > 0.5, entry.covered
        union = np.count_nonzero(covered_now | covered_then)
        if union and np.count_nonzero(covered_now & covered_then) / union < (
            self.options.min_mask_iou
        ):
            return False
        visible = ~(covered_now | covered_then)
        if not visible.any():
            return True
        # OpenCV's masked mean of the absolute difference: the same number as numpy's mean
        # over the visible pixels' channels, without copying them out (it ran every frame).
        means = cv2.mean(cv2.absdiff(crop, entry.crop), mask=visible.view(np.uint8))
        change = sum(means[: crop.shape[2]]) / crop.shape[2]
        return bool(change <= self.options.change_levels)

    def note_reused(self, track_id: int) -> None:
        """Decide to reuse ``track_id``'s crop this frame (it must be ``reusable``)."""
        self._references[track_id].age += 1
        self.reused += 1

    def note_regenerated(self, track_id: int, crop: Image, mask: Mask) -> None:
        """Decide to regenerate ``track_id``'s crop this frame from ``crop`` and ``mask``."""
        self.regenerated += 1
        self._references[track_id] = _Reference(crop=crop.copy(), covered=mask > 0.5, age=0)

    def show_reused(self, track_id: int) -> Image:
        """The crop to show for a reused frame (advancing any cross-fade)."""
        entry = self._shown[track_id]
        entry.age += 1
        entry.shown = self._fade(entry)
        return entry.shown

    def show_held(self, track_id: int) -> Image | None:
        """For a regenerated crop the fill guard failed: the track's last good crop, shown
        as if reused, when it has one made at most ``max_age_frames`` ago; else None (show
        the safe fill with ``show_regenerated``).

        Why: the safe fill is a Telea smear, fine for a small hole and far from the face on
        a large one, and a regenerated crop is shown until the next regeneration. On
        ``mead_W040`` (``bench.quality``, 2026-12-06) one failed fill of a surgical mask's
        hole made the safe fill stand for 20 of the clip's 50 frames: 14.36 dB in the mask
        against 17.5-17.8 in runs where that fill had passed. The decision half cannot
        regenerate sooner: it runs a pipeline stage ahead of the inpainter, so feeding the
        verdict back would make the output depend on thread timing."""
        entry = self._shown.get(track_id)
        if entry is None or entry.fallback or entry.age >= self.options.max_age_frames:
            return None
        return self.show_reused(track_id)

    def show_regenerated(self, track_id: int, face: Image, *, fallback: bool = False) -> Image:
        """Show a freshly inpainted crop: the first cross-fade step from the previous crop,
        or the new crop for a new track. ``fallback``: ``face`` is the guard's safe fill."""
        previous = self._shown.get(track_id)
        entry = _Shown(
            target=face,
            shown=face,
            fade_from=previous.shown if previous is not None else face,
            fade_step=0,
            fallback=fallback,
        )
        self._shown[track_id] = entry
        entry.shown = self._fade(entry)
        return entry.shown

    def next_reused(self, track_id: int) -> Image:
        """``note_reused`` and ``show_reused`` at once."""
        self.note_reused(track_id)
        return self.show_reused(track_id)

    def regenerated_crop(self, track_id: int, crop: Image, mask: Mask, face: Image) -> Image:
        """``note_regenerated`` and ``show_regenerated`` at once."""
        self.note_regenerated(track_id, crop, mask)
        return self.show_regenerated(track_id, face)

    def forget_references(self, track_ids: set[int]) -> None:
        """Decision half: forget tracks that ended."""
        for gone in set(self._references) - track_ids:
            del self._references[gone]

    def forget_shown(self, track_ids: set[int]) -> None:
        """Display half: forget tracks that ended."""
        for gone in set(self._shown) - track_ids:
            del self._shown[gone]

    def keep_only(self, track_ids: set[int]) -> None:
        """Forget tracks that ended."""
        self.forget_references(track_ids)
        self.forget_shown(track_ids)

    def _fade(self, entry: _Shown) -> Image:
        entry.fade_step = min(entry.fade_step + 1, self.options.crossfade_frames)
        if entry.fade_step >= self.options.crossfade_frames or entry.fade_from is entry.target:
            return entry.target
        alpha = entry.fade_step / self.options.crossfade_frames
        # OpenCV's weighted sum rounds to nearest as numpy's rint would, without float copies
        # of both crops (it ran on every face of the frames after each regeneration).
        return np.asarray(
            cv2.addWeighted(entry.fade_from, 1.0 - alpha, entry.target, alpha, 0.0), np.uint8
        )


@dataclass(frozen=True, eq=False)
class PlannedFrame:
    """A frame after the region model and the reuse decisions (``plan_frame``): each
    face's occlusion, the faces with something covered (``covered``, indices into
    ``work.faces``) and those of them to send to the inpainter (``fresh``)."""

    work: FrameFaces
    occlusions: tuple[Occlusion, ...]
    covered: tuple[int, ...]
    fresh: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class InpaintedFrame:
    """A planned frame and the inpainter's result for each of its ``fresh`` faces."""

    plan: PlannedFrame
    generated: tuple[InpaintResult, ...]
    inpainter_name: str


def plan_frame(
    work: FrameFaces, occlusion: OcclusionModel, reuse: ReuseCache | None = None
) -> PlannedFrame:
    """Which faces of ``work`` are covered, and which of those to regenerate (the others
    reuse their track's crop). Records the decisions in ``reuse``'s decision half.

    A region model that places covered faces (``PlacesCovered``, ``--mask-detect`` by
    default) gets each face it found covered cropped again where the occluder mask says the
    face lies and segmented again there, in the same frame (``place_covered``). Uncovered
    faces keep their alignment; the plan's ``work`` holds the crops used, which the inpainter and
    the composite then use too."""
    if reuse is not None:
        reuse.forget_references({f.track_id for f in work.faces})
    if not work.faces:
        return PlannedFrame(work=work, occlusions=(), covered=(), fresh=())
    occlusions = tuple(occlusion.predict([f.aligned for f in work.faces], work.track_ids))
    if isinstance(occlusion, PlacesCovered):
        work, occlusions = place_covered(work, occlusions, occlusion)
    # A face with nothing covered is not restored at all: it stays bit for bit as decoded.
    covered = tuple(i for i, occ in enumerate(occlusions) if occ.mask_256.any())
    fresh = []
    for i in covered:
        face, mask = work.faces[i], occlusions[i].mask_256
        if reuse is None:
            fresh.append(i)
        elif reuse.reusable(face.track_id, face.aligned.crop, mask):
            reuse.note_reused(face.track_id)
        else:
            reuse.note_regenerated(face.track_id, face.aligned.crop, mask)
            fresh.append(i)
    return PlannedFrame(work=work, occlusions=occlusions, covered=covered, fresh=tuple(fresh))


def inpaint_frame(plan: PlannedFrame, inpainter: Inpainter) -> InpaintedFrame:
    """Run the inpainter on the planned frame's fresh faces (one batch). The inpainter sees
    the region grown by the occlusion's ``context_px``, so its fill never reads an
    occluder's rim."""
    faces, occlusions = plan.work.faces, plan.occlusions
    generated = inpainter.inpaint(
        [faces[i].aligned.crop for i in plan.fresh],
        [inpaint_hole(occlusions[i].mask_256, occlusions[i].context_px) for i in plan.fresh],
    )
    return InpaintedFrame(plan=plan, generated=tuple(generated), inpainter_name=inpainter.name)


def composite_frame(
    inpainted: InpaintedFrame, feather_px: float, reuse: ReuseCache | None = None
) -> RestoredFrame:
    """Blend each covered face's crop (fresh, or its track's reused one from ``reuse``'s
    display half) back into the frame: only the covered region changes
    (``stream.composite``); ``feather_px`` is the blend ramp's width inside it."""
    plan = inpainted.plan
    work, occlusions = plan.work, plan.occlusions
    if reuse is not None:
        reuse.forget_shown({f.track_id for f in work.faces})
    if not work.faces:
        return RestoredFrame(frame=work.frame, faces=())
    by_index = dict(zip(plan.fresh, inpainted.generated, strict=True))
    image = work.frame.image
    restored = []
    for i in plan.covered:
        face, occ = work.faces[i], occlusions[i]
        result = by_index.get(i)
        if reuse is None:
            assert result is not None
            shown = result.face_256
        elif result is not None and result.fallback:
            held = reuse.show_held(face.track_id)
            if held is None:
                shown = reuse.show_regenerated(face.track_id, result.face_256, fallback=True)
            else:
                shown = held
                result = dataclasses.replace(
                    result, face_256=held, backend=f"{result.backend}+held", held=True
                )
        elif result is not None:
            shown = reuse.show_regenerated(face.track_id, result.face_256)
        else:
            shown = reuse.show_reused(face.track_id)
            result = InpaintResult(
                face_256=shown, backend=f"{inpainted.inpainter_name}+reuse", latency_ms=0
            )
        weight = composite_weight(occ, feather_px)
        inverse = face.aligned.inverse_affine
        image, region = composite_region(image, shown, weight, inverse)
        if occ.past_crop is not None:
            # Past the crop the occluder is followed from the region, not from its soft rim.
            hole = occ.mask_256 > 0.5
            past = past_crop_region(work.frame.image, hole, inverse, occ.past_crop)
            if past is not None:
                image = fill_past_crop(image, past, occ.past_crop.fill_radius_px)
                region = merge_regions(region, past)
        restored.append(
            RestoredFace(
                track_id=face.track_id, box=face.box, occlusion=occ, result=result, region=region
            )
        )
    frame = VideoFrame(
        index=work.frame.index, pts=work.frame.pts, time_base=work.frame.time_base, image=image
    )
    done, covered_set = {f.track_id for f in restored}, set(plan.covered)
    decisions = tuple(
        FaceDecision(
            track_id=face.track_id,
            coverage=float(occ.score),
            covered=i in covered_set,
            restored=face.track_id in done,
            box=face.box,
        )
        for i, (face, occ) in enumerate(zip(work.faces, occlusions, strict=True))
    )
    return RestoredFrame(frame=frame, faces=tuple(restored), decisions=decisions)


def restore_frame(
    work: FrameFaces,
    inpainter: Inpainter,
    occlusion: OcclusionModel,
    feather_px: float,
    reuse: ReuseCache | None = None,
) -> RestoredFrame:
    """Inpaint every face of ``work`` (one batch) and blend the covered regions back:
    ``plan_frame``, ``inpaint_frame`` and ``composite_frame`` in one call (the file
    pipeline runs them as three stages).

    Only the covered region of each face changes (``stream.composite``); ``feather_px`` is
    the blend ramp's width inside it. The inpainter sees the region grown by the
    occlusion's ``context_px``, so its fill never reads an occluder's rim. With ``reuse``,
    faces whose cached crop still fits are not sent to the inpainter."""
    plan = plan_frame(work, occlusion, reuse)
    return composite_frame(inpaint_frame(plan, inpainter), feather_px, reuse)
