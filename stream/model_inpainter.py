"""The audio-driven network as an ``Inpainter``: crops in, restored crops out, through an
``engines`` backend (TensorRT, onnxruntime or torch).

The speaker side of the network depends on the speaker window only, so ``set_speaker`` runs
the ``speaker`` graph once per window and every face of every frame in that window reuses its
outputs; ``inpaint`` runs only the per-face graph, batched across the faces of a call.

    with ModelInpainter(select_backend("auto", model).backend) as inpainter:
        inpainter.set_speaker(ge2e_embedding, window=(start_s, end_s))  # about once a second
        results = inpainter.inpaint(crops, masks)                         # every frame

``use_speech`` does the first step from a ``SpeechWindow`` (16 kHz voiced speech), so the
file pipeline takes it as its speaker sink:
``process_file(..., inpainter, ..., speaker_sink=inpainter.use_speech)``; given the inpainter
itself (a ``stream.speaker.StagedSpeakerSink``: ``speech_features`` + ``use_features``), the
pipeline makes the features in a stage of its own and only for windows a fill uses.

A caller serving several speakers with one model (the frame service: one voice per stream)
keeps each speaker's features itself: ``speech_features`` computes them without making them
current, and ``use_features`` switches to them before that speaker's ``inpaint``, without
running the speaker graph again.

Until the first window arrives (the start of a clip, before enough speech has been heard)
faces are restored with a neutral speaker: an all-zero speaker input, which the model
normalises to a zero embedding for ``ge2e`` and treats as silence for ``wen2019``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self

import numpy as np
import numpy.typing as npt
import torch

from engines.backends import Array, Backend, SpeakerArrays
from engines.export import speaker_input_shape
from stream.blend import BLEND_MODES, BlendMode, poisson_blend
from stream.guard import DEFAULT_GUARD, GuardOptions, GuardVerdict, check_fill, safe_fill
from stream.inpaint import check_batch
from stream.speaker import SpeechWindow
from stream.types import Image, InpaintResult, Mask

if TYPE_CHECKING:
    from avinpaint.speaker import SpeakerFrontEnd


@dataclass(frozen=True)
class FinishedFill:
    """The face to show, the guard's verdict on what was shown before any fallback (None
    without a guard), whether it was Poisson-blended, and whether the safe fill replaced it."""

    face: Image
    verdict: GuardVerdict | None
    blended: bool
    fallback: bool


def finish_fill(
    fill: Image, crop: Image, mask: Mask, mode: BlendMode, guard: GuardOptions | None
) -> FinishedFill:
    """The network's ``fill`` (the crop with its hole restored) made ready to show.

    ``always``: Poisson-blended into the visible face (``stream.blend``), then judged.
    ``never``: judged as the network drew it. Either falls back to the safe Telea fill when
    the guard fails it. ``auto`` (the default): the fill as drawn when the guard passes it,
    else its Poisson blend when that passes, else the safe fill; without a guard, as drawn.

    Why ``auto``: the blend takes the hole's level from the pixels around it, and where those
    are not skin (a mask over a blue shirt or a coloured background) it tints the whole
    lower face; the network, trained on composites, already meets the visible face at the
    hole's edge. On the 292 held-out test-split faces (lite, 2026-12-05) the fill as drawn
    against the blend: face-mask holes PSNR in the hole 20.07 vs 19.97 dB, SFace distance
    0.183 vs 0.190; all hole shapes 20.89 vs 21.06 dB, 0.147 vs 0.152, but the guard passes
    only 80% of those fills as drawn (thin strokes: colour texture) against 99%. ``auto``
    keeps the better of both: 21.01 dB and 0.146 on all shapes, every fill passed."""
    if mode not in BLEND_MODES:
        raise ValueError(f"blend mode must be one of {BLEND_MODES}, got {mode!r}")
    blended = mode == "always"
    face = poisson_blend(fill, crop, mask) if blended else fill
    if guard is None:
        return FinishedFill(face, None, blended, False)
    verdict = check_fill(crop, mask, face, guard)
    if not verdict.passed and mode == "auto":
        second_face = poisson_blend(fill, crop, mask)
        second = check_fill(crop, mask, second_face, guard)
        if second.passed:
            return FinishedFill(second_face, second, True, False)
    if verdict.passed:
        return FinishedFill(face, verdict, blended, False)
    return FinishedFill(safe_fill(crop, mask), verdict, blended, True)


NEUTRAL_WINDOW = "neutral"
"""Window key of the neutral speaker used before the first ``set_speaker``."""


@dataclass(frozen=True, eq=False)
class SpeakerFeatures:
    """The speaker graph's outputs for one speech window, held by the caller (see
    ``ModelInpainter.speech_features``); ``window`` is its key, e.g. ``(start_s, end_s)``."""

    window: Hashable
    arrays: SpeakerArrays


def crops_to_input(crops: Sequence[Image]) -> Array:
    """BGR uint8 (H, W, 3) crops -> RGB float32 (N, 3, H, W) in [-1, 1], the network's input."""
    bgr = np.stack(crops).astype(np.float32)  # (N, H, W, 3)
    rgb = bgr[..., ::-1]
    return np.ascontiguousarray(rgb.transpose(0, 3, 1, 2) / 127.5 - 1.0, dtype=np.float32)


def masks_to_input(masks: Sequence[Mask]) -> Array:
    """(H, W) coverage masks -> float32 (N, 1, H, W) clipped to [0, 1] (1 = hole)."""
    stacked = np.clip(np.stack(masks).astype(np.float32), 0.0, 1.0)
    return np.ascontiguousarray(stacked[:, None, :, :])


def output_to_crops(faces: npt.NDArray[np.float32]) -> list[Image]:
    """RGB float (N, 3, H, W) in [-1, 1] -> BGR uint8 (H, W, 3) crops. Exact inverse of
    ``crops_to_input`` for every pixel the network kept (outside the hole)."""
    scaled = np.rint((np.clip(faces, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    bgr = scaled[:, ::-1].transpose(0, 2, 3, 1)  # (N, H, W, 3)
    return [np.ascontiguousarray(face) for face in bgr]


class ModelInpainter:
    """``Inpainter`` running the inpainting network through ``backend``.

    ``max_batch`` caps the faces per backend call (also capped by the backend's own limit).
    ``blend``: how each fill is finished (``finish_fill``): ``auto`` shows the network's fill
    as drawn unless the guard fails it, then its Poisson blend into the visible face
    (``stream.blend``); ``always`` blends every fill; ``never`` none.
    ``front_end`` turns speech into the model's speaker input for ``use_speech``; by default
    the one the model's config names (``avinpaint.speaker``), made on first use.
    ``guard``: check every fill against the visible face (``stream.guard``) and replace one
    that fails by the safe Telea fill, recorded in its result (``guard``, ``fallback``);
    None turns the guard off.
    Thread-safe: ``set_speaker`` may be called from the audio thread while another thread
    calls ``inpaint``; backend calls are serialised. Closing the inpainter closes the backend.
    """

    def __init__(
        self,
        backend: Backend,
        max_batch: int = 8,
        front_end: SpeakerFrontEnd | None = None,
        blend: BlendMode = "auto",
        guard: GuardOptions | None = DEFAULT_GUARD,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if blend not in BLEND_MODES:
            raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
        self._backend = backend
        self._front_end = front_end
        self._blend = blend
        self._guard = guard
        limit = backend.max_batch
        self._max_batch = max_batch if limit is None else min(max_batch, limit)
        self._lock = threading.Lock()
        self._speaker_runs = 0
        self._window: Hashable | None = None
        self._features: SpeakerArrays | None = None
        self._neutral: SpeakerArrays | None = None

    @property
    def name(self) -> str:
        return f"avinpaint-{self._backend.name}"

    @property
    def speaker_runs(self) -> int:
        """How many times the speaker graph has run (once per distinct window)."""
        return self._speaker_runs

    @property
    def window(self) -> Hashable | None:
        """Key of the speaker window in use (``NEUTRAL_WINDOW`` before the first one)."""
        return self._window

    def set_speaker(self, speaker_input: Array, window: Hashable) -> bool:
        """Use the speaker heard in ``window`` (any hashable key, e.g. ``(start_s, end_s)``)
        from now on. ``speaker_input`` is what the model takes: a (1, 256) GE2E d-vector for
        ``ge2e`` models, a (1, n_mels, n_frames) log-mel window for ``wen2019``. The speaker
        graph runs only when ``window`` differs from the current one; returns whether it ran.
        """
        with self._lock:
            if self._features is not None and window == self._window:
                return False
            self._features, self._window = self._run_speaker(speaker_input), window
            return True

    def use_speech(self, window: SpeechWindow) -> None:
        """``set_speaker`` from a window of voiced 16 kHz speech, keyed by its time span: the
        speaker front end (GE2E embedding or Wen log-mel) and the speaker graph run once per
        window."""
        key = (window.start_s, window.end_s)
        if key == self._window:
            return  # the same window again: nothing to recompute
        self.set_speaker(self._speaker_input(window), key)

    def speech_features(self, window: SpeechWindow) -> SpeakerFeatures:
        """The features of the speaker heard in ``window``, keyed by its time span, without
        making them current: the front end and the speaker graph run once, and
        ``use_features`` switches to them later at no cost."""
        speaker_input = self._speaker_input(window)
        with self._lock:
            arrays = self._run_speaker(speaker_input)
        return SpeakerFeatures(window=(window.start_s, window.end_s), arrays=arrays)

    def use_features(self, features: SpeakerFeatures | None) -> None:
        """Restore the following faces with ``features`` (None: the neutral speaker, whose
        graph run is made once and kept)."""
        with self._lock:
            if features is None:
                self._features, self._window = self._neutral_features(), NEUTRAL_WINDOW
            else:
                self._features, self._window = features.arrays, features.window

    def inpaint(self, crops: Sequence[Image], masks: Sequence[Mask]) -> list[InpaintResult]:
        """Restore the covered pixels of each crop; pixels outside its mask come back
        unchanged. ``latency_ms`` is each face's share of its batch's wall time."""
        check_batch(crops, masks)
        if not crops:
            return []
        with self._lock:
            features = self._current_features()
            results: list[InpaintResult] = []
            for start in range(0, len(crops), self._max_batch):
                chunk = slice(start, start + self._max_batch)
                began = time.perf_counter()
                out = self._backend.inpaint(
                    crops_to_input(crops[chunk]), masks_to_input(masks[chunk]), features
                )
                faces = output_to_crops(out.inpainted)
                finished = [
                    finish_fill(face, crop, mask, self._blend, self._guard)
                    for face, crop, mask in zip(faces, crops[chunk], masks[chunk], strict=True)
                ]
                per_face_ms = (time.perf_counter() - began) * 1000.0 / len(faces)
                results.extend(
                    InpaintResult(
                        face_256=done.face,
                        backend=self.name,
                        latency_ms=per_face_ms,
                        guard=done.verdict,
                        fallback=done.fallback,
                        blended=done.blended,
                    )
                    for done in finished
                )
        return results

    def close(self) -> None:
        """Close the backend."""
        self._backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _speaker_input(self, window: SpeechWindow) -> Array:
        if self._front_end is None:
            from avinpaint.speaker import speaker_front_end

            self._front_end = speaker_front_end(self._backend.config.speaker_encoder)
        speech = torch.from_numpy(np.ascontiguousarray(window.samples_16k, dtype=np.float32))
        with torch.inference_mode():
            return self._front_end.speaker_input(speech).numpy()

    def _run_speaker(self, speaker_input: Array) -> SpeakerArrays:
        # Called with the lock held.
        expected = speaker_input_shape(self._backend.config)
        if speaker_input.shape != expected:
            raise ValueError(f"speaker input must be {expected}, got {speaker_input.shape}")
        features = self._backend.speaker_features(
            np.ascontiguousarray(speaker_input, dtype=np.float32)
        )
        self._speaker_runs += 1
        return features

    def _neutral_features(self) -> SpeakerArrays:
        # Called with the lock held.
        if self._neutral is None:
            neutral = np.zeros(speaker_input_shape(self._backend.config), dtype=np.float32)
            self._neutral = self._run_speaker(neutral)
        return self._neutral

    def _current_features(self) -> SpeakerArrays:
        # Called with the lock held.
        if self._features is None:
            self._features, self._window = self._neutral_features(), NEUTRAL_WINDOW
        return self._features
