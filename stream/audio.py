"""Speaker audio: decode a file's first audio stream to 16 kHz mono float32 chunks.

This is the audio the speaker encoders hear; the audio written to the output is never this
(it is the original packets, copied)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import av.error
import numpy as np
import numpy.typing as npt

from avinpaint.spec import AUDIO_SAMPLE_RATE_HZ
from stream.errors import InputError
from stream.types import AudioChunk


def iter_audio_16k(path: Path, *, chunk_s: float = 0.5) -> Iterator[AudioChunk]:
    """Yield the first audio stream of ``path`` as mono 16 kHz float32 chunks of about
    ``chunk_s`` seconds, stamped with the demuxer's time of their first sample.

    Yields nothing when the file has no audio. Damaged packets are skipped."""
    if chunk_s <= 0:
        raise ValueError(f"chunk_s must be positive, got {chunk_s}")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise InputError(f"cannot read audio of {path}: {exc}") from exc
    with container:
        if not container.streams.audio:
            return
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE_HZ)
        chunk_samples = max(1, round(chunk_s * AUDIO_SAMPLE_RATE_HZ))
        pending: list[npt.NDArray[np.float32]] = []
        pending_len = 0
        start_s: float | None = None
        for frame in _decode_tolerant(container, stream):
            for out in resampler.resample(frame):
                if start_s is None:
                    start_s = _frame_start_s(out, frame)
                samples = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                pending.append(samples)
                pending_len += len(samples)
                while pending_len >= chunk_samples:
                    joined = np.concatenate(pending)
                    yield AudioChunk(pts_s=start_s, samples_16k=joined[:chunk_samples])
                    start_s += chunk_samples / AUDIO_SAMPLE_RATE_HZ
                    rest = joined[chunk_samples:]
                    pending, pending_len = [rest], len(rest)
        for out in resampler.resample(None):
            if start_s is None:
                start_s = 0.0
            pending.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        if pending and start_s is not None:
            tail = np.concatenate(pending)
            if len(tail):
                yield AudioChunk(pts_s=start_s, samples_16k=tail)


def read_audio_16k(path: Path) -> AudioChunk | None:
    """The whole first audio stream as one chunk, or None when the file has none."""
    chunks = list(iter_audio_16k(path, chunk_s=60.0))
    if not chunks:
        return None
    return AudioChunk(
        pts_s=chunks[0].pts_s, samples_16k=np.concatenate([c.samples_16k for c in chunks])
    )


def _decode_tolerant(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream
) -> Iterator[av.AudioFrame]:
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.FFmpegError:
            continue


def _frame_start_s(resampled: av.AudioFrame, source: av.AudioFrame) -> float:
    for frame in (resampled, source):
        if frame.pts is not None and frame.time_base is not None:
            return float(frame.pts * frame.time_base)
    return 0.0
