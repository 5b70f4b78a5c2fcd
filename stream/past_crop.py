"""Follow an occluder past the edge of the face crop, in the frame, and fill what it covers
there.

The segmenter and the inpainting network see only the aligned crop. A hand whose fingers
reach past the cheek, or a mask on a head turned to the side whose lower part hangs below
the crop, is cut at the crop's edge: without this step the part outside stays in the video,
beside the restored face, with a straight edge where the crop ended (on the real
``eval_only`` clips that lose most to Telea, 34-75% of the missed occluder lay outside the
crop).

Where the covered region meets the crop's edge, the occluder goes on in the frame. Frame
pixels beyond the crop (at most ``PastCropOptions.reach`` crop sides past it) join it when
their Lab colour is nearer the occluder's colours just inside the cut than the visible
colours beside them there, lies within the occluder's own colour spread, and connects to
the cut. A part larger than ``max_ratio`` times the region inside the crop is taken to
have leaked into a background of the occluder's colour and is dropped. What joins is
filled from its rim (Telea): it is background, clothing or neck, not face, so the network
has nothing to add there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from avinpaint.geometry import apply_affine
from stream.composite import BoolMask, FrameRegion
from stream.types import FloatArray, Image

_EDGE_BAND_PX = 2
"""Crop pixels along the crop's border in which the region counts as cut by it."""


@dataclass(frozen=True)
class PastCropOptions:
    """How far and how readily an occluder is followed past the crop (``past_crop_region``).

    ``reach``: farthest a frame pixel may lie past the crop's footprint, in crop sides.
    ``min_cut_px``: region pixels in the crop's 2 px border band needed to look past it at
    all. ``min_width``: the region must be at least this wide (crop sides) where it meets
    the crop's edge. ``slack``: how far sideways of the cut (crop sides) the part may spread.
    ``sample_px``: depth inside the crop's edge, crop pixels, from which the occluder's and
    the visible colours are sampled. ``clusters``: colours per side. ``spread``: a pixel
    must lie within this many times the occluder samples' 90th-percentile distance to their
    own colours (at least ``min_distance`` Lab levels). ``margin``: and its distance to the
    occluder's colours must be under this fraction of its distance to the other colours.
    ``max_ratio``: the part may be at most this many times the region's frame area inside
    the crop. ``work_side_px``: a face whose crop spans more frame pixels is examined
    downscaled to this, so the cost does not grow with the face. ``fill_radius_px``: Telea's
    radius, frame pixels."""

    reach: float = 0.3
    min_cut_px: int = 6
    sample_px: float = 24.0
    clusters: int = 4
    spread: float = 1.0
    min_distance: float = 8.0
    max_ratio: float = 1.0
    margin: float = 0.6
    min_width: float = 0.1
    slack: float = 0.03
    work_side_px: float = 256.0
    fill_radius_px: int = 3

    def __post_init__(self) -> None:
        if self.reach <= 0 or self.sample_px <= 0 or self.spread <= 0 or self.max_ratio <= 0:
            raise ValueError("reach, sample_px, spread and max_ratio must be > 0")
        if self.min_cut_px < 1 or self.clusters < 1 or self.fill_radius_px < 1:
            raise ValueError("min_cut_px, clusters and fill_radius_px must be >= 1")
        if self.slack < 0 or self.min_width < 0:
            raise ValueError("slack and min_width must be >= 0")
        if self.work_side_px < 32:
            raise ValueError(f"work_side_px must be >= 32, got {self.work_side_px}")


def past_crop_region(
    frame: Image, hole_256: BoolMask, inverse_affine: FloatArray, options: PastCropOptions
) -> FrameRegion | None:
    """The frame pixels past the crop that the occluder cut by the crop's edge still covers
    (None: the region does not reach the edge, or nothing past it is the occluder's).

    ``frame``: the decoded frame (BGR, before any restoration); ``hole_256``: the region
    restored inside the crop; ``inverse_affine``: crop -> frame."""
    size = hole_256.shape[0]
    edge = np.zeros_like(hole_256)
    edge[:_EDGE_BAND_PX] = edge[-_EDGE_BAND_PX:] = True
    edge[:, :_EDGE_BAND_PX] = edge[:, -_EDGE_BAND_PX:] = True
    if np.count_nonzero(hole_256 & edge) < options.min_cut_px:
        return None
    scale = math.sqrt(abs(float(np.linalg.det(inverse_affine[:, :2]))))
    reach_px = options.reach * size * scale
    roi = _reach_roi(inverse_affine, size, reach_px, frame.shape[1], frame.shape[0])
    if roi is None:
        return None
    x0, y0, x1, y1 = roi
    shift = inverse_affine.copy()
    shift[:, 2] -= (x0, y0)
    patch = frame[y0:y1, x0:x1]
    factor = options.work_side_px / (size * scale)
    if factor >= 1.0:
        part = _part(patch, hole_256, shift, options)
    else:
        # A large face is looked at as if its crop spanned ``work_side_px``: the cost stays
        # that of a small face (the part is background, filled by Telea: its edge need
        # not be exact to the pixel).
        width = max(1, round((x1 - x0) * factor))
        height = max(1, round((y1 - y0) * factor))
        small = np.asarray(
            cv2.resize(patch, (width, height), interpolation=cv2.INTER_AREA), np.uint8
        )
        to_small = np.diag([width / (x1 - x0), height / (y1 - y0)]) @ shift
        part_small = _part(small, hole_256, to_small, options)
        if part_small is None:
            return None
        grown = cv2.resize(
            part_small.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR
        )
        ones = np.ones((size, size), np.float32)
        footprint = cv2.warpAffine(ones, shift, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
        part = (grown >= 0.5) & (footprint < 0.5)
    if part is None or not part.any():
        return None
    return FrameRegion(x0, y0, part)


def _part(
    bgr: Image, hole_256: BoolMask, shift: FloatArray, options: PastCropOptions
) -> BoolMask | None:
    """``past_crop_region``'s work in one image (``bgr``, with ``shift``: crop -> it)."""
    size = hole_256.shape[0]
    scale = math.sqrt(abs(float(np.linalg.det(shift[:, :2]))))
    reach_px = options.reach * size * scale
    height, width = bgr.shape[:2]
    planes = np.stack([np.ones((size, size), np.float32), hole_256.astype(np.float32)], axis=-1)
    warped = cv2.warpAffine(planes, shift, (width, height), flags=cv2.INTER_LINEAR)
    warped = warped.reshape(height, width, 2)
    footprint, hole = warped[..., 0] >= 0.5, warped[..., 1] >= 0.5
    outside = ~footprint
    if not outside.any() or not hole.any():
        return None
    # Distances in frame pixels: of an outside pixel to the footprint, of an inside pixel to
    # the outside.
    past, nearest = cv2.distanceTransformWithLabels(
        outside.view(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
    )
    depth = cv2.distanceTransform(footprint.view(np.uint8), cv2.DIST_L2, 3)
    reachable = outside & (past <= reach_px)
    seeds = hole & (depth <= 2.0)
    if options.min_width > 0:
        # Only where the region is thick at the cut: a sliver along the crop's edge is more
        # often the region's own error (a rim of neck, shirt or ear) than an occluder.
        radius = max(1, round(options.min_width / 2 * size * scale))
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        core = cv2.erode(hole.view(np.uint8), disk)
        seeds &= cv2.dilate(core, disk).view(bool)
        if not seeds.any():
            return None
    # The part goes on from the cut, not sideways along the crop's edge: only pixels whose
    # nearest crop pixel lies on the cut (widened by ``slack``) may join. A background of
    # the occluder's colour beside the crop (dark hair or a suit by a black mask) spreads
    # along the edge; a hand's wrist or a mask's lower half runs on across it.
    slack = round(options.slack * size * scale)
    cut = seeds
    if slack > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * slack + 1, 2 * slack + 1))
        cut = cv2.dilate(seeds.view(np.uint8), kernel).view(bool) & footprint & (depth <= 2.0)
    on_cut = np.zeros(int(nearest.max()) + 1, dtype=bool)
    on_cut[nearest[cut]] = True
    zone = reachable & on_cut[nearest]
    near_edge = footprint & (depth <= options.sample_px * scale)
    occluder_lab = _lab(bgr, near_edge & hole)
    occluder = _colours(occluder_lab, options.clusters)
    # What is not the occluder: the visible pixels inside the crop's edge, and the frame
    # past the crop beside the cut (background, clothes, hair), which the crop never shows.
    visible = _colours(
        np.concatenate([_lab(bgr, near_edge & ~hole), _lab(bgr, reachable & ~zone)]),
        2 * options.clusters,
    )
    if occluder is None or visible is None:
        return None
    own = _nearest(occluder_lab, occluder)
    limit = max(options.min_distance, options.spread * float(np.percentile(own, 90)))
    colours = _lab(bgr, zone, subsample=False)
    to_occluder = _nearest(colours, occluder)
    candidate = np.zeros_like(zone)
    candidate[zone] = (to_occluder < options.margin * _nearest(colours, visible)) & (
        to_occluder <= limit
    )
    # A pixel-wide thread of look-alike colour must not carry the part into the background.
    candidate = cv2.morphologyEx(
        candidate.view(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)
    ).view(bool)
    count, labels = cv2.connectedComponents((candidate | seeds).view(np.uint8), connectivity=8)
    joined = np.unique(labels[seeds])
    joined = joined[joined > 0]
    if count <= 1 or joined.size == 0:
        return None
    part: BoolMask = np.isin(labels, joined) & outside
    area = int(np.count_nonzero(part))
    if area == 0 or area > options.max_ratio * np.count_nonzero(hole):
        return None
    return part


def fill_past_crop(image: Image, region: FrameRegion, radius_px: int) -> Image:
    """``image`` with ``region``'s pixels filled from their rim (OpenCV's Telea); every other
    pixel keeps its value."""
    height, width = region.inside.shape
    pad = radius_px + 2
    x0, y0 = max(0, region.x - pad), max(0, region.y - pad)
    x1 = min(image.shape[1], region.x + width + pad)
    y1 = min(image.shape[0], region.y + height + pad)
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    ry, rx = region.y - y0, region.x - x0
    mask[ry : ry + height, rx : rx + width] = region.inside
    patch = np.ascontiguousarray(image[y0:y1, x0:x1])
    filled = cv2.inpaint(patch, mask, float(radius_px), cv2.INPAINT_TELEA)
    out = image.copy()
    np.copyto(out[y0:y1, x0:x1], filled, where=mask[:, :, None] > 0)
    return out


def merge_regions(first: FrameRegion | None, second: FrameRegion | None) -> FrameRegion | None:
    """The union of two frame regions (either may be None)."""
    if first is None or second is None:
        return first if second is None else second
    x0, y0 = min(first.x, second.x), min(first.y, second.y)
    x1 = max(first.x + first.inside.shape[1], second.x + second.inside.shape[1])
    y1 = max(first.y + first.inside.shape[0], second.y + second.inside.shape[0])
    inside = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for part in (first, second):
        h, w = part.inside.shape
        inside[part.y - y0 : part.y - y0 + h, part.x - x0 : part.x - x0 + w] |= part.inside
    return FrameRegion(x0, y0, inside)


def _reach_roi(
    inverse_affine: FloatArray, size: int, reach_px: float, width: int, height: int
) -> tuple[int, int, int, int] | None:
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    mapped = apply_affine(inverse_affine, corners)
    x0 = max(0, math.floor(mapped[:, 0].min() - reach_px))
    y0 = max(0, math.floor(mapped[:, 1].min() - reach_px))
    x1 = min(width, math.ceil(mapped[:, 0].max() + reach_px) + 1)
    y1 = min(height, math.ceil(mapped[:, 1].max() + reach_px) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)


_MIN_SAMPLES = 24
_MAX_SAMPLES = 1024


def _lab(bgr: Image, where: BoolMask, subsample: bool = True) -> npt.NDArray[np.float32]:
    """Lab colours (N, 3) of ``bgr``'s pixels at ``where``; at most about ``_MAX_SAMPLES``
    of them, evenly strided, with ``subsample`` (converting only these is most of the cost
    saved: the whole ROI of a large face is ~0.5 Mpixel)."""
    pixels = bgr[where]
    if subsample and len(pixels) > _MAX_SAMPLES:
        pixels = pixels[:: len(pixels) // _MAX_SAMPLES]
    lab = cv2.cvtColor(np.ascontiguousarray(pixels).reshape(-1, 1, 3), cv2.COLOR_BGR2LAB)
    return lab.reshape(-1, 3).astype(np.float32)


def _colours(samples: npt.NDArray[np.float32], clusters: int) -> FloatArray | None:
    """A few representative colours of ``samples`` (N, 3): OpenCV's k-means started from
    lightness bins (so the same samples always give the same colours, without its random
    start), clusters holding under 5% of the samples dropped. None for too few samples."""
    if len(samples) < _MIN_SAMPLES:
        return None
    step = max(1, len(samples) // _MAX_SAMPLES)
    data = np.ascontiguousarray(samples[::step], dtype=np.float32)
    # No more clusters than distinct colours: an emptied cluster would be restarted from
    # OpenCV's random generator.
    codes = np.rint(data).astype(np.int64) @ np.array([65536, 256, 1], np.int64)
    k = min(clusters, len(np.unique(codes)))
    rank = np.empty(len(data), np.int32)
    rank[np.argsort(data[:, 0], kind="stable")] = np.arange(len(data), dtype=np.int32)
    start = (rank * k // len(data)).astype(np.int32).reshape(-1, 1)
    criteria = (cv2.TERM_CRITERIA_MAX_ITER + cv2.TERM_CRITERIA_EPS, 8, 0.5)
    _, found, centres = cv2.kmeans(data, k, start, criteria, 1, cv2.KMEANS_USE_INITIAL_LABELS)
    labels = np.asarray(found, np.int64)
    shares = np.bincount(labels.ravel(), minlength=k) / len(data)
    kept: FloatArray = centres[shares >= 0.05].astype(np.float64)
    return kept


def _nearest(colours: npt.NDArray[np.float32], centres: FloatArray) -> FloatArray:
    """Distance of each colour (N, 3) to its nearest centre."""
    diff = colours[:, None, :].astype(np.float64) - centres[None]
    distance: FloatArray = np.sqrt((diff**2).sum(-1).min(axis=1))
    return distance
