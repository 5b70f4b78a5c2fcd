"""Photometric and geometric augmentation of aligned training crops for the gap between
still photos and real video.

The crops the model trains on are clean, sharp, well-lit photos and talking-head frames; what
it restores in use are faces in H.264 video: resized from whatever size the face had in the
frame, blurred by motion and focus, blocky from compression, lit from one side, under another
white balance, sometimes behind glasses, and aligned by a tracker that jitters by a pixel or
two. Each of those is one small pure function here, and ``augment_crop`` chains them with the
probabilities of ``AugmentOptions``. The augmented crop is both the network's input (before
the hole is cut) and its target: the network has to continue the visible face *as it is*,
degraded or not, never sharpen or re-colour it.

Every random choice comes from the caller's ``numpy.random.Generator`` (the sample's own,
seeded by run seed, epoch and index), so a resumed run sees exactly the same crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from avinpaint.spec import CROP_SIZE, CROP_TEMPLATE_256

ImageU8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class AugmentOptions:
    """Probability of each augmentation per crop and its range.

    ``jitter_*``: a small similarity warp (the tracker's alignment error and small pose
    changes). ``rescale_*``: the face was this many pixels wide in the frame (the crop is
    resized down to it and back up). ``blur_sigma_px``: Gaussian blur (focus, motion).
    ``jpeg_quality``: block compression (JPEG at this quality, then 4:2:0 chroma as H.264
    stores it). ``colour_*``: white balance (per-channel gain), brightness and contrast,
    saturation. ``light_*``: a linear light gradient across the face (one-sided lighting).
    ``glasses``: drawn spectacle frames (and sometimes tinted lenses) on the eyes."""

    jitter_probability: float = 0.5
    jitter_rotation_deg: float = 4.0
    jitter_scale: float = 0.05
    jitter_shift_px: float = 4.0
    rescale_probability: float = 0.4
    rescale_min_px: int = 64
    rescale_max_px: int = 200
    blur_probability: float = 0.25
    blur_sigma_px: tuple[float, float] = (0.4, 1.6)
    jpeg_probability: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 90)
    colour_probability: float = 0.6
    colour_gain: float = 0.1
    colour_brightness: float = 0.15
    colour_contrast: float = 0.15
    colour_saturation: float = 0.25
    light_probability: float = 0.3
    light_strength: float = 0.35
    glasses_probability: float = 0.12

    def __post_init__(self) -> None:
        for name in (
            "jitter_probability",
            "rescale_probability",
            "blur_probability",
            "jpeg_probability",
            "colour_probability",
            "light_probability",
            "glasses_probability",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 8 <= self.rescale_min_px <= self.rescale_max_px:
            raise ValueError("need 8 <= rescale_min_px <= rescale_max_px")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality must be a range in 1..100, got {self.jpeg_quality}")


def augment_crop(image: ImageU8, rng: np.random.Generator, options: AugmentOptions) -> ImageU8:
    """``image`` (CROP_SIZE, CROP_SIZE, 3) BGR uint8 with each augmentation applied with its
    probability, in the order a camera and codec would apply them: geometry, glasses, light,
    colour, optics, resolution, compression."""
    if image.shape != (CROP_SIZE, CROP_SIZE, 3) or image.dtype != np.uint8:
        raise ValueError(f"expected a ({CROP_SIZE}, {CROP_SIZE}, 3) uint8 crop, got {image.shape}")
    out = image
    o = options
    # Every draw happens whether or not its augmentation is applied, so one option's
    # probability never shifts the random stream of the others.
    draws = rng.random(7)
    if draws[0] < o.jitter_probability:
        out = jitter(out, rng, o.jitter_rotation_deg, o.jitter_scale, o.jitter_shift_px)
    if draws[1] < o.glasses_probability:
        out = draw_glasses(out, rng)
    if draws[2] < o.light_probability:
        out = light_gradient(out, rng.uniform(0.0, 2 * math.pi), rng.uniform(0.1, o.light_strength))
    if draws[3] < o.colour_probability:
        gains = 1.0 + rng.uniform(-o.colour_gain, o.colour_gain, 3)
        out = colour(
            out,
            gains,
            brightness=rng.uniform(-o.colour_brightness, o.colour_brightness),
            contrast=1.0 + rng.uniform(-o.colour_contrast, o.colour_contrast),
            saturation=1.0 + rng.uniform(-o.colour_saturation, o.colour_saturation),
        )
    if draws[4] < o.blur_probability:
        out = blur(out, rng.uniform(*o.blur_sigma_px))
    if draws[5] < o.rescale_probability:
        out = rescale(out, int(rng.integers(o.rescale_min_px, o.rescale_max_px + 1)))
    if draws[6] < o.jpeg_probability:
        out = compress(out, int(rng.integers(o.jpeg_quality[0], o.jpeg_quality[1] + 1)))
    return out


def jitter(
    image: ImageU8,
    rng: np.random.Generator,
    rotation_deg: float,
    scale: float,
    shift_px: float,
) -> ImageU8:
    """A random similarity warp about the crop's centre, borders replicated (as the
    aligner's own warp does)."""
    centre = (CROP_SIZE / 2.0, CROP_SIZE / 2.0)
    matrix = np.asarray(
        cv2.getRotationMatrix2D(
            centre, rng.uniform(-rotation_deg, rotation_deg), 1.0 + rng.uniform(-scale, scale)
        ),
        np.float64,
    )
    matrix[:, 2] += rng.uniform(-shift_px, shift_px, 2)
    return np.asarray(
        cv2.warpAffine(
            image,
            matrix,
            (CROP_SIZE, CROP_SIZE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        ),
        np.uint8,
    )


def rescale(image: ImageU8, face_px: int) -> ImageU8:
    """Down to ``face_px`` square and back up: the detail a face of that size had."""
    if face_px >= CROP_SIZE:
        return image
    small = cv2.resize(image, (face_px, face_px), interpolation=cv2.INTER_AREA)
    return np.asarray(
        cv2.resize(small, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LINEAR), np.uint8
    )


def blur(image: ImageU8, sigma_px: float) -> ImageU8:
    """Gaussian blur of ``sigma_px``."""
    return np.asarray(cv2.GaussianBlur(image, (0, 0), sigma_px), np.uint8)


def compress(image: ImageU8, quality: int) -> ImageU8:
    """JPEG at ``quality`` (8x8 blocks, quantised detail), then chroma halved in both
    directions and restored, as H.264's 4:2:0 stores colour."""
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode a crop")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    if decoded is None:
        raise RuntimeError("OpenCV could not decode its own JPEG")
    ycc = np.asarray(cv2.cvtColor(decoded, cv2.COLOR_BGR2YCrCb), np.uint8)
    half = CROP_SIZE // 2
    for channel in (1, 2):
        small = cv2.resize(ycc[:, :, channel], (half, half), interpolation=cv2.INTER_AREA)
        ycc[:, :, channel] = cv2.resize(
            small, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LINEAR
        )
    return np.asarray(cv2.cvtColor(ycc, cv2.COLOR_YCrCb2BGR), np.uint8)


def colour(
    image: ImageU8,
    gains_bgr: npt.NDArray[np.float64],
    *,
    brightness: float,
    contrast: float,
    saturation: float,
) -> ImageU8:
    """White balance (per-channel gains), then contrast about mid-grey, brightness (a
    fraction of full scale) and saturation (blend with the grey image)."""
    x = image.astype(np.float32) / 255.0
    x = x * gains_bgr.astype(np.float32)
    x = (x - 0.5) * np.float32(contrast) + 0.5 + np.float32(brightness)
    grey = x @ np.array([0.114, 0.587, 0.299], np.float32)
    x = grey[..., None] + (x - grey[..., None]) * np.float32(saturation)
    return np.asarray(np.clip(np.rint(x * 255.0), 0, 255), np.uint8)


def light_gradient(image: ImageU8, angle_rad: float, strength: float) -> ImageU8:
    """Light falling off linearly across the crop in direction ``angle_rad``: gain
    ``1 + strength`` on the lit side, ``1 - strength`` on the other."""
    coords = (np.arange(CROP_SIZE, dtype=np.float32) - CROP_SIZE / 2.0) / (CROP_SIZE / 2.0)
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    gain = 1.0 + strength * (xs * math.cos(angle_rad) + ys * math.sin(angle_rad)) / math.sqrt(2)
    lit = image.astype(np.float32) * gain[..., None]
    return np.asarray(np.clip(np.rint(lit), 0, 255), np.uint8)


def draw_glasses(image: ImageU8, rng: np.random.Generator) -> ImageU8:
    """Spectacle frames around the template's eyes: two rounded rims joined by a bridge,
    temple arms towards the crop's sides, a random dark or metallic colour, and with
    probability 0.3 tinted lenses."""
    left, right = (np.asarray(p, np.float64) for p in CROP_TEMPLATE_256[:2])
    eye_distance = float(np.linalg.norm(right - left))
    half_w = eye_distance * rng.uniform(0.36, 0.46)
    half_h = half_w * rng.uniform(0.6, 0.85)
    thickness = max(1, round(eye_distance * rng.uniform(0.02, 0.05)))
    # Mostly dark plastic (near-black to brown), sometimes grey metal.
    if rng.random() < 0.75:
        base = rng.uniform(10, 60)
        frame_colour = tuple(
            int(base * f) for f in (rng.uniform(0.5, 1.0), rng.uniform(0.7, 1.0), 1.0)
        )
    else:
        grey = rng.uniform(110, 200)
        frame_colour = (int(grey), int(grey), int(grey))
    out = image.copy()
    if rng.random() < 0.3:
        lenses = np.zeros(image.shape[:2], np.uint8)
        for eye in (left, right):
            cv2.ellipse(lenses, _point(eye), (round(half_w), round(half_h)), 0, 0, 360, 255, -1)
        tint = rng.uniform(0.15, 0.5)
        shaded = out.astype(np.float32) * (1.0 - tint)
        out = np.where(lenses[..., None] > 0, np.rint(shaded), out).astype(np.uint8)
    for eye in (left, right):
        cv2.ellipse(
            out,
            _point(eye),
            (round(half_w), round(half_h)),
            0,
            0,
            360,
            frame_colour,
            thickness,
            cv2.LINE_AA,
        )
    bridge_y = (left[1] + right[1]) / 2.0 - half_h * 0.3
    cv2.line(
        out,
        (round(left[0] + half_w), round(bridge_y)),
        (round(right[0] - half_w), round(bridge_y)),
        frame_colour,
        thickness,
        cv2.LINE_AA,
    )
    for eye, side in ((left, -1.0), (right, 1.0)):
        start = (round(eye[0] + side * half_w), round(eye[1] - half_h * 0.2))
        end = (round(eye[0] + side * (half_w + eye_distance * 0.35)), round(eye[1] - half_h * 0.4))
        cv2.line(out, start, end, frame_colour, thickness, cv2.LINE_AA)
    return out


def _point(xy: npt.NDArray[np.float64]) -> tuple[int, int]:
    return (round(float(xy[0])), round(float(xy[1])))


# Where light pools on a face in the crop template (x, y): the cheekbones (twice as often),
# the forehead, the nose's bridge. Not the mouth or chin, where a white sheen would look too
# much like the lower edge of a white mask.
_SHEEN_SPOTS_256 = (
    (84.0, 140.0),
    (172.0, 140.0),
    (80.0, 130.0),
    (176.0, 130.0),
    (128.0, 50.0),
    (128.0, 105.0),
)


def specular_highlight(image: ImageU8, rng: np.random.Generator) -> ImageU8:
    """A soft sheen of light on the skin (a lamp's reflection on a cheekbone, the forehead or
    the nose): a Gaussian ellipse, 10-45 px across, blended towards a warm or cool
    near-white by 30-80% at its centre. Real side-lit skin in broadcast video looks
    like this; it is not an occluder."""
    x0, y0 = _SHEEN_SPOTS_256[int(rng.integers(len(_SHEEN_SPOTS_256)))]
    scale = CROP_SIZE / 256.0
    cx = (x0 + rng.normal(0.0, 12.0)) * scale
    cy = (y0 + rng.normal(0.0, 12.0)) * scale
    sx = rng.uniform(10.0, 45.0) * scale
    sy = sx * rng.uniform(0.45, 1.0)
    angle = rng.uniform(0.0, math.pi)
    ys, xs = np.mgrid[0:CROP_SIZE, 0:CROP_SIZE].astype(np.float32)
    u = (xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)
    v = -(xs - cx) * math.sin(angle) + (ys - cy) * math.cos(angle)
    weight = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)) * np.float32(rng.uniform(0.3, 0.8))
    tint = rng.uniform(225.0, 255.0) + rng.normal(0.0, 8.0, 3)  # B, G, R near white
    out = image.astype(np.float32)
    out += (tint.astype(np.float32) - out) * weight[..., None]
    return np.asarray(np.clip(np.rint(out), 0, 255), np.uint8)


def side_light(image: ImageU8, rng: np.random.Generator) -> ImageU8:
    """Strong one-sided light: a gradient of strength 0.3-0.8 from one side (within 35
    degrees of horizontal), the lit side allowed to clip to white as a key light near a
    face does, and half the time a sheen (``specular_highlight``) on the lit side."""
    side = 0.0 if rng.random() < 0.5 else math.pi
    angle = side + math.radians(rng.uniform(-35.0, 35.0))
    out = light_gradient(image, angle, rng.uniform(0.3, 0.8))
    if rng.random() < 0.5:
        out = specular_highlight(out, rng)
    return out
