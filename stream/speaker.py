"""Rolling speaker audio: voice activity detection and the last ``SPEAKER_WINDOW_S`` of speech.

The speaker encoders must hear speech only (the seed paper trims silence with a VAD), and the
identity cue should follow the person currently talking, so the window holds the most recent
6 s of *voiced* audio, not the last 6 s of wall time. Re-embedding is cheap but not free, so
callers ask ``due()`` and refresh about once a second."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch

from avinpaint.spec import AUDIO_SAMPLE_RATE_HZ, SPEAKER_WINDOW_S
from stream.types import AudioChunk

Samples = npt.NDArray[np.float32]


class VoiceActivityDetector(Protocol):
    """Streaming VAD over fixed-size frames of 16 kHz mono audio."""

    @property
    def frame_samples(self) -> int:
        """Samples per frame the detector takes."""
        ...

    def reset(self) -> None:
        """Forget the state of the previous stream."""
        ...

    def speech_probability(self, frame: Samples) -> float:
        """Probability in [0, 1] that ``frame`` (exactly ``frame_samples`` long) is speech."""
        ...


class SileroVad:
    """Silero VAD v6 (MIT; its weights ship inside the ``silero-vad`` wheel), run by
    onnxruntime on one thread: 512-sample (32 ms) frames, about 0.2 ms each."""

    def __init__(self) -> None:
        from silero_vad import load_silero_vad

        # The ONNX build: torch.jit.load (the default) is deprecated and twice as slow here.
        self._model = load_silero_vad(onnx=True)

    @property
    def frame_samples(self) -> int:
        return 512

    def reset(self) -> None:
        self._model.reset_states()

    def speech_probability(self, frame: Samples) -> float:
        if len(frame) != self.frame_samples:
            raise ValueError(f"Silero VAD takes {self.frame_samples} samples, got {len(frame)}")
        with torch.no_grad():
            return float(self._model(torch.from_numpy(frame), AUDIO_SAMPLE_RATE_HZ))


@dataclass(frozen=True)
class SpeakerWindowOptions:
    """``window_s``: speech kept (the seed paper's 6 s); ``min_speech_s``: less speech than this
    gives no embedding (an identity from half a word is noise); ``reembed_every_s``: refresh
    cadence; ``threshold``: VAD probability that counts as speech; ``hangover_frames``: frames
    kept after speech ends, so word endings and short pauses are not clipped."""

    window_s: float = SPEAKER_WINDOW_S
    min_speech_s: float = 2.0
    reembed_every_s: float = 1.0
    threshold: float = 0.5
    hangover_frames: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.min_speech_s <= self.window_s:
            raise ValueError("need 0 < min_speech_s <= window_s")
        if self.reembed_every_s <= 0:
            raise ValueError("reembed_every_s must be positive")


@dataclass(frozen=True, eq=False)
class SpeechWindow:
    """The most recent speech: ``samples_16k`` drawn from wall time [start_s, end_s];
    ``speech_ratio`` is the voiced fraction of that span."""

    samples_16k: Samples
    start_s: float
    end_s: float
    speech_ratio: float

    @property
    def speech_s(self) -> float:
        """Seconds of speech in the window."""
        return len(self.samples_16k) / AUDIO_SAMPLE_RATE_HZ


class SpeakerWindow:
    """Feed audio in order with ``push``; read the current speech window with ``window``."""

    def __init__(
        self, vad: VoiceActivityDetector, options: SpeakerWindowOptions | None = None
    ) -> None:
        self.options = options or SpeakerWindowOptions()
        self._vad = vad
        self._vad.reset()
        self._capacity = round(self.options.window_s * AUDIO_SAMPLE_RATE_HZ)
        self._voiced: deque[tuple[float, Samples]] = deque()
        self._voiced_samples = 0
        self._pending = np.zeros(0, dtype=np.float32)
        self._pending_start_s = 0.0
        self._hangover = 0
        self._end_s = 0.0
        self._last_window_end_s: float | None = None

    def push(self, chunk: AudioChunk) -> None:
        """Add the next chunk of the stream (chunks must be pushed in time order)."""
        if len(self._pending) == 0:
            self._pending_start_s = chunk.pts_s
        self._pending = np.concatenate([self._pending, chunk.samples_16k.astype(np.float32)])
        n = self._vad.frame_samples
        usable = len(self._pending) - len(self._pending) % n
        for offset in range(0, usable, n):
            frame = self._pending[offset : offset + n]
            frame_start_s = self._pending_start_s + offset / AUDIO_SAMPLE_RATE_HZ
            self._classify(frame, frame_start_s)
        self._pending_start_s += usable / AUDIO_SAMPLE_RATE_HZ
        self._pending = self._pending[usable:].copy()
        self._end_s = max(self._end_s, chunk.pts_s + len(chunk.samples_16k) / AUDIO_SAMPLE_RATE_HZ)

    def _classify(self, frame: Samples, start_s: float) -> None:
        if self._vad.speech_probability(frame) >= self.options.threshold:
            self._hangover = self.options.hangover_frames
        elif self._hangover > 0:
            self._hangover -= 1
        else:
            return
        self._voiced.append((start_s, frame.copy()))
        self._voiced_samples += len(frame)
        while self._voiced and self._voiced_samples - len(self._voiced[0][1]) >= self._capacity:
            _, dropped = self._voiced.popleft()
            self._voiced_samples -= len(dropped)

    @property
    def speech_s(self) -> float:
        """Seconds of speech currently held (at most ``window_s``)."""
        return min(self._voiced_samples, self._capacity) / AUDIO_SAMPLE_RATE_HZ

    def window(self) -> SpeechWindow | None:
        """The last ``window_s`` of speech, or None while there is less than ``min_speech_s``."""
        if self.speech_s < self.options.min_speech_s:
            return None
        samples = np.concatenate([frame for _, frame in self._voiced])[-self._capacity :]
        start_s = self._voiced[0][0]
        if self._voiced_samples > self._capacity:
            start_s += (self._voiced_samples - self._capacity) / AUDIO_SAMPLE_RATE_HZ
        span_s = max(self._end_s - start_s, len(samples) / AUDIO_SAMPLE_RATE_HZ)
        return SpeechWindow(
            samples_16k=samples,
            start_s=start_s,
            end_s=self._end_s,
            speech_ratio=len(samples) / AUDIO_SAMPLE_RATE_HZ / span_s,
        )

    def due(self) -> bool:
        """True when enough speech is held and ``reembed_every_s`` of audio has passed since
        the window last handed out by ``take``."""
        if self.speech_s < self.options.min_speech_s:
            return False
        last = self._last_window_end_s
        return last is None or self._end_s - last >= self.options.reembed_every_s

    def take(self) -> SpeechWindow | None:
        """``window()``, remembering its time for ``due()``."""
        current = self.window()
        if current is not None:
            self._last_window_end_s = current.end_s
        return current


class SpeakerTrack:
    """The speaker windows of a file's audio, advanced to each video frame's time.

    Causal on purpose: the window for a frame at ``t`` holds only speech before ``t``, the
    same as in live mode, so a file and a live stream of it restore alike."""

    def __init__(
        self,
        chunks: Iterator[AudioChunk],
        vad: VoiceActivityDetector,
        options: SpeakerWindowOptions | None = None,
    ) -> None:
        self._chunks = chunks
        self._window = SpeakerWindow(vad, options)
        self._next: AudioChunk | None = None
        self._exhausted = False

    def advance_to(self, time_s: float) -> SpeechWindow | None:
        """Feed audio up to ``time_s``; a new window when re-embedding is due, else None."""
        while not self._exhausted:
            if self._next is None:
                self._next = next(self._chunks, None)
                if self._next is None:
                    self._exhausted = True
                    break
            if self._next.pts_s > time_s:
                break
            self._window.push(self._next)
            self._next = None
        return self._window.take() if self._window.due() else None


@runtime_checkable
class StagedSpeakerSink(Protocol):
    """A speaker sink in two steps, for pipelines that prepare speech ahead of the frames:
    ``speech_features`` does the work for a window (the speaker front end and graph) without
    changing what is in use, and ``use_features`` switches to its result at no cost, in
    frame order (``stream.model_inpainter.ModelInpainter`` is one)."""

    def speech_features(self, window: SpeechWindow) -> Any:
        """The features of the speaker heard in ``window``, not yet in use."""
        ...

    def use_features(self, features: Any) -> None:
        """Use ``features`` (from ``speech_features``) for the following faces."""
        ...
