"""Per-frame restoration shared by every front end (file, live, ZeroMQ service):
track + align faces, then inpaint the covered region and composite it back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream.align import align_face
from stream.composite import FrameRegion, composite_region, feather, inpaint_hole
from stream.detect import DetectorOptions, FaceDetector
from stream.inpaint import Inpainter
from stream.occlusion import OcclusionModel
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


@dataclass(frozen=True)
class ReuseOptions:
    """When to reuse a track's last restored crop instead of regenerating it.

    The covered region changes little between frames while regenerating it every frame
    flickers, so a track keeps its restored crop (in aligned space, where it does not move)
    until the visible face changes by more than ``change_levels`` (mean absolute difference
    in 8-bit levels over the uncovered pixels of the aligned crop), the covered region
    changes (IoU below ``min_mask_iou``), or ``max_age_frames`` pass; a regenerated crop is
    cross-faded in over ``crossfade_frames``."""

    change_levels: float = 6.0
    min_mask_iou: float = 0.9
    max_age_frames: int = 50
    crossfade_frames: int = 4

    def __post_init__(self) -> None:
        if self.change_levels < 0 or not 0 <= self.min_mask_iou <= 1:
            raise ValueError("change_levels must be >= 0 and min_mask_iou within 0..1")
        if self.max_age_frames < 1 or self.crossfade_frames < 1:
            raise ValueError("max_age_frames and crossfade_frames must be >= 1")


@dataclass
class _Reused:
    reference: Image  # the aligned crop the current target was made from
    mask: Mask
    target: Image  # the latest regenerated crop
    shown: Image  # what was composited last (differs from target during a cross-fade)
    fade_from: Image
    fade_step: int
    age: int


class ReuseCache:
    """Per-track memory of restored crops for one stream (see ``ReuseOptions``)."""

    def __init__(self, options: ReuseOptions | None = None) -> None:
        self.options = options or ReuseOptions()
        self._tracks: dict[int, _Reused] = {}
        self.reused = 0
        self.regenerated = 0

    def reusable(self, track_id: int, crop: Image, mask: Mask) -> bool:
        """True when ``track_id``'s cached crop still fits this frame's face and region."""
        entry = self._tracks.get(track_id)
        if entry is None or entry.age >= self.options.max_age_frames:
            return False
        covered_now, covered_then = mask > 0.5, entry.mask > 0.5
        union = np.logical_or(covered_now, covered_then).sum()
        if union and np.logical_and(covered_now, covered_then).sum() / union < (
            self.options.min_mask_iou
        ):
            return False
        visible = ~np.logical_or(covered_now, covered_then)
        if not visible.any():
            return True
        change = np.abs(crop.astype(np.int16) - entry.reference)[visible].mean()
        return bool(change <= self.options.change_levels)

    def next_reused(self, track_id: int) -> Image:
        """The crop to show for a reused frame (advancing any cross-fade)."""
        entry = self._tracks[track_id]
        entry.age += 1
        self.reused += 1
        entry.shown = self._fade(entry)
        return entry.shown

    def regenerated_crop(self, track_id: int, crop: Image, mask: Mask, face: Image) -> Image:
        """Record a freshly inpainted crop; returns what to show (the first cross-fade step
        from the previous crop, or the new crop for a new track)."""
        self.regenerated += 1
        previous = self._tracks.get(track_id)
        entry = _Reused(
            reference=crop.astype(np.int16),
            mask=mask,
            target=face,
            shown=face,
            fade_from=previous.shown if previous is not None else face,
            fade_step=0,
            age=0,
        )
        self._tracks[track_id] = entry
        entry.shown = self._fade(entry)
        return entry.shown

    def keep_only(self, track_ids: set[int]) -> None:
        """Forget tracks that ended."""
        for gone in set(self._tracks) - track_ids:
            del self._tracks[gone]

    def _fade(self, entry: _Reused) -> Image:
        entry.fade_step = min(entry.fade_step + 1, self.options.crossfade_frames)
        if entry.fade_step >= self.options.crossfade_frames or entry.fade_from is entry.target:
            return entry.target
        alpha = entry.fade_step / self.options.crossfade_frames
        blended = entry.fade_from.astype(np.float32) * (1 - alpha) + entry.target * alpha
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def restore_frame(
    work: FrameFaces,
    inpainter: Inpainter,
    occlusion: OcclusionModel,
    feather_px: float,
    reuse: ReuseCache | None = None,
) -> RestoredFrame:
    """Inpaint every face of ``work`` (one batch) and blend the covered regions back.

    Only the covered region of each face changes (``stream.composite``); ``feather_px`` is
    the blend ramp's width inside it. The inpainter sees the region grown by the
    occlusion's ``context_px``, so its fill never reads an occluder's rim. With ``reuse``,
    faces whose cached crop still fits are not sent to the inpainter."""
    if reuse is not None:
        reuse.keep_only({f.track_id for f in work.faces})
    if not work.faces:
        return RestoredFrame(frame=work.frame, faces=())
    aligned = [f.aligned for f in work.faces]
    occlusions = occlusion.predict(aligned, work.track_ids)
    # A face with nothing covered is not restored at all: it stays bit for bit as decoded.
    covered = [i for i, occ in enumerate(occlusions) if occ.mask_256.any()]
    fresh = [
        i
        for i in covered
        if reuse is None
        or not reuse.reusable(
            work.faces[i].track_id, work.faces[i].aligned.crop, occlusions[i].mask_256
        )
    ]
    generated = inpainter.inpaint(
        [aligned[i].crop for i in fresh],
        [inpaint_hole(occlusions[i].mask_256, occlusions[i].context_px) for i in fresh],
    )
    by_index = dict(zip(fresh, generated, strict=True))
    image = work.frame.image
    restored = []
    for i in covered:
        face, occ = work.faces[i], occlusions[i]
        result = by_index.get(i)
        if reuse is None:
            assert result is not None
            shown = result.face_256
        elif result is not None:
            shown = reuse.regenerated_crop(
                face.track_id, face.aligned.crop, occ.mask_256, result.face_256
            )
        else:
            shown = reuse.next_reused(face.track_id)
            result = InpaintResult(face_256=shown, backend=f"{inpainter.name}+reuse", latency_ms=0)
        weight = feather(occ.mask_256, feather_px)
        image, region = composite_region(image, shown, weight, face.aligned.inverse_affine)
        restored.append(
            RestoredFace(
                track_id=face.track_id, box=face.box, occlusion=occ, result=result, region=region
            )
        )
    frame = VideoFrame(
        index=work.frame.index, pts=work.frame.pts, time_base=work.frame.time_base, image=image
    )
    done, covered_set = {f.track_id for f in restored}, set(covered)
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
