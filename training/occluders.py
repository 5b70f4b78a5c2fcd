"""Realistic synthetic occluders painted onto aligned face crops, deterministic by seed.

The occlusion segmenter (``--mask-detect``) learns from real unmasked faces with these
painted on: a shape from ``training.masks`` filled with a material (surgical-mask colours,
printed fabrics, a texture patch cut from a photo, skin for hands, flat plastics for
objects, ink for scribbles, digital damage for strokes), shaded (a lighting gradient, the
curve of the face, darker folds and lighter ridges, rounded edges, fabric grain) and
composited with anti-aliased edges. The returned coverage mask is exactly the shape's hole
mask (soft coverage >= 0.5); pixels further than 2 px from it are never touched.

Everything is computed inside the shape's bounding box only: the segmenter trains on
millions of these, so one costs a few milliseconds on one CPU thread.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from avinpaint.spec import CROP_SIZE
from training.masks import (
    FACE_MASK_KINDS,
    OBJECT_KINDS,
    Mask,
    ShapeGenerator,
    ShapeKind,
    ShapeSample,
    default_occluder_mixture,
)

Image = npt.NDArray[np.uint8]
"""BGR uint8 (H, W, 3), OpenCV's convention."""

_F32 = npt.NDArray[np.float32]
_RING_KERNEL = np.ones((3, 3), np.uint8)

# Colours are BGR. Surgical masks are overwhelmingly light blue, white, black or grey.
_SURGICAL_COLOURS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.34, (228, 196, 150)),  # light blue
    (0.2, (236, 236, 234)),  # white
    (0.16, (40, 38, 38)),  # black
    (0.1, (150, 148, 146)),  # grey
    (0.06, (190, 160, 236)),  # pink
    (0.06, (182, 204, 150)),  # surgical green
    (0.04, (96, 58, 40)),  # navy
    (0.04, (175, 205, 224)),  # beige
)
_RESPIRATOR_COLOURS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.5, (238, 238, 236)),  # white
    (0.15, (200, 200, 198)),  # light grey
    (0.12, (42, 40, 40)),  # black
    (0.08, (170, 200, 222)),  # beige
    (0.08, (180, 120, 230)),  # pink
    (0.07, (215, 180, 120)),  # blue
)
_FABRIC_COLOURS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.3, (36, 34, 34)),  # black
    (0.14, (96, 58, 40)),  # navy
    (0.12, (120, 120, 118)),  # grey
    (0.1, (228, 228, 226)),  # white
    (0.08, (160, 190, 210)),  # beige
    (0.26, (-1, -1, -1)),  # any saturated colour
)
# Skin from very light to very dark (BGR), for hands.
_SKIN_COLOURS: tuple[tuple[int, int, int], ...] = (
    (196, 224, 255),
    (167, 194, 241),
    (138, 172, 224),
    (110, 150, 205),
    (98, 134, 198),
    (68, 102, 161),
    (52, 76, 120),
    (40, 56, 88),
)
_OBJECT_COLOURS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.3, (30, 30, 32)),  # black plastic
    (0.15, (70, 70, 72)),  # dark grey
    (0.15, (192, 192, 196)),  # silver
    (0.1, (238, 238, 238)),  # white
    (0.3, (-1, -1, -1)),  # any saturated colour
)
_INK_COLOURS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.3, (20, 20, 20)),
    (0.15, (250, 250, 250)),
    (0.15, (40, 40, 220)),  # red
    (0.15, (200, 90, 30)),  # blue
    (0.1, (60, 170, 40)),  # green
    (0.15, (-1, -1, -1)),
)
_DAMAGE_COLOURS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.35, (0, 0, 0)),
    (0.2, (255, 255, 255)),
    (0.15, (128, 128, 128)),
    (0.3, (-1, -1, -1)),
)


@dataclass(frozen=True)
class OccluderStyle:
    """How occluders are painted. Probabilities are per call.

    ``pattern_probability``: a cloth mask gets a printed fabric pattern instead of a solid
    colour. ``photo_texture_probability``: where texture photos were given, a cloth mask or a
    damaged region gets a patch cut from one. ``face_skin_probability``: a hand takes the
    face's own skin colour (the hard case for a segmenter) instead of a random skin tone.
    ``lighting_match``: 0 keeps material colours, 1 scales them fully to the face's brightness
    and colour cast (real occluders share the scene's light). ``grain_sigma``: fabric and
    sensor noise, in grey levels. ``blur_probability`` and ``blur_sigma_px``: soften the
    material like the optics that softened the face (the edge stays within its 2 px band)."""

    pattern_probability: float = 0.5
    photo_texture_probability: float = 0.35
    face_skin_probability: float = 0.5
    lighting_match: float = 0.6
    grain_sigma: tuple[float, float] = (1.0, 4.0)
    blur_probability: float = 0.5
    blur_sigma_px: tuple[float, float] = (0.4, 1.2)


@dataclass(frozen=True)
class _Roi:
    """The shape's bounding box and per-pixel coordinates in the shape's frame (units)."""

    x0: int
    y0: int
    width: int
    height: int
    local_x: _F32
    local_y: _F32
    unit_px: float

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.height), slice(self.x0, self.x0 + self.width)


def render_occluder(
    face: Image,
    shape: ShapeSample,
    rng: np.random.Generator,
    style: OccluderStyle = OccluderStyle(),
    textures: Sequence[Image] = (),
) -> tuple[Image, Mask]:
    """Paint ``shape`` onto an aligned (CROP_SIZE, CROP_SIZE, 3) BGR crop.

    Returns the occluded crop (a new array) and the coverage mask, float32 {0, 1}: the pixels
    the occluder covers (its anti-aliased coverage >= 0.5). ``textures`` are BGR photos to cut
    fabric patches from (any size of at least 8x8)."""
    if face.shape != (CROP_SIZE, CROP_SIZE, 3) or face.dtype != np.uint8:
        raise ValueError(f"face must be uint8 ({CROP_SIZE}, {CROP_SIZE}, 3), got {face.shape}")
    out = face.copy()
    x0, y0, width, height = cv2.boundingRect((shape.alpha > 0).view(np.uint8))
    if width == 0 or height == 0:
        return out, shape.mask
    roi = _make_roi(shape, x0, y0, width, height)
    rows, cols = roi.slices
    face_roi = face[rows, cols]

    planes, physical = _paint(face, face_roi, shape, roi, rng, style, textures)
    if physical:
        planes *= _lighting_tint(face, style.lighting_match)[:, None, None]
        planes += _uniform(rng, style.grain_sigma) * _grain(rng, height, width)
    colour = cv2.merge(list(planes))
    if physical and rng.random() < style.blur_probability:
        colour = cv2.GaussianBlur(colour, (0, 0), _uniform(rng, style.blur_sigma_px))
    # Values are clipped to [0, 255] first, so the absolute value is a plain rounding cast.
    colour_u8 = cv2.convertScaleAbs(np.clip(colour, 0.0, 255.0))
    alpha = shape.alpha[rows, cols]
    # Where alpha is 0 the blend returns face_roi exactly.
    out[rows, cols] = cv2.blendLinear(colour_u8, face_roi, alpha, 1.0 - alpha)
    return out, shape.mask


@dataclass(frozen=True, eq=False)
class OccluderRenderer:
    """Samples a shape and paints it: ``renderer(face, rng) -> (occluded, coverage)``.

    ``textures`` are BGR photos (fabric swatches, other faces' clothing, anything) that cloth
    masks and damaged regions may cut patches from; the caller loads them."""

    shapes: ShapeGenerator = field(default_factory=default_occluder_mixture)
    style: OccluderStyle = OccluderStyle()
    textures: tuple[Image, ...] = ()

    def __call__(self, face: Image, rng: np.random.Generator) -> tuple[Image, Mask]:
        """One occluded crop and its coverage mask."""
        return render_occluder(face, self.shapes.sample(rng), rng, self.style, self.textures)


# --- painting ----------------------------------------------------------------------------
# Colours are held as planes (3, H, W): numpy is several times slower on interleaved
# (H, W, 3) arrays, whose innermost axis has only 3 elements.


def _paint(
    face: Image,
    face_roi: Image,
    shape: ShapeSample,
    roi: _Roi,
    rng: np.random.Generator,
    style: OccluderStyle,
    textures: Sequence[Image],
) -> tuple[_F32, bool]:
    """Material times shading over the ROI as BGR planes, and whether it is a physical object
    (lit like the face, grainy, as soft as the photo) rather than a digital overlay."""
    kind = shape.kind
    if kind in FACE_MASK_KINDS:
        return _paint_face_mask(shape, roi, rng, style, textures), True
    if kind == ShapeKind.HAND:
        return _paint_hand(face, shape, roi, rng, style), True
    if kind in OBJECT_KINDS:
        return _paint_object(shape, roi, rng), True
    if kind == ShapeKind.SCRIBBLE:
        return _solid(roi, _pick_colour(rng, _INK_COLOURS)), False
    return _paint_damage(face_roi, roi, rng, style, textures), False


def _paint_face_mask(
    shape: ShapeSample,
    roi: _Roi,
    rng: np.random.Generator,
    style: OccluderStyle,
    textures: Sequence[Image],
) -> _F32:
    kind = shape.kind
    if kind == ShapeKind.CLOTH:
        if textures and rng.random() < style.photo_texture_probability:
            planes = _photo_patch(roi, rng, textures)
        elif rng.random() < style.pattern_probability:
            planes = _fabric_pattern(roi, rng)
        else:
            planes = _solid(roi, _pick_colour(rng, _FABRIC_COLOURS))
    elif kind == ShapeKind.SURGICAL:
        planes = _solid(roi, _pick_colour(rng, _SURGICAL_COLOURS))
    else:
        planes = _solid(roi, _pick_colour(rng, _RESPIRATOR_COLOURS))

    shade = _gradient(roi, rng, (0.08, 0.35))
    # The mask wraps around the face: its sides turn away from the light.
    wrap = np.clip(roi.local_x * np.float32(1.0 / 1.15), -1.2, 1.2)
    shade *= 1.0 - np.float32(_uniform(rng, (0.1, 0.3))) * wrap * wrap
    distance = _edge_distance_px(shape, roi)
    if kind == ShapeKind.KN95:
        # Two flat panels meeting at the centre fold, lit differently.
        facet = np.clip(roi.local_x * np.float32(roi.unit_px / 1.5), -1.0, 1.0)
        shade *= 1.0 + np.float32(_uniform(rng, (-0.15, 0.15))) * facet
    if kind == ShapeKind.N95:
        shade *= 0.78 + 0.22 * np.sqrt(np.minimum(distance * (1.0 / (0.25 * roi.unit_px)), 1.0))
    elif kind == ShapeKind.SURGICAL:
        # A bound hem runs round the edge: denser fabric, a little brighter or darker.
        hem = distance < _uniform(rng, (3.0, 6.0))
        shade[hem] *= np.float32(1.0 + _uniform(rng, (-0.08, 0.1)))
    else:
        shade *= 0.85 + 0.15 * np.minimum(distance * np.float32(1.0 / 6.0), 1.0)
    if kind == ShapeKind.CLOTH:
        shade *= 1.0 + np.float32(_uniform(rng, (0.02, 0.08))) * _smooth_noise(roi, rng, 4)
    fold_depth = np.float32(_uniform(rng, (0.12, 0.35)))
    shade *= 1.0 - fold_depth * _line_map(shape.folds, roi, 2, 1.6)
    planes *= shade
    _add_highlights(planes, shape, roi, _uniform(rng, (0.05, 0.25)))

    parts = shape.part_ids[roi.slices]
    if (parts == 2).any():
        body = parts == 1
        # Grown by a pixel off the body so the straps' anti-aliased fringe is strap-coloured.
        straps = cv2.dilate((parts == 2).view(np.uint8), _RING_KERNEL).view(bool) & ~body
        if rng.random() < 0.5:
            strap_colour = planes[:, body].mean(axis=1)
        else:
            strap_colour = np.full(3, _uniform(rng, (200.0, 245.0)), np.float32)
        planes[:, straps] = strap_colour[:, None]
    return planes


def _paint_hand(
    face: Image, shape: ShapeSample, roi: _Roi, rng: np.random.Generator, style: OccluderStyle
) -> _F32:
    if rng.random() < style.face_skin_probability:
        skin = _face_skin(face)
    else:
        skin = np.asarray(_SKIN_COLOURS[int(rng.integers(len(_SKIN_COLOURS)))], np.float32)
    skin = skin * np.float32(_uniform(rng, (0.88, 1.08))) + rng.normal(0, 6, 3).astype(np.float32)
    planes = _solid(roi, skin)
    # Blotchy redness, as real skin has.
    planes[2] += 8.0 * _smooth_noise(roi, rng, 5)
    sleeve = shape.part_ids[roi.slices] == 2
    if sleeve.any():
        planes[:, sleeve] = _pick_colour(rng, _FABRIC_COLOURS)[:, None]
    distance = _edge_distance_px(shape, roi)
    # Fingers and palm are rounded: darker towards their silhouettes.
    shade = 0.6 + 0.4 * np.sqrt(np.minimum(distance * np.float32(10.0 / roi.unit_px), 1.0))
    shade *= _gradient(roi, rng, (0.05, 0.3))
    shade *= 1.0 - np.float32(_uniform(rng, (0.12, 0.25))) * _line_map(shape.folds, roi, 2, 1.2)
    planes *= shade
    return planes


def _paint_object(shape: ShapeSample, roi: _Roi, rng: np.random.Generator) -> _F32:
    planes = _solid(roi, _pick_colour(rng, _OBJECT_COLOURS))
    parts = shape.part_ids[roi.slices]
    if shape.kind == ShapeKind.MICROPHONE:
        head = parts == 2
        cycles = np.float32(roi.unit_px * math.pi / _uniform(rng, (2.5, 4.0)))
        grid = np.sin(roi.local_x[head] * cycles) * np.sin(roi.local_y[head] * cycles)
        metal = _uniform(rng, (70.0, 170.0))
        planes[:, head] = (metal * (0.75 + 0.25 * np.sign(grid)))[None, :]
        planes[:, parts == 3] = _uniform(rng, (40.0, 200.0))
    elif shape.kind == ShapeKind.PHONE:
        bump = parts == 2
        planes[:, bump] *= 0.55
    distance = _edge_distance_px(shape, roi)
    shade = 0.72 + 0.28 * np.sqrt(
        np.minimum(distance * np.float32(1.0 / (0.12 * roi.unit_px)), 1.0)
    )
    shade *= _gradient(roi, rng, (0.05, 0.4))
    planes *= shade
    _add_highlights(planes, shape, roi, _uniform(rng, (0.2, 0.6)))
    return planes


def _paint_damage(
    face_roi: Image,
    roi: _Roi,
    rng: np.random.Generator,
    style: OccluderStyle,
    textures: Sequence[Image],
) -> _F32:
    """Digital damage or overlays: flat fills, noise, mosaic, patterns or photo patches."""
    choice = rng.random()
    if choice < 0.35:
        return _solid(roi, _pick_colour(rng, _DAMAGE_COLOURS))
    if choice < 0.5:
        cell = int(rng.integers(1, 5))
        small = rng.integers(0, 256, (roi.height // cell + 1, roi.width // cell + 1, 3), np.uint8)
        noise = cv2.resize(small, (roi.width, roi.height), interpolation=cv2.INTER_NEAREST)
        return _planes(noise)
    if choice < 0.7:
        block = int(rng.integers(6, 17))
        shrunk = cv2.resize(
            face_roi,
            (max(1, roi.width // block), max(1, roi.height // block)),
            interpolation=cv2.INTER_AREA,
        )
        mosaic = cv2.resize(shrunk, (roi.width, roi.height), interpolation=cv2.INTER_NEAREST)
        # Mosaic of a flat region barely differs from it: shift it so the damage shows.
        shift = _uniform(rng, (15.0, 40.0)) * (1.0 if rng.random() < 0.5 else -1.0)
        return _planes(mosaic) + np.float32(shift)
    if textures and rng.random() < style.photo_texture_probability:
        return _photo_patch(roi, rng, textures)
    return _fabric_pattern(roi, rng)


# --- materials ---------------------------------------------------------------------------


def _planes(image: npt.NDArray[Any]) -> _F32:
    """(H, W, 3) image to float32 (3, H, W) planes."""
    return np.stack([np.asarray(p, np.float32) for p in cv2.split(image)])


def _solid(roi: _Roi, colour: _F32) -> _F32:
    planes = np.empty((3, roi.height, roi.width), np.float32)
    planes[:] = colour[:, None, None]
    return planes


def _pick_colour(
    rng: np.random.Generator, palette: tuple[tuple[float, tuple[int, int, int]], ...]
) -> _F32:
    """A palette colour, jittered; (-1, -1, -1) entries stand for any saturated colour."""
    weights = np.asarray([w for w, _ in palette])
    _, base = palette[int(rng.choice(len(palette), p=weights / weights.sum()))]
    if base[0] < 0:
        hsv = np.array(
            [[[rng.integers(0, 180), rng.integers(120, 256), rng.integers(90, 250)]]], np.uint8
        )
        return np.asarray(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0], np.float32)
    jittered = np.asarray(base, np.float32) * np.float32(_uniform(rng, (0.9, 1.06)))
    return np.asarray(jittered + rng.normal(0.0, 6.0, 3).astype(np.float32), np.float32)


def _fabric_pattern(roi: _Roi, rng: np.random.Generator) -> _F32:
    """Stripes, gingham checks, polka dots or mottled noise in two fabric colours."""
    first = _pick_colour(rng, _FABRIC_COLOURS)
    second = _pick_colour(rng, _FABRIC_COLOURS)
    if float(np.abs(first - second).sum()) < 120.0:
        second = 255.0 - first  # make sure the pattern is visible
    period_px = _uniform(rng, (5.0, 22.0))
    angle = float(rng.uniform(0.0, math.pi))
    cycles = roi.unit_px / period_px
    c, s = np.float32(math.cos(angle) * cycles), np.float32(math.sin(angle) * cycles)
    u = roi.local_x * c + roi.local_y * s
    v = roi.local_y * c - roi.local_x * s
    pattern = int(rng.integers(4))
    if pattern == 0:
        duty = _uniform(rng, (0.2, 0.6))
        weight = _soft_step(np.abs((u % 1.0) - 0.5) * 2.0 - (1.0 - duty), period_px)
    elif pattern == 1:
        a = _soft_step(np.abs((u % 1.0) - 0.5) - 0.25, period_px)
        b = _soft_step(np.abs((v % 1.0) - 0.5) - 0.25, period_px)
        weight = (a + b) * np.float32(0.5)
    elif pattern == 2:
        radius = _uniform(rng, (0.15, 0.35))
        du = (u % 1.0) - 0.5
        dv = ((v + 0.5 * np.floor(u)) % 1.0) - 0.5
        weight = _soft_step(radius - np.sqrt(du * du + dv * dv), period_px)
    else:
        weight = 0.5 + 0.5 * _smooth_noise(roi, rng, int(rng.integers(3, 9)))
    return np.asarray(first[:, None, None] + (second - first)[:, None, None] * weight, np.float32)


def _soft_step(signed: npt.NDArray[np.floating[Any]], period_px: float) -> _F32:
    """0 below zero, 1 above, with about a pixel of transition (no aliasing shimmer)."""
    return np.asarray(np.clip(signed * period_px + 0.5, 0.0, 1.0), np.float32)


def _photo_patch(roi: _Roi, rng: np.random.Generator, textures: Sequence[Image]) -> _F32:
    """A random crop of a random texture photo, resized over the ROI."""
    source = textures[int(rng.integers(len(textures)))]
    src_h, src_w = source.shape[:2]
    scale = _uniform(rng, (0.3, 1.0))
    crop_w = max(8, min(src_w, round(src_w * scale)))
    crop_h = max(8, min(src_h, round(crop_w * roi.height / max(roi.width, 1))))
    x = int(rng.integers(0, max(1, src_w - crop_w + 1)))
    y = int(rng.integers(0, max(1, src_h - crop_h + 1)))
    patch = source[y : y + crop_h, x : x + crop_w]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    resized = cv2.resize(
        np.ascontiguousarray(patch), (roi.width, roi.height), interpolation=cv2.INTER_LINEAR
    )
    return _planes(np.asarray(resized).reshape(roi.height, roi.width, 3))


def _face_skin(face: Image) -> _F32:
    """Median colour of the cheeks of the aligned crop (below the eyes, beside the nose)."""
    size = CROP_SIZE
    rows = slice(size * 100 // 256, size * 140 // 256)
    left = face[rows, size * 60 // 256 : size * 90 // 256]
    right = face[rows, size * 166 // 256 : size * 196 // 256]
    pixels = np.concatenate([left.reshape(-1, 3), right.reshape(-1, 3)]).astype(np.float32)
    return np.asarray(np.median(pixels, axis=0), np.float32)


# --- shading -----------------------------------------------------------------------------


def _make_roi(shape: ShapeSample, x0: int, y0: int, width: int, height: int) -> _Roi:
    ox, oy = shape.origin_xy
    c, s = math.cos(shape.angle_rad), math.sin(shape.angle_rad)
    inv_unit = 1.0 / shape.unit_px
    xs = (np.arange(x0, x0 + width, dtype=np.float32) - ox)[None, :]
    ys = (np.arange(y0, y0 + height, dtype=np.float32) - oy)[:, None]
    local_x = ((xs * c + ys * s) * inv_unit).astype(np.float32)
    local_y = ((ys * c - xs * s) * inv_unit).astype(np.float32)
    return _Roi(x0, y0, width, height, local_x, local_y, shape.unit_px)


def _gradient(roi: _Roi, rng: np.random.Generator, strength: tuple[float, float]) -> _F32:
    """A smooth linear lighting ramp in a random direction: 1 -/+ strength at the ends of the
    bounding box (so big shapes are not lit more unevenly than small ones)."""
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    half_extent = 0.5 * math.hypot(roi.width, roi.height)
    gain = _uniform(rng, strength) / half_extent
    xs = (np.arange(roi.width, dtype=np.float32) - 0.5 * roi.width) * np.float32(
        gain * math.cos(angle)
    )
    ys = (np.arange(roi.height, dtype=np.float32) - 0.5 * roi.height) * np.float32(
        gain * math.sin(angle)
    )
    return np.asarray(1.0 + xs[None, :] + ys[:, None], np.float32)


def _edge_distance_px(shape: ShapeSample, roi: _Roi) -> _F32:
    """Distance (px) from each covered pixel to the nearest uncovered one, inside the ROI
    padded by one pixel so that shape edges on the ROI border count as edges."""
    rows, cols = roi.slices
    padded = cv2.copyMakeBorder(
        shape.mask[rows, cols].astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0
    )
    # Shapes cut by the crop border continue beyond it: replicate there instead of an edge.
    if roi.y0 == 0:
        padded[0] = padded[1]
    if roi.x0 == 0:
        padded[:, 0] = padded[:, 1]
    if roi.y0 + roi.height == CROP_SIZE:
        padded[-1] = padded[-2]
    if roi.x0 + roi.width == CROP_SIZE:
        padded[:, -1] = padded[:, -2]
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 3)
    return np.asarray(distance[1:-1, 1:-1], np.float32)


def _line_map(
    lines: tuple[npt.NDArray[np.float64], ...], roi: _Roi, width_px: int, blur_px: float
) -> _F32:
    """Soft lines (0..1) along the given crop-pixel polylines, for folds and ridges."""
    canvas = np.zeros((roi.height, roi.width), np.uint8)
    if not lines:
        return canvas.astype(np.float32)
    offset = np.array([roi.x0, roi.y0], np.float64)
    pts = [np.round((line - offset) * 16.0).astype(np.int32).reshape(-1, 1, 2) for line in lines]
    cv2.polylines(canvas, pts, False, 255, width_px, cv2.LINE_AA, 4)
    soft = cv2.GaussianBlur(canvas, (0, 0), blur_px)
    return np.asarray(soft, np.float32) * np.float32(1.0 / 255.0)


def _add_highlights(planes: _F32, shape: ShapeSample, roi: _Roi, strength: float) -> None:
    """Brighten towards white along the ridges (screen-like, so dark plastics shine too)."""
    if not shape.ridges:
        return
    ridge = _line_map(shape.ridges, roi, 3, 2.0) * np.float32(strength)
    planes += (255.0 - planes) * ridge


def _smooth_noise(roi: _Roi, rng: np.random.Generator, cells: int) -> _F32:
    """Low-frequency noise in [-1, 1] over the ROI (wrinkles, mottling)."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return np.asarray(
        cv2.resize(grid, (roi.width, roi.height), interpolation=cv2.INTER_CUBIC), np.float32
    )


@functools.cache
def _grain_tile() -> _F32:
    # Normal draws cost about 1 ms per crop; a fixed tile read at a random offset is free
    # and, at 512 px, never shows a repeat inside one crop.
    return np.random.default_rng(0x5EED).standard_normal((512, 512), dtype=np.float32)


def _grain(rng: np.random.Generator, height: int, width: int) -> _F32:
    tile = _grain_tile()
    y = int(rng.integers(0, tile.shape[0] - height + 1))
    x = int(rng.integers(0, tile.shape[1] - width + 1))
    return tile[y : y + height, x : x + width]


def _lighting_tint(face: Image, strength: float) -> _F32:
    """Per-channel factor bringing material colours towards the face's light level and cast."""
    mean = np.asarray(cv2.mean(face)[:3], np.float32)
    luminance = float(mean.mean())
    if luminance < 1.0:
        return np.ones(3, np.float32)
    brightness = min(max(math.sqrt(luminance / 140.0), 0.55), 1.15)
    cast = (mean / luminance) ** 0.3
    return np.asarray(1.0 + strength * (brightness * cast - 1.0), np.float32)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))
