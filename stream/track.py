"""Follow faces across frames: detect every N frames, optical flow in between, stable ids,
and One-Euro smoothing of the landmarks so the aligned crop does not jitter."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from avinpaint.geometry import apply_affine, similarity_transform
from stream.detect import FaceDetector
from stream.types import FaceDetection, FloatArray, Image, Track, VideoFrame


@dataclass(frozen=True)
class TrackerOptions:
    """``detect_every``: run the detector on every Nth frame (1 = every frame);
    ``iou_match``: box overlap for a detection to continue a track;
    ``max_missed``: detector passes a track may go unmatched before it ends;
    ``min_cutoff_hz``/``beta``: One-Euro filter (Casiez et al. 2012): low cutoff removes
    jitter when still, ``beta`` raises it with speed (in face widths per second) so that
    fast motion does not lag."""

    detect_every: int = 5
    iou_match: float = 0.3
    max_missed: int = 1
    min_cutoff_hz: float = 1.5
    beta: float = 4.0
    d_cutoff_hz: float = 1.0

    def __post_init__(self) -> None:
        if self.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {self.detect_every}")


@dataclass
class _OneEuro:
    """One-Euro filter state for an (N, 2) point set."""

    value: FloatArray
    speed: FloatArray
    time_s: float

    def step(self, raw: FloatArray, time_s: float, scale_px: float, opts: TrackerOptions) -> None:
        dt = time_s - self.time_s
        if dt <= 0:
            self.value = raw.copy()
            return
        raw_speed = (raw - self.value) / dt
        self.speed = _lerp(self.speed, raw_speed, _alpha(opts.d_cutoff_hz, dt))
        speed_rel = float(np.linalg.norm(self.speed, axis=1).max()) / max(scale_px, 1.0)
        cutoff = opts.min_cutoff_hz + opts.beta * speed_rel
        self.value = _lerp(self.value, raw, _alpha(cutoff, dt))
        self.time_s = time_s


def _alpha(cutoff_hz: float, dt_s: float) -> float:
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt_s)


def _lerp(a: FloatArray, b: FloatArray, t: float) -> FloatArray:
    return a + (b - a) * t


@dataclass
class _TrackState:
    track_id: int
    detection: FaceDetection
    filt: _OneEuro
    missed: int = 0
    detected_this_frame: bool = True


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def match_detections(
    tracks: list[tuple[float, float, float, float]],
    detections: list[tuple[float, float, float, float]],
    min_iou: float,
) -> list[tuple[int, int]]:
    """Greedy best-IoU-first matching; returns (track index, detection index) pairs."""
    pairs = [
        (box_iou(t, d), ti, di) for ti, t in enumerate(tracks) for di, d in enumerate(detections)
    ]
    pairs.sort(reverse=True)
    used_t: set[int] = set()
    used_d: set[int] = set()
    matches: list[tuple[int, int]] = []
    for iou, ti, di in pairs:
        if iou < min_iou or ti in used_t or di in used_d:
            continue
        used_t.add(ti)
        used_d.add(di)
        matches.append((ti, di))
    return matches


_LK_PARAMS = {
    "winSize": (21, 21),
    "maxLevel": 3,
    "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03),
}


@dataclass
class FaceTracker:
    """Stateful tracker for one video; call ``update`` once per frame, in order."""

    detector: FaceDetector
    options: TrackerOptions = TrackerOptions()
    _tracks: list[_TrackState] = field(default_factory=list)
    _next_id: int = 1
    _prev_gray: Image | None = None
    _fallback_fps: float = 25.0

    def update(self, frame: VideoFrame) -> list[Track]:
        """Advance to ``frame`` and return the faces tracked in it, ordered by track id."""
        gray = np.asarray(cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY), dtype=np.uint8)
        time_s = frame.time_s if frame.time_s is not None else frame.index / self._fallback_fps
        for state in self._tracks:
            state.detected_this_frame = False
        if self._prev_gray is not None and self._tracks:
            self._follow_flow(self._prev_gray, gray)
        if frame.index % self.options.detect_every == 0:
            self._apply_detections(self.detector.detect_candidates(frame.image), time_s)
        for state in self._tracks:
            state.filt.step(
                state.detection.landmarks5, time_s, state.detection.box[2], self.options
            )
        self._prev_gray = gray
        return [
            Track(
                track_id=s.track_id,
                detection=s.detection,
                smoothed_landmarks=s.filt.value.copy(),
                detected_this_frame=s.detected_this_frame,
            )
            for s in sorted(self._tracks, key=lambda s: s.track_id)
        ]

    def _follow_flow(self, prev: Image, cur: Image) -> None:
        kept: list[_TrackState] = []
        for state in self._tracks:
            moved = _flow_detection(prev, cur, state.detection)
            if moved is None:
                continue  # lost between detections; the next detection may restart it
            state.detection = moved
            kept.append(state)
        self._tracks = kept

    def _apply_detections(self, detections: list[FaceDetection], time_s: float) -> None:
        matches = match_detections(
            [s.detection.box for s in self._tracks],
            [d.box for d in detections],
            self.options.iou_match,
        )
        matched_t = {ti for ti, _ in matches}
        matched_d = {di for _, di in matches}
        for ti, di in matches:
            state = self._tracks[ti]
            state.detection = detections[di]
            state.missed = 0
            state.detected_this_frame = True
        survivors = []
        for ti, state in enumerate(self._tracks):
            if ti not in matched_t:
                state.missed += 1
            if state.missed <= self.options.max_missed:
                survivors.append(state)
        for di, det in enumerate(detections):
            # A weak detection only continues a face already followed (``keep_threshold``);
            # a new track needs the detector's full confidence.
            if di in matched_d or det.score < self.detector.options.score_threshold:
                continue
            survivors.append(
                _TrackState(
                    track_id=self._next_id,
                    detection=det,
                    filt=_OneEuro(
                        value=det.landmarks5.copy(),
                        speed=np.zeros_like(det.landmarks5),
                        time_s=time_s,
                    ),
                )
            )
            self._next_id += 1
        self._tracks = survivors


def _flow_detection(prev: Image, cur: Image, det: FaceDetection) -> FaceDetection | None:
    """Move a detection from ``prev`` to ``cur`` with pyramidal Lucas-Kanade flow.

    The landmarks and box corners are tracked forward and back; points whose round trip
    drifts are dropped, and one similarity fitted to the rest moves everything, which keeps
    the face's shape rigid while it moves."""
    x, y, w, h = det.box
    corners = np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]])
    inner = np.array([[x + w * fx, y + h * fy] for fx in (0.3, 0.7) for fy in (0.3, 0.7)])
    points = np.vstack([det.landmarks5, inner, corners]).astype(np.float32).reshape(-1, 1, 2)
    nxt, status, _ = cv2.calcOpticalFlowPyrLK(prev, cur, points, None, **_LK_PARAMS)  # type: ignore[call-overload]
    back, status_b, _ = cv2.calcOpticalFlowPyrLK(cur, prev, nxt, None, **_LK_PARAMS)  # type: ignore[call-overload]
    round_trip = np.linalg.norm((back - points).reshape(-1, 2), axis=1)
    good = (status.ravel() == 1) & (status_b.ravel() == 1) & (round_trip < max(1.0, 0.02 * w))
    if int(good.sum()) < 3:
        return None
    src = points.reshape(-1, 2)[good].astype(np.float64)
    dst = nxt.reshape(-1, 2)[good].astype(np.float64)
    matrix = similarity_transform(src, dst)
    landmarks = apply_affine(matrix, det.landmarks5)
    moved_corners = apply_affine(matrix, corners)
    x0, y0 = moved_corners.min(axis=0)
    x1, y1 = moved_corners.max(axis=0)
    box = (float(x0), float(y0), float(x1 - x0), float(y1 - y0))
    return FaceDetection(box=box, landmarks5=landmarks, score=det.score)
