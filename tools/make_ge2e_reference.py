"""Make tests/data/ge2e_reference_synth.{npy,json}: Resemblyzer's own embedding of a synthetic,
speech-like signal, so that the pure-torch GE2E port (avinpaint/ge2e.py) is checked in a fresh
clone, without ../shared and without Resemblyzer's dependencies.

The signal is never stored: :func:`synthesize_speech` rebuilds it from the parameters saved in
the JSON (numpy only; tests/test_avinpaint_ge2e.py imports this file by path). Only ``main``
needs Resemblyzer, which cannot be imported in the project's venv, so run it in a throwaway
venv outside the repository::

    python3 -m venv /tmp/rz
    /tmp/rz/bin/pip install torch==2.13.0 resemblyzer "setuptools<81"  # webrtcvad needs
    /tmp/rz/bin/python tools/make_ge2e_reference.py                    # pkg_resources

What the reference pins: Resemblyzer's ``preprocess_wav`` (volume normalisation, WebRTC-VAD
silence trimming) and ``VoiceEncoder.embed_utterance`` (librosa mel, partials, LSTM) on the
signal, which has long pauses so that the trimming does something. WebRTC's per-window speech
flags are saved too (decisions, not audio), so a test can replay them and check everything
but the VAD's classifier exactly, and check its own VAD separately.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

SAMPLE_RATE_HZ = 16_000
OUTPUT_STEM = Path(__file__).resolve().parents[1] / "tests" / "data" / "ge2e_reference_synth"

# (F1, F2, F3) in Hz of five vowels (Peterson & Barney style averages), with bandwidths.
VOWEL_FORMANTS_HZ: tuple[tuple[float, float, float], ...] = (
    (730.0, 1090.0, 2440.0),  # a
    (530.0, 1840.0, 2480.0),  # e
    (270.0, 2290.0, 3010.0),  # i
    (570.0, 840.0, 2410.0),  # o
    (300.0, 870.0, 2240.0),  # u
)
FORMANT_BANDWIDTHS_HZ = (90.0, 110.0, 170.0)
FORMANT_GAINS = (1.0, 0.6, 0.3)


@dataclass(frozen=True)
class SynthParams:
    """Everything :func:`synthesize_speech` needs; saved in the reference JSON."""

    seed: int = 20_261_124
    n_phrases: int = 3
    syllables_per_phrase: tuple[int, int] = (4, 7)  # [low, high) drawn per phrase
    syllable_s: tuple[float, float] = (0.14, 0.30)
    gap_s: tuple[float, float] = (0.02, 0.06)  # between syllables of a phrase
    pause_s: tuple[float, float] = (0.6, 0.9)  # between phrases (trimmed by the VAD)
    lead_s: float = 0.4  # silence before the first phrase
    f0_start_hz: float = 125.0  # pitch declines over each phrase...
    f0_end_hz: float = 100.0
    f0_accent_hz: float = 20.0  # ...with a random accent per syllable
    vibrato_hz: float = 5.0
    vibrato_depth: float = 0.01  # fraction of f0
    max_harmonic_hz: float = 5_000.0
    aspiration: float = 0.02  # breath noise relative to the voiced part
    attack_s: float = 0.015
    decay_s: float = 0.03
    peak: float = 0.5
    noise_dbfs: float = -70.0  # background noise floor


def params_from_json(values: dict[str, object]) -> SynthParams:
    """The inverse of ``dataclasses.asdict`` after a JSON round trip (lists back to tuples)."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return SynthParams(**fields)  # type: ignore[arg-type]


def synthesize_speech(params: SynthParams) -> npt.NDArray[np.float32]:
    """A deterministic speech-like signal: phrases of voiced harmonic vowels with formant
    envelopes, a falling pitch contour with accents and vibrato, short gaps between syllables
    and long pauses between phrases, over a faint white-noise floor. float32 (N,) in [-1, 1]."""
    rng = np.random.default_rng(params.seed)
    pieces: list[npt.NDArray[np.float64]] = [np.zeros(_samples(params.lead_s))]
    previous_vowel = int(rng.integers(len(VOWEL_FORMANTS_HZ)))
    for _ in range(params.n_phrases):
        n_syllables = int(rng.integers(*params.syllables_per_phrase))
        for k in range(n_syllables):
            vowel = int(rng.integers(len(VOWEL_FORMANTS_HZ)))
            progress = k / max(1, n_syllables - 1)
            f0_hz = params.f0_start_hz + (params.f0_end_hz - params.f0_start_hz) * progress
            f0_hz += params.f0_accent_hz * float(rng.uniform(-1.0, 1.0))
            duration_s = float(rng.uniform(*params.syllable_s))
            loudness = float(rng.uniform(0.6, 1.0))
            syllable = _syllable(params, rng, previous_vowel, vowel, f0_hz, _samples(duration_s))
            envelope = _envelope(syllable.shape[0], params.attack_s, params.decay_s)
            pieces.append(loudness * syllable * envelope)
            pieces.append(np.zeros(_samples(float(rng.uniform(*params.gap_s)))))
            previous_vowel = vowel
        pieces.append(np.zeros(_samples(float(rng.uniform(*params.pause_s)))))
    signal = np.concatenate(pieces)
    signal *= params.peak / np.max(np.abs(signal))
    noise_rms = 10.0 ** (params.noise_dbfs / 20.0)
    signal += noise_rms * rng.standard_normal(signal.shape[0])
    return np.clip(signal, -1.0, 1.0).astype(np.float32)


def _samples(duration_s: float) -> int:
    return round(duration_s * SAMPLE_RATE_HZ)


def _syllable(
    params: SynthParams,
    rng: np.random.Generator,
    from_vowel: int,
    to_vowel: int,
    f0_hz: float,
    n_samples: int,
) -> npt.NDArray[np.float64]:
    """One voiced syllable at full level: harmonics of a vibrato f0 shaped by formants gliding
    from ``from_vowel`` to ``to_vowel`` over the first 40 %, plus breath noise."""
    t_s = np.arange(n_samples) / SAMPLE_RATE_HZ
    vibrato = 1.0 + params.vibrato_depth * np.sin(2.0 * np.pi * params.vibrato_hz * t_s)
    f0 = f0_hz * vibrato  # (n,)
    phase = 2.0 * np.pi * np.cumsum(f0) / SAMPLE_RATE_HZ  # (n,)
    glide = np.clip(np.arange(n_samples) / (0.4 * n_samples), 0.0, 1.0)  # (n,)
    formants = (
        np.array(VOWEL_FORMANTS_HZ[from_vowel])[None, :] * (1.0 - glide[:, None])
        + np.array(VOWEL_FORMANTS_HZ[to_vowel])[None, :] * glide[:, None]
    )  # (n, 3)
    voiced = np.zeros(n_samples)
    n_harmonics = int(params.max_harmonic_hz // f0_hz)
    for h in range(1, n_harmonics + 1):
        freq_hz = h * f0  # (n,)
        envelope = sum(
            gain / (1.0 + ((freq_hz - formants[:, i]) / (0.5 * bandwidth)) ** 2)
            for i, (gain, bandwidth) in enumerate(
                zip(FORMANT_GAINS, FORMANT_BANDWIDTHS_HZ, strict=True)
            )
        )
        voiced += envelope / h * np.sin(h * phase)  # 1/h: the glottal source's spectral tilt
    voiced /= np.max(np.abs(voiced))
    breath = params.aspiration * np.diff(rng.standard_normal(n_samples + 1))  # high-passed
    return voiced + breath


def _envelope(n_samples: int, attack_s: float, decay_s: float) -> npt.NDArray[np.float64]:
    """Raised-cosine attack and decay (each at most half the length), flat in between."""
    envelope = np.ones(n_samples)
    for n_ramp, reverse in ((_samples(attack_s), False), (_samples(decay_s), True)):
        n_ramp = min(n_ramp, n_samples // 2)
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(n_ramp) / n_ramp)
        if reverse:
            envelope[n_samples - n_ramp :] *= ramp[::-1]
        else:
            envelope[:n_ramp] *= ramp
    return envelope


def main() -> None:
    """Run Resemblyzer on the synthetic signal and write the reference files."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUTPUT_STEM, help="output path stem")
    args = parser.parse_args()

    # Only here: the throwaway venv has Resemblyzer; the project's tests never import it.
    import importlib.metadata

    import torch
    from resemblyzer import VoiceEncoder, preprocess_wav  # type: ignore[import-untyped]

    params = SynthParams()
    signal = synthesize_speech(params)
    wav = preprocess_wav(signal)  # already 16 kHz: no resampling
    flags = _webrtc_window_flags(signal)
    encoder = VoiceEncoder("cpu", verbose=False)
    embedding, partials, wav_slices = encoder.embed_utterance(wav, return_partials=True)

    np.save(args.out.with_suffix(".npy"), np.asarray(embedding, dtype=np.float32))
    versions = {
        name: importlib.metadata.version(name)
        for name in ("resemblyzer", "librosa", "webrtcvad", "numpy", "scipy")
    }
    versions["torch"] = torch.__version__
    meta = {
        "what": "Resemblyzer embed_utterance(preprocess_wav(synthesize_speech(params)))",
        "params": asdict(params),
        "made_with": versions,
        "input_samples": int(signal.shape[0]),
        "preprocessed_samples": int(wav.shape[0]),
        "n_partials": int(partials.shape[0]),
        "wav_slices_samples": [[int(s.start), int(s.stop)] for s in wav_slices],
        "webrtcvad_window_flags": "".join("1" if f else "0" for f in flags),
    }
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out}.npy and .json: {meta['preprocessed_samples']} samples kept")


def _webrtc_window_flags(signal: npt.NDArray[np.float32]) -> list[bool]:
    """The speech flags Resemblyzer's ``trim_long_silences`` computes (WebRTC VAD, mode 3,
    30 ms windows, on the volume-normalised signal), before its smoothing."""
    import webrtcvad  # type: ignore[import-not-found]
    from resemblyzer.audio import normalize_volume  # type: ignore[import-untyped]
    from resemblyzer.hparams import (  # type: ignore[import-untyped]
        audio_norm_target_dBFS,
        sampling_rate,
        vad_window_length,
    )

    wav = normalize_volume(signal, audio_norm_target_dBFS, increase_only=True)
    window = vad_window_length * sampling_rate // 1000
    wav = wav[: len(wav) - len(wav) % window]
    pcm = (np.round(wav * 32767)).astype("<i2").tobytes()
    vad = webrtcvad.Vad(mode=3)
    return [
        vad.is_speech(pcm[start * 2 : (start + window) * 2], sample_rate=sampling_rate)
        for start in range(0, len(wav), window)
    ]


if __name__ == "__main__":
    main()
