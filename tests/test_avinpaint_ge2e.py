"""The GE2E speaker encoder (avinpaint.ge2e): parity with Resemblyzer's own numbers (the shared
fixture, and a committed reference on a synthetic signal that runs in a fresh clone), and the
pieces around the network."""

from __future__ import annotations

import importlib.util
import json
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt
import pytest
import torch

from avinpaint import ge2e
from avinpaint.audio import EnergyVAD

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SYNTH_REFERENCE = REPO / "tests" / "data" / "ge2e_reference_synth"


@pytest.fixture(scope="module")
def encoder() -> Iterator[ge2e.GE2EEncoder]:
    try:
        yield ge2e.GE2EEncoder.pretrained()
    except ge2e.GE2EWeightsNotFoundError as exc:
        pytest.skip(str(exc))


def _read_wav(path: Path) -> npt.NDArray[np.float32]:
    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0  # what librosa.load gives


def _load_reference_tool() -> ModuleType:
    """tools/make_ge2e_reference.py, whose synthesis needs numpy only."""
    name = "make_ge2e_reference"
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


class ReplayVAD:
    """A FrameVAD that returns recorded flags (WebRTC's, from the reference run)."""

    def __init__(self, flags: str) -> None:
        self.flags = torch.tensor([c == "1" for c in flags])

    def __call__(self, samples_16k: torch.Tensor, frame_samples: int) -> torch.Tensor:
        assert samples_16k.shape[0] // frame_samples == self.flags.shape[0]
        return self.flags


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


# --- weights -----------------------------------------------------------------------------


def test_weights_are_found_without_importing_resemblyzer() -> None:
    try:
        path = ge2e.find_pretrained_weights()
    except ge2e.GE2EWeightsNotFoundError:
        pytest.skip("resemblyzer is not installed")
    assert path.name == "pretrained.pt" and path.is_file()
    assert "resemblyzer" not in sys.modules


def test_missing_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ge2e.GE2EWeightsNotFoundError, match=r"--no-deps resemblyzer==0\.1\.4"):
        ge2e.GE2EEncoder.pretrained()


def test_encoder_is_frozen_and_outputs_unit_non_negative_vectors(
    encoder: ge2e.GE2EEncoder,
) -> None:
    assert not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
    out = encoder(torch.rand(3, 160, 40))
    assert out.shape == (3, 256)
    assert bool((out >= 0).all())
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-6)


# --- partial slices ----------------------------------------------------------------------


def test_partial_slices_follow_resemblyzer() -> None:
    # Sample ranges from the shared fixture's manifest (Resemblyzer's own output).
    slices = ge2e.partial_slices(69_600)
    assert [(a * 160, b * 160) for a, b in slices] == [
        (0, 25_600),
        (12_320, 37_920),
        (24_640, 50_240),
        (36_960, 62_560),
        (49_280, 74_880),
    ]
    assert ge2e.partial_slices(23_040) == [(0, 160)]
    assert ge2e.partial_slices(0) == [(0, 160)]  # always at least one, even if short
    # The last partial goes when less than 75 % of it is audio: 64 000 samples end 4 800
    # into the fifth partial (19 %); 68 000 end 8 800 in (34 %): both dropped.
    assert len(ge2e.partial_slices(64_000)) == len(ge2e.partial_slices(68_000)) == 4
    with pytest.raises(ValueError, match="min_coverage"):
        ge2e.partial_slices(16_000, min_coverage=0.0)


# --- preprocessing -----------------------------------------------------------------------


def test_volume_is_raised_to_minus_30_dbfs_but_never_lowered() -> None:
    t = torch.arange(16_000) / 16_000
    quiet = 0.001 * torch.sin(2 * torch.pi * 440 * t)
    raised = ge2e.normalize_volume(quiet)
    level_dbfs = 20 * torch.log10(torch.sqrt((raised.double() * 32767).square().mean()) / 32767)
    assert float(level_dbfs) == pytest.approx(-30.0, abs=1e-4)
    loud = 0.5 * torch.sin(2 * torch.pi * 440 * t)
    assert torch.equal(ge2e.normalize_volume(loud), loud)
    assert torch.equal(ge2e.normalize_volume(torch.zeros(100)), torch.zeros(100))


def _reference_trim_mask(flags: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Resemblyzer's smoothing and dilation, transcribed with numpy (no scipy)."""
    width = 8
    padded = np.concatenate((np.zeros((width - 1) // 2), flags, np.zeros(width // 2)))
    cumulative = np.cumsum(padded, dtype=float)
    cumulative[width:] = cumulative[width:] - cumulative[:-width]
    smoothed = np.round(cumulative[width - 1 :] / width).astype(bool)
    dilated = np.zeros_like(smoothed)
    for i in range(len(smoothed)):
        dilated[i] = smoothed[max(0, i - 3) : i + 4].any()
    return dilated


@pytest.mark.parametrize("seed", range(5))
def test_trimming_matches_resemblyzer_for_given_flags(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_windows = int(rng.integers(10, 120))
    runs = rng.integers(1, 15, size=n_windows)  # runs of speech and silence, like real flags
    flags = np.repeat(np.arange(len(runs)) % 2 == seed % 2, runs)[:n_windows]
    wav = torch.arange(n_windows * 480 + int(rng.integers(0, 480)), dtype=torch.float32)
    trimmed = ge2e.trim_long_silences(wav, ReplayVAD("".join("1" if f else "0" for f in flags)))
    keep = np.repeat(_reference_trim_mask(flags), 480)
    assert torch.equal(trimmed, wav[: n_windows * 480][torch.from_numpy(keep)])


# --- mel front end ------------------------------------------------------------------------


def _reference_librosa_mel(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """librosa.feature.melspectrogram(y=x, sr=16000, n_fft=400, hop_length=160, n_mels=40)
    (librosa >= 0.10), transcribed with numpy in float64."""
    n_fft, hop, n_mels, sr = 400, 160, 40, 16_000

    def hz_to_mel(f: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        linear = f / (200.0 / 3)
        log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log, linear)

    def mel_to_hz(m: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), m * 200 / 3)

    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sr)
    edges = mel_to_hz(np.linspace(0.0, float(hz_to_mel(np.array(sr / 2.0))), n_mels + 2))
    ramps = edges[:, None] - fft_hz[None, :]
    weights = np.maximum(
        0, np.minimum(-ramps[:-2] / np.diff(edges)[:-1, None], ramps[2:] / np.diff(edges)[1:, None])
    )
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]

    padded = np.pad(x.astype(np.float64), n_fft // 2, mode="constant")  # librosa >= 0.10
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    n_frames = 1 + len(x) // hop
    frames = np.stack([padded[t * hop : t * hop + n_fft] for t in range(n_frames)])
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    return np.asarray(power @ weights.T)


def test_mel_matches_a_transcription_of_librosa_with_loud_edges() -> None:
    # Loud from the first sample to the last, so zero versus reflect padding shows.
    t = np.arange(8_000) / 16_000
    x = (0.5 * np.sin(2 * np.pi * 300 * t) + 0.2 * np.sin(2 * np.pi * 1234 * t)).astype(np.float32)
    expected = _reference_librosa_mel(x)
    mel = ge2e.ge2e_mel_frames(torch.from_numpy(x)).numpy()
    assert mel.shape == expected.shape == (51, 40)
    np.testing.assert_allclose(mel, expected, rtol=1e-4, atol=1e-6 * expected.max())


# --- shared fixture: Resemblyzer on two LibriSpeech utterances ---------------------------


@pytest.mark.parametrize("case", ["case1", "case2"])
def test_mel_matches_resemblyzer(shared_fixtures: Path, case: str) -> None:
    folder = shared_fixtures / "ge2e_reference" / case
    wav = torch.from_numpy(np.load(folder / "preprocessed_wav.npy"))
    expected = np.load(folder / "mel_frames.npy")
    mel = ge2e.ge2e_mel_frames(wav).numpy()
    assert mel.shape == expected.shape
    np.testing.assert_allclose(mel, expected, rtol=1e-3, atol=1e-6 * float(expected.max()))


@pytest.mark.parametrize("case", ["case1", "case2"])
def test_partials_and_embedding_match_resemblyzer(
    shared_fixtures: Path, encoder: ge2e.GE2EEncoder, case: str
) -> None:
    folder = shared_fixtures / "ge2e_reference" / case
    expected_partials = np.load(folder / "partial_embeddings.npy")
    expected = np.load(folder / "embedding.npy")

    # From Resemblyzer's mel frames (frames past the end taken as zeros).
    mel = torch.from_numpy(np.load(folder / "mel_frames.npy"))
    wav = torch.from_numpy(np.load(folder / "preprocessed_wav.npy"))
    with torch.no_grad():
        partials = encoder(ge2e.stack_partials(mel, ge2e.partial_slices(wav.shape[0])))
    np.testing.assert_allclose(partials.numpy(), expected_partials, atol=1e-4)
    np.testing.assert_allclose(ge2e.mean_embedding(partials).numpy(), expected, atol=1e-4)

    # From the preprocessed waveform, exactly as Resemblyzer pads it.
    np.testing.assert_allclose(encoder.embed_partials(wav).numpy(), expected_partials, atol=1e-5)
    np.testing.assert_allclose(encoder.embed_utterance(wav).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("case", ["case1", "case2"])
def test_end_to_end_with_the_energy_vad(
    shared_fixtures: Path, encoder: ge2e.GE2EEncoder, case: str
) -> None:
    folder = shared_fixtures / "ge2e_reference" / case
    samples = torch.from_numpy(_read_wav(folder / "input_16k.wav"))
    embedding = encoder.embed_utterance(ge2e.preprocess_wav(samples, EnergyVAD()))
    expected = torch.from_numpy(np.load(folder / "embedding.npy"))
    assert _cosine(embedding, expected) >= 0.999


# --- committed reference: Resemblyzer on a synthetic signal (runs in a fresh clone) ------


@pytest.fixture(scope="module")
def synth() -> tuple[dict[str, object], torch.Tensor, torch.Tensor]:
    meta = json.loads(SYNTH_REFERENCE.with_suffix(".json").read_text())
    tool = _load_reference_tool()
    signal = tool.synthesize_speech(tool.params_from_json(meta["params"]))
    assert signal.shape[0] == meta["input_samples"]
    expected = torch.from_numpy(np.load(SYNTH_REFERENCE.with_suffix(".npy")))
    return meta, torch.from_numpy(signal), expected


def test_synthetic_reference_with_resemblyzers_vad_decisions(
    encoder: ge2e.GE2EEncoder, synth: tuple[dict[str, object], torch.Tensor, torch.Tensor]
) -> None:
    # Everything but WebRTC's classifier: volume, trimming, padding, mel, partials, LSTM.
    meta, signal, expected = synth
    flags = meta["webrtcvad_window_flags"]
    assert isinstance(flags, str)
    wav = ge2e.preprocess_wav(signal, ReplayVAD(flags))
    assert wav.shape[0] == meta["preprocessed_samples"]
    assert encoder.embed_partials(wav).shape[0] == meta["n_partials"]
    assert _cosine(encoder.embed_utterance(wav), expected) >= 0.9999


def test_synthetic_reference_with_the_energy_vad(
    encoder: ge2e.GE2EEncoder, synth: tuple[dict[str, object], torch.Tensor, torch.Tensor]
) -> None:
    # WebRTC holds speech ~90 ms past each phrase's abrupt end, the energy VAD does not, so
    # three windows per phrase are trimmed differently (measured cosine 0.991); a shift of a
    # single 30 ms window already costs ~0.001 of cosine on real speech.
    meta, signal, expected = synth
    wav = ge2e.preprocess_wav(signal)
    preprocessed = meta["preprocessed_samples"]
    assert isinstance(preprocessed, int)
    assert abs(wav.shape[0] - preprocessed) <= 10 * 480
    assert _cosine(encoder.embed_utterance(wav), expected) >= 0.98


# --- API behaviour -----------------------------------------------------------------------


@pytest.mark.parametrize("n_samples", [40_000, 47_000])  # last partial dropped / zero-padded
def test_embed_partials_equals_the_network_on_stacked_slices(
    encoder: ge2e.GE2EEncoder, n_samples: int
) -> None:
    wav = 0.1 * torch.randn(n_samples, generator=torch.Generator().manual_seed(0))
    slices = ge2e.partial_slices(wav.shape[0])
    padded = torch.cat([wav, torch.zeros(max(0, slices[-1][1] * 160 - n_samples))])
    with torch.no_grad():
        direct = encoder(ge2e.stack_partials(ge2e.ge2e_mel_frames(padded), slices))
    assert torch.equal(encoder.embed_partials(wav), direct)
    embedding = encoder.embed_utterance(wav)
    assert embedding.shape == (256,)
    assert float(embedding.norm()) == pytest.approx(1.0, abs=1e-6)


def test_preprocessing_shorter_than_one_vad_window_gives_nothing() -> None:
    assert ge2e.preprocess_wav(torch.zeros(0)).shape == (0,)
    assert ge2e.preprocess_wav(0.1 * torch.ones(479)).shape == (0,)


def test_empty_waveform_is_refused(encoder: ge2e.GE2EEncoder) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        encoder.embed_utterance(torch.zeros(0))


def test_mel_front_end_is_batchable() -> None:
    wav = torch.randn(2, 8_000, generator=torch.Generator().manual_seed(1))
    batch = ge2e.ge2e_mel_frames(wav)
    assert batch.shape == (2, 51, 40)
    assert torch.equal(batch[1], ge2e.ge2e_mel_frames(wav[1]))
