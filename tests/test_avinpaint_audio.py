"""The Wen 2019 front end (avinpaint.audio): parity with the official code's numbers, an
independent NumPy transcription of the official algorithm, and the VAD plumbing."""

from __future__ import annotations

import collections
import math
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from avinpaint import audio
from avinpaint.spec import N_FFT, N_MELS, STFT_HOP_LENGTH, STFT_WIN_LENGTH

torch.set_num_threads(1)

F32_EPS = float(np.finfo(np.float32).eps)


def _read_wav(path: Path) -> npt.NDArray[np.float32]:
    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def _speechy(n_samples: int, seed: int) -> npt.NDArray[np.float32]:
    """Harmonic bursts with pauses over faint noise: enough structure for the filterbank."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / 16_000
    voiced = sum(np.sin(2 * np.pi * 120.0 * h * t) / h for h in range(1, 30))
    gate = (np.sin(2 * np.pi * 1.3 * t) > -0.2).astype(np.float64)
    x = 0.2 * voiced * gate + 1e-3 * rng.standard_normal(n_samples)
    return np.clip(x, -1, 1).astype(np.float32)


# --- an independent transcription of the official NumPy code (Sphinx MFCC + get_fbank) ----


def _reference_filters() -> npt.NDArray[np.float64]:
    def mel(f: npt.NDArray[np.float64] | float) -> npt.NDArray[np.float64]:
        return np.asarray(2595.0 * np.log10(1.0 + np.asarray(f) / 700.0))

    filters = np.zeros((N_FFT // 2 + 1, N_MELS))
    dfreq = 16000.0 / N_FFT
    melmin, melmax = mel(20.0), mel(7200.0)
    edges = 700.0 * (10.0 ** ((melmin + (melmax - melmin) / 65 * np.arange(66)) / 2595.0) - 1)
    for m in range(N_MELS):
        left, center, right = (round(float(e) / dfreq) for e in edges[m : m + 3])
        height = 2.0 / ((right - left) * dfreq)
        left_slope = height / (center - left) if center != left else 0.0
        freq = left + 1
        while freq < center:
            filters[freq, m] = (freq - left) * left_slope
            freq += 1
        if freq == center:
            filters[freq, m] = height
            freq += 1
        right_slope = height / (center - right) if center != right else 0.0
        while freq < right:
            filters[freq, m] = (freq - right) * right_slope
            freq += 1
    return filters


def _reference_log_mel(int16_signal: npt.NDArray[np.int16]) -> npt.NDArray[np.float32]:
    """Frame by frame with the carried pre-emphasis prior and numpy.resize tails, as the
    official MFCC.sig2logspec does."""
    window = np.hamming(STFT_WIN_LENGTH)
    filters = _reference_filters()
    n_frames = int(len(int16_signal) / STFT_HOP_LENGTH + 1)
    out = np.zeros((n_frames, N_MELS))
    prior = 0
    for fr in range(n_frames):
        start = fr * STFT_HOP_LENGTH
        frame = int16_signal[start : min(len(int16_signal), start + STFT_WIN_LENGTH)]
        if len(frame) < STFT_WIN_LENGTH:
            frame = np.resize(frame, STFT_WIN_LENGTH)
        padded = np.insert(frame, 0, prior)
        prior = padded[-1]
        emphasised = padded[1:] - 0.97 * padded[:-1]
        spectrum = np.fft.rfft(emphasised * window, N_FFT)
        power = spectrum.real**2 + spectrum.imag**2
        out[fr] = np.log(np.clip(power @ filters, 1e-5, np.inf))
    return out.astype(np.float32)


def _reference_features(log_mel: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    fbank = log_mel - log_mel.mean(axis=0)
    fbank = fbank / (fbank.std(axis=0) + np.finfo(np.float32).eps)
    n_init = fbank.shape[0]
    while fbank.shape[0] < 1000:
        fbank = np.append(fbank, fbank[0:n_init], axis=0)
        fbank = fbank[0:1000, :]
    return np.ascontiguousarray(fbank.T)


@pytest.mark.parametrize("n_samples", [32_000, 32_123, 400, 159, 0])
def test_log_mel_matches_a_transcription_of_the_official_code(n_samples: int) -> None:
    # 32 000 is a multiple of the hop (the last frame is empty: zeros but for the carried
    # pre-emphasis sample); 32 123 ends in frames shorter than the window (cyclic tails).
    x = _speechy(n_samples, seed=n_samples)
    int16 = np.round(x * 32768).clip(-32768, 32767).astype(np.int16)
    expected = _reference_log_mel(int16)
    got = audio.wen_log_mel(torch.from_numpy(int16.astype(np.float32) / 32768.0)).numpy()
    assert got.shape == expected.shape == (n_samples // 160 + 1, 64)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_features_match_a_transcription_of_the_official_code() -> None:
    x = _speechy(48_000, seed=3)
    int16 = np.round(x * 32768).astype(np.int16)
    expected = _reference_features(_reference_log_mel(int16))
    got = audio.wen_features(torch.from_numpy(int16.astype(np.float32) / 32768.0)).numpy()
    assert got.shape == (64, 1000) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_sphinx_filters_are_the_official_triangles() -> None:
    filters = audio.sphinx_mel_filters()
    assert filters.shape == (513, 64) and filters.dtype == torch.float64
    np.testing.assert_array_equal(filters.numpy(), _reference_filters())
    # Below 20 Hz and above 7200 Hz nothing passes.
    assert filters[: math.floor(20 / 15.625)].abs().sum() == 0
    assert filters[math.ceil(7200 / 15.625) + 1 :].abs().sum() == 0


# --- the shared parity fixture (made with the official code) -----------------------------


@pytest.mark.parametrize("case", ["case1", "case2"])
def test_front_end_matches_the_official_fixture(shared_fixtures: Path, case: str) -> None:
    folder = shared_fixtures / "audioface_parity" / case
    vad_speech = np.load(folder / "vad_speech_int16.npy")
    speech = torch.from_numpy(vad_speech.astype(np.float32) / 32768.0)

    log_mel = audio.wen_log_mel(speech)
    np.testing.assert_allclose(log_mel.numpy(), np.load(folder / "logmel_raw.npy"), atol=1e-5)
    normalised = audio.normalise_per_bin(log_mel)
    np.testing.assert_allclose(normalised.numpy(), np.load(folder / "logmel_norm.npy"), atol=1e-5)
    features = audio.wen_features(speech)
    expected = np.load(folder / "audio_input.npy")[0]
    assert features.shape == expected.shape == (64, 1000)
    np.testing.assert_allclose(features.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("case", ["case1", "case2"])
def test_whole_chain_from_the_fixture_wav_runs_with_the_energy_vad(
    shared_fixtures: Path, case: str
) -> None:
    # WebRTC's VAD is not reproduced, so only the amount of speech kept is compared.
    folder = shared_fixtures / "audioface_parity" / case
    samples = torch.from_numpy(_read_wav(folder / "speech_16k.wav"))
    voiced = audio.wen_voiced_speech(samples, audio.EnergyVAD())
    n_official = np.load(folder / "vad_speech_int16.npy").shape[0]
    assert abs(voiced.shape[0] - n_official) < 0.05 * n_official
    features = audio.wen_features_from_audio(samples)
    assert features.shape == (64, 1000) and bool(torch.isfinite(features).all())


# --- normalisation, tiling, batching ------------------------------------------------------


def test_tiling_appends_whole_copies_then_crops() -> None:
    frames = torch.arange(3 * 2, dtype=torch.float32).reshape(3, 2)
    tiled = audio.tile_frames(frames, n_frames=8)
    assert tiled[:, 0].tolist() == [0, 2, 4, 0, 2, 4, 0, 2]
    assert audio.tile_frames(torch.zeros(1200, 64)).shape == (1200, 64)  # long: left as is
    assert audio.tile_frames(torch.zeros(1000, 64)).shape == (1000, 64)


def test_long_speech_keeps_all_its_frames() -> None:
    features = audio.wen_features(torch.from_numpy(_speechy(12 * 16_000, seed=1)))
    assert features.shape == (64, 12 * 100 + 1)


def test_normalisation_gives_zero_mean_unit_std_and_survives_constant_bins() -> None:
    log_mel = torch.randn(300, 64) * 3 + 5
    log_mel[:, 7] = -11.5  # a constant bin (e.g. digital silence): std 0, no NaN
    out = audio.normalise_per_bin(log_mel)
    assert bool(torch.isfinite(out).all())
    np.testing.assert_allclose(out.mean(dim=0).numpy(), 0, atol=1e-5)
    std = out.std(dim=0, correction=0).numpy()
    np.testing.assert_allclose(np.delete(std, 7), 1, atol=1e-5)
    assert out[:, 7].abs().max() == 0


def test_batch_equals_one_at_a_time() -> None:
    a, b = (torch.from_numpy(_speechy(20_000, seed=s)) for s in (1, 2))
    batch = audio.wen_features(torch.stack([a, b]))
    assert batch.shape == (2, 64, 1000)
    assert torch.equal(batch[0], audio.wen_features(a))
    assert torch.equal(batch[1], audio.wen_features(b))


def test_empty_speech_gives_finite_features() -> None:
    features = audio.wen_features(torch.zeros(0))
    assert features.shape == (64, 1000) and features.abs().max() == 0


# --- VAD plumbing ------------------------------------------------------------------------


def _reference_collector(flags: list[bool], n_bytes: int, frame_bytes: int) -> list[int]:
    """py-webrtcvad's frame_generator + vad_collector, with a stateless classifier: returns
    the kept frame indices in order."""
    frames = []
    offset = 0
    while offset + frame_bytes < n_bytes:
        frames.append(offset // frame_bytes)
        offset += frame_bytes
    ring: collections.deque[int] = collections.deque(maxlen=2)
    triggered = False
    kept: list[int] = []
    voiced: list[int] = []
    for frame in frames:
        if not triggered:
            ring.append(frame)
            if len([f for f in ring if flags[f]]) > 0.9 * 2:
                triggered = True
                voiced.extend(ring)
                ring.clear()
        else:
            voiced.append(frame)
            ring.append(frame)
            if len([f for f in ring if not flags[f]]) > 0.9 * 2:
                triggered = False
                kept.extend(voiced)
                ring.clear()
                voiced = []
    return kept + voiced


@pytest.mark.parametrize("seed", range(6))
def test_collector_matches_the_official_ring_buffer(seed: int) -> None:
    rng = np.random.default_rng(seed)
    frame = 320
    n_frames = int(rng.integers(5, 60))
    extra = int(rng.integers(0, 2)) * int(rng.integers(1, frame))  # sometimes a part frame
    n_samples = n_frames * frame + extra
    flags = (rng.random(n_frames + 1) < rng.uniform(0.2, 0.8)).tolist()
    samples = torch.arange(n_samples, dtype=torch.float32)
    kept = audio.collect_voiced(samples, torch.tensor(flags), frame)
    expected = _reference_collector(flags, 2 * n_samples, 2 * frame)
    want = torch.cat([samples[i * frame : (i + 1) * frame] for i in expected] or [torch.zeros(0)])
    assert torch.equal(kept, want)


def test_energy_vad_finds_bursts_in_noise_and_handles_silence() -> None:
    rng = np.random.default_rng(0)
    n = 16_000
    x = 1e-3 * rng.standard_normal(n)
    x[4_800:9_600] += 0.3 * np.sin(2 * np.pi * 200 * np.arange(4_800) / 16_000)
    flags = audio.EnergyVAD()(torch.from_numpy(x.astype(np.float32)), 480)
    assert flags.shape == (33,)
    assert flags[10:20].all() and not flags[:10].any() and not flags[20:].any()
    assert not audio.EnergyVAD()(torch.zeros(16_000), 480).any()  # digital silence
    assert audio.EnergyVAD()(torch.zeros(100), 480).shape == (0,)


def test_probability_vad_maps_chunks_to_frames() -> None:
    def chunk_probabilities(x: torch.Tensor) -> torch.Tensor:
        n_chunks = -(-x.shape[0] // 512)
        return (torch.arange(n_chunks) % 2).to(torch.float32)  # odd chunks are speech

    vad = audio.ProbabilityVAD(chunk_probabilities, chunk_samples=512)
    flags = vad(torch.zeros(4_096), 256)
    assert flags.tolist() == [False, False, True, True] * 4
