"""Benchmark ``avstream live``: added latency and sustained frame rate at 25 fps input.

For each resolution a talking-head clip is generated and played as a live source at its
native rate (25 fps); the session restores it (OpenCV Telea, the paper's box) and serves it
over RTSP to one PyAV viewer in a separate process, so the H.264 encoder of the served stream
does its real work. Prints one JSON object. Each resolution runs in a fresh process.

    python bench/live.py                              # 480p and 720p, 10 s each
    python bench/live.py --sizes 1280x720 --duration-s 20 --max-latency-ms 500

Latency is "added latency": from the moment a decoded frame arrives from the source to its
hand-off to the outputs (restored, or passed through when its deadline would be missed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Pin one thread before numpy/OpenCV load: the cores here are shared and noisy.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"

FPS = 25
DEFAULT_SIZES = ("854x480", "1280x720")

# The viewer: a second process, so its decoding does not share our interpreter's GIL.
_VIEWER = """
import sys, av
frames = 0
try:
    options = {"rtsp_transport": "tcp", "analyzeduration": "500000"}
    with av.open(sys.argv[1], options=options, timeout=(10.0, 10.0)) as c:
        for _ in c.decode(video=0):
            frames += 1
except av.error.FFmpegError:
    pass
print(frames)
"""


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return round(float(np.percentile(np.asarray(values), q)), 1) if values else 0.0


def run_live(source: Path, max_latency_ms: float) -> dict[str, Any]:
    """One live session over ``source`` with one RTSP viewer; returns its numbers."""
    import cv2

    from stream.inpaint import OpenCVInpainter
    from stream.live import EmittedFrame, LiveOptions, LiveOutputs, LiveSession
    from stream.occlusion import FixedRegion
    from stream.region import box_mask
    from stream.rtsp import RtspAddress

    cv2.setNumThreads(1)
    events: list[EmittedFrame] = []
    outputs = LiveOutputs(serve=RtspAddress("127.0.0.1", 0, "/restored"))
    options = LiveOptions(max_latency_ms=max_latency_ms, speaker=True)
    session = LiveSession(
        str(source),
        OpenCVInpainter("telea"),
        FixedRegion(box_mask()),
        outputs,
        options,
        on_frame=events.append,
    )
    with session:
        while session.feed is None and not session.wait(0.01):
            pass
        assert session.served_url is not None
        viewer = subprocess.Popen(
            [sys.executable, "-c", _VIEWER, session.served_url],
            stdout=subprocess.PIPE,
            text=True,
        )
        session.wait()
        report = session.close()
    viewer_out, _ = viewer.communicate(timeout=30)
    feed = session.feed
    restored = [e.latency_ms for e in events if e.restored]
    return {
        "frames_in": report.frames_in,
        "frames_out": report.frames_out,
        "restored": report.restored,
        "passed_through": report.passed_through,
        "dropped": report.dropped,
        "wall_s": round(report.wall_s, 2),
        "fps_out": round(report.fps_out, 2),
        "restored_fps": round(report.restored / report.wall_s, 2),
        "restored_fraction": round(report.restored / max(1, report.frames_out), 3),
        "latency_ms": {
            "p50": round(report.latency_p50_ms, 1),
            "p95": round(report.latency_p95_ms, 1),
            "max": round(report.latency_max_ms, 1),
        },
        "restored_latency_ms": {"p50": _percentile(restored, 50), "p95": _percentile(restored, 95)},
        "served_frames": feed.frames_sent if feed else 0,
        "viewer_frames": int(viewer_out.strip() or 0),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def _spawn(source: Path, max_latency_ms: float) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(source), "--max-latency-ms", str(max_latency_ms)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), metavar="WxH")
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--max-latency-ms", type=float, default=250.0)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_live(args.child, args.max_latency_ms)))
        return 0

    from stream.testclip import ClipSpec, make_talking_head_clip

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            width, height = _parse_size(size)
            clip = Path(tmp) / f"live_{width}x{height}.mp4"
            spec = ClipSpec(width=width, height=height, fps=FPS, duration_s=args.duration_s)
            started = time.perf_counter()
            make_talking_head_clip(clip, spec)
            generated_s = time.perf_counter() - started
            results[f"{height}p"] = {
                "size": f"{width}x{height}",
                "clip_generation_s": round(generated_s, 1),
                **_spawn(clip, args.max_latency_ms),
            }
    output = {
        "input": f"generated {args.duration_s:g} s talking head at {FPS} fps, file source "
        "played at its native rate",
        "max_latency_ms": args.max_latency_ms,
        "inpainter": "opencv-telea, paper box",
        "outputs": "RTSP (x264 ultrafast zerolatency, 2 Mbit/s) with one PyAV viewer process",
        "threads": "OMP/OpenCV 1; reader, worker, restorer, encoder threads",
        "cpu_count": os.cpu_count(),
        "results": results,
    }
    print(json.dumps(output, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
