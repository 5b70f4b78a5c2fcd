"""``avstream batch`` without Ray: inputs, manifests, the ledger and the skip rule."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from stream.batch import (
    FileRecord,
    FileWorker,
    Fingerprint,
    Job,
    Ledger,
    check_jobs,
    expand_inputs,
    file_sha256,
    is_done,
    options_digest,
    plan,
    read_ledger,
    read_manifest,
    remove_partials,
)
from stream.batch_cli import batch_settings
from stream.cli import build_parser, main
from stream.errors import OutputError, UsageError
from stream.media import AtomicOutput
from stream.testclip import ClipTruth


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folders_files_and_globs_mirror_their_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    touch(src / "a.mp4")
    touch(src / "day1" / "b.mkv")
    touch(src / "day1" / "c.avi")
    touch(src / "notes.txt")
    touch(src / "day1" / ".hidden.partial.mp4")
    out = tmp_path / "out"
    jobs = expand_inputs([str(src)], out)
    assert [(j.input, j.output) for j in jobs] == [
        (src / "a.mp4", out / "a.mp4"),
        (src / "day1" / "b.mkv", out / "day1" / "b.mkv"),
        (src / "day1" / "c.avi", out / "day1" / "c.mp4"),  # no .avi writer: .mp4
    ]
    globbed = expand_inputs([str(src / "**" / "*.mkv")], out)
    assert [(j.input, j.output) for j in globbed] == [
        (src / "day1" / "b.mkv", out / "day1" / "b.mkv")
    ]
    single = expand_inputs([str(src / "day1" / "b.mkv")], out)
    assert [j.output for j in single] == [out / "b.mkv"]


def test_an_output_folder_inside_the_input_folder_is_not_read(tmp_path: Path) -> None:
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "restored" / "a.mp4")
    jobs = expand_inputs([str(tmp_path)], tmp_path / "restored")
    assert [j.input for j in jobs] == [tmp_path / "a.mp4"]


def test_missing_inputs_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="input not found"):
        expand_inputs([str(tmp_path / "nope.mp4")], tmp_path / "out")
    with pytest.raises(UsageError, match="no video file matches"):
        expand_inputs([str(tmp_path / "*.mp4")], tmp_path / "out")
    with pytest.raises(UsageError, match="no input files"):
        check_jobs([])


def test_two_inputs_writing_one_output_are_refused(tmp_path: Path) -> None:
    a, b = touch(tmp_path / "x" / "a.mp4"), touch(tmp_path / "y" / "a.mp4")
    with pytest.raises(UsageError, match="would both write"):
        check_jobs(expand_inputs([str(a), str(b)], tmp_path / "out"))
    with pytest.raises(UsageError, match="is an input"):
        check_jobs([Job(a, b), Job(b, tmp_path / "o.mp4")])


def test_csv_and_jsonl_manifests(tmp_path: Path) -> None:
    touch(tmp_path / "clips" / "a.mp4")
    out = tmp_path / "out"
    csv_manifest = tmp_path / "list.csv"
    csv_manifest.write_text("input,output\nclips/a.mp4,site1/a.mkv\n/abs/b.mp4,\n")
    jobs = read_manifest(csv_manifest, out)
    assert jobs == (
        Job(tmp_path / "clips" / "a.mp4", out / "site1" / "a.mkv"),
        Job(Path("/abs/b.mp4"), out / "b.mp4"),
    )
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text(json.dumps({"input": "clips/a.mp4"}) + "\n\n")
    assert read_manifest(jsonl, out) == (Job(tmp_path / "clips" / "a.mp4", out / "a.mp4"),)
    bad = tmp_path / "bad.csv"
    bad.write_text("path\nx.mp4\n")
    with pytest.raises(UsageError, match="'input' column"):
        read_manifest(bad, out)


def record(job: Job, digest: str, status: str = "done", **fields: object) -> FileRecord:
    fp = Fingerprint.of(job.input)
    values: dict[str, object] = {
        "input": str(job.input.resolve()),
        "output": str(job.output.resolve()),
        "status": status,
        "error": None,
        "input_sha256": file_sha256(job.input),
        "input_size": fp.size,
        "input_mtime_ns": fp.mtime_ns,
        "options_sha256": digest,
        "options": {},
        "frames": 3,
        "wall_s": 1.0,
        "attempts": 1,
        "worker_pid": 1,
        "node_id": "n",
        "hostname": "h",
        "finished_at": "2026-01-01T00:00:00+00:00",
    }
    values.update(fields)
    return FileRecord(**values)  # type: ignore[arg-type]


def test_skip_rule_redoes_what_changed(tmp_path: Path) -> None:
    job = Job(touch(tmp_path / "in.mp4", b"video"), touch(tmp_path / "out" / "in.mp4"))
    digest = options_digest({"crf": 18})
    done = record(job, digest)
    assert is_done(done, job, digest)
    assert not is_done(None, job, digest)
    assert not is_done(record(job, digest, status="failed"), job, digest)
    assert not is_done(done, job, options_digest({"crf": 20}))  # other options
    # Touched but the same bytes: still done (the hash decides once the time changed).
    os.utime(job.input, ns=(1, 1))
    assert is_done(done, job, digest)
    job.input.write_bytes(b"other video")  # new content
    assert not is_done(done, job, digest)
    job.input.write_bytes(b"video")
    job.output.unlink()  # output deleted since
    assert not is_done(done, job, digest)


def test_ledger_round_trip_latest_wins_and_torn_line_ignored(tmp_path: Path) -> None:
    job = Job(touch(tmp_path / "in.mp4"), tmp_path / "out" / "in.mp4")
    path = tmp_path / "out" / "ledger.jsonl"
    with Ledger(path) as ledger:
        ledger.append(record(job, "d", status="failed", error="boom"))
        ledger.append(record(job, "d", attempts=2))
    with path.open("a") as f:
        f.write('{"input": "trunc')  # the driver died mid-line
    records = read_ledger(path)
    assert list(records) == [str(job.output.resolve())]
    assert records[str(job.output.resolve())].attempts == 2
    assert records[str(job.output.resolve())].status == "done"
    pending, skipped = plan([job], records, "d", force=False)
    assert pending == [job] and skipped == []  # output missing: redo
    touch(job.output)
    assert plan([job], records, "d", force=False) == ([], [job])
    assert plan([job], records, "d", force=True) == ([job], [])


def test_ledger_on_a_full_disk_is_a_clear_error(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    job = Job(touch(tmp_path / "in.mp4"), tmp_path / "o.mp4")
    # /dev/full: every write fails with ENOSPC, as on a full disk.
    with Ledger(Path("/dev/full")) as ledger, pytest.raises(OutputError, match="disk full"):
        ledger.append(record(job, "d"))


def test_remove_partials_only_touches_that_outputs_temporaries(tmp_path: Path) -> None:
    output = tmp_path / "a.mp4"
    with AtomicOutput(output) as atomic:
        touch(atomic.temp_path)
        partial = atomic.temp_path
        sidecar = touch(tmp_path / ".a.restored.0123456789ab.partial.jsonl")
        other = touch(tmp_path / ".a.b.0123456789ab.partial.mp4")  # output "a.b.mp4"
        keep = touch(tmp_path / "a.mp4.partial")
        assert remove_partials(output) == 2
        assert not partial.exists() and not sidecar.exists()
        assert other.exists() and keep.exists()


def test_gpu_backends_ask_ray_for_a_gpu(tmp_path: Path) -> None:
    parser = build_parser()
    base = ["batch", str(tmp_path), "-o", str(tmp_path / "o")]
    assert batch_settings(parser.parse_args(base)).gpus_per_worker == 0.0
    args = parser.parse_args([*base, "--backend", "tensorrt"])
    assert batch_settings(args).gpus_per_worker == 1.0
    args = parser.parse_args([*base, "--backend", "tensorrt", "--gpus-per-worker", "0.5"])
    assert batch_settings(args).gpus_per_worker == 0.5
    assert {"crf", "mask_detect", "model", "no_guard"} <= set(args.process_dests)
    assert "engine_cache" not in args.process_dests


def test_batch_usage_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["batch", "-o", str(tmp_path / "o")]) == 2
    assert "give input files" in capsys.readouterr().err
    touch(tmp_path / "a.mp4")
    assert main(["batch", str(tmp_path / "a.mp4"), "-o", str(tmp_path), "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err


def test_the_worker_restores_files_in_process_and_reports_a_full_disk(
    clip: ClipTruth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = build_parser().parse_args(
        ["batch", str(clip.path), "-o", str(tmp_path), "--inpainter", "telea", "--threads", "1"]
    )
    worker = FileWorker(args)  # what each Ray actor holds, here without Ray
    try:
        done = worker.process(Job(clip.path, tmp_path / "sub" / "a.mp4"))
        assert done.status == "done" and done.error is None and not done.fatal
        assert done.frames == clip.frame_count and done.worker.pid == os.getpid()
        assert done.input_sha256 == file_sha256(clip.path)
        assert (tmp_path / "sub" / "a.mp4").is_file()

        broken = touch(tmp_path / "broken.mp4", b"not a video")
        failed = worker.process(Job(broken, tmp_path / "b.mp4"))
        assert failed.status == "failed" and not failed.fatal
        assert failed.error is not None and "broken.mp4" in failed.error
        assert "\n" not in failed.error

        def full(*args: object, **kwargs: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr("stream.pipeline.process_file", full)
        fatal = worker.process(Job(clip.path, tmp_path / "c.mp4"))
        assert fatal.status == "failed" and fatal.fatal
        assert fatal.error == f"disk full writing {tmp_path / 'c.mp4'}"
    finally:
        worker.close()
