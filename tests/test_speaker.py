"""The rolling speaker window and the Silero VAD."""

from __future__ import annotations

import numpy as np
import pytest

from avinpaint.spec import AUDIO_SAMPLE_RATE_HZ as SR
from stream.audio import iter_audio_16k
from stream.speaker import SileroVad, SpeakerWindow, SpeakerWindowOptions
from stream.testclip import ClipTruth
from stream.types import AudioChunk


class EnergyVad:
    """Deterministic stand-in: loud frames are speech."""

    frame_samples = 512

    def reset(self) -> None:
        pass

    def speech_probability(self, frame: np.ndarray) -> float:
        return 1.0 if np.abs(frame).mean() > 0.05 else 0.0


def _alternating(seconds: int) -> list[AudioChunk]:
    """1 s tone, 1 s silence, ... in 0.25 s chunks; the tone's value marks its second."""
    chunks = []
    for second in range(seconds):
        level = 0.5 if second % 2 == 0 else 0.0
        for quarter in range(4):
            samples = np.full(SR // 4, level, np.float32)
            chunks.append(AudioChunk(pts_s=second + quarter / 4, samples_16k=samples))
    return chunks


def test_window_keeps_the_last_six_seconds_of_speech_only() -> None:
    opts = SpeakerWindowOptions(hangover_frames=0, min_speech_s=2.0)
    window = SpeakerWindow(EnergyVad(), opts)
    chunks = _alternating(16)  # speech in seconds 0, 2, 4, ..., 14: 8 s of speech
    for chunk in chunks[:12]:  # 3 s of audio: 2 s of speech
        window.push(chunk)
    assert window.speech_s == pytest.approx(2.0, abs=0.04)
    for chunk in chunks[12:]:
        window.push(chunk)
    current = window.window()
    assert current is not None
    assert current.speech_s == pytest.approx(6.0, abs=1e-9)
    # no silence inside, except the halves of the 32 ms frames that straddle a tone edge
    assert (current.samples_16k == 0.5).mean() > 0.97
    # 6 s of speech spread over seconds 4..15 (the first two speech seconds dropped)
    assert current.start_s == pytest.approx(4.0, abs=0.2)
    assert current.end_s == pytest.approx(16.0)
    assert current.speech_ratio == pytest.approx(6.0 / 12.0, abs=0.01)


def test_too_little_speech_gives_no_window() -> None:
    window = SpeakerWindow(EnergyVad(), SpeakerWindowOptions(hangover_frames=0))
    for chunk in _alternating(3):  # 2 s of speech in 3 s, but ends in silence
        window.push(chunk)
    assert window.window() is not None
    quiet = SpeakerWindow(EnergyVad())
    quiet.push(AudioChunk(0.0, np.zeros(SR * 5, np.float32)))
    assert quiet.window() is None and not quiet.due()


def test_reembedding_cadence() -> None:
    window = SpeakerWindow(EnergyVad(), SpeakerWindowOptions(reembed_every_s=1.0))
    taken = []
    for i in range(40):  # 10 s of continuous speech in 0.25 s chunks
        window.push(AudioChunk(i / 4, np.full(SR // 4, 0.5, np.float32)))
        if window.due():
            current = window.take()
            assert current is not None
            taken.append(current.end_s)
    # as soon as 2 s of speech are held in whole 32 ms VAD frames: the chunk after 2.0 s
    assert taken[0] == pytest.approx(2.25)
    np.testing.assert_allclose(np.diff(taken), 1.0)


def test_silero_finds_the_speech_of_a_generated_clip(clip: ClipTruth) -> None:
    window = SpeakerWindow(SileroVad())
    for chunk in iter_audio_16k(clip.path, chunk_s=0.5):
        window.push(chunk)
    assert window.speech_s > 1.0
    silent = SpeakerWindow(SileroVad())
    rng = np.random.default_rng(0)
    silent.push(AudioChunk(0.0, (rng.normal(0, 0.003, SR * 3)).astype(np.float32)))
    assert silent.speech_s < 0.2


def test_bad_options() -> None:
    with pytest.raises(ValueError):
        SpeakerWindowOptions(min_speech_s=7.0)
    with pytest.raises(ValueError):
        SpeakerWindowOptions(reembed_every_s=0.0)
    with pytest.raises(ValueError):
        SileroVad().speech_probability(np.zeros(100, np.float32))


def test_speaker_track_is_causal_and_refreshes() -> None:
    from stream.speaker import SpeakerTrack

    chunks = iter([AudioChunk(i / 4, np.full(SR // 4, 0.5, np.float32)) for i in range(32)])
    track = SpeakerTrack(chunks, EnergyVad(), SpeakerWindowOptions(reembed_every_s=1.0))
    got = []
    for frame in range(0, 200):  # 25 fps video over 8 s of speech
        window = track.advance_to(frame / 25)
        if window is not None:
            assert window.end_s <= frame / 25 + 0.25  # only audio that started before t
            got.append(round(window.end_s, 2))
    assert got[0] == pytest.approx(2.25) and len(got) == 6
