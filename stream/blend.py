"""Gradient-domain (Poisson) blending of a network's fill into the visible face.

The network's fill can carry a colour cast (the voice-driven audio face leaks its tint, and a
short CPU training leaves the fill's brightness off) that a plain composite shows as a patch
with a visible seam. Poisson blending (Pérez, Gangnet and Blake 2003; OpenCV's
``seamlessClone``) keeps the fill's gradients, its structure, and takes its absolute level
from the surrounding skin, so the seam and the cast go while the nose and mouth the network
drew stay.

The problem solved is exactly OpenCV's ``seamlessClone`` (``NORMAL_CLONE``), solved the same
way (a discrete sine transform) but with SciPy's or numpy's FFT: on 223 real fills of two
masked talking-head clips (one core, a busy machine, same run) the whole blend went from 41.5
to 28.6 ms per face, of which the Telea guide was 16; OpenCV's solver had been the larger half,
on every regenerated face. The two agree to one 8-bit level (float rounding, in about 4% of
the hole's pixels; ``tests/test_blend.py`` checks it). The guide is now diffused at half size
(``telea_guide``: 23 -> 3 ms per face on a loaded core; on 8 unseen real clips through
``bench.quality``, PSNR in the mask 17.90 dB before and after, SFace 0.797 -> 0.795, within
the pipeline's run-to-run noise).

That solver takes the gradients of its *destination* image in a 3 px band just inside the
hole's edge (it erodes the mask) and the boundary values at the hole's bounding box. The
destination must therefore be continuous with the visible pixels and must never contain what
is under the hole (an occluder in use; the ground truth in an evaluation): it is a Telea
diffusion of the visible pixels, which reads no hole pixel. The price: a sharp edge that
crosses that rim (a jaw line, a collar) loses its step there, and a hole that reaches the
crop's edge takes its level there from the guide's guess. On held-out faces with mask-shaped
holes the blend gained 1.5 dB PSNR and 0.027 SSIM on the lite of early December 2026
(docs/MODEL_CARD_lite.md). The lite trained since meets the visible face at the hole's edge
by itself, and the blend's level, taken from whatever surrounds the hole, tints a lower face
over a blue shirt or a green background: avstream now blends only a fill the guard fails
(``BlendMode`` ``auto``, ``stream.model_inpainter.finish_fill``).
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from stream.types import Image, Mask

FloatArray = npt.NDArray[np.float32]

try:  # optional: numpy's FFT does the same, slower on the odd lengths a hole's box has
    import scipy.fft as _scipy_fft
except ImportError:  # pragma: no cover - depends on the environment
    _scipy_fft = None

BlendMode = Literal["auto", "always", "never"]
"""How a network fill becomes the face shown (``stream.model_inpainter.finish_fill``): as
drawn unless the fill guard fails it, then blended (``auto``); always blended; never."""

BLEND_MODES: tuple[BlendMode, ...] = ("auto", "always", "never")

GUIDE_RADIUS_PX = 3.0
"""Telea neighbourhood of the guide, in crop pixels: it only has to be smooth and continuous at
the edge."""

GUIDE_SCALE = 2
"""The guide is diffused at 1/``GUIDE_SCALE`` of the crop's size and scaled back: a smooth guess
needs no full resolution, and Telea's cost grows with the hole's pixels (see the module's
docstring for what it cost and what it changed)."""

_EDGE_PX = 2
"""Hole pixels this close to the crop's edge stay as the network drew them: the solver needs a
border of known pixels around its region."""


def poisson_blend(fill: Image, crop: Image, mask: Mask) -> Image:
    """The network's ``fill`` (BGR uint8, the crop with the hole restored) with its hole
    re-levelled to the visible pixels of ``crop`` around it.

    ``mask`` (H, W) is the coverage, 1 = hole; pixels with coverage <= 0.5 come back exactly as
    in ``fill`` (soft edges keep the composite's blend). Pixels of ``crop`` inside the hole are
    never read. A hole too small or thin for the solver comes back unchanged.
    """
    if fill.shape != crop.shape or fill.shape[:2] != mask.shape or fill.ndim != 3:
        raise ValueError(f"fill {fill.shape}, crop {crop.shape} and mask {mask.shape} do not match")
    hole = mask > 0.5
    clone = hole.astype(np.uint8) * 255
    clone[:_EDGE_PX, :] = clone[-_EDGE_PX:, :] = 0
    clone[:, :_EDGE_PX] = clone[:, -_EDGE_PX:] = 0
    x, y, w, h = cv2.boundingRect(clone)
    if w < 3 or h < 3:
        return fill
    guide = telea_guide(crop, hole)
    box = (slice(y, y + h), slice(x, x + w))
    solved = normal_clone(fill[box], np.asarray(guide[box], np.uint8), clone[box] > 0)
    blended = guide.copy()
    blended[box] = solved
    keep = (clone > 0)[:, :, None]
    return np.where(keep, blended, fill).astype(np.uint8)


def telea_guide(crop: Image, hole: npt.NDArray[np.bool_]) -> Image:
    """``crop`` with its ``hole`` (H, W) diffused in from the visible pixels around it (Telea),
    the destination ``poisson_blend`` solves against; pixels outside the hole are ``crop``'s.

    The diffusion runs at 1/``GUIDE_SCALE`` size. A small pixel is unknown when any of its
    crop pixels is in the hole, so no hole pixel is read; the result is scaled back bilinearly
    and used only inside the hole."""
    height, width = hole.shape
    size = (-(-width // GUIDE_SCALE), -(-height // GUIDE_SCALE))
    small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    # INTER_AREA averages each block: a block with any hole pixel in it comes out above 0.
    unknown = cv2.resize(hole.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
    # OpenCV's Telea reads a few unknown pixels where the hole meets the image's border (a
    # face mask always reaches the crop's bottom edge): give them the visible pixels' mean,
    # so that nothing under the hole can reach the guide.
    known = ~unknown
    small[unknown] = small[known].mean(axis=0) if known.any() else 0
    filled = cv2.inpaint(
        small, unknown.astype(np.uint8), GUIDE_RADIUS_PX / GUIDE_SCALE, cv2.INPAINT_TELEA
    )
    back = cv2.resize(filled, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.where(hole[:, :, None], back, crop).astype(np.uint8)


def normal_clone(source: Image, destination: Image, inside: npt.NDArray[np.bool_]) -> Image:
    """OpenCV's ``seamlessClone(source, destination, inside, centre, NORMAL_CLONE)`` on a
    region already cut to the bounding box of ``inside`` (H, W): the image whose Laplacian is
    the divergence of ``source``'s gradients inside ``inside`` eroded by 3 px and of
    ``destination``'s everywhere else, and whose border rows and columns are
    ``destination``'s. Values are truncated to 8 bits, as OpenCV does."""
    height, width = inside.shape
    # OpenCV erodes the clone mask by a 3x3 square three times; outside the box it is empty.
    core = cv2.erode(np.pad(inside.astype(np.uint8), 1), np.ones((3, 3), np.uint8), iterations=3)[
        1:-1, 1:-1
    ]
    weight = core.astype(np.float32)[:, :, None]
    src = np.where(inside[:, :, None], source, 0).astype(np.float32)
    dst = destination.astype(np.float32)
    grad_x = weight * _forward_x(src) + (1.0 - weight) * _forward_x(dst)
    grad_y = weight * _forward_y(src) + (1.0 - weight) * _forward_y(dst)
    laplacian = _backward_x(grad_x) + _backward_y(grad_y)
    # Dirichlet border (the destination's): its known values move to the right-hand side.
    rhs = laplacian[1:-1, 1:-1].copy()
    rhs[0] -= dst[0, 1:-1]
    rhs[-1] -= dst[-1, 1:-1]
    rhs[:, 0] -= dst[1:-1, 0]
    rhs[:, -1] -= dst[1:-1, -1]
    inner_h, inner_w = height - 2, width - 2
    # Channels first, so that every transform runs along the contiguous last axis.
    planes = np.ascontiguousarray(rhs.transpose(2, 0, 1))
    spectrum = _dst1_rows(_dst1_rows(planes).transpose(0, 2, 1)).transpose(0, 2, 1)
    eigen_y = 2.0 * np.cos(np.pi * np.arange(1, inner_h + 1) / (inner_h + 1)) - 2.0
    eigen_x = 2.0 * np.cos(np.pi * np.arange(1, inner_w + 1) / (inner_w + 1)) - 2.0
    spectrum = spectrum / (eigen_y[:, None] + eigen_x[None, :]).astype(np.float32)
    # DST-I is its own inverse up to 2 (N + 1) per axis.
    scale = np.float32(4.0 * (inner_h + 1) * (inner_w + 1))
    back = _dst1_rows(_dst1_rows(spectrum).transpose(0, 2, 1)).transpose(0, 2, 1) / scale
    solved = dst.copy()
    solved[1:-1, 1:-1] = back.transpose(1, 2, 0)
    # OpenCV truncates (it does not round) when it writes the solution back to 8 bits.
    return np.clip(solved, 0.0, 255.0).astype(np.uint8)


def _dst1_rows(values: FloatArray) -> FloatArray:
    """Unnormalised DST-I along the last axis (y_k = 2 sum_n x_n sin(pi (n+1)(k+1) / (N+1))).

    SciPy's transform where SciPy is installed (about 3x faster on the odd lengths a hole's
    box has); otherwise the FFT of the odd extension [0, x, 0, -reversed x] with numpy."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if _scipy_fft is not None:
        return np.asarray(_scipy_fft.dst(values, type=1, axis=-1, workers=1), np.float32)
    zero = np.zeros((*values.shape[:-1], 1), np.float32)
    extended = np.concatenate([zero, values, zero, -values[..., ::-1]], axis=-1)
    spectrum = np.fft.rfft(extended, axis=-1)
    return np.asarray(-spectrum.imag[..., 1 : values.shape[-1] + 1], np.float32)


# Gradients as OpenCV's cloning computes them: filter2D with a 2-tap kernel and the default
# border (reflect 101), so the last forward difference and the first backward one read the
# mirrored neighbour.


def _forward_x(image: FloatArray) -> FloatArray:
    out = np.empty_like(image)
    out[:, :-1] = image[:, 1:] - image[:, :-1]
    out[:, -1] = image[:, -2] - image[:, -1]
    return out


def _forward_y(image: FloatArray) -> FloatArray:
    out = np.empty_like(image)
    out[:-1] = image[1:] - image[:-1]
    out[-1] = image[-2] - image[-1]
    return out


def _backward_x(image: FloatArray) -> FloatArray:
    out = np.empty_like(image)
    out[:, 1:] = image[:, 1:] - image[:, :-1]
    out[:, 0] = image[:, 0] - image[:, 1]
    return out


def _backward_y(image: FloatArray) -> FloatArray:
    out = np.empty_like(image)
    out[1:] = image[1:] - image[:-1]
    out[0] = image[0] - image[1]
    return out
