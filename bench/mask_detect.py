"""Cost of ``--mask-detect`` per face on one CPU thread: the shipped segmenter alone in
onnxruntime and in torch, and the whole ``MaskDetector`` step (segment, smooth, decide,
dilate). The budget is 10 ms per 256x256 crop in onnxruntime.

Prints JSON (p50 and p95 ms per face, for batches of 1 and 4 faces).

    python bench/mask_detect.py [--runs 50]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

os.environ["OMP_NUM_THREADS"] = "1"

import cv2
import numpy as np
import torch

from avinpaint.occlusion_net import load_occlusion_net
from avinpaint.spec import CROP_SIZE
from stream.mask_detect import MaskDetectOptions, MaskDetector, load_predictor
from stream.types import AlignedFace


def _times_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    for _ in range(5):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 95))


def measure(runs: int, batch: int) -> dict[str, object]:
    """Per-face p50/p95 ms of each stage for ``batch`` faces per call."""
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (batch, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    faces = [AlignedFace(crop=c, affine=identity, inverse_affine=identity) for c in crops]
    ort_predict = load_predictor(MaskDetectOptions(backend="onnxruntime"))
    net = load_occlusion_net()
    batch_tensor = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
    detector = MaskDetector(MaskDetectOptions(), ort_predict)
    track_ids = list(range(batch))

    def torch_forward() -> object:
        with torch.no_grad():
            return net(batch_tensor)

    stages = {
        "onnxruntime_segmenter": lambda: ort_predict(crops),
        "torch_segmenter": torch_forward,
        "mask_detector_step": lambda: detector.analyse(faces, track_ids),
    }
    out: dict[str, object] = {"batch": batch}
    for name, fn in stages.items():
        p50, p95 = _times_ms(fn, runs)
        out[name] = {
            "p50_ms_per_face": round(p50 / batch, 2),
            "p95_ms_per_face": round(p95 / batch, 2),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure and print JSON."""
    parser = argparse.ArgumentParser(description="per-face cost of --mask-detect")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    results = [measure(args.runs, batch) for batch in (1, 4)]
    print(json.dumps({"threads": 1, "budget_ms_per_face": 10.0, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
