"""The writer keeps every timestamp exactly, also where the first frame is not at 0."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stream.media import EncodeOptions, VideoReader, VideoWriter, probe

TIME_BASE = Fraction(1, 15824)  # a CREMA-D clip's: 528 ticks a frame, no whole milliseconds
TICKS_PER_FRAME = 528


def _odd_time_base_clip(path: Path, frames: int = 24) -> list[int]:
    """A small mp4 in ``TIME_BASE`` with a moving pattern; returns its pts."""
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pts = [i * TICKS_PER_FRAME for i in range(frames)]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=Fraction(15824, 528))
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        for i, value in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(np.roll(pattern, i, axis=1), format="bgr24")
            frame.pts = value
            frame.time_base = TIME_BASE
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return pts


def _read_pts(path: Path) -> tuple[Fraction, list[int | None]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return Fraction(stream.time_base), [f.pts for f in container.decode(stream)]


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
@pytest.mark.parametrize("first_frame", [0, 7])
def test_timestamps_survive_a_first_frame_off_the_millisecond_grid(
    tmp_path: Path, suffix: str, first_frame: int
) -> None:
    source = tmp_path / "odd.mp4"
    written = _odd_time_base_clip(source)
    time_base, read = _read_pts(source)
    assert time_base == TIME_BASE and read == written
    output = tmp_path / f"cut{suffix}"
    want: list[int | None] = []
    with (
        VideoReader(source, threads=1) as reader,
        VideoWriter(output, probe(source), EncodeOptions(), copy_audio_from=None) as writer,
    ):
        for frame in reader:
            if frame.index >= first_frame:
                writer.write(frame)
                want.append(frame.pts)
        writer.finish()
    # 7 frames in is 3696 ticks = 233.57 ms: a millisecond movie timescale moved it to 233 ms.
    assert _read_pts(output) == (TIME_BASE, want)
