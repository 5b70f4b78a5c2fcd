"""Benchmark ``avstream batch`` against sequential ``avstream process`` on the same files.

Prints one JSON object: files per hour of a shell loop of ``avstream process`` (one fresh
process per file, as a user would run it), of ``avstream batch`` with one worker, and of
``avstream batch`` with one worker per core, all on a local Ray on this machine, in the same
run, interleaved, medians over ``--runs``. ``overhead_per_file_s`` is what batch costs per
file over the loop with the same serial work (one worker): Ray's start and the ledger, less
the model and interpreter start the loop pays per file; ``batch_1.fixed_s`` is the part of
batch's wall time that does not grow with the files (Ray, worker start). ``per_file_s``: for
the loop, one ``avstream process`` (its start included); for batch, a worker's time on one
file (from the ledger).

    python -m bench.batch                      # 6 generated 2 s 320x240 clips, Telea
    python -m bench.batch --files 12 --runs 3 --inpainter model
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Pin one thread per library: the cores here are shared and noisy.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"

PROCESS_OPTIONS = ["--threads", "1", "--preset", "veryfast", "--no-progress"]


def make_clips(directory: Path, count: int, duration_s: float) -> list[Path]:
    """``count`` distinct generated talking heads with speech."""
    from stream.testclip import ClipSpec, make_talking_head_clip

    paths = []
    for seed in range(count):
        path = directory / f"clip{seed:03d}.mp4"
        make_talking_head_clip(
            path, ClipSpec(width=320, height=240, duration_s=duration_s, seed=seed)
        )
        paths.append(path)
    return paths


def _avstream(args: list[str]) -> float:
    """Run ``avstream ARGS`` in a fresh process; its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "stream.cli", *args], check=True, capture_output=True, text=True
    )
    return time.perf_counter() - start


def run_sequential(clips: list[Path], out: Path, inpainter: str) -> dict[str, Any]:
    """One ``avstream process`` per file, one after another."""
    out.mkdir(parents=True, exist_ok=True)
    per_file = []
    for clip in clips:
        args = ["process", str(clip), "-o", str(out / clip.name), "--inpainter", inpainter]
        per_file.append(_avstream([*args, *PROCESS_OPTIONS]))
    return {"wall_s": sum(per_file), "per_file_s": statistics.median(per_file)}


def run_batch(clips: list[Path], out: Path, inpainter: str, workers: int) -> dict[str, Any]:
    """``avstream batch`` over the clips' folder with ``workers`` workers on a local Ray."""
    args = ["batch", str(clips[0].parent), "-o", str(out), "--inpainter", inpainter]
    args += ["--workers", str(workers), "--local-cpus", str(workers), *PROCESS_OPTIONS]
    wall_s = _avstream(args)
    ledger = [json.loads(line) for line in (out / "avstream-batch.jsonl").read_text().splitlines()]
    assert len(ledger) == len(clips) and all(r["status"] == "done" for r in ledger), ledger
    worker_s = [float(r["wall_s"]) for r in ledger]
    return {"wall_s": wall_s, "per_file_s": statistics.median(worker_s), "work_s": sum(worker_s)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--duration-s", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--inpainter", choices=["telea", "model"], default="telea")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="the parallel batch's workers"
    )
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        clips = make_clips(root / "inputs", args.files, args.duration_s)
        runs: dict[str, list[dict[str, Any]]] = {"sequential": [], "batch_1": [], "batch_n": []}
        for run in range(args.runs):
            # Interleaved, so drift in the shared machine's load hits every variant alike.
            out = root / f"run{run}"
            runs["sequential"].append(run_sequential(clips, out / "seq", args.inpainter))
            runs["batch_1"].append(run_batch(clips, out / "b1", args.inpainter, 1))
            runs["batch_n"].append(run_batch(clips, out / "bn", args.inpainter, args.workers))
            shutil.rmtree(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def median(name: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[name]))

    files = args.files
    result: dict[str, Any] = {
        "files": files,
        "clip_s": args.duration_s,
        "clip_size": "320x240",
        "inpainter": args.inpainter,
        "runs": args.runs,
        "cores": os.cpu_count(),
        "workers": args.workers,
    }
    for name in runs:
        wall = median(name, "wall_s")
        result[name] = {
            "wall_s": round(wall, 2),
            "files_per_hour": round(files * 3600.0 / wall),
            "per_file_s": round(median(name, "per_file_s"), 3),
        }
    # What batch pays once whatever the number of files: Ray's start and stop, the workers'
    # start (model loads), the ledger; the rest of its wall time is the files' own work.
    result["batch_1"]["fixed_s"] = round(
        median("batch_1", "wall_s") - median("batch_1", "work_s"), 2
    )
    result["overhead_per_file_s"] = round(
        (median("batch_1", "wall_s") - median("sequential", "wall_s")) / files, 3
    )
    result["speedup_batch_n_over_sequential"] = round(
        median("sequential", "wall_s") / median("batch_n", "wall_s"), 2
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
