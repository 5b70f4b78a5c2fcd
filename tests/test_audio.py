"""Speaker-audio decoding to 16 kHz mono."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from avinpaint.spec import AUDIO_SAMPLE_RATE_HZ
from stream.audio import iter_audio_16k, read_audio_16k
from stream.errors import InputError
from stream.testclip import ClipTruth


def _tone_file(path: Path, rate_hz: int, freq_hz: float, seconds: float, channels: int) -> None:
    n = int(rate_hz * seconds)
    t = np.arange(n) / rate_hz
    wave = (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w") as c:
        stream = c.add_stream("pcm_f32le", rate=rate_hz, layout=layout)
        data = np.tile(wave, (channels, 1)) if channels == 2 else wave[None]
        frame = av.AudioFrame.from_ndarray(data, format="fltp", layout=layout)
        frame.sample_rate = rate_hz
        frame.pts = 0
        c.mux(stream.encode(frame))
        c.mux(stream.encode(None))


def test_resamples_stereo_48k_to_mono_16k_keeping_pitch(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    _tone_file(path, 48_000, 440.0, 2.0, channels=2)
    audio = read_audio_16k(path)
    assert audio is not None and audio.pts_s == 0.0
    samples = audio.samples_16k
    assert samples.dtype == np.float32
    assert abs(len(samples) - 2 * AUDIO_SAMPLE_RATE_HZ) < 200
    spectrum = np.abs(np.fft.rfft(samples[1000:-1000]))
    peak_hz = np.argmax(spectrum) * AUDIO_SAMPLE_RATE_HZ / (len(samples) - 2000)
    assert abs(peak_hz - 440.0) < 2.0
    # FFmpeg's stereo-to-mono downmix adds both channels at -3 dB: 2 * 0.5 * 0.707.
    assert np.abs(samples[1000:-1000]).max() == pytest.approx(0.707, abs=0.01)


def test_chunks_are_contiguous_and_stamped(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    _tone_file(path, 22_050, 300.0, 1.3, channels=1)
    chunks = list(iter_audio_16k(path, chunk_s=0.25))
    assert all(len(c.samples_16k) == 4000 for c in chunks[:-1])
    starts = [c.pts_s for c in chunks]
    np.testing.assert_allclose(np.diff(starts), 0.25, atol=1e-9)
    whole = read_audio_16k(path)
    assert whole is not None
    np.testing.assert_array_equal(
        np.concatenate([c.samples_16k for c in chunks]), whole.samples_16k
    )


def test_speech_track_of_a_clip(clip: ClipTruth) -> None:
    audio = read_audio_16k(clip.path)
    assert audio is not None
    duration_s = len(audio.samples_16k) / AUDIO_SAMPLE_RATE_HZ
    assert abs(duration_s - clip.frame_count / 25) < 0.1
    assert np.abs(audio.samples_16k).max() > 0.05  # espeak speech, not silence


def test_no_audio_and_bad_files(make_clip: object, tmp_path: Path) -> None:
    silent: ClipTruth = make_clip("mute.mp4", duration_s=0.5, audio=False)  # type: ignore[operator]
    assert read_audio_16k(silent.path) is None
    bogus = tmp_path / "x.wav"
    bogus.write_text("nope")
    with pytest.raises(InputError):
        read_audio_16k(bogus)
    with pytest.raises(ValueError):
        list(iter_audio_16k(silent.path, chunk_s=0))
