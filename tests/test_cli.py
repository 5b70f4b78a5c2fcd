"""The ``avstream process`` command on good and bad inputs: exit codes, one-line errors,
no partial output, and the input never touched."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import audio_packets, video_frames, video_times

from stream.cli import _print_summary, main
from stream.pipeline import ProcessReport
from stream.provenance import read_sidecar
from stream.testclip import ClipTruth

FAST = ["--crf", "12", "--preset", "veryfast", "--threads", "1", "--no-progress"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("avstream: error:"), err
    return err


def _no_leftovers(directory: Path, allowed: set[str]) -> None:
    assert {p.name for p in directory.iterdir()} == allowed


def test_process_writes_restored_video(
    clip: ClipTruth, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _digest(clip.path)
    out = tmp_path / "out.mkv"
    assert main(["process", str(clip.path), "-o", str(out), *FAST]) == 0
    assert "50 frames" in capsys.readouterr().out
    assert _digest(clip.path) == before
    assert video_times(out) == pytest.approx(video_times(clip.path), abs=1e-6)
    assert [p for _, p in audio_packets(out)] == [p for _, p in audio_packets(clip.path)]
    # The provenance sidecar: one record per frame, in output order, with the same times.
    _no_leftovers(tmp_path, {"out.mkv", "out.restored.jsonl"})
    header, frames = read_sidecar(tmp_path / "out.restored.jsonl")
    records = list(frames)
    assert (header.video, header.width, header.height) == ("out.mkv", 640, 480)
    assert [r.index for r in records] == list(range(50))
    assert [r.time_s for r in records] == pytest.approx(video_times(clip.path), abs=1e-6)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_verbose_mask_detect_logs_what_was_decided_per_track(
    clip: ClipTruth,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "out.mp4"
    args = ["process", str(clip.path), "-o", str(out), "--mask-detect", "--inpainter", "telea"]
    with caplog.at_level(logging.INFO, logger="stream"):
        assert main(["-v", *args, *FAST]) == 0
    assert "50 frames" in capsys.readouterr().out
    messages = [r.getMessage() for r in caplog.records]
    # The decision when it first holds, and the per-track summary at the end.
    assert any(
        re.match(r"frame \d+: track 1 covered, restoring \(coverage 0\.\d+\)", m) for m in messages
    )
    summary = [m for m in messages if m.startswith("track 1: 50 frames, covered in ")]
    assert len(summary) == 1 and "coverage mean 0." in summary[0]


def test_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["process", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "o.mp4"), *FAST])
    assert rc == 1
    assert "not found" in _one_line_error(capsys)
    _no_leftovers(tmp_path, set())


def test_non_video_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("this is not a video\n" * 100)
    assert main(["process", str(bogus), "-o", str(tmp_path / "o.mp4"), *FAST]) == 1
    assert "cannot read" in _one_line_error(capsys)
    _no_leftovers(tmp_path, {"notes.mp4"})


def test_audio_only_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "speech.wav"
    with av.open(str(wav), "w") as c:
        stream = c.add_stream("pcm_s16le", rate=16000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 16000), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 16000
        c.mux(stream.encode(frame))
        c.mux(stream.encode(None))
    assert main(["process", str(wav), "-o", str(tmp_path / "o.mp4"), *FAST]) == 1
    assert "no video stream" in _one_line_error(capsys)
    _no_leftovers(tmp_path, {"speech.wav"})


def test_output_equal_to_input_is_refused(
    clip: ClipTruth, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "in.mp4"
    shutil.copy(clip.path, copy)
    before = _digest(copy)
    assert main(["process", str(copy), "-o", str(tmp_path / "." / "in.mp4"), *FAST]) == 2
    assert "is the input" in _one_line_error(capsys)
    assert _digest(copy) == before
    _no_leftovers(tmp_path, {"in.mp4"})


def test_missing_output_directory(
    clip: ClipTruth, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "missing" / "o.mp4"
    assert main(["process", str(clip.path), "-o", str(out), *FAST]) == 2
    assert "directory does not exist" in _one_line_error(capsys)
    _no_leftovers(tmp_path, set())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mask-box", "--mask-threshold", "0.1"], "--mask-threshold applies to detection"),
        (["--mask-detect", "--mask-threshold", "0"], "--mask-threshold must be within"),
        (["--mask-threshold", "1.5"], "--mask-threshold must be within"),
        (["--mask-image", "x.png", "--mask-dilate-px", "2"], "--mask-dilate-px applies"),
        (["--mask-detect", "--mask-dilate-px", "-1"], "--mask-dilate-px must be within"),
        (["--mask-box", "--mask-plain-edges"], "--mask-plain-edges applies to detection"),
        (["--mask-box", "1,2,3"], "four integers"),
        (["--mask-box", "0,0,300,10"], "does not fit"),
        (["--crf", "99"], "crf"),
        (["--preset", "warp9"], "preset"),
        (["--detect-every", "0"], "detect-every"),
    ],
)
def test_bad_options(
    clip: ClipTruth,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    assert main(["process", str(clip.path), "-o", str(tmp_path / "o.mp4"), *args]) == 2
    assert message in _one_line_error(capsys)
    _no_leftovers(tmp_path, set())


def test_unknown_output_container(
    clip: ClipTruth, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["process", str(clip.path), "-o", str(tmp_path / "o.xyz"), *FAST]) == 2
    assert "unsupported output container" in _one_line_error(capsys)


def test_usage_error_from_argparse_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["process"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error" in err


def test_video_without_audio_works(
    make_clip: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth: ClipTruth = make_clip("silent.mp4", duration_s=1.0, audio=False)  # type: ignore[operator]
    out = tmp_path / "o.mp4"
    assert main(["process", str(truth.path), "-o", str(out), *FAST]) == 0
    assert "audio none" in capsys.readouterr().out
    with av.open(str(out)) as c:
        assert not c.streams.audio
    assert len(video_times(out)) == truth.frame_count


def test_video_without_faces_passes_through(make_clip: object, tmp_path: Path) -> None:
    truth: ClipTruth = make_clip("noface.mp4", duration_s=1.0, face=False)  # type: ignore[operator]
    out = tmp_path / "o.mp4"
    assert main(["process", str(truth.path), "-o", str(out), *FAST]) == 0
    frames_in, times_in = video_frames(truth.path)
    frames_out, times_out = video_frames(out)
    assert times_out == pytest.approx(times_in, abs=1e-6)
    for a, b in zip(frames_in, frames_out, strict=True):
        assert np.abs(a.astype(int) - b).mean() < 1.0  # re-encoding noise only


def test_odd_frame_size(make_clip: object, tmp_path: Path) -> None:
    truth: ClipTruth = make_clip(  # type: ignore[operator]
        "odd.mp4", duration_s=1.0, width=641, height=479
    )
    out = tmp_path / "o.mp4"
    assert main(["process", str(truth.path), "-o", str(out), *FAST]) == 0
    frames, _ = video_frames(out)
    assert len(frames) == truth.frame_count
    assert frames[0].shape == (479, 641, 3)


def test_variable_frame_rate_keeps_timestamps(make_clip: object, tmp_path: Path) -> None:
    truth: ClipTruth = make_clip("vfr.mkv", duration_s=1.5, vfr=True)  # type: ignore[operator]
    out = tmp_path / "o.mp4"
    assert main(["process", str(truth.path), "-o", str(out), *FAST]) == 0
    times_in = video_times(truth.path)
    assert len(set(np.round(np.diff(times_in), 3))) > 1  # really variable
    assert video_times(out) == pytest.approx(times_in, abs=1e-6)


def test_truncated_mp4_without_index_is_a_clear_error(
    clip: ClipTruth, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "cut.mp4"
    data = clip.path.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # the moov index is at the end: gone
    assert main(["process", str(broken), "-o", str(tmp_path / "o.mp4"), *FAST]) == 1
    assert "cannot read" in _one_line_error(capsys)
    _no_leftovers(tmp_path, {"cut.mp4"})


def test_truncated_stream_processes_what_decodes(
    make_clip: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth: ClipTruth = make_clip("whole.mkv", duration_s=2.0)  # type: ignore[operator]
    broken = tmp_path / "cut.mkv"
    data = truth.path.read_bytes()
    broken.write_bytes(data[: int(len(data) * 0.6)])
    decodable = len(video_times(broken))
    assert 0 < decodable < truth.frame_count
    out = tmp_path / "o.mp4"
    assert main(["process", str(broken), "-o", str(out), *FAST]) == 0
    captured = capsys.readouterr()
    assert "warning: input is damaged" in captured.err
    assert len(video_times(out)) == decodable


def test_mask_image_and_navier_stokes(clip: ClipTruth, tmp_path: Path) -> None:
    import cv2

    mask = np.zeros((256, 256), np.uint8)
    mask[128:256, 32:224] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    out = tmp_path / "o.mp4"
    args = ["--mask-image", str(tmp_path / "mask.png"), "--inpainter", "ns"]
    assert main(["process", str(clip.path), "-o", str(out), *args, *FAST]) == 0
    frames_in, _ = video_frames(clip.path)
    frames_out, _ = video_frames(out)
    changed = np.abs(frames_in[10].astype(int) - frames_out[10]).mean(axis=-1) > 10
    covered = clip.occluder_masks[10]
    assert changed[covered].mean() > 0.5  # most of the occluder was painted over
    assert changed[~covered].mean() < 0.05


def test_sigterm_leaves_no_partial_output(make_clip: object, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    # Long enough (8 s at the slowest preset) that the signal lands mid-run.
    clip: ClipTruth = make_clip("long.mp4", duration_s=8.0, audio=False)  # type: ignore[operator]
    out = tmp_path / "o.mp4"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "process",
            str(clip.path),
            "-o",
            str(out),
            "--preset",
            "veryslow",
            "--no-progress",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not any(p.name.endswith(".partial.mp4") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "never started writing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted" in err
    _no_leftovers(tmp_path, set())


def test_convert_reports_mismatched_keys_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    bad = tmp_path / "G_1.pth"
    torch.save({"coarse.not_a_layer": torch.zeros(3)}, bad)
    out = tmp_path / "paper.safetensors"
    assert main(["convert", "audioface", str(bad), "-o", str(out)]) == 1
    err = _one_line_error(capsys)
    assert "missing (210)" in err and "coarse.not_a_layer" in err
    assert main(["convert", "audioface", str(tmp_path / "nope.pth"), "-o", str(out)]) == 1
    assert "does not exist" in _one_line_error(capsys)
    _no_leftovers(tmp_path, {"G_1.pth"})


def test_model_inpainter_runs_a_checkpoint_on_onnxruntime(
    clip: ClipTruth, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from avinpaint.checkpoint import save
    from avinpaint.config import preset
    from avinpaint.model import Generator

    torch.manual_seed(0)
    weights = save(Generator(preset("lite")).eval(), tmp_path / "lite_random.safetensors")
    out = tmp_path / "o.mp4"
    args = ["--inpainter", "model", "--model", str(weights), "--backend", "onnxruntime"]
    args += ["--engine-cache", str(tmp_path / "cache")]
    assert main(["process", str(clip.path), "-o", str(out), *args, *FAST]) == 0
    assert "50 frames" in capsys.readouterr().out
    assert len(video_times(out)) == clip.frame_count
    bad = ["--inpainter", "model", "--model", str(tmp_path / "missing.safetensors")]
    assert main(["process", str(clip.path), "-o", str(tmp_path / "p.mp4"), *bad, *FAST]) == 1
    _one_line_error(capsys)


@pytest.mark.parametrize(("flag", "radius"), [([], 6), (["--mask-plain-edges"], 0)])
def test_mask_plain_edges_turns_the_edge_guide_off(flag: list[str], radius: int) -> None:
    from stream.cli import build_parser, occlusion_model
    from stream.mask_detect import MaskDetector

    args = build_parser().parse_args(["process", "in.mp4", "-o", "o.mp4", *flag])
    model = occlusion_model(args)
    assert isinstance(model, MaskDetector)
    assert model.options.guide_radius_px == radius


@pytest.mark.parametrize(("flag", "follows"), [([], True), (["--no-past-crop"], False)])
def test_no_past_crop_keeps_the_region_inside_the_crop(flag: list[str], follows: bool) -> None:
    from stream.cli import build_parser, occlusion_model
    from stream.errors import UsageError
    from stream.mask_detect import MaskDetector

    args = build_parser().parse_args(["process", "in.mp4", "-o", "o.mp4", *flag])
    model = occlusion_model(args)
    assert isinstance(model, MaskDetector)
    assert (model.options.past_crop is not None) == follows
    fixed = build_parser().parse_args(["process", "in.mp4", "-o", "o.mp4", "--mask-box", *flag])
    if flag:
        with pytest.raises(UsageError, match="--no-past-crop"):
            occlusion_model(fixed)


@pytest.mark.parametrize(("flag", "rim_px"), [([], 2), (["--mask-hard-edges"], 0)])
def test_mask_hard_edges_turns_the_soft_rim_off(flag: list[str], rim_px: int) -> None:
    from stream.cli import build_parser, occlusion_model
    from stream.errors import UsageError
    from stream.mask_detect import MaskDetector

    args = build_parser().parse_args(["process", "in.mp4", "-o", "o.mp4", *flag])
    model = occlusion_model(args)
    assert isinstance(model, MaskDetector)
    assert model.options.rim_px == rim_px
    fixed = build_parser().parse_args(["process", "in.mp4", "-o", "o.mp4", "--mask-box", *flag])
    if flag:
        with pytest.raises(UsageError, match="--mask-hard-edges"):
            occlusion_model(fixed)


def test_the_summary_says_what_replaced_the_fills_the_guard_failed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = ProcessReport(
        output=Path("out.mp4"),
        frames_in=10,
        frames_out=10,
        expected_frames=10,
        corrupt_packets=0,
        stopped_early=None,
        audio_mode="copy",
        audio_packets=0,
        faces_restored=10,
        speaker_windows=0,
        faces_regenerated=4,
        track_ids=((1,),) * 10,
        stages={},
        wall_s=1.0,
        faces_guarded=4,
    )
    _print_summary(report)
    assert "fill guard: 4 fills checked, 0 failed\n" in capsys.readouterr().out
    _print_summary(dataclasses.replace(report, faces_fell_back=3, faces_held=2))
    assert (
        "fill guard: 4 fills checked, 3 failed: 2 replaced by the track's last good fill, "
        "1 by the safe Telea fill"
    ) in capsys.readouterr().out
