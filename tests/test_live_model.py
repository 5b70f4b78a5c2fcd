"""Live mode with the audio-driven model, the segmenter and reuse: a generated clip played at
its native rate (a file source), restored into a recording. Only the last test serves RTSP
(marked ``live``); the others need no GStreamer and run in the ordinary pytest process.

The shipped ``lite`` model runs on onnxruntime from a cache exported in a subprocess, so the
tests also work in a process where GStreamer is already loaded (which makes torch's ONNX
exporter abort the process; loading exported graphs is safe)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import face_region_mask

from avinpaint.checkpoint import load, shipped_path
from engines.backends import BackendOptions, select_backend
from stream.cli import main
from stream.inpaint import OpenCVInpainter
from stream.live import EmittedFrame, LiveOptions, LiveOutputs, LiveSession
from stream.media import EncodeOptions
from stream.model_inpainter import NEUTRAL_WINDOW, ModelInpainter
from stream.occlusion import FixedRegion
from stream.region import box_mask
from stream.speaker import SpeechWindow
from stream.testclip import ClipSpec, ClipTruth, make_talking_head_clip
from stream.types import Image

SHARP_RECORDING = EncodeOptions(crf=12, preset="veryfast", threads=1)
BUDGET_MS = 1000.0
"""Generous: the network is slower than Telea on two shared cores; the latency policy itself
is tested in test_live.py."""


@pytest.fixture(scope="module")
def speech_clip(tmp_path_factory: pytest.TempPathFactory) -> ClipTruth:
    """4 s of 320x240 talking head, surgical-mask occluder, speech: enough for the 2 s of
    voiced speech a speaker window needs."""
    path = tmp_path_factory.mktemp("live_model") / "speech.mp4"
    return make_talking_head_clip(path, ClipSpec(width=320, height=240, duration_s=4.0))


@pytest.fixture(scope="module")
def speech_frames(speech_clip: ClipTruth) -> list[Image]:
    with av.open(str(speech_clip.path)) as container:
        return [
            np.asarray(f.to_ndarray(format="bgr24"), np.uint8) for f in container.decode(video=0)
        ]


def recorded_frames(path: Path) -> list[Image]:
    with av.open(str(path)) as container:
        return [
            np.asarray(f.to_ndarray(format="bgr24"), np.uint8) for f in container.decode(video=0)
        ]


def occluder_diffs(
    clip: ClipTruth, sources: list[Image], events: list[EmittedFrame], recorded: list[Image]
) -> list[tuple[bool, float, float]]:
    """Per emitted frame: (restored, mean change under the occluder, mean change away from
    the face)."""
    assert len(recorded) == len(events)
    out = []
    for event, image in zip(events, recorded, strict=True):
        covered = clip.occluder_masks[event.index]
        face = face_region_mask(clip.face_boxes[event.index : event.index + 1], covered.shape, 0.3)
        diff = np.abs(image.astype(np.int16) - sources[event.index])
        out.append((event.restored, float(diff[covered].mean()), float(diff[~face].mean())))
    return out


def summary_line(out: str) -> str:
    lines = [line for line in out.splitlines() if "frames out" in line]
    assert len(lines) == 1, out
    return lines[0]


def test_model_restores_live_frames_with_the_speakers_voice(
    speech_clip: ClipTruth, speech_frames: list[Image], lite_cache: Path, tmp_path: Path
) -> None:
    backend = select_backend(
        "onnxruntime", load("lite"), BackendOptions(cache_dir=lite_cache, max_batch=2, threads=1)
    ).backend
    windows: list[SpeechWindow] = []
    used: list[object] = []
    events: list[EmittedFrame] = []
    record = tmp_path / "model.mkv"

    with ModelInpainter(backend, max_batch=2) as model:

        def sink(window: SpeechWindow) -> None:
            windows.append(window)
            model.use_speech(window)
            used.append(model.window)

        options = LiveOptions(max_latency_ms=BUDGET_MS, record_encode=SHARP_RECORDING)
        with LiveSession(
            str(speech_clip.path),
            model,
            FixedRegion(box_mask()),
            LiveOutputs(record=record),
            options,
            on_frame=events.append,
            speaker_sink=sink,
        ) as session:
            assert session.wait(30.0)
            report = session.close()
        speaker_runs = model.speaker_runs

    assert report.stopped == "end of source"
    assert report.inpainter.startswith("avinpaint-onnxruntime"), report
    assert report.frames_in == speech_clip.frame_count == report.frames_out + report.dropped

    # The sink got the live speech, and the model switched from its neutral speaker to it.
    assert report.speaker_windows == len(windows) >= 1, report
    assert all(w.speech_s >= 2.0 for w in windows)
    assert used == [(w.start_s, w.end_s) for w in windows]
    assert NEUTRAL_WINDOW not in used
    assert speaker_runs == 1 + len(windows)  # the neutral speaker, then one run per window

    # Frames came out restored: the occluder's pixels changed, the rest of the picture did
    # not; frames passed through unrestored are the originals.
    restored = [e for e in events if e.restored]
    assert len(restored) >= 20, report
    assert sum(e.faces for e in restored) >= 0.9 * len(restored)
    for was_restored, under, elsewhere in occluder_diffs(
        speech_clip, speech_frames, events, recorded_frames(record)
    ):
        assert elsewhere < 2.5, elsewhere  # H.264 at crf 12 only
        if was_restored:
            assert under > 4.0, under
        else:
            assert under < 2.5, under
    # Reuse is on by default: some faces were shown from the cache, not regenerated.
    assert report.faces_reused > 0, report


def test_no_speaker_feeds_nothing(speech_clip: ClipTruth, tmp_path: Path) -> None:
    windows: list[SpeechWindow] = []
    with LiveSession(
        str(speech_clip.path),
        OpenCVInpainter(),
        FixedRegion(box_mask()),
        LiveOutputs(record=tmp_path / "o.mp4"),
        LiveOptions(max_latency_ms=BUDGET_MS, speaker=False, reuse=None),
        speaker_sink=windows.append,
    ) as session:
        assert session.wait(30.0)
        done = session.close()
    assert windows == []
    assert done.speaker_windows == 0
    assert done.faces_reused == 0  # reuse=None regenerates every face
    assert done.inpainter == "opencv-telea"


def test_cli_auto_picks_the_model_and_feeds_it_speech(
    speech_clip: ClipTruth, lite_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "auto.mp4"
    args = ["live", str(speech_clip.path), "--record", str(out), "--crf", "12"]
    args += ["--backend", "onnxruntime", "--engine-cache", str(lite_cache), "--max-batch", "2"]
    args += ["--model-threads", "1", "--max-latency-ms", str(BUDGET_MS), "--stats-every-s", "1"]
    assert main(args) == 0  # --inpainter auto, --model lite: the defaults
    captured = capsys.readouterr()
    summary = summary_line(captured.out)
    assert "end of source" in summary
    assert re.search(r"\d+ restored with avinpaint-onnxruntime", summary), summary
    windows = re.search(r"(\d+) speaker windows used", summary)
    assert windows is not None and int(windows.group(1)) >= 1, summary
    assert re.search(r"restored \d+ with avinpaint-onnxruntime", captured.err), captured.err
    frames_out = re.search(r"(\d+) frames out", summary)
    assert frames_out is not None
    assert len(recorded_frames(out)) == int(frames_out.group(1)) > 0


def test_cli_falls_back_to_telea_and_detects_the_mask(
    speech_clip: ClipTruth,
    speech_frames: list[Image],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "detect.mp4"
    missing = tmp_path / "missing.safetensors"
    args = ["live", str(speech_clip.path), "--record", str(out), "--crf", "12"]
    args += ["--model", str(missing), "--mask-detect", "--no-reuse", "--no-speaker"]
    args += ["--max-latency-ms", str(BUDGET_MS)]
    with caplog.at_level(logging.WARNING):
        assert main(args) == 0
    assert "using the OpenCV Telea baseline" in caplog.text
    summary = summary_line(capsys.readouterr().out)
    assert re.search(r"\d+ restored with opencv-telea", summary), summary
    assert "0 speaker windows used, 0 faces reused" in summary

    # The segmenter found the occluder: restored frames changed under it. The recording's
    # frames are matched to the source by the face pixels the occluder never covers.
    covered = speech_clip.occluder_masks.any(axis=0)
    visible = np.stack([f[~covered] for f in speech_frames]).astype(np.int16)
    sampled = recorded_frames(out)[::4]
    changed = 0
    for image in sampled:
        match = np.abs(visible - image[~covered]).mean(axis=(1, 2)).argmin()
        under = np.abs(image.astype(np.int16) - speech_frames[match])[covered].mean()
        changed += bool(under > 4.0)
    assert changed >= 3, (changed, len(sampled))

    # --mask-detect excludes a fixed region; --mask-threshold applies to detection only.
    with pytest.raises(SystemExit) as exit_info:
        main([*args[:4], "--mask-detect", "--mask-box", "64,89,128,128"])
    assert exit_info.value.code == 2
    assert main([*args[:4], "--mask-box", "--mask-threshold", "0.1"]) == 2
    assert "--mask-threshold applies to detection" in capsys.readouterr().err


@pytest.mark.live
def test_cli_serves_the_model_exported_on_first_use(speech_clip: ClipTruth, tmp_path: Path) -> None:
    # A fresh engine cache: the command exports the model, then starts the RTSP server. In
    # a subprocess, because the order matters (the export aborts once GStreamer is loaded)
    # and this process may have loaded GStreamer already.
    pytest.importorskip("gi")
    if not shipped_path("lite").is_file():
        pytest.skip("no shipped lite weights")
    out = tmp_path / "served.mp4"
    command = [sys.executable, "-m", "stream.cli", "live", str(speech_clip.path)]
    command += ["--serve", "rtsp://127.0.0.1:0/restored", "--record", str(out)]
    command += ["--inpainter", "model", "--backend", "onnxruntime", "--model-threads", "1"]
    command += ["--engine-cache", str(tmp_path / "cache"), "--max-latency-ms", str(BUDGET_MS)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if "GStreamer" in done.stderr and done.returncode == 1:
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stderr
    assert "serving rtsp://127.0.0.1:" in done.stdout
    summary = summary_line(done.stdout)
    assert re.search(r"\d+ restored with avinpaint-onnxruntime", summary), summary
    assert out.is_file()
