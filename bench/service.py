"""Load test of the ZeroMQ frame service: N clients x M frames through a brokered service.

Prints JSON: throughput, p50/p95 round-trip latency, replies lost, and each worker's resident
memory before and after the run (a leak shows as growth that does not level off).

    python bench/service.py                      # 4 clients x 500 frames, 2 workers
    python bench/service.py --face --frames 100  # real restoration work per frame
    python -m bench.service --face --frames 50 --inpainter model  # the lite model per worker

With the model, run it with ``-m``: as a script, ``bench/`` comes first on ``sys.path`` (also
in the spawned workers) and ``bench/engines.py`` hides the ``engines`` package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _frames(face: bool, width: int, height: int, occluder: bool) -> list[np.ndarray]:
    """2 s of a generated talking head (moving, with a mask when ``occluder``), resized;
    without ``face``, one frame of noise."""
    if not face:
        return [np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)]
    import av
    import cv2

    from stream.testclip import ClipSpec, make_talking_head_clip

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        make_talking_head_clip(path, ClipSpec(duration_s=2.0, audio=False, occluder=occluder))
        with av.open(str(path)) as container:
            images = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    return [np.asarray(cv2.resize(i, (width, height)), dtype=np.uint8) for i in images]


def main(argv: list[str] | None = None) -> int:
    """Run the load test and print JSON."""
    parser = argparse.ArgumentParser(description="ZeroMQ frame-service load test")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument(
        "--face", action="store_true", help="a moving masked talking head (2 s, cycled)"
    )
    parser.add_argument(
        "--clean", action="store_true", help="with --face: no mask on the face (nothing to do)"
    )
    parser.add_argument(
        "--region",
        choices=["detect", "paper"],
        default="detect",
        help="the streams' region: detect what covers each face (the default) or the "
        "paper's fixed box on every face",
    )
    parser.add_argument(
        "--inpainter",
        choices=["telea", "ns", "model"],
        default="telea",
        help="model: every worker holds the shipped lite model (onnxruntime, one thread)",
    )
    parser.add_argument(
        "--no-reuse",
        action="store_true",
        help="regenerate every face (the repeated test frame would otherwise be reused)",
    )
    args = parser.parse_args(argv)

    from stream.client import FrameClient
    from stream.service import ModelOpener, serve

    open_model: ModelOpener | None = None
    if args.inpainter == "model":
        import functools

        from stream.engines_cli import open_model_inpainter, parse_backend_arguments

        model_args = parse_backend_arguments(["--backend", "onnxruntime"])
        open_model = functools.partial(open_model_inpainter, model_args, 1)
    stream_options: dict[str, Any] = {
        "inpainter": args.inpainter,
        "reuse": not args.no_reuse,
        "region": args.region,
    }

    images = _frames(args.face, args.width, args.height, occluder=not args.clean)
    stop, ready = threading.Event(), threading.Event()
    endpoint: list[str] = []

    def on_ready(bound: str) -> None:
        endpoint.append(bound)
        ready.set()

    server = threading.Thread(
        target=serve,
        args=("tcp://127.0.0.1:*",),
        kwargs={
            "workers": args.workers,
            "open_model": open_model,
            "inpainter": args.inpainter,
            "should_stop": stop.is_set,
            "on_ready": on_ready,
        },
        daemon=True,
    )
    server.start()
    if not ready.wait(60):
        raise SystemExit("service did not start")
    with FrameClient(endpoint[0]) as probe:
        pids = list(probe.stats()["workers"].values())
        # one warm-up stream so model/detector start-up is not counted as a leak
        probe.open_stream("warmup", **stream_options)
        probe.restore("warmup", images[0])
        probe.close_stream("warmup")
    rss_before = {pid: _rss_mb(pid) for pid in pids}
    results: dict[int, Any] = {}

    def client(index: int) -> None:
        latencies, errors = [], 0
        with FrameClient(endpoint[0], timeout_s=60) as c:
            c.open_stream(f"bench{index}", **stream_options)
            for i in range(args.frames):
                start = time.perf_counter()
                try:
                    c.restore(f"bench{index}", images[i % len(images)], time_s=i / 25)
                except Exception:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)
        results[index] = (latencies, errors)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall_s = time.perf_counter() - start
    rss_after = {pid: _rss_mb(pid) for pid in pids}
    stop.set()
    server.join(30)
    ms = np.array([v for lat, _ in results.values() for v in lat]) * 1000.0
    sent = args.clients * args.frames
    print(
        json.dumps(
            {
                "clients": args.clients,
                "frames_per_client": args.frames,
                "workers": args.workers,
                "frame": f"{args.width}x{args.height} "
                + ("no face" if not args.face else "clean face" if args.clean else "masked face"),
                "region": args.region,
                "inpainter": args.inpainter,
                "reuse": not args.no_reuse,
                "replies": len(ms),
                "lost_replies": sent - len(ms),
                "errors": sum(e for _, e in results.values()),
                "wall_s": round(wall_s, 2),
                "frames_per_s": round(len(ms) / wall_s, 1),
                "latency_ms": {
                    "p50": round(float(np.percentile(ms, 50)), 2),
                    "p95": round(float(np.percentile(ms, 95)), 2),
                },
                "worker_rss_mb_before": [round(v, 1) for v in rss_before.values()],
                "worker_rss_mb_after": [round(v, 1) for v in rss_after.values()],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
