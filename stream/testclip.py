"""Synthetic but real talking-head test clips, with the ground truth that made them.

A clip is the public-domain NASA astronaut photo that ships with scikit-image, its head warped
onto a textured background by a similarity transform that drifts smoothly over time, with an
optional surgical-mask occluder over the lower face and an optional espeak-ng speech track.
Because we place the face ourselves, the true landmarks, face box and occluder pixels of every
frame are known exactly; tests and ``make demo`` compare the pipeline against them.

``make_multi_face_clip`` puts several such people in one clip (``MultiClipSpec``): each
with their own look (mirrored, another skin tone, another size), walking across each other's
paths, some wearing the occluder; its truth has a person axis.

Run ``python -m stream.testclip OUT.mp4 [options]`` to write one (``--people 2`` for two).
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import av
import cv2
import numpy as np
import numpy.typing as npt

from avinpaint.spec import AUDIO_CHANNELS, AUDIO_SAMPLE_RATE_HZ
from stream.detect import DetectorOptions, FaceDetector
from stream.media import AtomicOutput
from stream.types import FloatArray, Image

_FACE_HEIGHT_FRACTION = 0.46
"""Face box height over the frame's 4:3-equivalent height: 220 px at 640x480."""

_REFERENCE_HEIGHT_PX = 480.0
"""Motion amplitudes below are in pixels of a 480-high frame and scale with the frame."""

_MAX_SHIFT_PX = 20.0
_MAX_SCALE_CHANGE = 0.05
_MAX_ROTATION_DEG = 5.0

_VFR_STEPS_MS = (30, 40, 50, 60)
_VFR_TIME_BASE = Fraction(1, 1000)

_MOUTH_STRETCH = 0.18
"""Largest vertical stretch of the mouth region at full speech loudness."""

_CONSENSUS_SCALES = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
"""Photo scales whose YuNet landmarks are pooled into the true landmarks."""

_ESPEAK_TIMEOUT_S = 30.0

_MASK_BGR = (226, 200, 150)
_MASK_FOLD_BGR = (196, 168, 120)

_T = TypeVar("_T")


@dataclass(frozen=True)
class ClipSpec:
    """What to generate. Every field has a default, so ``ClipSpec()`` is a 4 s 640x480 clip."""

    width: int = 640
    height: int = 480
    fps: int = 25
    duration_s: float = 4.0
    seed: int = 0
    face: bool = True
    """False: background only, no face anywhere (and then no occluder either)."""
    occluder: bool = True
    """Draw a surgical-mask occluder over the lower face."""
    audio: bool = True
    """Add an espeak-ng speech track, encoded as AAC."""
    text: str = "The quick brown fox jumps over the lazy dog. Covered faces can be restored."
    vfr: bool = False
    """Variable frame rate: jittered, irregular pts in a 1/1000 time base."""
    crf: int = 18


@dataclass(frozen=True, eq=False)
class ClipTruth:
    """What was written: the file, its video timestamps, and the true geometry per frame."""

    path: Path
    frame_count: int
    pts: tuple[int, ...]
    """Video pts as written, in ``time_base`` units."""
    time_base: Fraction
    landmarks5: FloatArray
    """(frame_count, 5, 2): true YuNet-order landmarks in frame pixels (nan when face=False)."""
    face_boxes: FloatArray
    """(frame_count, 4): x, y, w, h of the face box in frame pixels (nan when face=False).
    The box is the photo's YuNet box moved and scaled with the face; it is not widened
    by the rotation, so it reads like a detector's box."""
    occluder_masks: npt.NDArray[np.bool_]
    """(frame_count, H, W): exactly the pixels the occluder was drawn on."""
    audio_sample_rate_hz: int | None
    """None when audio=False."""


@dataclass(frozen=True, eq=False)
class _FaceSource:
    """The head cut out of the astronaut photo: BGR patch, soft alpha, and its geometry."""

    patch: Image
    alpha: npt.NDArray[np.float32]
    landmarks5: FloatArray
    face_box: FloatArray
    """x, y, w, h in patch pixels."""


@dataclass(frozen=True)
class _Motion:
    """Per-clip random phases and frequencies of the smooth head motion."""

    freqs_hz: tuple[float, ...]
    phases: tuple[float, ...]


@dataclass(frozen=True)
class _Timeline:
    pts: tuple[int, ...]
    time_base: Fraction
    end_s: float
    """Where the last frame ends: the video's duration, which the audio matches."""

    @property
    def times_s(self) -> FloatArray:
        return np.array([float(p * self.time_base) for p in self.pts], dtype=np.float64)


def make_talking_head_clip(path: Path, spec: ClipSpec = ClipSpec()) -> ClipTruth:
    """Write a talking-head clip to ``path`` (container from its extension) and return its truth.

    The file is written next to ``path`` under a temporary name and moved into place only when
    complete. The truth arrays depend only on ``spec``; the encoded bytes may differ between
    runs. Raises ValueError for an impossible spec and RuntimeError when espeak-ng is missing
    or fails.
    """
    _validate(spec)
    path = Path(path)
    previous_threads = cv2.getNumThreads()
    # The generator is meant to run beside other work; keep OpenCV on one thread while we
    # are inside it and give the caller its setting back.
    cv2.setNumThreads(1)
    try:
        return _make_clip(path, spec)
    finally:
        cv2.setNumThreads(previous_threads)


def _validate(spec: ClipSpec) -> None:
    if spec.width < 64 or spec.height < 64:
        raise ValueError(f"clip must be at least 64x64, got {spec.width}x{spec.height}")
    if spec.fps <= 0:
        raise ValueError(f"fps must be positive, got {spec.fps}")
    if not spec.duration_s > 0:
        raise ValueError(f"duration_s must be positive, got {spec.duration_s}")
    if not 0 <= spec.crf <= 51:
        raise ValueError(f"crf must be in 0..51, got {spec.crf}")


def _make_clip(path: Path, spec: ClipSpec) -> ClipTruth:
    timeline = _timeline(spec)
    times = timeline.times_s
    n = len(timeline.pts)
    speech = _speech_track(spec.text, timeline.end_s) if spec.audio else None
    openness = (
        _mouth_openness(speech, times, 2.0 / spec.fps)
        if speech is not None
        else np.zeros(n, dtype=np.float64)
    )
    source = _face_source() if spec.face else None

    # Truth first (pure geometry), then frames rendered from it one at a time, so a long
    # clip never holds more than one decoded image in memory.
    landmarks = np.full((n, 5, 2), np.nan, dtype=np.float64)
    boxes = np.full((n, 4), np.nan, dtype=np.float64)
    masks = np.zeros((n, spec.height, spec.width), dtype=np.bool_)
    transforms: list[FloatArray] = []
    if source is not None:
        motion = _motion(spec.seed)
        for i, t in enumerate(times):
            M = _face_transform(source, motion, float(t), spec.width, spec.height)
            transforms.append(M)
            landmarks[i] = _apply(M, source.landmarks5)
            boxes[i] = _warp_box(M, source.face_box)
            if spec.occluder:
                masks[i] = _occluder_mask(landmarks[i], spec.width, spec.height)

    background = _background(spec.width, spec.height, spec.seed)
    frames = _render_frames(background, source, transforms, openness, landmarks, masks)
    _write_clip(path, spec, timeline, frames, speech)
    return ClipTruth(
        path=path,
        frame_count=n,
        pts=timeline.pts,
        time_base=timeline.time_base,
        landmarks5=landmarks,
        face_boxes=boxes,
        occluder_masks=masks,
        audio_sample_rate_hz=AUDIO_SAMPLE_RATE_HZ if speech is not None else None,
    )


# --- time ------------------------------------------------------------------------------


def _timeline(spec: ClipSpec) -> _Timeline:
    if not spec.vfr:
        count = max(1, round(spec.duration_s * spec.fps))
        return _Timeline(tuple(range(count)), Fraction(1, spec.fps), count / spec.fps)
    # Only frames that end within the duration, so the video never runs past the audio.
    rng = np.random.default_rng([spec.seed, 1])
    limit_ms = max(round(spec.duration_s * 1000), max(_VFR_STEPS_MS))
    pts: list[int] = []
    now = 0
    while True:
        step = int(rng.choice(_VFR_STEPS_MS))
        if now + step > limit_ms:
            break
        pts.append(now)
        now += step
    return _Timeline(tuple(pts), _VFR_TIME_BASE, now / 1000.0)


# --- background ------------------------------------------------------------------------


def _background(width: int, height: int, seed: int) -> Image:
    """A static, seed-determined backdrop with gradients, soft blobs and edges.

    Structure matters: a flat backdrop compresses to nothing and would hide encoder effects.
    Nothing face-like is drawn, so a face-free clip stays face-free for a detector.
    """
    rng = np.random.default_rng([seed, 0])
    corners = rng.uniform(40.0, 200.0, size=(2, 2, 3)).astype(np.float32)
    small = cv2.resize(corners, (width, height), interpolation=cv2.INTER_LINEAR)
    image = np.asarray(small, dtype=np.float32).reshape(height, width, 3)

    # Low-frequency mottling like a studio backdrop.
    noise = rng.normal(0.0, 1.0, size=(max(2, height // 32), max(2, width // 32), 3))
    mottle = cv2.resize(noise.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    image += 12.0 * np.asarray(mottle, dtype=np.float32).reshape(height, width, 3)

    canvas = np.clip(image, 0.0, 255.0).astype(np.uint8)
    side = min(width, height)
    for _ in range(10):
        color = tuple(int(c) for c in rng.integers(30, 226, size=3))
        x = int(rng.integers(0, width))
        y = int(rng.integers(0, height))
        if rng.random() < 0.5:
            w = int(rng.integers(side // 12, side // 4))
            h = int(rng.integers(side // 12, side // 4))
            cv2.rectangle(canvas, (x, y), (x + w, y + h), color, -1, cv2.LINE_AA)
        else:
            axes = (
                int(rng.integers(side // 20, side // 6)),
                int(rng.integers(side // 20, side // 6)),
            )
            angle = float(rng.uniform(0.0, 180.0))
            cv2.ellipse(canvas, (x, y), axes, angle, 0.0, 360.0, color, -1, cv2.LINE_AA)
    # A slight blur makes it look photographed rather than drawn.
    return np.asarray(cv2.GaussianBlur(canvas, (0, 0), 1.2), dtype=np.uint8)


# --- the face --------------------------------------------------------------------------


def _detect_best(detector: FaceDetector, image: Image) -> FloatArray:
    """The best YuNet face in ``image`` as [x, y, w, h, 10 landmark coords]."""
    faces = detector.detect(image)
    if not faces:
        raise RuntimeError("YuNet found no face in the astronaut photo")
    best = faces[0]
    return np.concatenate([np.asarray(best.box, dtype=np.float64), best.landmarks5.ravel()])


def _consensus_face(photo: Image) -> FloatArray:
    """YuNet's box and landmarks for ``photo``: [x, y, w, h, 10 landmark coords].

    One detection's landmarks wander by 2-4 px between image scales (the int8 model is
    noisy), and a clip shows the face about twice as large, so a single detection would make
    the "truth" itself several pixels off. The per-coordinate median over a range of scales
    is a steadier estimate of where the features really are.
    """
    height, width = photo.shape[:2]
    # Full resolution at every scale: the point is to see the face at many sizes.
    detector = FaceDetector(DetectorOptions(max_side_px=100_000, min_face_px=0.0))
    rough = _detect_best(detector, photo)
    bx, by, bw, bh = (float(v) for v in rough[:4])
    # Detect on a crop with a face-sized margin: enough context, and cheap at 3x.
    x0, y0 = max(0, int(bx - bw)), max(0, int(by - bh))
    x1, y1 = min(width, int(bx + 2 * bw)), min(height, int(by + 2 * bh))
    crop = photo[y0:y1, x0:x1]
    offset = np.array([x0, y0], dtype=np.float64)
    rows = []
    for scale in _CONSENSUS_SCALES:
        interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        resized = np.asarray(
            cv2.resize(crop, None, fx=scale, fy=scale, interpolation=interpolation),
            dtype=np.uint8,
        )
        row = _detect_best(detector, resized) / scale
        row[:2] += offset
        row[4:14] += np.tile(offset, 5)
        rows.append(row)
    return np.asarray(np.median(np.stack(rows), axis=0), dtype=np.float64)


def _face_source() -> _FaceSource:
    """Cut the head out of the astronaut photo with a feathered elliptical alpha."""
    from skimage import data  # scikit-image is the optional "media" extra

    rgb = np.asarray(data.astronaut(), dtype=np.uint8)  # type: ignore[no-untyped-call]
    photo = np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), dtype=np.uint8)
    row = _consensus_face(photo)
    bx, by, bw, bh = (float(v) for v in row[:4])
    landmarks = row[4:14].reshape(5, 2)

    # The head with its hair reaches about one box height above the eyes and a little below
    # the chin; include that, so the paste looks like a head rather than a face cut-out.
    center = (bx + bw / 2.0, by + bh / 2.0 + 0.05 * bh)
    axes = (0.9 * bw, 1.0 * bh)
    feather = 0.08 * bw
    margin = 3.0 * feather
    height, width = photo.shape[:2]
    x0 = max(0, math.floor(center[0] - axes[0] - margin))
    x1 = min(width, math.ceil(center[0] + axes[0] + margin))
    y0 = max(0, math.floor(center[1] - axes[1] - margin))
    y1 = min(height, math.ceil(center[1] + axes[1] + margin))
    patch = np.ascontiguousarray(photo[y0:y1, x0:x1])

    hard = np.zeros(patch.shape[:2], dtype=np.float32)
    # Shrink the ellipse by the feather so the blurred edge fades out inside the patch.
    cv2.ellipse(
        hard,
        (round(center[0] - x0), round(center[1] - y0)),
        (round(axes[0] - feather), round(axes[1] - feather)),
        0.0,
        0.0,
        360.0,
        1.0,
        -1,
        cv2.LINE_AA,
    )
    alpha = np.asarray(cv2.GaussianBlur(hard, (0, 0), feather), dtype=np.float32)
    offset = np.array([x0, y0], dtype=np.float64)
    return _FaceSource(
        patch=patch,
        alpha=alpha,
        landmarks5=landmarks - offset,
        face_box=np.array([bx - x0, by - y0, bw, bh], dtype=np.float64),
    )


def _motion(seed: int) -> _Motion:
    return _motion_from(np.random.default_rng([seed, 2]))


def _motion_from(rng: np.random.Generator) -> _Motion:
    # Two sinusoids per degree of freedom (x, y, scale, rotation): slow drift plus a faster
    # sway, with seed-chosen phases, so the motion is smooth yet not periodic in a short clip.
    slow = rng.uniform(0.12, 0.3, size=4)
    fast = rng.uniform(0.4, 0.8, size=4)
    freqs = tuple(float(f) for pair in zip(slow, fast, strict=True) for f in pair)
    phases = tuple(float(p) for p in rng.uniform(0.0, 2.0 * math.pi, size=8))
    return _Motion(freqs, phases)


def _wobble(motion: _Motion, dof: int, t: float) -> float:
    """Smooth value in [-1, 1] for degree of freedom ``dof`` at time ``t``."""
    slow, fast = 2 * dof, 2 * dof + 1
    return 0.7 * math.sin(2.0 * math.pi * motion.freqs_hz[slow] * t + motion.phases[slow]) + (
        0.3 * math.sin(2.0 * math.pi * motion.freqs_hz[fast] * t + motion.phases[fast])
    )


def _face_transform(
    source: _FaceSource, motion: _Motion, t: float, width: int, height: int
) -> FloatArray:
    """2x3 similarity mapping patch pixels to frame pixels at time ``t``."""
    # Size by the 4:3 height that fits, so wide or tall frames keep the head inside.
    reference = min(float(height), 0.75 * width)
    unit = reference / _REFERENCE_HEIGHT_PX
    base_scale = _FACE_HEIGHT_FRACTION * reference / float(source.face_box[3])
    scale = base_scale * (1.0 + _MAX_SCALE_CHANGE * _wobble(motion, 2, t))
    angle = math.radians(_MAX_ROTATION_DEG * _wobble(motion, 3, t))
    target = np.array(
        [
            width / 2.0 + _MAX_SHIFT_PX * unit * _wobble(motion, 0, t),
            0.46 * height + _MAX_SHIFT_PX * unit * _wobble(motion, 1, t),
        ]
    )
    return _similarity(source.face_box, target, scale, angle)


def _similarity(box: FloatArray, target: FloatArray, scale: float, angle: float) -> FloatArray:
    """2x3 similarity that scales and rotates about the centre of ``box`` and moves that
    centre onto ``target``."""
    anchor = np.array([box[0] + box[2] / 2.0, box[1] + box[3] / 2.0])
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    linear = np.array([[c, -s], [s, c]])
    shift = target - linear @ anchor
    return np.hstack([linear, shift[:, None]])


def _apply(M: FloatArray, points: FloatArray) -> FloatArray:
    return np.asarray(points @ M[:, :2].T + M[:, 2], dtype=np.float64)


def _warp_box(M: FloatArray, box: FloatArray) -> FloatArray:
    scale = math.hypot(float(M[0, 0]), float(M[1, 0]))
    center = _apply(M, np.array([[box[0] + box[2] / 2.0, box[1] + box[3] / 2.0]]))[0]
    w, h = box[2] * scale, box[3] * scale
    return np.array([center[0] - w / 2.0, center[1] - h / 2.0, w, h], dtype=np.float64)


def _stretch_mouth(source: _FaceSource, openness: float) -> Image:
    """The patch with the mouth region stretched vertically about the mouth line.

    The mouth corners sit on the fixed line, so the true landmarks do not move.
    """
    if openness < 0.02:
        return source.patch
    height, width = source.patch.shape[:2]
    mouth = source.landmarks5[3:5].mean(axis=0)
    half_width = float(np.linalg.norm(source.landmarks5[4] - source.landmarks5[3])) / 2.0
    eye_to_mouth = float(mouth[1] - source.landmarks5[:2, 1].mean())
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    # Gaussian window: full stretch on the lips, none by the nose or the chin.
    weight = np.exp(
        -(((xs - mouth[0]) / (1.3 * half_width)) ** 2)
        - ((ys - mouth[1]) / (0.4 * eye_to_mouth)) ** 2
    )
    map_y = mouth[1] + (ys - mouth[1]) / (1.0 + _MOUTH_STRETCH * openness * weight)
    map_x = np.broadcast_to(xs, (height, width))
    return np.asarray(
        cv2.remap(
            source.patch,
            np.ascontiguousarray(map_x, dtype=np.float32),
            np.ascontiguousarray(map_y, dtype=np.float32),
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT,
        ),
        dtype=np.uint8,
    )


def _patch_reach(
    source: _FaceSource, M: FloatArray, width: int, height: int
) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1): the frame pixels the patch warped by ``M`` can reach; None if none."""
    ph, pw = source.patch.shape[:2]
    corners = _apply(M, np.array([[0.0, 0.0], [pw, 0.0], [0.0, ph], [pw, ph]]))
    x0 = max(0, math.floor(corners[:, 0].min()))
    y0 = max(0, math.floor(corners[:, 1].min()))
    x1 = min(width, math.ceil(corners[:, 0].max()) + 1)
    y1 = min(height, math.ceil(corners[:, 1].max()) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _paste_face(frame: Image, source: _FaceSource, M: FloatArray, openness: float) -> None:
    """Warp the head patch with ``M`` and alpha-blend it into ``frame`` in place."""
    height, width = frame.shape[:2]
    reach = _patch_reach(source, M, width, height)
    if reach is None:
        return
    x0, y0, x1, y1 = reach
    # Warp only into the region the patch can reach: far cheaper than whole frames.
    local = M.copy()
    local[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    patch = _stretch_mouth(source, openness)
    face = cv2.warpAffine(patch, local, size, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(source.alpha, local, size, flags=cv2.INTER_LINEAR)
    region = frame[y0:y1, x0:x1].astype(np.float32)
    a = np.asarray(alpha, dtype=np.float32)[:, :, None]
    blended = region + a * (np.asarray(face, dtype=np.float32) - region)
    frame[y0:y1, x0:x1] = np.clip(blended + 0.5, 0.0, 255.0).astype(np.uint8)


def _render_frames(
    background: Image,
    source: _FaceSource | None,
    transforms: list[FloatArray],
    openness: FloatArray,
    landmarks: FloatArray,
    masks: npt.NDArray[np.bool_],
) -> Iterator[Image]:
    """Frame ``i``: the background, the face warped by ``transforms[i]``, the occluder."""
    for i in range(len(openness)):
        frame = background.copy()
        if source is not None:
            _paste_face(frame, source, transforms[i], float(openness[i]))
            if masks[i].any():
                _draw_occluder(frame, landmarks[i], masks[i])
        yield frame


# --- the occluder ----------------------------------------------------------------------


def _face_axes(landmarks: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, float]:
    """A face frame from the landmarks: (origin between the mouth corners, unit ``right``,
    unit ``down`` from the eyes to the mouth, the eye-to-mouth distance in pixels)."""
    eyes = landmarks[:2].mean(axis=0)
    mouth = landmarks[3:5].mean(axis=0)
    unit = float(np.linalg.norm(mouth - eyes))
    down = (mouth - eyes) / unit
    right = np.array([down[1], -down[0]])
    return mouth, right, down, unit


def _occluder_outline(landmarks: FloatArray) -> npt.NDArray[np.int32]:
    """Polygon of a surgical mask, in frame pixels, placed from the 5 landmarks.

    Built in face units (see ``_face_axes``) so the mask follows the head's position, size
    and roll. It starts a bit below the nose tip and ends below the chin; the eyes stay
    visible so that a detector still finds the face.
    """
    origin, right, down, unit = _face_axes(landmarks)
    nose_b = float((landmarks[2] - origin) @ down) / unit  # about -0.55 for this photo
    top = nose_b + 0.12
    outline: list[tuple[float, float]] = []
    # Top edge: peaked over the nose bridge, lower towards the cheeks.
    for a in np.linspace(-1.1, 1.1, 12):
        outline.append((float(a), top + 0.1 * float(a) ** 2))
    # Down the right side, round under the chin, and up the left side.
    side_bottom = 0.55
    for theta in np.linspace(0.0, math.pi, 24):
        outline.append((1.1 * math.cos(theta), side_bottom + 0.55 * math.sin(theta)))
    points = [origin + unit * (a * right + b * down) for a, b in outline]
    return np.round(np.array(points)).astype(np.int32)


def _occluder_mask(landmarks: FloatArray, width: int, height: int) -> npt.NDArray[np.bool_]:
    """The pixels the occluder for these landmarks covers."""
    coverage = np.zeros((height, width), dtype=np.uint8)
    # No antialiasing: every covered pixel is painted fully opaque, so the mask is exact.
    cv2.fillPoly(coverage, [_occluder_outline(landmarks)], 255, cv2.LINE_8)
    return coverage > 0


def _draw_occluder(frame: Image, landmarks: FloatArray, mask: npt.NDArray[np.bool_]) -> None:
    """Paint a light-blue pleated surgical mask on exactly the ``mask`` pixels, in place."""
    height, width = frame.shape[:2]
    outline = _occluder_outline(landmarks)
    x0, y0 = np.maximum(outline.min(axis=0), 0)
    x1, y1 = np.minimum(outline.max(axis=0) + 1, (width, height))
    if x1 <= x0 or y1 <= y0:
        return
    # Work in the mask's bounding box only: whole-frame boolean indexing dominated the cost.
    layer = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
    layer[:] = _MASK_BGR
    origin, right, down, unit = _face_axes(landmarks)
    shift = np.array([x0, y0], dtype=np.float64)
    thickness = max(1, round(unit / 25.0))
    for b in (0.0, 0.28, 0.56):  # pleats
        p, q = (origin + unit * (a * right + b * down) - shift for a in (-1.2, 1.2))
        cv2.line(layer, _int_point(p), _int_point(q), _MASK_FOLD_BGR, thickness, cv2.LINE_8)
    region = frame[y0:y1, x0:x1]
    inside = mask[y0:y1, x0:x1]
    region[inside] = layer[inside]


def _int_point(point: FloatArray) -> tuple[int, int]:
    return round(float(point[0])), round(float(point[1]))


# --- audio -----------------------------------------------------------------------------


def _speech_track(text: str, duration_s: float) -> npt.NDArray[np.float32]:
    """espeak-ng speech at AUDIO_SAMPLE_RATE_HZ mono, looped or cut to exactly ``duration_s``."""
    rate, samples = _espeak(text)
    speech = _resample(samples, rate, AUDIO_SAMPLE_RATE_HZ)
    length = round(duration_s * AUDIO_SAMPLE_RATE_HZ)
    if speech.size == 0:
        return np.zeros(length, dtype=np.float32)
    # Loop with a short pause between repeats, as a speaker would.
    pause = np.zeros(AUDIO_SAMPLE_RATE_HZ // 2, dtype=np.float32)
    unit = np.concatenate([speech, pause])
    repeats = -(-length // unit.size)
    return np.tile(unit, repeats)[:length].astype(np.float32)


def _espeak(text: str) -> tuple[int, npt.NDArray[np.int16]]:
    """Synthesise ``text``; returns (sample rate, 16-bit mono samples)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng not found on PATH; install it or use audio=False")
    with tempfile.TemporaryDirectory(prefix="testclip-") as tmp:
        wav_path = Path(tmp) / "speech.wav"
        try:
            subprocess.run(
                [exe, "-w", str(wav_path), text],
                check=True,
                capture_output=True,
                timeout=_ESPEAK_TIMEOUT_S,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"espeak-ng failed: {exc}") from exc
        with wave.open(str(wav_path), "rb") as wav:
            if wav.getsampwidth() != 2:
                raise RuntimeError(f"espeak-ng wrote {8 * wav.getsampwidth()}-bit audio")
            channels = wav.getnchannels()
            rate = wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    samples = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)
    # Downmix by averaging in a wider type, so stereo peaks cannot overflow int16.
    mono = samples.astype(np.int32).mean(axis=1).round().astype(np.int16)
    return rate, mono


def _resample(samples: npt.NDArray[np.int16], rate: int, target: int) -> npt.NDArray[np.float32]:
    """int16 mono at ``rate`` -> float32 mono at ``target`` via FFmpeg's resampler."""
    frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts).astype(np.float32)


def _mouth_openness(
    speech: npt.NDArray[np.float32], times: FloatArray, window_s: float
) -> FloatArray:
    """Speech loudness around each frame time, 0 (silent) to 1 (loudest)."""
    rate = AUDIO_SAMPLE_RATE_HZ
    half = max(1, round(window_s * rate / 2))
    rms = np.zeros(times.size, dtype=np.float64)
    for i, t in enumerate(times):
        centre = round(float(t) * rate)
        chunk = speech[max(0, centre - half) : centre + half].astype(np.float64)
        rms[i] = math.sqrt(float(np.mean(chunk**2))) if chunk.size else 0.0
    peak = float(np.percentile(rms, 95)) if rms.size else 0.0
    if peak <= 0.0:
        return np.zeros(times.size, dtype=np.float64)
    return np.asarray(np.clip(rms / peak, 0.0, 1.0), dtype=np.float64)


# --- encoding --------------------------------------------------------------------------


def _write_clip(
    path: Path,
    spec: ClipSpec,
    timeline: _Timeline,
    frames: Iterable[Image],
    speech: npt.NDArray[np.float32] | None,
) -> None:
    """Encode and mux into a temporary file beside ``path``, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with AtomicOutput(path) as atomic:
        _encode(atomic.temp_path, spec, timeline, frames, speech)
        atomic.commit()


def _encode(
    path: Path,
    spec: ClipSpec,
    timeline: _Timeline,
    frames: Iterable[Image],
    speech: npt.NDArray[np.float32] | None,
) -> None:
    # 4:2:0 subsampling needs even dimensions; 4:4:4 takes any size.
    even = spec.width % 2 == 0 and spec.height % 2 == 0
    pix_fmt = "yuv420p" if even else "yuv444p"
    with av.open(str(path), mode="w") as container:
        video = container.add_stream(
            "libx264",
            rate=spec.fps,
            options={"crf": str(spec.crf), "preset": "veryfast", "threads": "1"},
        )
        video.width = spec.width
        video.height = spec.height
        video.pix_fmt = pix_fmt
        video.time_base = timeline.time_base
        video.codec_context.time_base = timeline.time_base
        video.codec_context.thread_count = 1

        audio = None
        if speech is not None:
            audio = container.add_stream("aac", rate=AUDIO_SAMPLE_RATE_HZ, layout="mono")
            audio.time_base = Fraction(1, AUDIO_SAMPLE_RATE_HZ)
            audio.codec_context.thread_count = 1
        audio_frames = _audio_frames(speech) if speech is not None else iter(())
        pending_audio = next(audio_frames, None)

        for image, pts in zip(frames, timeline.pts, strict=True):
            frame_time = float(pts * timeline.time_base)
            # Feed audio up to this video frame so the muxer sees both streams in step.
            while audio is not None and pending_audio is not None:
                start = float(pending_audio.pts or 0) / AUDIO_SAMPLE_RATE_HZ
                if start > frame_time:
                    break
                container.mux(audio.encode(pending_audio))
                pending_audio = next(audio_frames, None)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = pts
            frame.time_base = timeline.time_base
            container.mux(video.encode(frame))
        while audio is not None and pending_audio is not None:
            container.mux(audio.encode(pending_audio))
            pending_audio = next(audio_frames, None)

        container.mux(video.encode(None))
        if audio is not None:
            container.mux(audio.encode(None))


def _audio_frames(speech: npt.NDArray[np.float32]) -> Iterator[av.AudioFrame]:
    """Mono fltp frames of the AAC encoder's 1024-sample size, with sample-count pts."""
    frame_size = 1024
    for start in range(0, speech.size, frame_size):
        chunk = np.ascontiguousarray(speech[start : start + frame_size], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(
            chunk.reshape(AUDIO_CHANNELS, -1), format="fltp", layout="mono"
        )
        frame.sample_rate = AUDIO_SAMPLE_RATE_HZ
        frame.pts = start
        frame.time_base = Fraction(1, AUDIO_SAMPLE_RATE_HZ)
        yield frame


# --- several people -------------------------------------------------------------------

_MULTI_REFERENCE_HEIGHT_PX = 360.0
"""Multi-face geometry is in pixels of a 360-high 16:9 frame and scales with the frame."""

_PERSON_FACE_HEIGHT_PX = (100.0, 84.0, 76.0, 70.0)
"""Face box height of person 0, 1, ...: the nearer a person, the larger."""

_PERSON_GAIN_BGR = ((1.0, 1.0, 1.0), (0.70, 0.80, 0.98), (1.04, 0.96, 0.80), (0.82, 0.82, 0.82))
"""Per-channel colour gains: each person has their own skin tone and lighting."""

_PERSON_X_FROM, _PERSON_X_TO = 0.24, 0.76
"""Horizontal path, as fractions of the width: even persons walk right, odd ones left."""

_PERSON_Y_NEAR, _PERSON_Y_FAR = 0.66, 0.34
"""Face-box centre heights, as fractions of the height, of the nearest and farthest lane."""

_PERSON_SWAY_PX = 8.0
_PERSON_SCALE_CHANGE = 0.04
_PERSON_ROTATION_DEG = 4.0

_VISIBLE_WEIGHT = 0.5
"""An occluder pixel counts as seen when nearer heads let through at least this much of it."""

MAX_PEOPLE = len(_PERSON_FACE_HEIGHT_PX)


@dataclass(frozen=True)
class MultiClipSpec:
    """Several people in one clip, walking across each other's paths.

    Person 0 is nearest to the camera (drawn last, largest, lowest lane); each later person is
    a little smaller, higher up and farther back. Even persons move left to right, odd ones
    right to left, so persons 0 and 1 swap horizontal order half way through. Person 1 (and
    every odd person) is the astronaut mirrored, and each person has their own skin tone.
    """

    width: int = 640
    height: int = 360
    fps: int = 25
    duration_s: float = 2.4
    seed: int = 0
    people: int = 2
    masked: tuple[bool, ...] | None = None
    """Who wears the surgical mask, one flag per person; None: person 0 only."""
    audio: bool = False
    """Add an espeak-ng speech track (every mouth moves with it)."""
    text: str = ClipSpec.text
    vfr: bool = False
    crf: int = 18

    @property
    def masked_flags(self) -> tuple[bool, ...]:
        """``masked`` with the default filled in: one flag per person."""
        if self.masked is None:
            return (True,) + (False,) * (self.people - 1)
        return self.masked


@dataclass(frozen=True, eq=False)
class MultiClipTruth:
    """What was written for a multi-face clip; arrays have a person axis after the frame axis.

    Persons are in depth order: index 0 is nearest and may hide part of the others.
    """

    path: Path
    frame_count: int
    pts: tuple[int, ...]
    time_base: Fraction
    masked: tuple[bool, ...]
    """Who wears the occluder, per person."""
    landmarks5: FloatArray
    """(frame_count, people, 5, 2): true YuNet-order landmarks in frame pixels."""
    face_boxes: FloatArray
    """(frame_count, people, 4): x, y, w, h per person, whether or not a nearer head hides it."""
    occluder_masks: npt.NDArray[np.bool_]
    """(frame_count, people, H, W): the pixels showing that person's occluder: painted, and
    not hidden by a nearer head (which must let through at least half of the paint). All
    False for a person without one. The persons' masks never overlap."""
    face_visibility: FloatArray
    """(frame_count, people): the share of the face box (inside the frame) that nearer heads
    leave visible, 0..1; 1 for person 0 always."""
    audio_sample_rate_hz: int | None

    @property
    def people(self) -> int:
        """How many persons the clip shows."""
        return len(self.masked)

    def person(self, index: int) -> ClipTruth:
        """One person's truth in the single-face form, for code written for ``ClipTruth``."""
        return ClipTruth(
            path=self.path,
            frame_count=self.frame_count,
            pts=self.pts,
            time_base=self.time_base,
            landmarks5=self.landmarks5[:, index],
            face_boxes=self.face_boxes[:, index],
            occluder_masks=self.occluder_masks[:, index],
            audio_sample_rate_hz=self.audio_sample_rate_hz,
        )


@dataclass(frozen=True)
class _Person:
    source: _FaceSource
    motion: _Motion
    face_height_px: float
    x_from_px: float
    x_to_px: float
    y_px: float
    sway_px: float


def make_multi_face_clip(path: Path, spec: MultiClipSpec = MultiClipSpec()) -> MultiClipTruth:
    """Write a clip of ``spec.people`` talking heads crossing each other; return its truth.

    Like ``make_talking_head_clip``: written atomically, truth depends only on ``spec``,
    ValueError for an impossible spec, RuntimeError when espeak-ng is needed and missing.
    """
    clip_spec = _validate_multi(spec)
    path = Path(path)
    previous_threads = cv2.getNumThreads()
    # One OpenCV thread while generating, as in make_talking_head_clip.
    cv2.setNumThreads(1)
    try:
        return _make_multi_clip(path, spec, clip_spec)
    finally:
        cv2.setNumThreads(previous_threads)


def _validate_multi(spec: MultiClipSpec) -> ClipSpec:
    """Check ``spec``; return the single-face spec that carries its size, timing and coding."""
    if not 1 <= spec.people <= MAX_PEOPLE:
        raise ValueError(f"people must be in 1..{MAX_PEOPLE}, got {spec.people}")
    if len(spec.masked_flags) != spec.people:
        raise ValueError(f"masked has {len(spec.masked_flags)} flags for {spec.people} people")
    clip_spec = ClipSpec(
        width=spec.width,
        height=spec.height,
        fps=spec.fps,
        duration_s=spec.duration_s,
        seed=spec.seed,
        occluder=any(spec.masked_flags),
        audio=spec.audio,
        text=spec.text,
        vfr=spec.vfr,
        crf=spec.crf,
    )
    _validate(clip_spec)
    return clip_spec


def _make_multi_clip(path: Path, spec: MultiClipSpec, clip_spec: ClipSpec) -> MultiClipTruth:
    timeline = _timeline(clip_spec)
    times = timeline.times_s
    n, count = len(timeline.pts), spec.people
    width, height = spec.width, spec.height
    speech = _speech_track(spec.text, timeline.end_s) if spec.audio else None
    openness = (
        _mouth_openness(speech, times, 2.0 / spec.fps)
        if speech is not None
        else np.zeros(n, dtype=np.float64)
    )
    people = _people(_face_source(), spec)
    masked = spec.masked_flags

    landmarks = np.zeros((n, count, 5, 2), dtype=np.float64)
    boxes = np.zeros((n, count, 4), dtype=np.float64)
    masks = np.zeros((n, count, height, width), dtype=np.bool_)
    visibility = np.ones((n, count), dtype=np.float64)
    transforms = np.zeros((n, count, 2, 3), dtype=np.float64)
    for i, t in enumerate(times):
        # Seen through the nearer heads: 1 where nothing nearer covers the pixel.
        through = np.ones((height, width), dtype=np.float32)
        for p, person in enumerate(people):  # nearest first
            M = _person_transform(person, float(t), timeline.end_s)
            transforms[i, p] = M
            landmarks[i, p] = _apply(M, person.source.landmarks5)
            boxes[i, p] = _warp_box(M, person.source.face_box)
            visibility[i, p] = _box_mean(through, boxes[i, p])
            painted = (
                _occluder_mask(landmarks[i, p], width, height)
                if masked[p]
                else np.zeros((height, width), dtype=np.bool_)
            )
            masks[i, p] = painted & (through >= _VISIBLE_WEIGHT)
            through *= 1.0 - _head_alpha(person.source, M, width, height)
            # The occluder is opaque paint: whatever lies behind it is hidden outright.
            through[painted] = 0.0

    background = _background(width, height, spec.seed)
    frames = _render_people(background, people, transforms, openness, landmarks, masked)
    _write_clip(path, clip_spec, timeline, frames, speech)
    return MultiClipTruth(
        path=path,
        frame_count=n,
        pts=timeline.pts,
        time_base=timeline.time_base,
        masked=masked,
        landmarks5=landmarks,
        face_boxes=boxes,
        occluder_masks=masks,
        face_visibility=visibility,
        audio_sample_rate_hz=AUDIO_SAMPLE_RATE_HZ if speech is not None else None,
    )


def _people(base: _FaceSource, spec: MultiClipSpec) -> list[_Person]:
    """Each person's look, lane and motion, nearest first."""
    unit = min(float(spec.height), 9.0 / 16.0 * spec.width) / _MULTI_REFERENCE_HEIGHT_PX
    people = []
    for p in range(spec.people):
        source = _tinted(_mirrored(base) if p % 2 else base, _PERSON_GAIN_BGR[p])
        lane = p / (spec.people - 1) if spec.people > 1 else 0.0
        x_from, x_to = (_PERSON_X_TO, _PERSON_X_FROM) if p % 2 else (_PERSON_X_FROM, _PERSON_X_TO)
        people.append(
            _Person(
                source=source,
                motion=_motion_from(np.random.default_rng([spec.seed, 3, p])),
                face_height_px=_PERSON_FACE_HEIGHT_PX[p] * unit,
                x_from_px=x_from * spec.width,
                x_to_px=x_to * spec.width,
                y_px=(_PERSON_Y_NEAR + lane * (_PERSON_Y_FAR - _PERSON_Y_NEAR)) * spec.height,
                sway_px=_PERSON_SWAY_PX * unit,
            )
        )
    return people


def _mirrored(source: _FaceSource) -> _FaceSource:
    """The head flipped left to right; landmarks keep YuNet's order (image-left eye first)."""
    width = source.patch.shape[1]
    landmarks = source.landmarks5[[1, 0, 2, 4, 3]].copy()
    # Pixel centres map x -> width - 1 - x; a box's far edge becomes its near edge.
    landmarks[:, 0] = width - 1 - landmarks[:, 0]
    x, y, w, h = (float(v) for v in source.face_box)
    return _FaceSource(
        patch=np.ascontiguousarray(source.patch[:, ::-1]),
        alpha=np.ascontiguousarray(source.alpha[:, ::-1]),
        landmarks5=landmarks,
        face_box=np.array([width - 1 - (x + w), y, w, h], dtype=np.float64),
    )


def _tinted(source: _FaceSource, gain_bgr: tuple[float, float, float]) -> _FaceSource:
    """The head with its colour channels scaled: another skin tone under other light."""
    if gain_bgr == (1.0, 1.0, 1.0):
        return source
    scaled = source.patch.astype(np.float32) * np.array(gain_bgr, dtype=np.float32)
    patch = np.clip(scaled + 0.5, 0.0, 255.0).astype(np.uint8)
    return _FaceSource(patch, source.alpha, source.landmarks5, source.face_box)


def _person_transform(person: _Person, t: float, end_s: float) -> FloatArray:
    """2x3 similarity from the person's patch to the frame at time ``t``."""
    # Eased walk along the lane (slow at the ends, fastest where the paths cross), plus sway.
    progress = (1.0 - math.cos(math.pi * t / end_s)) / 2.0
    target = np.array(
        [
            person.x_from_px
            + (person.x_to_px - person.x_from_px) * progress
            + person.sway_px * _wobble(person.motion, 0, t),
            person.y_px + person.sway_px * _wobble(person.motion, 1, t),
        ]
    )
    base_scale = person.face_height_px / float(person.source.face_box[3])
    scale = base_scale * (1.0 + _PERSON_SCALE_CHANGE * _wobble(person.motion, 2, t))
    angle = math.radians(_PERSON_ROTATION_DEG * _wobble(person.motion, 3, t))
    return _similarity(person.source.face_box, target, scale, angle)


def _head_alpha(
    source: _FaceSource, M: FloatArray, width: int, height: int
) -> npt.NDArray[np.float32]:
    """The head's opacity in frame space, exactly as ``_paste_face`` blends it."""
    alpha = np.zeros((height, width), dtype=np.float32)
    reach = _patch_reach(source, M, width, height)
    if reach is None:
        return alpha
    x0, y0, x1, y1 = reach
    local = M.copy()
    local[:, 2] -= (x0, y0)
    warped = cv2.warpAffine(source.alpha, local, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
    alpha[y0:y1, x0:x1] = np.asarray(warped, dtype=np.float32)
    return alpha


def _box_mean(values: npt.NDArray[np.float32], box: FloatArray) -> float:
    """Mean of ``values`` over the part of the (x, y, w, h) box inside the frame; 0 if none."""
    height, width = values.shape
    x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x1, y1 = min(width, math.ceil(box[0] + box[2])), min(height, math.ceil(box[1] + box[3]))
    if x1 <= x0 or y1 <= y0:
        return 0.0
    return float(values[y0:y1, x0:x1].mean())


def _render_people(
    background: Image,
    people: list[_Person],
    transforms: FloatArray,
    openness: FloatArray,
    landmarks: FloatArray,
    masked: tuple[bool, ...],
) -> Iterator[Image]:
    """Frame ``i``: the background, then each head with its occluder, farthest first."""
    height, width = background.shape[:2]
    for i in range(len(openness)):
        frame = background.copy()
        for p in reversed(range(len(people))):
            _paste_face(frame, people[p].source, transforms[i, p], float(openness[i]))
            if masked[p]:
                painted = _occluder_mask(landmarks[i, p], width, height)
                _draw_occluder(frame, landmarks[i, p], painted)
        yield frame


# --- command line ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m stream.testclip OUT [options]``: write a clip, print a one-line summary."""
    parser = argparse.ArgumentParser(
        prog="python -m stream.testclip", description="Write a synthetic talking-head clip."
    )
    parser.add_argument("out", type=Path, help="output file; .mp4 or .mkv")
    parser.add_argument(
        "--duration-s", type=float, help="default 4 s, or 2.4 s with --people 2 or more"
    )
    parser.add_argument("--width", type=int, help="default 640")
    parser.add_argument("--height", type=int, help="default 480, or 360 with --people")
    parser.add_argument("--fps", type=int, default=ClipSpec.fps)
    parser.add_argument("--seed", type=int, default=ClipSpec.seed)
    parser.add_argument("--crf", type=int, default=ClipSpec.crf)
    parser.add_argument("--text", default=ClipSpec.text)
    parser.add_argument(
        "--people",
        type=int,
        default=1,
        help=f"persons in the clip, 1..{MAX_PEOPLE}; 2 or more walk across each other",
    )
    parser.add_argument(
        "--masked",
        default="0",
        help="with --people: comma-separated indices of the persons wearing the occluder "
        "(0 is nearest); default 0",
    )
    parser.add_argument("--no-occluder", action="store_true")
    parser.add_argument("--no-audio", action="store_true")
    parser.add_argument("--no-face", action="store_true")
    parser.add_argument("--vfr", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        make = _make_single_from_args if args.people == 1 else _make_multi_from_args
        summary = make(args)
    except (RuntimeError, ValueError, OSError, av.FFmpegError) as exc:
        print(f"testclip: error: {exc}", file=sys.stderr)
        return 1
    print(f"{summary}, {time.perf_counter() - started:.2f} s")
    return 0


def _make_single_from_args(args: argparse.Namespace) -> str:
    spec = ClipSpec(
        width=_given(args.width, ClipSpec.width),
        height=_given(args.height, ClipSpec.height),
        fps=args.fps,
        duration_s=_given(args.duration_s, ClipSpec.duration_s),
        seed=args.seed,
        face=not args.no_face,
        occluder=not args.no_occluder,
        audio=not args.no_audio,
        text=args.text,
        vfr=args.vfr,
        crf=args.crf,
    )
    truth = make_talking_head_clip(args.out, spec)
    return (
        f"{_timing_summary(truth.path, truth.frame_count, truth.pts, truth.time_base, spec)}, "
        f"{_audio_summary(truth.audio_sample_rate_hz)}, "
        f"face={spec.face} occluder={spec.face and spec.occluder}"
    )


def _make_multi_from_args(args: argparse.Namespace) -> str:
    if args.no_face:
        raise ValueError("--no-face makes no sense with --people; use --people 1")
    masked_people = set() if args.no_occluder else _person_indices(args.masked)
    spec = MultiClipSpec(
        width=_given(args.width, MultiClipSpec.width),
        height=_given(args.height, MultiClipSpec.height),
        fps=args.fps,
        duration_s=_given(args.duration_s, MultiClipSpec.duration_s),
        seed=args.seed,
        people=args.people,
        masked=tuple(p in masked_people for p in range(max(args.people, 0))),
        audio=not args.no_audio,
        text=args.text,
        vfr=args.vfr,
        crf=args.crf,
    )
    if masked_people and max(masked_people) >= spec.people:
        raise ValueError(f"--masked names person {max(masked_people)} of {spec.people}")
    truth = make_multi_face_clip(args.out, spec)
    wearing = ",".join(str(p) for p, m in enumerate(truth.masked) if m) or "none"
    return (
        f"{_timing_summary(truth.path, truth.frame_count, truth.pts, truth.time_base, spec)}, "
        f"{_audio_summary(truth.audio_sample_rate_hz)}, "
        f"people={truth.people} masked={wearing}"
    )


def _given(value: _T | None, default: _T) -> _T:
    """An option's value where it was given, else the mode's default (0 counts as given)."""
    return default if value is None else value


def _person_indices(text: str) -> set[int]:
    """``"0,2"`` -> {0, 2}; ValueError for anything that is not non-negative integers."""
    try:
        indices = {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise ValueError(f"--masked wants comma-separated person indices, got {text!r}") from None
    if any(i < 0 for i in indices):
        raise ValueError(f"--masked wants non-negative person indices, got {text!r}")
    return indices


def _timing_summary(
    path: Path,
    frame_count: int,
    pts: tuple[int, ...],
    time_base: Fraction,
    spec: ClipSpec | MultiClipSpec,
) -> str:
    end_s = float((pts[-1] if pts else 0) * time_base)
    rate = "vfr" if spec.vfr else f"{spec.fps} fps"
    return f"{path}: {frame_count} frames {spec.width}x{spec.height} {rate}, last pts {end_s:.3f} s"


def _audio_summary(sample_rate_hz: int | None) -> str:
    return f"aac {sample_rate_hz} Hz" if sample_rate_hz else "no audio"


if __name__ == "__main__":
    sys.exit(main())
