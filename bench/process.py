"""Benchmark ``avstream process`` against a plain PyAV decode + encode of the same input.

Prints one JSON object: frames per second, per-stage p50/p95 ms, peak memory, the ratio
of our wall time to the floor (PyAV transcode with the same encoder settings), per run and of
the medians, and the ratio of CPU seconds (all threads; what each job cost, whatever else ran
on the shared cores), all measured in the same run, each job in a fresh process, interleaved,
medians over ``--runs``.

    python -m bench.process                    # a generated 10 s 640x480 clip, Telea
    python -m bench.process --input clip.mp4 --runs 5 --inpainter model
    python -m bench.process --input real.mp4 --paint-mask --inpainter model

``--inpainter model`` runs the shipped ``lite`` network on onnxruntime (one thread, Poisson
blending on, hearing the file's speech), as ``avstream process`` does by default. The region
is the default's too (``--region detect``: the occlusion segmenter decides, so a clean face
costs tracking and segmentation only; ``detect-in-crop`` is ``--no-past-crop``,
``detect-hard-edges`` ``--mask-hard-edges``);
``--region paper`` restores the paper's fixed box on every face, as v1 did. ``--paint-mask``
first paints a face mask on every face of ``--input`` (``bench.restore_video.make_masked_clip``),
so a real clip has something to restore. The provenance sidecar is written, as by default.
Run it with ``-m``: as a script, ``bench/engines.py`` would shadow the ``engines`` package.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Pin one thread before numpy/OpenCV load: the cores here are shared and noisy.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"

CRF = 18
PRESET = "medium"
"""``avstream process``'s default preset; ``--preset`` for another (both jobs use it)."""


def _peak_rss_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report
    # the parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_floor(source: Path, output: Path, preset: str = PRESET) -> dict[str, Any]:
    """Plain PyAV: decode every frame and encode it with the same H.264 settings."""
    import av

    start, start_cpu = time.perf_counter(), time.process_time()
    frames = 0
    with av.open(str(source)) as inp, av.open(str(output), "w") as out:
        vin = inp.streams.video[0]
        assert vin.time_base is not None
        vin.codec_context.thread_count = 1
        vout = out.add_stream(
            "libx264", rate=vin.average_rate, options={"crf": str(CRF), "preset": preset}
        )
        vout.width = vin.codec_context.width
        vout.height = vin.codec_context.height
        vout.pix_fmt = "yuv420p"
        vout.time_base = vin.time_base
        vout.codec_context.time_base = vin.time_base
        vout.codec_context.thread_count = 1
        for frame in inp.decode(vin):
            out.mux(vout.encode(frame))
            frames += 1
        out.mux(vout.encode(None))
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    return {"frames": frames, "wall_s": wall_s, "cpu_s": cpu_s, "peak_rss_mb": _peak_rss_mb()}


def run_process(
    source: Path, output: Path, inpainter_name: str, region: str = "detect", preset: str = PRESET
) -> dict[str, Any]:
    """The full avstream pipeline with ``inpainter_name`` (telea or model) on ``region``
    (detect: the default segmenter; paper: the paper's box on every face); loading the
    models (and graph export on first use) is not timed."""
    import contextlib

    import cv2

    from stream.engines_cli import open_model_inpainter, parse_backend_arguments
    from stream.inpaint import Inpainter, OpenCVInpainter
    from stream.mask_detect import MaskDetectOptions, MaskDetector
    from stream.media import EncodeOptions
    from stream.occlusion import FixedRegion, OcclusionModel
    from stream.pipeline import ProcessOptions, process_file
    from stream.region import box_mask
    from stream.speaker import SpeechWindow, StagedSpeakerSink

    cv2.setNumThreads(1)
    options = ProcessOptions(
        encode=EncodeOptions(crf=CRF, preset=preset, threads=1), decode_threads=1
    )
    detection = {  # threads=1 by default
        "detect": MaskDetectOptions(),
        "detect-in-crop": MaskDetectOptions(past_crop=None),
        "detect-hard-edges": MaskDetectOptions(rim_px=0),
    }
    occlusion: OcclusionModel = (
        FixedRegion(box_mask()) if region == "paper" else MaskDetector(detection[region])
    )
    with contextlib.ExitStack() as stack:
        inpainter: Inpainter = OpenCVInpainter("telea")
        sink: Callable[[SpeechWindow], None] | StagedSpeakerSink | None = None
        if inpainter_name == "model":
            args = parse_backend_arguments(["--backend", "onnxruntime"])
            model = stack.enter_context(open_model_inpainter(args, threads=1))
            inpainter, sink = model, model  # as process: the staged speaker sink
        start, start_cpu = time.perf_counter(), time.process_time()
        report = process_file(source, output, inpainter, occlusion, options, speaker_sink=sink)
        wall_s, cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    return {
        "frames": report.frames_out,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "faces": report.faces_restored,
        "faces_regenerated": report.faces_regenerated,
        "peak_rss_mb": _peak_rss_mb(),
        "stages": {
            name: {
                "p50_ms": round(s.p50_ms, 3),
                "p95_ms": round(s.p95_ms, 3),
                "count": s.count,
                "total_ms": round(s.total_ms),
            }
            for name, s in report.stages.items()
        },
    }


def _child(kind: str, source: Path, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.mp4"
        if kind == "floor":
            return run_floor(source, out, args.preset)
        return run_process(source, out, args.inpainter, args.region, args.preset)


def _spawn(kind: str, source: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.process", "--child", kind, "--input", str(source)]
    options = ["--inpainter", args.inpainter, "--region", args.region, "--preset", args.preset]
    done = subprocess.run(
        [*command, *options],
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _make_default_clip(directory: Path, duration_s: float) -> Path:
    from stream.testclip import ClipSpec, make_talking_head_clip

    path = directory / "bench_clip.mp4"
    make_talking_head_clip(path, ClipSpec(duration_s=duration_s))
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--input", type=Path, help="video to process (default: generated)")
    parser.add_argument(
        "--duration-s", type=float, default=10.0, help="length of the generated clip"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--inpainter", choices=["telea", "model"], default="telea")
    parser.add_argument(
        "--region",
        choices=["detect", "detect-in-crop", "detect-hard-edges", "paper"],
        default="detect",
        help="default: detect (detect-in-crop: --no-past-crop; detect-hard-edges: "
        "--mask-hard-edges)",
    )
    parser.add_argument(
        "--paint-mask", action="store_true", help="paint a face mask on --input first"
    )
    parser.add_argument("--seed", type=int, default=0, help="the painted mask's seed")
    parser.add_argument("--preset", default=PRESET, help=f"libx264 preset (default: {PRESET})")
    parser.add_argument("--child", choices=["floor", "process"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.input, args)))
        return 0
    if args.paint_mask and args.input is None:
        parser.error("--paint-mask needs --input")
    with tempfile.TemporaryDirectory() as tmp:
        source = args.input or _make_default_clip(Path(tmp), args.duration_s)
        if args.paint_mask:
            from bench.restore_video import make_masked_clip

            source = make_masked_clip(source, Path(tmp) / "masked.mp4", args.seed).path
        floors, ours = [], []
        for _ in range(args.runs):  # interleaved, so drift in machine load hits both alike
            floors.append(_spawn("floor", source, args))
            ours.append(_spawn("process", source, args))
    floor_wall = statistics.median(r["wall_s"] for r in floors)
    our_wall = statistics.median(r["wall_s"] for r in ours)
    # CPU seconds (every thread of the process) say how much work each job did; wall time
    # also carries what other jobs on the shared cores took from it.
    floor_cpu = statistics.median(r["cpu_s"] for r in floors)
    our_cpu = statistics.median(r["cpu_s"] for r in ours)
    median_run = sorted(ours, key=lambda r: r["wall_s"])[len(ours) // 2]
    frames = ours[0]["frames"]
    result = {
        "input": str(args.input) if args.input else f"generated {args.duration_s:g} s 640x480",
        "painted_mask": args.paint_mask,
        "region": args.region,
        "frames": frames,
        "runs": args.runs,
        "threads": 1,
        "inpainter": args.inpainter,
        "encoder": {"codec": "libx264", "crf": CRF, "preset": args.preset},
        "floor_pyav_transcode": {
            "wall_s_median": round(floor_wall, 3),
            "cpu_s_median": round(floor_cpu, 3),
            "fps": round(frames / floor_wall, 2),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in floors), 1),
        },
        "avstream_process": {
            "wall_s_median": round(our_wall, 3),
            "cpu_s_median": round(our_cpu, 3),
            "fps": round(frames / our_wall, 2),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in ours), 1),
            "faces": median_run["faces"],
            "faces_regenerated": median_run["faces_regenerated"],
            "stages": median_run["stages"],
        },
        "ratio_wall_vs_floor": round(our_wall / floor_wall, 2),
        "ratio_wall_per_run": [
            round(o["wall_s"] / f["wall_s"], 2) for f, o in zip(floors, ours, strict=True)
        ],
        "ratio_cpu_vs_floor": round(our_cpu / floor_cpu, 2),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
