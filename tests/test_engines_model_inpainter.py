"""ModelInpainter: crop conversions, batching, the speaker graph run once per window (not per
face or frame), known pixels kept, and the same restored video from onnxruntime and torch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import pytest
import torch
from helpers import video_frames

from avinpaint.config import ModelConfig, preset
from avinpaint.model import Generator
from engines.backends import (
    Array,
    BackendOptions,
    InpaintArrays,
    OnnxRuntimeFactory,
    SpeakerArrays,
    TorchBackend,
)
from engines.export import speaker_input_shape
from stream.blend import poisson_blend
from stream.inpaint import Inpainter
from stream.media import EncodeOptions
from stream.model_inpainter import (
    NEUTRAL_WINDOW,
    ModelInpainter,
    crops_to_input,
    masks_to_input,
    output_to_crops,
)
from stream.occlusion import FixedRegion
from stream.pipeline import ProcessOptions, process_file
from stream.region import box_mask
from stream.testclip import ClipTruth
from stream.types import Image, InpaintResult, Mask

LITE = preset("lite")


class CountingBackend:
    """A Backend that records its calls and returns the input face unchanged."""

    def __init__(self, config: ModelConfig = LITE, max_batch: int | None = None) -> None:
        self._config = config
        self._max_batch = max_batch
        self.speaker_calls = 0
        self.batches: list[int] = []
        self.closed = False

    @property
    def name(self) -> str:
        return "counting"

    @property
    def config(self) -> ModelConfig:
        return self._config

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    def speaker_features(self, speaker_input: Array) -> SpeakerArrays:
        self.speaker_calls += 1
        value = float(speaker_input.sum())
        return SpeakerArrays(*(np.full((1, 1), value, np.float32) for _ in range(5)))

    def inpaint(self, face: Array, mask: Array, features: SpeakerArrays) -> InpaintArrays:
        self.batches.append(face.shape[0])
        return InpaintArrays(face.copy(), None)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _crops(n: int, seed: int = 0) -> list[Image]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(n)]


def _speaker(value: float) -> Array:
    return np.full(speaker_input_shape(LITE), value, np.float32)


def test_speaker_graph_runs_once_per_window() -> None:
    backend = CountingBackend()
    inpainter = ModelInpainter(backend)
    mask = box_mask()
    assert inpainter.set_speaker(_speaker(1.0), window=(0.0, 6.0))
    for _frame in range(10):  # ten frames of three faces in one window
        inpainter.inpaint(_crops(3), [mask] * 3)
        assert not inpainter.set_speaker(_speaker(1.0), window=(0.0, 6.0))
    assert backend.speaker_calls == inpainter.speaker_runs == 1
    assert inpainter.set_speaker(_speaker(2.0), window=(1.0, 7.0))
    for _frame in range(10):
        inpainter.inpaint(_crops(2), [mask] * 2)
    assert backend.speaker_calls == 2
    assert inpainter.window == (1.0, 7.0)
    assert backend.batches == [3] * 10 + [2] * 10  # the faces of a frame go in one batch


def test_neutral_speaker_until_the_first_window() -> None:
    backend = CountingBackend()
    inpainter = ModelInpainter(backend)
    assert inpainter.window is None
    inpainter.inpaint(_crops(1), [box_mask()])
    inpainter.inpaint(_crops(1), [box_mask()])
    assert inpainter.window == NEUTRAL_WINDOW and backend.speaker_calls == 1
    with pytest.raises(ValueError, match="speaker input must be"):
        inpainter.set_speaker(np.zeros((1, 64, 1000), np.float32), window=(0.0, 6.0))


def test_batches_are_capped_by_the_inpainter_and_the_backend() -> None:
    backend = CountingBackend(max_batch=3)
    with ModelInpainter(backend, max_batch=8) as inpainter:
        results = inpainter.inpaint(_crops(7), [box_mask()] * 7)
    assert backend.batches == [3, 3, 1] and backend.closed
    assert len(results) == 7 and all(r.backend == "avinpaint-counting" for r in results)
    assert ModelInpainter(CountingBackend(), max_batch=2).inpaint([], []) == []
    with pytest.raises(ValueError, match="masks"):
        ModelInpainter(CountingBackend()).inpaint(_crops(2), [box_mask()])


def test_conversions() -> None:
    crops = _crops(2, seed=1)
    crops[0][0, 0] = (255, 0, 0)  # pure blue in BGR
    tensor = crops_to_input(crops)
    assert tensor.shape == (2, 3, 256, 256) and tensor.dtype == np.float32
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0
    assert tuple(tensor[0, :, 0, 0]) == (-1.0, -1.0, 1.0)  # RGB order
    for back, crop in zip(output_to_crops(tensor), crops, strict=True):
        np.testing.assert_array_equal(back, crop)  # exact round trip
    masks = masks_to_input([box_mask(), np.full((256, 256), 1.5, np.float32)])
    assert masks.shape == (2, 1, 256, 256) and masks.max() == 1.0


@pytest.fixture(scope="module")
def lite_model() -> Generator:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return Generator(LITE).eval()


def test_known_pixels_come_back_unchanged(lite_model: Generator) -> None:
    crops = _crops(2, seed=2)
    mask = box_mask((40, 120, 170, 120))
    with ModelInpainter(TorchBackend(lite_model)) as inpainter:
        results = inpainter.inpaint(crops, [mask, mask])
    for result, crop in zip(results, crops, strict=True):
        assert result.backend == "avinpaint-torch-cpu" and result.latency_ms > 0
        np.testing.assert_array_equal(result.face_256[mask == 0], crop[mask == 0])
        assert np.abs(result.face_256.astype(int) - crop)[mask > 0].mean() > 1.0


def test_blend_is_the_poisson_blend_of_the_network_composite(lite_model: Generator) -> None:
    crops = _crops(2, seed=3)
    mask = box_mask((40, 120, 170, 120))
    # The guard off: an untrained network's fill of random crops is what it would replace.
    with ModelInpainter(TorchBackend(lite_model), blend="never", guard=None) as raw:
        plain = raw.inpaint(crops, [mask, mask])
    with ModelInpainter(TorchBackend(lite_model), blend="always", guard=None) as blended:
        results = blended.inpaint(crops, [mask, mask])
    with ModelInpainter(TorchBackend(lite_model), guard=None) as auto:
        unjudged = auto.inpaint(crops, [mask, mask])
    for result, composite, crop, drawn in zip(results, plain, crops, unjudged, strict=True):
        expected = poisson_blend(composite.face_256, crop, mask)
        np.testing.assert_array_equal(result.face_256, expected)
        assert result.blended and not composite.blended
        assert not np.array_equal(result.face_256, composite.face_256)
        # auto without a guard has nothing to judge by: the fill as drawn.
        np.testing.assert_array_equal(drawn.face_256, composite.face_256)
        assert not drawn.blended
    with pytest.raises(ValueError, match="blend"):
        ModelInpainter(TorchBackend(lite_model), blend="sometimes")  # type: ignore[arg-type]


class Recording:
    """Wraps an Inpainter and keeps every result."""

    def __init__(self, inner: Inpainter) -> None:
        self.inner = inner
        self.results: list[InpaintResult] = []

    @property
    def name(self) -> str:
        return self.inner.name

    def inpaint(self, crops: Sequence[Image], masks: Sequence[Mask]) -> list[InpaintResult]:
        results = self.inner.inpaint(crops, masks)
        self.results.extend(results)
        return results


def test_onnxruntime_and_torch_restore_the_same_video(
    lite_model: Generator, make_clip: Any, tmp_path: Path
) -> None:
    """The file pipeline with the model on onnxruntime and on torch, fed the file's own
    speech: the speaker graph runs once per speaker window, and both backends give the same
    crops (to 1 grey level on a few pixels) and the same frames."""
    clip: ClipTruth = make_clip("engines_speech5s.mp4", duration_s=5.0)
    # Lossless H.264 (crf 0): a one-level difference in a crop stays one pixel's difference
    # instead of steering the encoder's decisions for the rest of the group of pictures.
    options = ProcessOptions(encode=EncodeOptions(crf=0, preset="ultrafast", threads=1))
    region = FixedRegion(box_mask((32, 128, 192, 128)))
    runs = {}
    backend_options = BackendOptions(cache_dir=tmp_path / "cache", threads=1)
    backends = {
        "onnxruntime": OnnxRuntimeFactory("cpu").create(lite_model, backend_options),
        "torch": TorchBackend(lite_model),
    }
    for name, backend in backends.items():
        with ModelInpainter(backend) as inpainter:
            recording = Recording(inpainter)
            report = process_file(
                clip.path,
                tmp_path / f"{name}.mp4",
                recording,
                region,
                options,
                speaker_sink=inpainter.use_speech,
            )
            # The first frames come before 2 s of speech (neutral speaker), then one run per
            # speaker window, however many faces and frames each window covers.
            assert report.speaker_windows >= 2
            assert inpainter.speaker_runs == report.speaker_windows + 1
        assert len(recording.results) > 0
        runs[name] = (report, recording.results)
    ort_results, torch_results = runs["onnxruntime"][1], runs["torch"][1]
    assert {r.backend for r in ort_results} == {"avinpaint-onnxruntime-cpu"}
    for a, b in zip(ort_results, torch_results, strict=True):
        assert np.abs(a.face_256.astype(int) - b.face_256).max() <= 1
    frames_ort, times_ort = video_frames(runs["onnxruntime"][0].output)
    frames_torch, times_torch = video_frames(runs["torch"][0].output)
    assert times_ort == times_torch and len(frames_ort) == clip.frame_count
    for a, b in zip(frames_ort, frames_torch, strict=True):
        difference = np.abs(a.astype(int) - b)
        # A one-level crop difference, warped back and through YUV 4:2:0, moves a few levels.
        assert difference.max() <= 6
        assert (difference > 0).mean() < 1e-3
