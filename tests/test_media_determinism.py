"""The same frames encode to the same file on every run (``stream.media.x264_options``)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from stream.media import EncodeOptions, MediaInfo, VideoWriter
from stream.types import VideoFrame

FRAMES = 30
SIDE = 160


def _frames() -> list[VideoFrame]:
    """A real photo panning, turning and zooming slowly: motion the encoder has to estimate.
    Without ``cpu-independent`` libx264 gave 4 different files in 6 encodes of these frames
    on one thread on the development machine."""
    from skimage import data

    rgb = np.asarray(data.astronaut(), np.uint8)  # type: ignore[no-untyped-call]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    frames = []
    for i in range(FRAMES):
        matrix = cv2.getRotationMatrix2D((256.0, 256.0), 0.3 * i, 1.0 + 0.004 * i)
        matrix[:, 2] += (1.5 * i, 0.7 * i)
        image = cv2.warpAffine(bgr, matrix, (512, 512))[96 : 96 + SIDE, 128 : 128 + SIDE]
        frames.append(VideoFrame(i, i, Fraction(1, 25), np.ascontiguousarray(image)))
    return frames


def _encode(frames: list[VideoFrame], path: Path) -> bytes:
    info = MediaInfo(
        path=path,
        width=SIDE,
        height=SIDE,
        time_base=Fraction(1, 25),
        average_rate=Fraction(25),
        frame_count=FRAMES,
        duration_s=FRAMES / 25,
        audio_codec=None,
    )
    with VideoWriter(path, info, EncodeOptions(threads=1), copy_audio_from=None) as writer:
        for frame in frames:
            writer.write(frame)
        writer.finish()
    return path.read_bytes()


def test_the_same_frames_encode_to_the_same_bytes(tmp_path: Path) -> None:
    frames = _frames()
    first = _encode(frames, tmp_path / "a.mp4")
    for run in range(5):
        assert _encode(frames, tmp_path / f"b{run}.mp4") == first
