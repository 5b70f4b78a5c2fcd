"""Hole masks for the 256x256 aligned face crop, deterministic by seed.

Each generator is a small frozen-config class: ``generator(rng)`` returns a (CROP_SIZE,
CROP_SIZE) float32 mask in {0, 1} (1 = hole), and ``generator.sample(rng)`` returns the full
:class:`ShapeSample` (soft anti-aliased coverage, part labels and fold lines) that
``training.occluders`` paints into a realistic occluder. The same ``numpy.random.Generator``
state always gives the same shape, so a dataset index seeds its own mask.

Shapes that belong on a face (face masks, hands, objects) are placed from the 5 landmarks of
the crop template in ``avinpaint.spec`` (or landmarks given per face), measured in units of the
eye distance so that they follow the face and not the pixel grid.
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from avinpaint.spec import CROP_SIZE, CROP_TEMPLATE_256, paper_hole_box

Mask = npt.NDArray[np.float32]
"""(CROP_SIZE, CROP_SIZE) float32; 1 marks a hole (covered pixel)."""

FloatArray = npt.NDArray[np.float64]
Landmarks = tuple[tuple[float, float], ...]
"""Five (x, y) crop points in the order of ``avinpaint.spec``: right eye, left eye, nose tip,
right mouth corner, left mouth corner."""

TEMPLATE_LANDMARKS: Landmarks = tuple((float(x), float(y)) for x, y in CROP_TEMPLATE_256)

# Polygons are drawn with 4 fractional bits so that sub-pixel jitter really moves the edge.
_SHIFT_BITS = 4
_SHIFT_SCALE = float(1 << _SHIFT_BITS)
_HALF_COVERAGE_U8 = 128  # alpha >= 0.5 in uint8 units: the hole threshold
_BAND_KERNEL = np.ones((5, 5), np.uint8)  # soft edges may reach 2 px beyond the hole, no more


class ShapeKind(enum.StrEnum):
    """What a shape depicts; the occluder renderer picks materials by it."""

    BOX = "box"
    STROKES = "strokes"
    SURGICAL = "surgical"
    CLOTH = "cloth"
    N95 = "n95"
    KN95 = "kn95"
    HAND = "hand"
    MICROPHONE = "microphone"
    PHONE = "phone"
    BLOBS = "blobs"
    CARD = "card"
    SCRIBBLE = "scribble"


FACE_MASK_KINDS = (ShapeKind.SURGICAL, ShapeKind.CLOTH, ShapeKind.N95, ShapeKind.KN95)
OBJECT_KINDS = (ShapeKind.MICROPHONE, ShapeKind.PHONE, ShapeKind.BLOBS, ShapeKind.CARD)


@dataclass(frozen=True, eq=False)
class ShapeSample:
    """One sampled shape in crop pixels.

    ``alpha`` is the anti-aliased coverage in [0, 1] (non-zero at most 2 px outside ``mask``);
    ``mask`` is ``alpha >= 0.5`` as float32 {0, 1}; ``part_ids`` labels sub-parts (0 = none,
    1 = main body, 2.. = straps, sleeve, microphone head, ...); ``folds`` are polylines (N, 2)
    in crop pixels along which material folds (pleats, seams, finger gaps) and ``ridges`` those
    that catch light. ``origin_xy``, ``angle_rad`` and ``unit_px`` give the shape's own frame
    (its x axis direction and the size of one unit, about the eye distance), so textures and
    shading can follow the shape."""

    kind: ShapeKind
    alpha: Mask
    mask: Mask
    part_ids: npt.NDArray[np.uint8]
    folds: tuple[FloatArray, ...]
    ridges: tuple[FloatArray, ...]
    origin_xy: tuple[float, float]
    angle_rad: float
    unit_px: float


class ShapeGenerator(Protocol):
    """A seeded shape source: ``sample`` gives the full shape, ``__call__`` only its mask."""

    def sample(self, rng: np.random.Generator) -> ShapeSample: ...

    def __call__(self, rng: np.random.Generator) -> Mask: ...


# --- drawing -----------------------------------------------------------------------------


class _Canvas:
    """Anti-aliased coverage plus part labels, drawn with OpenCV's sub-pixel primitives."""

    def __init__(self) -> None:
        self.alpha = np.zeros((CROP_SIZE, CROP_SIZE), np.uint8)
        self.parts = np.zeros((CROP_SIZE, CROP_SIZE), np.uint8)

    def polygon(self, points_px: FloatArray, part: int = 1) -> None:
        pts = _fixed_point(points_px)
        cv2.fillPoly(self.alpha, [pts], 255, cv2.LINE_AA, _SHIFT_BITS)
        cv2.fillPoly(self.parts, [pts], part, cv2.LINE_8, _SHIFT_BITS)

    def polyline(self, points_px: FloatArray, width_px: float, part: int = 1) -> None:
        # OpenCV draws thick lines with round caps and joints: strokes and fingers are capsules.
        pts = _fixed_point(points_px)
        thickness = max(2, round(width_px))
        cv2.polylines(self.alpha, [pts], False, 255, thickness, cv2.LINE_AA, _SHIFT_BITS)
        cv2.polylines(self.parts, [pts], False, part, thickness, cv2.LINE_8, _SHIFT_BITS)

    def finish(
        self,
        kind: ShapeKind,
        *,
        folds: tuple[FloatArray, ...] = (),
        ridges: tuple[FloatArray, ...] = (),
        origin_xy: tuple[float, float] = (CROP_SIZE / 2.0, CROP_SIZE / 2.0),
        angle_rad: float = 0.0,
        unit_px: float = CROP_SIZE / 4.0,
    ) -> ShapeSample:
        hole = (self.alpha >= _HALF_COVERAGE_U8).astype(np.uint8)
        # Thin anti-aliased slivers away from any hole pixel would be covered but unlabelled.
        band = cv2.dilate(hole, _BAND_KERNEL)
        alpha = (self.alpha * band).astype(np.float32) * np.float32(1.0 / 255.0)
        return ShapeSample(
            kind=kind,
            alpha=alpha,
            mask=hole.astype(np.float32),
            part_ids=self.parts * hole,
            folds=folds,
            ridges=ridges,
            origin_xy=origin_xy,
            angle_rad=angle_rad,
            unit_px=unit_px,
        )


def _fixed_point(points_px: FloatArray) -> npt.NDArray[np.int32]:
    clipped = np.clip(points_px, -4.0 * CROP_SIZE, 5.0 * CROP_SIZE)
    return np.round(clipped * _SHIFT_SCALE).astype(np.int32).reshape(-1, 1, 2)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _integer(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    """Inclusive integer range."""
    return int(rng.integers(bounds[0], bounds[1] + 1))


_BEZIER_T = np.linspace(0.0, 1.0, 12)[:, None]
_BEZIER_WEIGHTS = np.concatenate(
    [(1 - _BEZIER_T) ** 2, 2 * (1 - _BEZIER_T) * _BEZIER_T, _BEZIER_T**2], axis=1
)  # (12, 3): Bernstein weights of a quadratic Bezier


def _quad_bezier(p0: FloatArray, p1: FloatArray, p2: FloatArray) -> FloatArray:
    return np.asarray(_BEZIER_WEIGHTS @ np.stack([p0, p1, p2]), dtype=np.float64)


def _curve(*points: tuple[float, float]) -> FloatArray:
    """Chain of quadratic Beziers through (start, control, end, control, end, ...)."""
    pts = np.asarray(points, dtype=np.float64)
    pieces = [_quad_bezier(pts[i], pts[i + 1], pts[i + 2]) for i in range(0, len(pts) - 2, 2)]
    return np.concatenate([p if i == 0 else p[1:] for i, p in enumerate(pieces)])


def _superellipse(
    half_w: float, half_h: float, exponent: float, n: int = 48, center: tuple[float, float] = (0, 0)
) -> FloatArray:
    """Closed outline; exponent 2 is an ellipse, larger values approach a rectangle."""
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    e = 2.0 / exponent
    x = half_w * np.sign(c) * np.abs(c) ** e + center[0]
    y = half_h * np.sign(s) * np.abs(s) ** e + center[1]
    return np.stack([x, y], axis=1)


def _affine(origin_px: FloatArray, angle_rad: float, unit_px: float) -> FloatArray:
    """2x3 matrix from a shape's local units to crop pixels."""
    c, s = math.cos(angle_rad) * unit_px, math.sin(angle_rad) * unit_px
    return np.array([[c, -s, origin_px[0]], [s, c, origin_px[1]]], dtype=np.float64)


def _apply(matrix: FloatArray, points: FloatArray) -> FloatArray:
    return np.asarray(points @ matrix[:, :2].T + matrix[:, 2], dtype=np.float64)


@dataclass(frozen=True)
class _FaceFrame:
    """The face's own frame from 5 landmarks: origin at the nose tip, x along the eye line,
    y down the face, one unit = the eye distance. Rows: where the eyes and mouth lie."""

    nose_px: FloatArray
    x_axis_px: FloatArray
    y_axis_px: FloatArray
    eye_distance_px: float
    roll_rad: float
    eye_row: float
    mouth_row: float
    mouth_half_width: float

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def from_landmarks(landmarks: Landmarks) -> _FaceFrame:
        pts = np.asarray(landmarks, dtype=np.float64)
        if pts.shape != (5, 2):
            raise ValueError(f"need 5 (x, y) landmarks, got shape {pts.shape}")
        eye_vec = pts[1] - pts[0]
        distance = float(np.hypot(*eye_vec))
        if distance <= 1.0:
            raise ValueError("eye landmarks coincide")
        x_axis = eye_vec / distance
        y_axis = np.array([-x_axis[1], x_axis[0]])
        nose = pts[2]

        def to_units(p: FloatArray) -> FloatArray:
            d = p - nose
            return np.array([d @ x_axis, d @ y_axis]) / distance

        eyes = (to_units(pts[0]) + to_units(pts[1])) / 2.0
        mouth_r, mouth_l = to_units(pts[3]), to_units(pts[4])
        return _FaceFrame(
            nose_px=nose,
            x_axis_px=x_axis * distance,
            y_axis_px=y_axis * distance,
            eye_distance_px=distance,
            roll_rad=math.atan2(x_axis[1], x_axis[0]),
            eye_row=float(eyes[1]),
            mouth_row=float((mouth_r[1] + mouth_l[1]) / 2.0),
            mouth_half_width=float(abs(mouth_l[0] - mouth_r[0]) / 2.0),
        )

    def to_px(self, points_units: FloatArray) -> FloatArray:
        return np.asarray(
            self.nose_px
            + points_units[:, :1] * self.x_axis_px
            + points_units[:, 1:] * self.y_axis_px,
            dtype=np.float64,
        )

    def local_affine(self, origin_units: FloatArray, angle_rad: float, scale: float) -> FloatArray:
        """2x3 matrix from units of a shape (rotated and scaled about its origin) to pixels."""
        c, s = math.cos(angle_rad) * scale, math.sin(angle_rad) * scale
        linear = np.stack([self.x_axis_px, self.y_axis_px], axis=1) @ np.array([[c, -s], [s, c]])
        origin = self.to_px(origin_units[None, :])[0]
        return np.concatenate([linear, origin[:, None]], axis=1)


# --- generators --------------------------------------------------------------------------


@dataclass(frozen=True)
class PaperBox:
    """The seed paper's fixed 128x128 hole (``avinpaint.spec.paper_hole_box``); no randomness."""

    def sample(self, rng: np.random.Generator) -> ShapeSample:
        """The box as a shape (hard edges: the paper's hole has no soft border)."""
        x, y, w, h = paper_hole_box()
        canvas = _Canvas()
        canvas.alpha[y : y + h, x : x + w] = 255
        canvas.parts[y : y + h, x : x + w] = 1
        return canvas.finish(ShapeKind.BOX, origin_xy=(x + w / 2.0, y + h / 2.0), unit_px=w / 2.0)

    def __call__(self, rng: np.random.Generator) -> Mask:
        """The paper's hole mask."""
        return self.sample(rng).mask


@dataclass(frozen=True)
class FreeFormStrokes:
    """LaMa/DeepFill-style free-form holes: a few thick random walks with round joints.

    Each stroke starts anywhere in the crop, then takes ``vertices`` steps of
    ``segment_length_px``, turning by at most ``max_turn_deg`` each time, drawn
    ``width_px`` wide (one width per stroke, as brushes are)."""

    strokes: tuple[int, int] = (1, 5)
    vertices: tuple[int, int] = (2, 7)
    width_px: tuple[float, float] = (10.0, 36.0)
    segment_length_px: tuple[float, float] = (12.0, 60.0)
    max_turn_deg: float = 110.0

    def sample(self, rng: np.random.Generator) -> ShapeSample:
        """Strokes as a shape."""
        canvas = _Canvas()
        max_turn = math.radians(self.max_turn_deg)
        for _ in range(_integer(rng, self.strokes)):
            n = _integer(rng, self.vertices)
            start = rng.uniform(0.0, CROP_SIZE, size=2)
            headings = float(rng.uniform(0.0, 2.0 * math.pi)) + np.cumsum(
                rng.uniform(-max_turn, max_turn, size=n)
            )
            steps = rng.uniform(*self.segment_length_px, size=n)
            points = [start]
            for heading, step in zip(headings, steps, strict=True):
                # Clipped each step (as LaMa does), so strokes crawl along the border.
                step_xy = step * np.array([math.cos(heading), math.sin(heading)])
                points.append(np.clip(points[-1] + step_xy, 0.0, CROP_SIZE - 1.0))
            canvas.polyline(np.asarray(points), _uniform(rng, self.width_px))
        return canvas.finish(ShapeKind.STROKES)

    def __call__(self, rng: np.random.Generator) -> Mask:
        """Strokes mask."""
        return self.sample(rng).mask


@dataclass(frozen=True)
class Scribble:
    """Thin pen scribbles: smooth random walks (heading changes slowly, like a hand drawing)
    starting over the face area."""

    strokes: tuple[int, int] = (1, 4)
    points: tuple[int, int] = (12, 60)
    step_px: tuple[float, float] = (3.0, 9.0)
    width_px: tuple[float, float] = (2.0, 6.0)
    turn_sigma_deg: float = 14.0
    start_margin_px: float = 40.0

    def sample(self, rng: np.random.Generator) -> ShapeSample:
        """Scribbles as a shape."""
        canvas = _Canvas()
        turn_sigma = math.radians(self.turn_sigma_deg)
        low, high = self.start_margin_px, CROP_SIZE - self.start_margin_px
        for _ in range(_integer(rng, self.strokes)):
            n = _integer(rng, self.points)
            start = rng.uniform(low, high, size=2)
            heading = float(rng.uniform(0.0, 2.0 * math.pi))
            step = _uniform(rng, self.step_px)
            kicks = rng.normal(0.0, turn_sigma, size=n)
            # The turning rate has momentum, so curls and zig-zags appear rather than jitter.
            rates = np.empty(n)
            rate = 0.0
            for i, kick in enumerate(kicks.tolist()):
                rate = 0.7 * rate + kick
                rates[i] = rate
            headings = heading + np.cumsum(rates)
            steps = step * np.stack([np.cos(headings), np.sin(headings)], axis=1)
            points = np.concatenate([start[None, :], start + np.cumsum(steps, axis=0)])
            canvas.polyline(points, _uniform(rng, self.width_px))
        return canvas.finish(ShapeKind.SCRIBBLE)

    def __call__(self, rng: np.random.Generator) -> Mask:
        """Scribble mask."""
        return self.sample(rng).mask


@dataclass(frozen=True)
class FaceMaskShape:
    """A face-mask outline (surgical, cloth, N95 cup, KN95 beak) placed from the landmarks.

    Shapes are built in the face's frame (unit = eye distance, origin = nose tip), so they run
    from the nose bridge to under the chin and cheek to cheek; then jittered (rotation about
    the nose tip, scale, shift, a yaw-like sideways bend of the centre line). If the outline
    would come within ``eye_margin`` units of an eye it is pushed down the face: masks never
    cover the eyes.

    ``overhang``: (low, high) of an extra sideways shift, in units, to a random side (none
    when high is 0, the default, which draws nothing extra so that seeded shapes stay as they
    were). On a head turned from the camera the aligned crop squeezes the far cheek towards
    the nose, and a mask that follows the face hangs past its outline over the background;
    a frontal training face shows the same when its mask is moved sideways by about half an
    eye distance."""

    styles: tuple[ShapeKind, ...] = FACE_MASK_KINDS
    max_rotation_deg: float = 8.0
    scale: tuple[float, float] = (0.92, 1.1)
    max_shift: float = 0.06
    max_yaw_bend: float = 0.15
    strap_probability: float = 0.5
    eye_margin: float = 0.15
    overhang: tuple[float, float] = (0.0, 0.0)
    landmarks5: Landmarks = TEMPLATE_LANDMARKS

    def __post_init__(self) -> None:
        bad = [s for s in self.styles if s not in FACE_MASK_KINDS]
        if not self.styles or bad:
            raise ValueError(f"styles must be a non-empty subset of {FACE_MASK_KINDS}, got {bad}")
        low, high = self.overhang
        if not 0.0 <= low <= high:
            raise ValueError(f"overhang must be 0 <= low <= high, got {self.overhang}")

    def sample(self, rng: np.random.Generator) -> ShapeSample:
        """A face mask as a shape."""
        frame = _FaceFrame.from_landmarks(self.landmarks5)
        style = self.styles[int(rng.integers(len(self.styles)))]
        outline, folds, ridges, straps = _FACE_MASK_BUILDERS[style](rng, frame)

        bend = float(rng.uniform(-self.max_yaw_bend, self.max_yaw_bend))
        outline, folds, ridges, straps = (
            [_yaw_bend(p, bend) for p in group] for group in (outline, folds, ridges, straps)
        )
        shift = rng.uniform(-self.max_shift, self.max_shift, size=2)
        if self.overhang[1] > 0.0:
            shift[0] += _uniform(rng, self.overhang) * (1.0 if rng.random() < 0.5 else -1.0)
        matrix = frame.local_affine(
            shift,
            math.radians(float(rng.uniform(-self.max_rotation_deg, self.max_rotation_deg))),
            _uniform(rng, self.scale),
        )
        matrix = _keep_clear_of_eyes(matrix, outline[0], frame, self.landmarks5, self.eye_margin)

        canvas = _Canvas()
        if rng.random() < self.strap_probability:
            for strap in straps:
                canvas.polyline(_apply(matrix, strap), 0.035 * frame.eye_distance_px, part=2)
        for piece in outline:
            canvas.polygon(_apply(matrix, piece), part=1)
        origin = matrix[:, 2]
        unit = float(np.hypot(matrix[0, 0], matrix[1, 0]))
        return canvas.finish(
            style,
            folds=tuple(_apply(matrix, p) for p in folds),
            ridges=tuple(_apply(matrix, p) for p in ridges),
            origin_xy=(float(origin[0]), float(origin[1])),
            angle_rad=math.atan2(matrix[1, 0], matrix[0, 0]),
            unit_px=unit,
        )

    def __call__(self, rng: np.random.Generator) -> Mask:
        """Face-mask mask."""
        return self.sample(rng).mask


_Pieces = list[FloatArray]
_FaceMaskParts = tuple[_Pieces, _Pieces, _Pieces, _Pieces]  # outline, folds, ridges, straps


def _yaw_bend(points: FloatArray, bend: float) -> FloatArray:
    """Moves the centre line sideways and keeps the cheeks: a head turned a little."""
    out = points.copy()
    out[:, 0] += bend * np.clip(1.0 - (points[:, 0] / 1.2) ** 2, 0.0, 1.0)
    return out


def _keep_clear_of_eyes(
    matrix: FloatArray, outline: FloatArray, frame: _FaceFrame, landmarks: Landmarks, margin: float
) -> FloatArray:
    """Shift the shape down the face until both eyes lie ``margin`` units outside it."""
    margin_px = margin * frame.eye_distance_px
    down = frame.y_axis_px / frame.eye_distance_px
    matrix = matrix.copy()
    for _ in range(8):
        contour = _apply(matrix, outline).astype(np.float32).reshape(-1, 1, 2)
        # Positive inside the outline; needs to be at most -margin for both eyes.
        depth = max(
            float(cv2.pointPolygonTest(contour, (float(x), float(y)), True))
            for x, y in landmarks[:2]
        )
        if depth <= -margin_px:
            break
        matrix[:, 2] += down * (depth + margin_px + 1.0)
    return matrix


def _surgical(rng: np.random.Generator, frame: _FaceFrame) -> _FaceMaskParts:
    mouth = frame.mouth_row
    top = -_uniform(rng, (0.2, 0.34))
    corner_drop = _uniform(rng, (0.06, 0.16))
    half_top = _uniform(rng, (1.03, 1.15))
    half_mid = half_top * _uniform(rng, (1.0, 1.05))
    half_bottom = _uniform(rng, (0.72, 0.92))
    bottom = mouth + _uniform(rng, (0.8, 1.0))
    bottom_corner = bottom - _uniform(rng, (0.18, 0.32))
    corner = top + corner_drop
    outline = _curve(
        (-half_top, corner),
        (0.0, 2 * top - corner),
        (half_top, corner),
        (half_mid * 1.04, mouth - 0.05),
        (half_bottom, bottom_corner),
        (0.0, 2 * bottom - bottom_corner),
        (-half_bottom, bottom_corner),
        (-half_mid * 1.04, mouth - 0.05),
        (-half_top, corner),
    )
    folds: _Pieces = []
    ridges: _Pieces = []
    for fraction in (0.3, 0.5, 0.7):
        f = fraction + float(rng.uniform(-0.04, 0.04))
        y_mid = top + f * (bottom - top)
        y_side = corner + f * (bottom_corner - corner)
        half = (1.0 - f) * half_top + f * half_bottom
        sag = float(rng.uniform(-0.04, 0.08))
        pleat = _curve(
            (-half * 0.98, y_side), (0.0, 2 * (y_mid + sag) - y_side), (half * 0.98, y_side)
        )
        folds.append(pleat)
        ridges.append(pleat + np.array([0.0, -0.05]))
    straps = [
        np.array([[-half_top, corner + 0.05], [-1.9, corner - 0.1]]),
        np.array([[half_top, corner + 0.05], [1.9, corner - 0.1]]),
        np.array([[-half_bottom, bottom_corner - 0.1], [-1.9, mouth - 0.25]]),
        np.array([[half_bottom, bottom_corner - 0.1], [1.9, mouth - 0.25]]),
    ]
    return [outline], folds, ridges, straps


def _cloth(rng: np.random.Generator, frame: _FaceFrame) -> _FaceMaskParts:
    mouth = frame.mouth_row
    top = -_uniform(rng, (0.24, 0.36))
    side_top = _uniform(rng, (-0.05, 0.1))
    half = _uniform(rng, (1.02, 1.18))
    half_bottom = half * _uniform(rng, (0.55, 0.75))
    bottom = mouth + _uniform(rng, (0.85, 1.02))
    side_bottom = mouth + _uniform(rng, (0.35, 0.55))
    outline = _curve(
        (0.0, top),
        (half * 0.45, top + 0.02),
        (half, side_top),
        (half * 1.06, mouth - 0.1),
        (half_bottom + 0.12, side_bottom + 0.15),
        (half_bottom * 0.45, bottom + 0.04),
        (0.0, bottom),
        (-half_bottom * 0.45, bottom + 0.04),
        (-half_bottom - 0.12, side_bottom + 0.15),
        (-half * 1.06, mouth - 0.1),
        (-half, side_top),
        (-half * 0.45, top + 0.02),
        (0.0, top),
    )
    seam = _curve((0.0, top), (0.04, (top + bottom) / 2.0), (0.0, bottom))
    folds: _Pieces = [seam] if rng.random() < 0.7 else []
    for side in (-1.0, 1.0):
        # Loose fabric creases from the cheek towards the chin.
        x0 = side * half * _uniform(rng, (0.55, 0.8))
        y0 = _uniform(rng, (0.1, 0.4))
        folds.append(_curve((x0, y0), (x0 * 0.8, y0 + 0.3), (x0 * 0.55, y0 + 0.6)))
    straps = [
        np.array([[-half, side_top + 0.1], [-1.9, side_top - 0.1]]),
        np.array([[half, side_top + 0.1], [1.9, side_top - 0.1]]),
        np.array([[-half_bottom - 0.15, side_bottom], [-1.9, mouth - 0.3]]),
        np.array([[half_bottom + 0.15, side_bottom], [1.9, mouth - 0.3]]),
    ]
    return [outline], folds, [], straps


def _n95(rng: np.random.Generator, frame: _FaceFrame) -> _FaceMaskParts:
    mouth = frame.mouth_row
    top = -_uniform(rng, (0.24, 0.34))
    bottom = mouth + _uniform(rng, (0.8, 0.98))
    center_y = (top + bottom) / 2.0
    half_h = (bottom - top) / 2.0
    half_w = _uniform(rng, (0.98, 1.1))
    taper = _uniform(rng, (0.1, 0.25))
    outline = _cup(_superellipse(half_w, half_h, _uniform(rng, (2.0, 2.5))), half_h, taper)
    rim = _cup(_superellipse(half_w * 0.9, half_h * 0.9, 2.2), half_h, taper)
    outline[:, 1] += center_y
    rim[:, 1] += center_y
    folds: _Pieces = [np.vstack([rim, rim[:1]])]
    ridges: _Pieces = [_curve((-0.35, top + 0.12), (0.0, top + 0.02), (0.35, top + 0.12))]
    straps = [
        np.array([[-half_w * 0.95, center_y - 0.3], [-1.9, center_y - 0.75]]),
        np.array([[half_w * 0.95, center_y - 0.3], [1.9, center_y - 0.75]]),
        np.array([[-half_w * 0.9, center_y + 0.45], [-1.9, center_y + 0.15]]),
        np.array([[half_w * 0.9, center_y + 0.45], [1.9, center_y + 0.15]]),
    ]
    return [outline], folds, ridges, straps


def _cup(points: FloatArray, half_h: float, taper: float) -> FloatArray:
    """Narrows the upper half of a centred outline: a respirator cup is narrow at the nose."""
    out = points.copy()
    out[:, 0] *= 1.0 - taper * np.clip(-points[:, 1] / half_h, 0.0, 1.0)
    return out


def _kn95(rng: np.random.Generator, frame: _FaceFrame) -> _FaceMaskParts:
    mouth = frame.mouth_row
    top = -_uniform(rng, (0.26, 0.38))
    side_top = _uniform(rng, (-0.02, 0.12))
    half = _uniform(rng, (1.04, 1.18))
    half_bottom = half * _uniform(rng, (0.62, 0.8))
    side_bottom = mouth + _uniform(rng, (0.3, 0.5))
    bottom = mouth + _uniform(rng, (0.85, 1.05))
    outline = _curve(
        (0.0, top),
        (half * 0.5, (top + side_top) / 2.0 - 0.02),
        (half, side_top),
        (half * 1.03, (side_top + side_bottom) / 2.0),
        (half_bottom, side_bottom),
        (half_bottom * 0.5, (side_bottom + bottom) / 2.0 + 0.04),
        (0.0, bottom),
        (-half_bottom * 0.5, (side_bottom + bottom) / 2.0 + 0.04),
        (-half_bottom, side_bottom),
        (-half * 1.03, (side_top + side_bottom) / 2.0),
        (-half, side_top),
        (-half * 0.5, (top + side_top) / 2.0 - 0.02),
        (0.0, top),
    )
    center = np.array([[0.0, top], [0.0, bottom]])
    across = _curve(
        (-half * 0.9, side_top + 0.35), (0.0, top + 0.55), (half * 0.9, side_top + 0.35)
    )
    straps = [
        np.array([[-half, side_top + 0.08], [-1.9, side_top - 0.05]]),
        np.array([[half, side_top + 0.08], [1.9, side_top - 0.05]]),
        np.array([[-half_bottom, side_bottom - 0.1], [-1.9, mouth - 0.25]]),
        np.array([[half_bottom, side_bottom - 0.1], [1.9, mouth - 0.25]]),
    ]
    return [outline], [center, across], [center + np.array([0.02, 0.0])], straps


_FACE_MASK_BUILDERS = {
    ShapeKind.SURGICAL: _surgical,
    ShapeKind.CLOTH: _cloth,
    ShapeKind.N95: _n95,
    ShapeKind.KN95: _kn95,
}


class _Pen:
    """Draws on a canvas in a shape's local units (a 2x3 units-to-pixels matrix)."""

    def __init__(self, canvas: _Canvas, matrix: FloatArray, unit_px: float) -> None:
        self.canvas = canvas
        self.matrix = matrix
        self.unit_px = unit_px

    def to_px(self, points: FloatArray) -> FloatArray:
        return _apply(self.matrix, np.asarray(points, dtype=np.float64))

    def polygon(self, points: FloatArray, part: int = 1) -> None:
        self.canvas.polygon(self.to_px(points), part)

    def capsule(self, points: FloatArray, width: float, part: int = 1) -> None:
        self.canvas.polyline(self.to_px(points), width * self.unit_px, part)


@dataclass(frozen=True)
class HandBlob:
    """A hand entering from the left, right or bottom edge: palm, four tapering fingers, a
    thumb and the forearm running off the crop, over the lower face. Sizes are in eye
    distances (a palm is about 1.3 of them wide). Fingers splay and curl per call."""

    side_weights: tuple[float, float, float] = (0.35, 0.35, 0.3)  # left, right, bottom
    palm_half_width: tuple[float, float] = (0.5, 0.68)
    finger_length: tuple[float, float] = (0.95, 1.3)
    max_direction_jitter_deg: float = 35.0
    sleeve_probability: float = 0.4
    landmarks5: Landmarks = TEMPLATE_LANDMARKS

    def sample(self, rng: np.random.Generator) -> ShapeSample:
        """A hand as a shape."""
        frame = _FaceFrame.from_landmarks(self.landmarks5)
        weights = np.asarray(self.side_weights, dtype=np.float64)
        side = int(rng.choice(3, p=weights / weights.sum()))
        # Fingers point away from the entry edge; in the hand's own frame they point to -y.
        pointing = (0.0, math.pi, -math.pi / 2.0)[side]
        jitter = math.radians(self.max_direction_jitter_deg)
        finger_dir = pointing + float(rng.uniform(-jitter, jitter)) + frame.roll_rad
        angle = finger_dir + math.pi / 2.0

        palm_w = _uniform(rng, self.palm_half_width)
        palm_h = palm_w * _uniform(rng, (1.0, 1.2))
        length = _uniform(rng, self.finger_length)
        # Somewhere between the nose and the chin; the palm or the fingers may be over it.
        target = np.array(
            [float(rng.uniform(-0.35, 0.35)), _uniform(rng, (0.0, frame.mouth_row + 0.4))]
        )
        back = _uniform(rng, (0.0, palm_h + 0.6 * length)) * frame.eye_distance_px
        direction = np.array([math.cos(finger_dir), math.sin(finger_dir)])
        palm_px = frame.to_px(target[None, :])[0] - back * direction
        canvas = _Canvas()
        pen = _Pen(canvas, _affine(palm_px, angle, frame.eye_distance_px), frame.eye_distance_px)
        sleeve = rng.random() < self.sleeve_probability
        folds = _draw_hand(pen, rng, palm_w, palm_h, length, sleeve)
        return canvas.finish(
            ShapeKind.HAND,
            folds=tuple(pen.to_px(f) for f in folds),
            origin_xy=(float(palm_px[0]), float(palm_px[1])),
            angle_rad=angle,
            unit_px=frame.eye_distance_px,
        )

    def __call__(self, rng: np.random.Generator) -> Mask:
        """Hand mask."""
        return self.sample(rng).mask


def _draw_hand(
    pen: _Pen,
    rng: np.random.Generator,
    palm_w: float,
    palm_h: float,
    length: float,
    sleeve: bool,
) -> list[FloatArray]:
    """Palm centred on the origin, fingers towards -y, arm towards +y; returns crease lines."""
    # Wrist and forearm are straight-sided polygons (a capsule would bulge at the cuff).
    cuff = palm_h + _uniform(rng, (0.3, 0.8))
    wrist = palm_w * _uniform(rng, (0.7, 0.8))
    far = cuff + 4.0  # well off the crop
    pen.polygon(np.array([[-wrist, 0.0], [wrist, 0.0], [wrist * 1.25, far], [-wrist * 1.25, far]]))
    if sleeve:
        half = palm_w * _uniform(rng, (0.95, 1.15))
        pen.polygon(
            np.array([[-half, cuff], [half, cuff], [half * 1.2, far], [-half * 1.2, far]]), part=2
        )
    pen.polygon(_superellipse(palm_w, palm_h, 3.0))

    folds: list[FloatArray] = []
    width = 2.0 * palm_w / 4.0 * _uniform(rng, (0.9, 1.0))
    splay = math.radians(_uniform(rng, (0.0, 9.0)))
    base_y = -palm_h * 0.75
    previous_tip: FloatArray | None = None
    for offset, relative in zip((-1.5, -0.5, 0.5, 1.5), (0.88, 1.0, 0.93, 0.72), strict=True):
        base = np.array([offset * width, base_y])
        along = np.array([math.sin(offset * splay), -math.cos(offset * splay)])
        finger_len = length * relative * _uniform(rng, (0.5, 1.0))  # curled fingers look short
        joint = base + 0.55 * finger_len * along
        tip = base + finger_len * along
        # Two capsules, the outer one narrower: fingers taper towards the tip.
        pen.capsule(np.stack([base, joint]), width)
        pen.capsule(np.stack([joint, tip]), 0.85 * width)
        across = np.array([width * 0.22, 0.0])
        folds.append(np.stack([joint - across, joint + across]))
        if previous_tip is not None:
            # The crease between two neighbouring fingers, as far as both reach.
            gap_len = 0.45 * min(float(np.hypot(*(previous_tip - base))), finger_len)
            gap_x = (offset - 0.5) * width
            folds.append(np.array([[gap_x, base_y], [gap_x, base_y - gap_len]]))
        previous_tip = tip

    side = 1.0 if rng.random() < 0.5 else -1.0
    thumb_angle = math.radians(_uniform(rng, (30.0, 75.0))) * side
    thumb_base = np.array([side * palm_w * 0.75, palm_h * 0.2])
    thumb_tip = thumb_base + length * _uniform(rng, (0.55, 0.8)) * np.array(
        [math.sin(thumb_angle), -math.cos(thumb_angle)]
    )
    heel = np.array([side * palm_w * 0.35, palm_h * 0.6])
    pen.capsule(np.stack([heel, thumb_base]), 1.3 * width)
    pen.capsule(np.stack([thumb_base, thumb_tip]), 1.05 * width)
    return folds


@dataclass(frozen=True)
class ObjectBlob:
    """Things held in front of the lower face: a microphone (ball head on a handle running off
    the crop), a phone (rounded rectangle with a camera bump), a card or cup (rounded
    rectangle of random aspect), or one to three ellipses. Sizes in eye distances."""

    styles: tuple[ShapeKind, ...] = OBJECT_KINDS
    max_rotation_deg: float = 50.0
    landmarks5: Landmarks = TEMPLATE_LANDMARKS

    def __post_init__(self) -> None:
        bad = [s for s in self.styles if s not in OBJECT_KINDS]
        if not self.styles or bad:
            raise ValueError(f"styles must be a non-empty subset of {OBJECT_KINDS}, got {bad}")

    def sample(self, rng: np.random.Generator) -> ShapeSample:
        """An object as a shape."""
        frame = _FaceFrame.from_landmarks(self.landmarks5)
        style = self.styles[int(rng.integers(len(self.styles)))]
        center = np.array(
            [float(rng.uniform(-0.5, 0.5)), _uniform(rng, (0.1, frame.mouth_row + 0.6))]
        )
        center_px = frame.to_px(center[None, :])[0]
        tilt = float(rng.uniform(-self.max_rotation_deg, self.max_rotation_deg))
        angle = frame.roll_rad + math.radians(tilt)
        canvas = _Canvas()
        pen = _Pen(canvas, _affine(center_px, angle, frame.eye_distance_px), frame.eye_distance_px)
        ridges: list[FloatArray] = []
        if style == ShapeKind.MICROPHONE:
            ridges = _draw_microphone(pen, rng)
        elif style in (ShapeKind.PHONE, ShapeKind.CARD):
            ridges = _draw_slab(pen, rng, phone=style == ShapeKind.PHONE)
        else:
            _draw_ellipses(pen, rng)
        return canvas.finish(
            style,
            ridges=tuple(pen.to_px(r) for r in ridges),
            origin_xy=(float(center_px[0]), float(center_px[1])),
            angle_rad=angle,
            unit_px=frame.eye_distance_px,
        )

    def __call__(self, rng: np.random.Generator) -> Mask:
        """Object mask."""
        return self.sample(rng).mask


def _draw_microphone(pen: _Pen, rng: np.random.Generator) -> list[FloatArray]:
    """Head (part 2) at the origin, collar (part 3), handle towards +y off the crop."""
    radius = _uniform(rng, (0.28, 0.42))
    handle = radius * _uniform(rng, (0.6, 0.8))  # half width
    pen.capsule(np.array([[0.0, radius * 0.8], [0.0, radius + 4.0]]), 2.0 * handle)
    pen.capsule(np.array([[0.0, radius * 0.7], [0.0, radius * 1.15]]), 2.1 * handle, part=3)
    pen.polygon(_superellipse(radius, radius * 1.05, 2.0), part=2)
    return [np.array([[-handle * 0.4, radius * 1.3], [-handle * 0.4, radius + 3.0]])]


def _draw_slab(pen: _Pen, rng: np.random.Generator, *, phone: bool) -> list[FloatArray]:
    """A phone (with its camera bump as part 2) or a card, centred on the origin."""
    if phone:
        half_w, half_h, exponent = _uniform(rng, (0.45, 0.58)), _uniform(rng, (0.9, 1.15)), 6.0
    else:
        half_w, half_h = _uniform(rng, (0.3, 0.8)), _uniform(rng, (0.4, 1.0))
        exponent = _uniform(rng, (4.0, 12.0))
    pen.polygon(_superellipse(half_w, half_h, exponent, n=64))
    if phone:
        pen.polygon(_superellipse(0.16, 0.2, 5.0, center=(0.24 - half_w, 0.3 - half_h)), part=2)
    return [np.array([[-half_w * 0.7, -half_h * 0.9], [-half_w * 0.7, half_h * 0.9]])]


def _draw_ellipses(pen: _Pen, rng: np.random.Generator) -> None:
    """One to three overlapping ellipses, each turned its own way, near the origin."""
    for _ in range(_integer(rng, (1, 3))):
        center = rng.uniform(-0.4, 0.4, size=2)
        turn = float(rng.uniform(0.0, math.pi))
        c, s = math.cos(turn), math.sin(turn)
        outline = _superellipse(_uniform(rng, (0.25, 0.7)), _uniform(rng, (0.25, 0.7)), 2.0)
        pen.polygon(outline @ np.array([[c, s], [-s, c]]) + center)


@dataclass(frozen=True)
class MaskMixture:
    """Picks one generator per call with the given relative weights."""

    entries: tuple[tuple[float, ShapeGenerator], ...]
    _probabilities: npt.NDArray[np.float64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        weights = np.asarray([w for w, _ in self.entries], dtype=np.float64)
        if len(weights) == 0 or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("MaskMixture needs at least one entry and non-negative weights")
        object.__setattr__(self, "_probabilities", weights / weights.sum())

    def sample(self, rng: np.random.Generator) -> ShapeSample:
        """A shape from one generator, chosen by weight."""
        index = int(rng.choice(len(self.entries), p=self._probabilities))
        return self.entries[index][1].sample(rng)

    def __call__(self, rng: np.random.Generator) -> Mask:
        """Mask from one generator, chosen by weight."""
        return self.sample(rng).mask


def default_hole_mixture() -> MaskMixture:
    """Holes for training the inpainting network: mostly realistic occluders, some of the
    paper's box (for the ``paper`` configuration's regime) and free-form strokes."""
    return MaskMixture(
        (
            (0.1, PaperBox()),
            (0.25, FreeFormStrokes()),
            (0.35, FaceMaskShape()),
            (0.12, HandBlob()),
            (0.12, ObjectBlob()),
            (0.06, Scribble()),
        )
    )


OVERHANG_UNITS = (0.2, 0.5)
"""Sideways shift of an overhanging face mask (``FaceMaskShape.overhang``), eye distances."""


def overhang_hole_mixture() -> MaskMixture:
    """``default_hole_mixture`` with half of its face masks moved sideways past the face's
    outline (``FaceMaskShape.overhang``): the fill learns that a hole's outer part may be
    background, as under the mask of a turned head."""
    face_masks = MaskMixture(
        ((0.5, FaceMaskShape()), (0.5, FaceMaskShape(overhang=OVERHANG_UNITS)))
    )
    return MaskMixture(
        tuple(
            (weight, face_masks if isinstance(shape, FaceMaskShape) else shape)
            for weight, shape in default_hole_mixture().entries
        )
    )


def default_occluder_mixture() -> MaskMixture:
    """Shapes for training the occlusion segmenter: face masks dominate real footage."""
    return MaskMixture(
        (
            (0.5, FaceMaskShape()),
            (0.17, HandBlob()),
            (0.15, ObjectBlob()),
            (0.1, Scribble()),
            (0.08, FreeFormStrokes()),
        )
    )
