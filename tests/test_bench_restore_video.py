"""``bench.restore_video`` end to end on a short generated clip without an occluder: it paints a
face mask, restores it with the real pipeline (Telea) and measures against the clean frames."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from bench.restore_video import FrameMasks, RecordingDetector, main, make_masked_clip, measure
from stream.occlusion import PlacesCovered
from stream.testclip import ClipTruth
from stream.types import AlignedFace, Occlusion


@pytest.fixture(scope="module")
def clean(make_clip: Callable[..., ClipTruth]) -> ClipTruth:
    """2 s, no occluder: the original that the bench paints a mask onto."""
    return make_clip("clean.mp4", duration_s=2.0, occluder=False)


@pytest.fixture(scope="module")
def result(
    clean: ClipTruth, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    keep = tmp_path_factory.mktemp("bench")
    capture = keep / "stdout.json"
    with capture.open("w") as out, contextlib.redirect_stdout(out):
        code = main(["--input", str(clean.path), "--inpainters", "telea", "--keep", str(keep)])
    assert code == 0
    return json.loads(capture.read_text()), keep


def test_frames_and_timestamps_match(result: tuple[dict[str, Any], Path], clean: ClipTruth) -> None:
    report, keep = result
    assert report["frames"] == clean.frame_count == 50
    assert report["frames_and_timestamps_match"] is True
    # The face is found in every frame and gets one mask, one of the face-mask kinds.
    assert report["frames_with_face_mask"] == clean.frame_count
    assert len(report["face_masks"]) == 1
    assert set(report["face_masks"].values()) <= {"surgical", "cloth", "n95", "kn95"}
    assert {p.name for p in keep.glob("*.mp4")} >= {"masked.mp4", "restored_telea.mp4"}


def test_mask_is_painted_detected_and_restored(result: tuple[dict[str, Any], Path]) -> None:
    metrics = result[0]["metrics"]
    masked, telea = metrics["masked"], metrics["telea"]
    # The painted mask really hides the face: far from the original inside the region.
    assert masked["psnr_db"] < 20.0
    assert masked["mae_levels"] > 25.0
    # The detector finds most of what was painted and restores it in (nearly) every frame.
    assert telea["detect_iou"] > 0.6
    assert telea["detect_recall"] > 0.8
    assert telea["restored_frame_fraction"] > 0.9
    assert telea["faces_restored"] >= 45
    # Telea is a weak fill for a region this large: on this generated face the mask hides the
    # chin and the black jumper below it, and Telea diffuses skin over both, so its error is
    # about the mask's own (45.6 levels against 48.3 with an equal-weight landmark fit, 57.1
    # against 49.0 with the shipped fit, whose crop ends 6 px lower; real clips through
    # bench.quality: Telea 14.66 and 14.64 dB). A fill that is broken (zeros, noise, the
    # occluder left in place) is far from both.
    assert telea["mae_levels"] != masked["mae_levels"]
    assert telea["mae_levels"] < 1.3 * masked["mae_levels"]
    assert telea["psnr_db"] > masked["psnr_db"] - 3.0
    for method in ("original", "masked", "telea"):
        assert metrics[method]["flicker_levels"] > 0.0
    assert result[0]["seconds"]["telea"] > 0.0
    assert result[0]["ratio_to_transcode"]["telea"] > 0.0


def test_restored_region_identity_and_decisions_are_reported(
    result: tuple[dict[str, Any], Path],
) -> None:
    report = result[0]
    metrics = report["metrics"]
    telea, reference = metrics["telea"], metrics["telea_true_mask"]
    # The pixels the compositor may change are the detected region, not more: mostly mask.
    assert telea["changed_precision"] >= 0.9
    assert telea["changed_iou"] > 0.6
    for method in ("masked", "telea", "telea_true_mask"):
        assert -1.0 <= metrics[method]["sface_cosine"] <= 1.0
    assert reference["psnr_db"] > metrics["masked"]["psnr_db"]
    (track,) = telea["tracks"]
    assert track["frames"] == report["frames"]
    assert track["restored_frames"] == track["covered_frames"] >= 45
    assert 0.04 <= track["mean_coverage"] <= track["max_coverage"] <= 1.0
    assert report["feather_px"] == {"telea": 0.0} and report["dilate_px"] == 0
    assert {p.name for p in result[1].glob("*.mp4")} >= {"restored_telea_true_mask.mp4"}


def test_measure_refuses_a_clip_of_another_length(clean: ClipTruth, tmp_path: Path) -> None:
    clip = make_masked_clip(clean.path, tmp_path / "masked.mp4", seed=1, max_frames=5)
    assert len(clip.pts) == 5 and clip.truth[0].any()
    assert measure(clean.path, clip, [])["masked"]["mae_levels"] > 0.0
    # Claim the 50-frame original is the 5-frame masked file: the counts differ.
    wrong = dataclasses.replace(clip, path=clean.path)
    with pytest.raises(ValueError, match="frame counts differ"):
        measure(clean.path, wrong, [])


def test_frame_masks_round_trip() -> None:
    masks = FrameMasks((3, 5))
    first = np.zeros((3, 5), dtype=bool)
    first[1, 2:] = True
    masks.append(first)
    masks.append(~first)
    assert len(masks) == 2
    assert np.array_equal(masks[0], first) and np.array_equal(masks[1], ~first)
    with pytest.raises(ValueError, match="frame shape"):
        masks.append(np.zeros((5, 3), dtype=bool))


class _TwoPassDetector:
    """Stands in for ``MaskDetector``: the first pass covers the first face only, the second
    pass answers with ``second``."""

    def __init__(self, second: Occlusion) -> None:
        self.second = second

    def predict(
        self, faces: list[AlignedFace], track_ids: Sequence[int] | None = None
    ) -> list[Occlusion]:
        covered = np.zeros((256, 256), np.float32)
        covered[150:220, 60:200] = 1.0
        empty = np.zeros_like(covered)
        return [Occlusion(covered if i == 0 else empty, 0.2, 2) for i in range(len(faces))]

    def placement(self) -> str:
        return "placement"

    def predict_placed(self, faces: list[AlignedFace], track_ids: Sequence[int]) -> list[Occlusion]:
        return [self.second for _ in faces]

    def reset(self) -> None:
        pass


def _aligned(shift: float) -> AlignedFace:
    affine = np.array([[1.0, 0.0, shift], [0.0, 1.0, 0.0]])
    return AlignedFace(np.zeros((256, 256, 3), np.uint8), affine, cv2.invertAffineTransform(affine))


def test_the_recording_detector_places_covered_faces_and_records_the_placed_regions() -> None:
    again = np.zeros((256, 256), np.float32)
    again[160:240, 50:210] = 1.0
    recorder = RecordingDetector(_TwoPassDetector(Occlusion(again, 0.3, 2)))  # type: ignore[arg-type]
    assert isinstance(recorder, PlacesCovered)
    assert recorder.placement() == "placement"
    first, other, placed = _aligned(0.0), _aligned(300.0), _aligned(-12.0)
    recorder.predict([first, other], [1, 2])
    ((occlusion, inverse),) = recorder.calls[-1]
    assert occlusion.mask_256[150:220, 60:200].all() and inverse is first.inverse_affine
    # The pipeline restores the second pass's region in the placed crop: that is recorded.
    recorder.predict_placed([placed], [1])
    ((occlusion, inverse),) = recorder.calls[-1]
    np.testing.assert_array_equal(occlusion.mask_256, again)
    assert inverse is placed.inverse_affine
    # A placed face the second pass finds uncovered is not restored, nor recorded.
    nothing = RecordingDetector(_TwoPassDetector(Occlusion(np.zeros((256, 256), np.float32), 0, 2)))  # type: ignore[arg-type]
    nothing.predict([first], [1])
    nothing.predict_placed([placed], [1])
    assert nothing.calls[-1] == []
