"""Benchmark the SFace identity network: the torch port against onnxruntime on the shipped
graph, one CPU thread, milliseconds per face.

Prints one JSON object. Jobs are interleaved and repeated (``--rounds``) and each reports the
median over rounds of its per-round median, since the cores here are shared and noisy.

    python bench/identity.py
    python bench/identity.py --rounds 7 --iters 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

# Pin one thread before numpy/torch/onnxruntime load: the cores here are shared and noisy.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import numpy as np
import torch

from avinpaint.identity import SFace, sface_onnxruntime_session


def _median_ms(job: Callable[[], object], iters: int) -> float:
    job()  # warm-up: first-call allocations
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        job()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _jobs(batch: int) -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (job, faces per call)."""
    net = SFace.from_onnx()
    session = sface_onnxruntime_session(threads=1)
    rng = np.random.default_rng(0)
    x1 = torch.from_numpy(rng.uniform(0, 255, (1, 3, 112, 112)).astype(np.float32))
    xb = torch.from_numpy(rng.uniform(0, 255, (batch, 3, 112, 112)).astype(np.float32))
    crops = torch.from_numpy(rng.uniform(-1, 1, (batch, 3, 256, 256)).astype(np.float32))

    def torch_forward(x: torch.Tensor) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return net(x)

        return run

    def torch_train_step() -> object:
        # What an identity loss costs per step: warp 256 -> 112, embed, backward to the input.
        inp = crops.clone().requires_grad_(True)
        loss = net.embed_crop256(inp).square().sum()
        return torch.autograd.grad(loss, [inp])

    return {
        "torch_b1": (torch_forward(x1), 1),
        f"torch_b{batch}": (torch_forward(xb), batch),
        f"torch_crop256_fwd_bwd_b{batch}": (torch_train_step, batch),
        "onnxruntime_b1": (lambda: session.run(None, {"data": x1.numpy()}), 1),
        f"onnxruntime_b{batch}": (lambda: session.run(None, {"data": xb.numpy()}), batch),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    jobs = _jobs(args.batch)
    per_round: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(args.rounds):
        for name, (job, faces) in jobs.items():
            per_round[name].append(_median_ms(job, args.iters) / faces)
    result = {
        "unit": "ms per face, one CPU thread",
        "torch": torch.__version__,
        "rounds": args.rounds,
        "iters": args.iters,
        "ms_per_face": {k: round(statistics.median(v), 2) for k, v in per_round.items()},
        "ms_per_face_min_round": {k: round(min(v), 2) for k, v in per_round.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
