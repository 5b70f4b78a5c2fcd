"""End to end on a generated clip: frames, timestamps, audio packets, pixels and track ids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import audio_packets, face_region_mask, video_frames

from stream.inpaint import OpenCVInpainter
from stream.media import EncodeOptions
from stream.occlusion import FixedRegion
from stream.pipeline import ProcessOptions, ProcessReport, process_file
from stream.region import box_mask
from stream.speaker import SpeechWindow
from stream.testclip import ClipTruth
from stream.types import Image, InpaintResult, Mask

# The generated occluder spans crop columns ~37-216 and rows ~136-252: wider and lower than
# the paper's box, as real masks are.
OCCLUDER_BOX = (32, 128, 192, 128)
FAST = ProcessOptions(encode=EncodeOptions(crf=12, preset="veryfast", threads=1))


@pytest.fixture(scope="module")
def processed(clip: ClipTruth, tmp_path_factory: pytest.TempPathFactory) -> ProcessReport:
    out = tmp_path_factory.mktemp("out") / "restored.mp4"
    done: list[int] = []

    def progress(written: int, total: int | None) -> None:
        assert total == clip.frame_count
        done.append(written)

    report = process_file(
        clip.path,
        out,
        OpenCVInpainter("telea"),
        FixedRegion(box_mask(OCCLUDER_BOX)),
        FAST,
        progress,
    )
    assert done == list(range(1, clip.frame_count + 1))
    return report


def test_every_frame_and_timestamp_is_kept(clip: ClipTruth, processed: ProcessReport) -> None:
    _, times_in = video_frames(clip.path)
    _, times_out = video_frames(processed.output)
    assert processed.frames_in == processed.frames_out == clip.frame_count == len(times_out)
    np.testing.assert_allclose(times_out, times_in, atol=1e-6)
    assert not processed.damaged


def test_audio_packets_are_copied_byte_for_byte(clip: ClipTruth, processed: ProcessReport) -> None:
    a_in = audio_packets(clip.path)
    a_out = audio_packets(processed.output)
    assert processed.audio_mode == "copy"
    assert len(a_in) == len(a_out) == processed.audio_packets > 0
    assert [p for _, p in a_in] == [p for _, p in a_out]
    np.testing.assert_allclose([t for t, _ in a_out], [t for t, _ in a_in], atol=1e-6)


def test_only_face_regions_change(clip: ClipTruth, processed: ProcessReport) -> None:
    frames_in, _ = video_frames(clip.path)
    frames_out, _ = video_frames(processed.output)
    for i in range(0, clip.frame_count, 7):
        a = frames_in[i].astype(np.int16)
        b = frames_out[i].astype(np.int16)
        near_face = face_region_mask(clip.face_boxes[i : i + 1], a.shape[:2], margin=0.25)
        away = np.abs(a - b)[~near_face]
        assert away.mean() < 1.0, (i, away.mean())  # re-encoding noise only
        assert np.percentile(away, 99.9) <= 12
        covered = clip.occluder_masks[i]
        assert np.abs(a - b)[covered].mean() > 15.0  # the occluder was painted over


def test_one_stable_track_through_the_clip(processed: ProcessReport) -> None:
    assert all(len(ids) == 1 for ids in processed.track_ids)
    assert {ids[0] for ids in processed.track_ids} == {1}
    assert processed.faces_restored == processed.frames_out
    # reuse: only some frames were sent to the inpainter
    assert 0 < processed.faces_regenerated < processed.faces_restored


def test_what_the_region_model_decided_is_reported_per_track(processed: ProcessReport) -> None:
    (track,) = processed.coverage
    assert track.track_id == 1
    assert track.frames == track.covered_frames == track.restored_frames == processed.frames_out
    # A fixed region scores the fraction of the face region it covers, like --mask-detect.
    region = FixedRegion(box_mask(OCCLUDER_BOX))
    assert 0.1 < region.coverage < 0.9
    assert track.mean_coverage == pytest.approx(region.coverage)
    assert track.max_coverage == pytest.approx(region.coverage)
    assert track.line().startswith(f"track 1: {processed.frames_out} frames, covered in ")


def test_stage_timings_are_reported(processed: ProcessReport) -> None:
    stages = {"decode", "track_align", "region", "inpaint", "composite", "encode"}
    assert stages <= set(processed.stages)
    for name in stages - {"encode"}:
        assert processed.stages[name].count == processed.frames_out
    assert processed.fps > 0


class _Exploding:
    name = "exploding"

    def __init__(self, after: int) -> None:
        self.calls = 0
        self.after = after

    def inpaint(self, crops: Sequence[Image], masks: Sequence[Mask]) -> list[InpaintResult]:
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("backend crashed")
        return [InpaintResult(face_256=c, backend=self.name, latency_ms=0.0) for c in crops]


def test_a_failing_stage_leaves_no_partial_output(clip: ClipTruth, tmp_path: Path) -> None:
    out = tmp_path / "restored.mp4"
    with pytest.raises(RuntimeError, match="backend crashed"):
        process_file(clip.path, out, _Exploding(after=5), FixedRegion(box_mask()), FAST)
    assert list(tmp_path.iterdir()) == []


def test_speaker_windows_follow_the_files_own_speech(make_clip: Any, tmp_path: Path) -> None:
    clip: ClipTruth = make_clip("speech5s.mp4", duration_s=5.0)  # 2 s of speech come first
    windows: list[SpeechWindow] = []
    report = process_file(
        clip.path,
        tmp_path / "o.mp4",
        OpenCVInpainter("telea"),
        FixedRegion(box_mask(OCCLUDER_BOX)),
        FAST,
        speaker_sink=windows.append,
    )
    assert report.speaker_windows == len(windows) >= 1
    ends = [w.end_s for w in windows]
    assert ends == sorted(ends)
    assert all(w.speech_s >= 2.0 and w.end_s <= clip.frame_count / 25 + 0.5 for w in windows)


class _SpeakerHeard(OpenCVInpainter):
    """Telea that records, per frame with a fill, the speaker window in use; usable as a
    plain sink (``hear``) or as a ``StagedSpeakerSink`` (``speech_features`` made ahead in
    the pipeline's speaker stage, ``use_features`` in its inpainter stage)."""

    def __init__(self) -> None:
        super().__init__("telea")
        self.current: tuple[float, float] | None = None
        self.in_use: list[tuple[float, float] | None] = []
        self.prepared: list[tuple[float, float]] = []

    def hear(self, window: SpeechWindow) -> None:
        self.current = (window.start_s, window.end_s)

    def speech_features(self, window: SpeechWindow) -> tuple[float, float]:
        self.prepared.append((window.start_s, window.end_s))
        return (window.start_s, window.end_s)

    def use_features(self, features: tuple[float, float]) -> None:
        self.current = features

    def inpaint(self, crops: Sequence[Image], masks: Sequence[Mask]) -> list[InpaintResult]:
        if crops:  # an empty batch (every face reused) hears nothing
            self.in_use.append(self.current)
        return super().inpaint(crops, masks)


def test_a_staged_speaker_sink_hears_the_same_windows_at_the_same_fills(
    make_clip: Any, tmp_path: Path
) -> None:
    clip: ClipTruth = make_clip("speech5s.mp4", duration_s=5.0)
    region = FixedRegion(box_mask(OCCLUDER_BOX))
    plain, staged = _SpeakerHeard(), _SpeakerHeard()
    first = process_file(clip.path, tmp_path / "a.mp4", plain, region, FAST, None, plain.hear)
    second = process_file(clip.path, tmp_path / "b.mp4", staged, region, FAST, None, staged)
    # Every fill hears the same window; a staged sink prepares only windows a fill uses.
    assert plain.in_use == staged.in_use
    assert len({w for w in staged.in_use if w is not None}) >= 1
    assert 1 <= second.speaker_windows == len(staged.prepared) <= first.speaker_windows


def test_a_staged_speaker_sink_does_no_work_when_nothing_is_covered(
    make_clip: Any, tmp_path: Path
) -> None:
    clip: ClipTruth = make_clip("speech5s.mp4", duration_s=5.0)
    nothing = FixedRegion(np.zeros((256, 256), np.float32))
    staged = _SpeakerHeard()
    report = process_file(clip.path, tmp_path / "c.mp4", staged, nothing, FAST, None, staged)
    assert report.faces_restored == report.speaker_windows == 0
    assert staged.prepared == [] and staged.in_use == []  # empty batches only
