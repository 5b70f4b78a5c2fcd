"""The single source of geometry and audio constants shared by the model, training and stream.

Nothing else in the project hard-codes crop sizes, landmark templates or audio parameters:
import them from here so that a crop made by ``stream`` is exactly what the network was
trained on.

Landmark order everywhere is the 5-point order YuNet and ArcFace use:
right eye (image left), left eye (image right), nose tip, right mouth corner, left mouth corner.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# --- face crop -------------------------------------------------------------------------

CROP_SIZE = 256
"""Side of the aligned face crop the inpainting network sees (the seed paper's 256x256)."""

ARCFACE_SIZE = 112
"""Side of the aligned crop the identity network (SFace / ArcFace family) sees."""

ARCFACE_TEMPLATE_112: npt.NDArray[np.float64] = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
"""The standard InsightFace/ArcFace 5-point template for 112x112 crops (x, y in pixels)."""

# The 256 template is the ArcFace template scaled so that the eyes are 80 px apart and placed
# so that the seed paper's fixed hole (rows 89-216, cols 64-191, "nose, mouth and chin") lands
# on exactly that part of the face: eyes on row 78 (above the hole, so they stay visible), the
# nose tip on row ~124, the mouth on row ~170 and the chin near row ~215.
_TEMPLATE_SCALE = 80.0 / float(ARCFACE_TEMPLATE_112[1, 0] - ARCFACE_TEMPLATE_112[0, 0])
_EYE_ROW_256 = 78.0
_EYE_MID_112 = ARCFACE_TEMPLATE_112[:2].mean(axis=0)

CROP_TEMPLATE_256: npt.NDArray[np.float64] = (
    ARCFACE_TEMPLATE_112 - _EYE_MID_112
) * _TEMPLATE_SCALE + np.array([CROP_SIZE / 2.0, _EYE_ROW_256])
"""5-point template (x, y) for the 256x256 crop: eyes at about (88, 78) and (168, 78),
nose tip at about (128, 124), mouth corners at about (95, 170) and (161, 170)."""

ALIGN_MOUTH_WEIGHT = 0.25
"""Weight of each mouth corner in the crop's similarity fit (eyes and nose tip weigh 1) when
the face looks at the camera. Under a face mask or a hand the detector guesses the hidden
mouth corners too high (up to one eye distance), and an equal-weight fit then zooms into the
face and pushes the occluder's lower part out of the crop, where nothing can restore it; see
``ALIGN_YAW_RAMP`` for turned heads and docs/MODEL_CARD_occlusion.md for the numbers."""

ALIGN_YAW_RAMP = (0.10, 0.25)
"""Sideways offset of the nose tip from the eyes' midpoint, in eye distances (about 10 and 25
degrees of yaw for a nose that stands half an eye distance out), over which the mouth
corners' weight rises from ``ALIGN_MOUTH_WEIGHT`` to 1: on a turned head the nose tip's
offset would drag an eyes-and-nose fit sideways over the background, and the equal-weight
fit places it as before."""

PAPER_HOLE_ROWS = (89, 217)
"""Rows [start, stop) of the seed paper's fixed 128x128 hole in the 256 crop."""

PAPER_HOLE_COLS = (64, 192)
"""Columns [start, stop) of the seed paper's fixed 128x128 hole in the 256 crop."""

# --- audio -----------------------------------------------------------------------------

AUDIO_SAMPLE_RATE_HZ = 16_000
"""Speaker audio is 16 kHz mono."""

AUDIO_CHANNELS = 1

SPEAKER_WINDOW_S = 6.0
"""The speaker embedding is computed from the last 6 s of speech."""

N_MELS = 64
"""Wen 2019 voice front end: 64-band log filterbank."""

MEL_FMIN_HZ = 20.0
MEL_FMAX_HZ = 7_200.0

STFT_WIN_LENGTH = 400
"""25 ms analysis window at 16 kHz."""

STFT_HOP_LENGTH = 160
"""10 ms hop at 16 kHz."""

N_FFT = 1024

PRE_EMPHASIS = 0.97


def paper_hole_box() -> tuple[int, int, int, int]:
    """The seed paper's hole as ``(x, y, w, h)`` in 256-crop pixels."""
    y0, y1 = PAPER_HOLE_ROWS
    x0, x1 = PAPER_HOLE_COLS
    return (x0, y0, x1 - x0, y1 - y0)
