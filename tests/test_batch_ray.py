"""``avstream batch`` on a real two-node Ray cluster (a head and a second node, each its own
``ray start`` process): outputs equal ``avstream process`` of the same files, files spread
over both nodes, resume, a corrupt input, and a worker killed mid-file."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import audio_packets, video_frames
from raycluster import LocalCluster, cluster_env, local_cluster

from stream.batch import (
    LEDGER_NAME,
    SUMMARY_NAME,
    BatchSettings,
    Job,
    WorkerInfo,
    read_ledger,
    run_batch,
)
from stream.batch_cli import batch_jobs
from stream.cli import build_parser, main
from stream.testclip import ClipSpec, make_talking_head_clip

# Fast and deterministic: one codec thread gives the same bytes in every process.
# Lossless, so "the same as process" can be checked pixel for pixel: lossy libx264 output of
# the threaded pipeline varies at noise level from run to run (see tests/test_region_default).
OPTIONS = ["--inpainter", "telea", "--threads", "1", "--preset", "veryfast", "--crf", "0"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A head and one more node, one CPU each: two workers land on two nodes."""
    with local_cluster(nodes=2, cpus_per_node=1) as running:
        yield running


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three distinct 2 s 320x240 talking heads with speech, one in a sub-folder."""
    root = tmp_path_factory.mktemp("batch_inputs")
    paths = {"a.mp4": root / "a.mp4", "b.mp4": root / "b.mp4", "c.mkv": root / "sub" / "c.mkv"}
    for seed, path in enumerate(paths.values()):
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = ClipSpec(width=320, height=240, duration_s=2.0, seed=seed, vfr=seed == 2)
        make_talking_head_clip(path, spec)
    return paths


@pytest.fixture(scope="module")
def references(clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``avstream process`` of each clip with the same options."""
    out = tmp_path_factory.mktemp("batch_references")
    refs = {}
    for name, path in clips.items():
        refs[name] = out / Path(name).name
        assert main(["process", str(path), "-o", str(refs[name]), "--no-progress", *OPTIONS]) == 0
    return refs


def batch_cli(
    cluster: LocalCluster, inputs: list[Path], out: Path, *extra: str, client: bool = False
) -> subprocess.CompletedProcess[str]:
    """``avstream batch`` in a process of its own, joining the cluster (through Ray Client
    with ``client``)."""
    address = cluster.client_address if client else cluster.address
    command = [sys.executable, "-m", "stream.cli", "batch", *map(str, inputs), "-o", str(out)]
    command += ["--address", address, "--no-progress", "--json", *OPTIONS, *extra]
    return subprocess.run(
        command, capture_output=True, text=True, env=cluster_env(), timeout=300, check=False
    )


def summary_of(run: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The JSON summary ``--json`` prints last."""
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert isinstance(summary, dict), run.stdout
    return summary


def assert_same_media(output: Path, reference: Path) -> None:
    frames, times = video_frames(output)
    ref_frames, ref_times = video_frames(reference)
    assert len(frames) == len(ref_frames) > 0
    assert times == ref_times
    assert all(np.array_equal(a, b) for a, b in zip(frames, ref_frames, strict=True))
    assert audio_packets(output) == audio_packets(reference)
    assert audio_packets(output)  # the clips have speech


def mirrored(out: Path) -> dict[str, Path]:
    return {"a.mp4": out / "a.mp4", "b.mp4": out / "b.mp4", "c.mkv": out / "sub" / "c.mkv"}


def partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".partial" in p.name]


def test_batch_on_two_nodes_equals_process_and_resumes(
    cluster: LocalCluster, clips: dict[str, Path], references: dict[str, Path], tmp_path: Path
) -> None:
    inputs_dir = clips["a.mp4"].parent
    out = tmp_path / "out"
    run = batch_cli(cluster, [inputs_dir], out, "--workers", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    summary = summary_of(run)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (3, 0, 0)
    assert summary["frames"] == 50 + 50 + 45 and summary["workers"] == 2  # c: VFR, 45 frames
    assert json.loads((out / SUMMARY_NAME).read_text()) == summary
    for name, output in mirrored(out).items():
        assert_same_media(output, references[name])
    records = read_ledger(out / LEDGER_NAME)
    assert len(records) == 3
    assert {r.status for r in records.values()} == {"done"}
    # Two workers of one CPU on two one-CPU nodes: the files were restored on both nodes.
    assert len({r.node_id for r in records.values()}) == 2
    assert all(r.frames in (45, 50) and r.input_sha256 and r.wall_s > 0 for r in records.values())
    assert not partials(out)

    # A re-run skips everything without touching the outputs.
    mtimes = {p: p.stat().st_mtime_ns for p in mirrored(out).values()}
    again = batch_cli(cluster, [inputs_dir], out)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = summary_of(again)
    assert (summary["done"], summary["skipped"]) == (0, 3)
    assert {p: p.stat().st_mtime_ns for p in mirrored(out).values()} == mtimes

    # Changed options redo every file; a changed input only that file.
    assert summary_of(batch_cli(cluster, [inputs_dir], out, "--crf", "30"))["done"] == 3
    os.utime(clips["a.mp4"])  # new time, same bytes: the hash says it is unchanged
    same = summary_of(batch_cli(cluster, [inputs_dir], out, "--crf", "30"))
    assert (same["done"], same["skipped"]) == (0, 3)


def test_changed_and_corrupt_inputs(
    cluster: LocalCluster, clips: dict[str, Path], references: dict[str, Path], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    good = src / "good.mp4"
    shutil.copyfile(clips["a.mp4"], good)
    broken = src / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))  # an MP4 in name only
    out = tmp_path / "out"
    run = batch_cli(cluster, [src], out, client=True)  # from "outside": ray://
    assert run.returncode == 1, run.stderr[-3000:]  # a file failed
    summary = summary_of(run)
    assert (summary["done"], summary["failed"]) == (1, 1)
    [failure] = summary["failures"]
    assert failure["input"] == str(broken.resolve())
    assert "\n" not in failure["error"] and "broken.mp4" in failure["error"]
    assert f"failed {broken.resolve()}" in run.stderr
    records = read_ledger(out / LEDGER_NAME)
    assert records[str((out / "broken.mp4").resolve())].status == "failed"
    assert not (out / "broken.mp4").exists() and not partials(out)
    assert_same_media(out / "good.mp4", references["a.mp4"])

    # Fixed and changed inputs are redone, the rest skipped.
    shutil.copyfile(clips["b.mp4"], broken)
    shutil.copyfile(clips["b.mp4"], good)
    rerun = batch_cli(cluster, [src], out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = summary_of(rerun)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (2, 0, 0)
    assert_same_media(out / "broken.mp4", references["b.mp4"])
    assert_same_media(out / "good.mp4", references["b.mp4"])


def _driver_jobs(
    clips: dict[str, Path], out: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[argparse.Namespace, tuple[Job, ...]]:
    """The batch of the clips' folder into ``out``, planned as the driver plans it, for tests
    that run the driver themselves (with this test's cluster in the environment)."""
    for key, value in cluster_env().items():
        monkeypatch.setenv(key, value)
    args = build_parser().parse_args(
        ["batch", str(clips["a.mp4"].parent), "-o", str(out), "--no-progress", *OPTIONS]
    )
    return args, batch_jobs(args)


@pytest.mark.slow
def test_a_worker_killed_mid_file_is_restarted_and_the_file_retried(
    cluster: LocalCluster,
    clips: dict[str, Path],
    references: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    args, jobs = _driver_jobs(clips, out, monkeypatch)
    workers: list[WorkerInfo] = []
    result: list[object] = []

    def run() -> None:
        try:
            result.append(
                run_batch(
                    jobs,
                    args,
                    {"test": 1},
                    out / LEDGER_NAME,
                    BatchSettings(address=cluster.address, workers=1, retries=1),
                    on_workers=workers.extend,
                )
            )
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        # Kill the only worker as soon as it writes its first output.
        deadline = time.monotonic() + 120
        while not (workers and partials(out)) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert workers and partials(out), "the worker never started writing"
        [victim] = workers
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        thread.join(timeout=240)
    assert not thread.is_alive()
    [summary] = result
    assert not isinstance(summary, BaseException), summary
    assert (summary.done, summary.failed, summary.retried) == (3, 0, 1)  # type: ignore[attr-defined]
    records = read_ledger(out / LEDGER_NAME)
    retried = [r for r in records.values() if r.attempts == 2]
    assert len(retried) == 1 and retried[0].worker_pid != victim.pid
    assert not partials(out)
    for name, output in mirrored(out).items():
        assert_same_media(output, references[name])


def test_sigterm_stops_cleanly_and_a_rerun_resumes(
    cluster: LocalCluster, clips: dict[str, Path], references: dict[str, Path], tmp_path: Path
) -> None:
    inputs_dir = clips["a.mp4"].parent
    out = tmp_path / "out"
    command = [sys.executable, "-m", "stream.cli", "batch", str(inputs_dir), "-o", str(out)]
    command += ["--address", cluster.address, "--no-progress", "--workers", "1", *OPTIONS]
    batch = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster_env()
    )
    try:
        # Stop it while the second file is being written: one done, one in progress.
        ledger = out / LEDGER_NAME
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
            ledger.is_file() and ledger.read_text().count("\n") >= 1 and partials(out)
        ):
            time.sleep(0.005)
        assert partials(out), "the second file never started"
        batch.send_signal(signal.SIGTERM)
        _, stderr = batch.communicate(timeout=60)
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait()
    assert batch.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr and "resume" in stderr
    assert not partials(out)
    # The stop lands within a second (the driver's wait): the file in progress may finish.
    records = read_ledger(out / LEDGER_NAME)
    assert {r.status for r in records.values()} == {"done"} and 1 <= len(records) < 3
    rerun = batch_cli(cluster, [inputs_dir], out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = summary_of(rerun)
    assert (summary["done"], summary["skipped"]) == (3 - len(records), len(records))
    for name, output in mirrored(out).items():
        assert_same_media(output, references[name])


@pytest.mark.slow
def test_model_batch_on_one_worker_equals_process_of_each_file(
    cluster: LocalCluster, lite_cache: Path, tmp_path: Path
) -> None:
    """The network, opened once, restores file after file as a fresh ``process`` each time
    (the speaker of one file never leaks into the next)."""
    model = ["--inpainter", "model", "--engine-cache", str(lite_cache), "--max-batch", "1"]
    # 4 s of speech: the model hears each file's speaker (2 s are needed) and changes voice.
    inputs = [tmp_path / "in" / "first.mp4", tmp_path / "in" / "second.mp4"]
    inputs[0].parent.mkdir()
    for seed, path in enumerate(inputs):
        make_talking_head_clip(path, ClipSpec(width=320, height=240, duration_s=4.0, seed=seed))
    refs = tmp_path / "refs"
    refs.mkdir()
    for clip in inputs:
        command = ["process", str(clip), "-o", str(refs / clip.name), "--no-progress"]
        assert main([*command, *OPTIONS, *model]) == 0
    out = tmp_path / "out"
    # One worker: the second file is restored by the model that restored the first.
    run = batch_cli(cluster, inputs, out, "--workers", "1", *model)
    assert run.returncode == 0, run.stderr[-3000:]
    records = read_ledger(out / LEDGER_NAME)
    assert len({r.worker_pid for r in records.values()}) == 1
    for clip in inputs:
        assert_same_media(out / clip.name, refs / clip.name)


@pytest.mark.slow
def test_a_lost_node_costs_only_its_files_in_flight(
    clips: dict[str, Path],
    references: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    args, jobs = _driver_jobs(clips, out, monkeypatch)
    workers: list[WorkerInfo] = []
    result: list[object] = []
    with local_cluster(nodes=2, cpus_per_node=1) as lossy:

        def run() -> None:
            try:
                settings = BatchSettings(address=lossy.address, workers=2, retries=1)
                result.append(
                    run_batch(
                        jobs,
                        args,
                        {"test": 2},
                        out / LEDGER_NAME,
                        settings,
                        on_workers=workers.extend,
                    )
                )
            except BaseException as exc:
                result.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        try:
            # Both workers writing: then the second node (its raylet and worker) goes away.
            def videos() -> list[Path]:
                return [p for p in partials(out) if p.suffix in (".mp4", ".mkv")]

            deadline = time.monotonic() + 120
            while not (len(workers) == 2 and len(videos()) == 2) and time.monotonic() < deadline:
                time.sleep(0.005)
            assert len(videos()) == 2, "the workers never wrote at the same time"
            [lost] = [w for w in workers if w.pid in lossy.node_pids(1)]
            lossy.kill_node(1)
        finally:
            # Never leave this process's Ray driver connected to a cluster that is gone.
            thread.join(timeout=240)
        assert not thread.is_alive()
    [summary] = result
    assert not isinstance(summary, BaseException), summary
    assert (summary.done, summary.failed) == (3, 0)  # type: ignore[attr-defined]
    assert summary.retried == 1  # type: ignore[attr-defined]
    records = read_ledger(out / LEDGER_NAME)
    retried = [r for r in records.values() if r.attempts == 2]
    assert len(retried) == 1
    # Redone on the surviving node (the lost node's worker cannot come back: no room).
    assert retried[0].node_id != lost.node_id
    assert not partials(out)
    for name, output in mirrored(out).items():
        assert_same_media(output, references[name])
