"""The ``ge2e`` speaker encoder: Resemblyzer's pretrained GE2E d-vector LSTM, in pure torch.

Resemblyzer (0.1.4, Apache-2.0) ships the weights (``pretrained.pt``) inside its wheel, but
importing the package pulls in webrtcvad (which breaks on current setuptools) and librosa.
This module only reads the weights file and re-implements everything around it:

- preprocessing (:func:`preprocess_wav`): volume normalisation to -30 dBFS (increase only),
  then long silences trimmed (:func:`trim_long_silences`) with a pluggable VAD;
- the mel front end (:func:`ge2e_mel_frames`): librosa's ``melspectrogram`` defaults as
  Resemblyzer calls it (no log);
- the network (:class:`GE2EEncoder`): 3-layer LSTM 40 -> 256, Linear 256 -> 256, ReLU,
  L2 normalisation, run on 1.6 s partial utterances (:func:`partial_slices`) whose embeddings
  are averaged and renormalised (:meth:`GE2EEncoder.embed_utterance`).

Typical use on a float 16 kHz signal in [-1, 1]::

    encoder = GE2EEncoder.pretrained()
    embedding = encoder.embed_utterance(preprocess_wav(samples_16k))  # (256,)
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from avinpaint.audio import EnergyVAD, FrameVAD
from avinpaint.spec import AUDIO_SAMPLE_RATE_HZ

# GE2E's own constants (Resemblyzer's hparams.py), fixed by how the weights were trained. They
# are not the Wen front end's (spec.py): 40 Slaney mels over 0-8 kHz, FFT = window = 25 ms.
GE2E_N_MELS = 40
GE2E_WINDOW_MS = 25
GE2E_HOP_MS = 10
GE2E_N_FFT = AUDIO_SAMPLE_RATE_HZ * GE2E_WINDOW_MS // 1000  # 400
GE2E_HOP_LENGTH = AUDIO_SAMPLE_RATE_HZ * GE2E_HOP_MS // 1000  # 160
GE2E_HIDDEN_SIZE = 256
GE2E_EMBEDDING_SIZE = 256
GE2E_NUM_LAYERS = 3
GE2E_PARTIAL_FRAMES = 160
"""Frames in one partial utterance (1.6 s)."""
GE2E_PARTIALS_PER_S = 1.3
"""Default rate of partial utterances (a new one every 77 frames)."""
GE2E_MIN_COVERAGE = 0.75
"""The last partial is kept (zero-padded) only if at least this much of it is real audio."""
GE2E_TARGET_DBFS = -30.0
"""Volume normalisation target (increase only)."""
GE2E_VAD_WINDOW_MS = 30
GE2E_VAD_MOVING_AVERAGE_WIDTH = 8
GE2E_VAD_MAX_SILENCE_WINDOWS = 6

_INT16_MAX = 32767.0  # Resemblyzer's int16_max, used in its dBFS arithmetic
_WEIGHTS_FILE = "pretrained.pt"
_INSTALL_HINT = "pip install --no-deps resemblyzer==0.1.4"


class GE2EWeightsNotFoundError(FileNotFoundError):
    """Resemblyzer's ``pretrained.pt`` could not be found."""


def find_pretrained_weights() -> Path:
    """Path of ``pretrained.pt`` inside the installed ``resemblyzer`` package.

    Located with ``importlib.util.find_spec``, which reads the package's location without
    importing it (its import fails on current setuptools through webrtcvad)."""
    spec = importlib.util.find_spec("resemblyzer")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / _WEIGHTS_FILE
        if path.is_file():
            return path
    raise GE2EWeightsNotFoundError(
        f"the GE2E speaker encoder needs Resemblyzer's {_WEIGHTS_FILE}; "
        f"install the package without its dependencies: {_INSTALL_HINT}"
    )


# --- preprocessing ----------------------------------------------------------------------


def normalize_volume(
    wav_16k: Tensor, target_dbfs: float = GE2E_TARGET_DBFS, increase_only: bool = True
) -> Tensor:
    """Scale (N,) float audio so its RMS level is ``target_dbfs``; with ``increase_only`` a
    signal already louder is returned as it is. Digital silence is returned unchanged."""
    if wav_16k.shape[0] == 0:
        return wav_16k
    rms = float(torch.sqrt((wav_16k.double() * _INT16_MAX).square().mean()))
    if rms == 0.0:
        return wav_16k
    change_db = target_dbfs - 20.0 * math.log10(rms / _INT16_MAX)
    if change_db < 0 and increase_only:
        return wav_16k
    gain = torch.tensor(10.0 ** (change_db / 20.0), dtype=wav_16k.dtype)
    return wav_16k * gain


def trim_long_silences(wav_16k: Tensor, vad: FrameVAD) -> Tensor:
    """Resemblyzer's silence trimming with a pluggable VAD on 30 ms windows.

    The signal is cut to whole windows; the per-window speech flags are smoothed by a moving
    average over 8 windows (3 before, 4 after, zero-padded) rounded half to even, so a window
    counts as voiced when at least 5 of the 8 are; voiced regions are then dilated by 3 windows
    each side, so silences of up to 6 windows survive. Returns the kept samples, (M,)."""
    window = AUDIO_SAMPLE_RATE_HZ * GE2E_VAD_WINDOW_MS // 1000
    n_windows = wav_16k.shape[0] // window
    wav = wav_16k[: n_windows * window]
    if n_windows == 0:
        return wav
    flags = vad(wav, window).to(torch.float64)
    voiced = _moving_average(flags, GE2E_VAD_MOVING_AVERAGE_WIDTH).round() > 0
    kept = _dilate(voiced, GE2E_VAD_MAX_SILENCE_WINDOWS + 1)
    return wav[kept.repeat_interleave(window)]


def _moving_average(values: Tensor, width: int) -> Tensor:
    padded = torch.cat(
        [values.new_zeros((width - 1) // 2), values, values.new_zeros(width // 2)]
    )  # (N + width - 1,)
    return padded.unfold(0, width, 1).mean(dim=1)


def _dilate(mask: Tensor, width: int) -> Tensor:
    """Binary dilation with a centred structuring element of ``width`` ones (odd width)."""
    half = width // 2
    padded = torch.cat([mask.new_zeros(half), mask, mask.new_zeros(half)])
    return padded.unfold(0, width, 1).any(dim=1)


def preprocess_wav(wav_16k: Tensor, vad: FrameVAD | None = None) -> Tensor:
    """Resemblyzer's ``preprocess_wav`` on a (N,) float 16 kHz signal in [-1, 1]: volume
    normalisation to -30 dBFS (increase only), then long silences trimmed.

    Resemblyzer detects speech with WebRTC's VAD (mode 3), which is not reproduced here;
    ``vad`` defaults to :class:`avinpaint.audio.EnergyVAD`. The embedding is sensitive to
    where the trimming cuts (shifting an utterance by one 30 ms window moves it by ~0.001 of
    cosine), so expect a cosine of about 0.997 (median) to Resemblyzer's own embedding, not
    1.0. Resample to 16 kHz before calling: no resampling happens here."""
    normalised = normalize_volume(wav_16k)
    return trim_long_silences(normalised, vad if vad is not None else EnergyVAD())


# --- mel front end ----------------------------------------------------------------------


def slaney_mel_filters(
    n_fft: int = GE2E_N_FFT,
    n_mels: int = GE2E_N_MELS,
    sample_rate_hz: int = AUDIO_SAMPLE_RATE_HZ,
) -> Tensor:
    """``librosa.filters.mel(sr, n_fft, n_mels)`` with its defaults (0 Hz to Nyquist, Slaney
    mel scale, Slaney area normalisation): float32 (n_mels, n_fft//2+1).

    Computed in float64 and rounded as librosa does: the triangle stored in float32, then
    multiplied by the float64 area norm and stored in float32 again."""
    bin_hz = 1.0 / (n_fft * (1.0 / sample_rate_hz))  # numpy.fft.rfftfreq's spacing
    fft_hz = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * bin_hz
    mel_max = _hz_to_slaney_mel(sample_rate_hz / 2.0)
    step = mel_max / (n_mels + 1)  # numpy.linspace from 0 with n_mels + 2 points
    mel_points = [k * step for k in range(n_mels + 1)] + [mel_max]
    edges_hz = torch.tensor([_slaney_mel_to_hz(m) for m in mel_points], dtype=torch.float64)
    widths_hz = edges_hz[1:] - edges_hz[:-1]  # (n_mels + 1,)
    ramps = edges_hz[:, None] - fft_hz[None, :]  # (n_mels + 2, n_bins)
    lower = -ramps[:-2] / widths_hz[:-1, None]
    upper = ramps[2:] / widths_hz[1:, None]
    triangles = torch.minimum(lower, upper).clamp(min=0.0).float().double()
    area_norm = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    return (triangles * area_norm[:, None]).float()


_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_LOG_START_HZ = 1000.0
_SLANEY_LOG_START_MEL = _SLANEY_LOG_START_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def _hz_to_slaney_mel(f_hz: float) -> float:
    if f_hz < _SLANEY_LOG_START_HZ:
        return f_hz / _SLANEY_HZ_PER_MEL
    return _SLANEY_LOG_START_MEL + math.log(f_hz / _SLANEY_LOG_START_HZ) / _SLANEY_LOG_STEP


def _slaney_mel_to_hz(mel: float) -> float:
    if mel < _SLANEY_LOG_START_MEL:
        return _SLANEY_HZ_PER_MEL * mel
    return _SLANEY_LOG_START_HZ * math.exp(_SLANEY_LOG_STEP * (mel - _SLANEY_LOG_START_MEL))


def ge2e_mel_frames(wav_16k: Tensor) -> Tensor:
    """Mel power spectrogram of (..., N) float audio as Resemblyzer computes it: float32
    (..., 1 + N // 160, 40).

    librosa's defaults: FFT 400 with a periodic Hann window of 400, hop 160, frames centred by
    padding 200 zeros each side (librosa >= 0.10 pads with zeros, older versions reflected;
    the reference data was made with zeros), power 2, Slaney mel filters, no log."""
    window = torch.hann_window(GE2E_N_FFT, periodic=True, dtype=torch.float64)
    batch_shape = wav_16k.shape[:-1]
    flat = wav_16k.reshape(-1, wav_16k.shape[-1]).double()
    spectrum = torch.stft(
        flat,
        n_fft=GE2E_N_FFT,
        hop_length=GE2E_HOP_LENGTH,
        window=window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    )  # (B, 201, T) complex128
    power = spectrum.to(torch.complex64).abs().square()  # librosa keeps complex64 here
    mel = slaney_mel_filters() @ power  # (B, 40, T)
    return mel.transpose(-1, -2).reshape(*batch_shape, -1, GE2E_N_MELS).contiguous()


# --- partial utterances -----------------------------------------------------------------


def partial_slices(
    n_samples: int,
    rate_per_s: float = GE2E_PARTIALS_PER_S,
    min_coverage: float = GE2E_MIN_COVERAGE,
) -> list[tuple[int, int]]:
    """Resemblyzer's ``compute_partial_slices``: the mel-frame ranges [start, stop) of the
    partial utterances of a ``n_samples``-long waveform (multiply by 160 for sample ranges).

    A partial of 160 frames starts every round(16000 / rate / 160) frames; the last one is
    dropped when less than ``min_coverage`` of it is real audio, unless it is the only one.
    Ranges may run past the signal: the waveform is zero-padded up to the last stop."""
    if not 0.0 < min_coverage <= 1.0:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    n_frames = math.ceil((n_samples + 1) / GE2E_HOP_LENGTH)
    frame_step = round((AUDIO_SAMPLE_RATE_HZ / rate_per_s) / GE2E_HOP_LENGTH)
    if not 0 < frame_step <= GE2E_PARTIAL_FRAMES:
        raise ValueError(f"rate {rate_per_s}/s gives a step of {frame_step} frames")
    steps = max(1, n_frames - GE2E_PARTIAL_FRAMES + frame_step + 1)
    slices = [(i, i + GE2E_PARTIAL_FRAMES) for i in range(0, steps, frame_step)]
    last_start_sample = slices[-1][0] * GE2E_HOP_LENGTH
    coverage = (n_samples - last_start_sample) / (GE2E_PARTIAL_FRAMES * GE2E_HOP_LENGTH)
    if coverage < min_coverage and len(slices) > 1:
        slices = slices[:-1]
    return slices


def stack_partials(mel_frames: Tensor, slices: list[tuple[int, int]]) -> Tensor:
    """The partial utterances of (T, 40) mel frames as one batch (n, 160, 40); frames past the
    end are zeros (what the mel of a zero-padded waveform gives there, but for the frame that
    straddles the end of the signal: use :meth:`GE2EEncoder.embed_partials` on the waveform
    for Resemblyzer's exact numbers)."""
    stop = max(end for _, end in slices)
    padding = mel_frames.new_zeros(max(0, stop - mel_frames.shape[0]), mel_frames.shape[1])
    padded = torch.cat([mel_frames, padding])
    return torch.stack([padded[start:end] for start, end in slices])


# --- network ----------------------------------------------------------------------------


class GE2EEncoder(nn.Module):
    """Resemblyzer's ``VoiceEncoder`` network: (B, frames, 40) mel -> (B, 256) d-vectors.

    Embeddings are non-negative (ReLU) and unit L2 norm. Build it with :meth:`pretrained`."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(GE2E_N_MELS, GE2E_HIDDEN_SIZE, GE2E_NUM_LAYERS, batch_first=True)
        self.linear = nn.Linear(GE2E_HIDDEN_SIZE, GE2E_EMBEDDING_SIZE)

    @classmethod
    def pretrained(cls, weights_path: Path | None = None) -> GE2EEncoder:
        """The encoder with Resemblyzer's weights, in eval mode, gradients off.

        ``weights_path`` defaults to the installed package's ``pretrained.pt``
        (:func:`find_pretrained_weights`). Loaded with ``weights_only=True``: no pickled code
        runs. Only the LSTM and Linear entries are used (the file also holds the GE2E loss's
        similarity scale and bias and the optimiser state)."""
        path = weights_path if weights_path is not None else find_pretrained_weights()
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = checkpoint["model_state"]
        encoder = cls()
        wanted = encoder.state_dict().keys()
        encoder.load_state_dict({name: state[name] for name in wanted}, strict=True)
        encoder.eval()
        encoder.requires_grad_(False)
        return encoder

    def forward(self, mels: Tensor) -> Tensor:
        """(B, frames, 40) float32 mel power frames -> (B, 256) unit-norm embeddings."""
        _, (hidden, _) = self.lstm(mels)  # hidden: (layers, B, 256)
        raw = torch.relu(self.linear(hidden[-1]))
        norm: Tensor = raw / torch.linalg.vector_norm(raw, dim=1, keepdim=True)
        return norm

    @torch.no_grad()
    def embed_partials(
        self,
        wav_16k: Tensor,
        rate_per_s: float = GE2E_PARTIALS_PER_S,
        min_coverage: float = GE2E_MIN_COVERAGE,
    ) -> Tensor:
        """Embeddings (n, 256) of the partial utterances of a preprocessed (N,) waveform
        (see :func:`preprocess_wav`), exactly as Resemblyzer's ``embed_utterance`` makes them:
        the waveform is zero-padded to the last partial's end before the mel is computed."""
        if wav_16k.dim() != 1 or wav_16k.shape[0] == 0:
            raise ValueError(f"expected a non-empty 1-D waveform, got {tuple(wav_16k.shape)}")
        slices = partial_slices(wav_16k.shape[0], rate_per_s, min_coverage)
        stop_samples = slices[-1][1] * GE2E_HOP_LENGTH
        padding = wav_16k.new_zeros(max(0, stop_samples - wav_16k.shape[0]))
        mel = ge2e_mel_frames(torch.cat([wav_16k, padding]).float())
        batch = torch.stack([mel[start:end] for start, end in slices])  # (n, 160, 40)
        partials: Tensor = self(batch)
        return partials

    @torch.no_grad()
    def embed_utterance(
        self,
        wav_16k: Tensor,
        rate_per_s: float = GE2E_PARTIALS_PER_S,
        min_coverage: float = GE2E_MIN_COVERAGE,
    ) -> Tensor:
        """The utterance embedding (256,) of a preprocessed (N,) waveform: the L2-normalised
        mean of its partial embeddings (Resemblyzer's ``embed_utterance``)."""
        return mean_embedding(self.embed_partials(wav_16k, rate_per_s, min_coverage))


def mean_embedding(partials: Tensor) -> Tensor:
    """L2-normalised mean of (n, 256) embeddings: (256,)."""
    mean = partials.mean(dim=0)
    normalised: Tensor = mean / torch.linalg.vector_norm(mean)
    return normalised
