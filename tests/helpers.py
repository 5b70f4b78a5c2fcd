"""Small readers used by several tests to compare inputs and outputs."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def video_frames(path: Path) -> tuple[list[np.ndarray], list[float]]:
    """All decoded frames (BGR) and their presentation times in seconds."""
    images: list[np.ndarray] = []
    times: list[float] = []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        for frame in c.decode(stream):
            images.append(frame.to_ndarray(format="bgr24"))
            assert frame.pts is not None and stream.time_base is not None
            times.append(float(frame.pts * stream.time_base))
    return images, times


def video_times(path: Path) -> list[float]:
    """Presentation times (s) of every decoded frame, without converting pixels."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        tb = stream.time_base
        assert tb is not None
        return [float(f.pts * tb) for f in c.decode(stream) if f.pts is not None]


def audio_packets(path: Path) -> list[tuple[float, bytes]]:
    """(pts in seconds, payload) of every audio packet, in demux order."""
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return []
        out = []
        for packet in c.demux(c.streams.audio[0]):
            if packet.dts is None or packet.pts is None or packet.time_base is None:
                continue
            out.append((float(packet.pts * packet.time_base), bytes(packet)))
        return out


def face_region_mask(boxes: np.ndarray, shape: tuple[int, int], margin: float) -> np.ndarray:
    """Boolean (H, W) mask covering each (x, y, w, h) box grown by ``margin`` of its size."""
    mask = np.zeros(shape, dtype=bool)
    for x, y, w, h in boxes:
        if np.isnan(x):
            continue
        x0 = max(0, int(x - margin * w))
        y0 = max(0, int(y - margin * h))
        x1 = min(shape[1], int(x + w * (1 + margin)) + 1)
        y1 = min(shape[0], int(y + h * (1 + margin)) + 1)
        mask[y0:y1, x0:x1] = True
    return mask
