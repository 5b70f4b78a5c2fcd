"""Per-face latency of every runtime backend this host has, at batch 1, 4 and 8, on one thread.

Prints JSON: for each preset and available backend, ms per face and the achieved GFLOP/s of
the per-face (``inpaint``) graph at each batch, the speaker graph's ms (run once per speaker
window, not per face), and the largest relative error against torch. Backends this host
cannot run are listed with the reason. Models are random-initialised (speed does not
depend on the weights). Timings include host-device copies (there are none on the CPU).

    python -m bench.engines [--presets lite paper] [--batches 1 4 8] [--runs 10]

(``python bench/engines.py`` works too.)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ["OMP_NUM_THREADS"] = "1"
# Run as a script, this file's folder is first on sys.path and "import engines" would find
# this file instead of the engines package: the repository root goes in front of it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from avinpaint.config import preset
from avinpaint.model import Generator, part_costs
from engines.backends import (
    Backend,
    BackendError,
    BackendOptions,
    SpeakerArrays,
    TorchBackend,
    default_factories,
)
from engines.export import example_faces, example_speaker_input, max_relative_error

PER_FACE_PARTS = ("encoder", "fusion", "decoder", "identity_head")
SPEAKER_PARTS = ("voice", "audio_decoder")


def _times_ms(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm-up: first-run allocations and lazy initialisation
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _measure(
    backend: Backend,
    model: Generator,
    reference: tuple[SpeakerArrays, dict[int, Any]],
    batches: list[int],
    runs: int,
    per_face_flops: int,
) -> dict[str, Any]:
    config = model.config
    speaker_input = example_speaker_input(config)
    speaker_ms = statistics.median(_times_ms(lambda: backend.speaker_features(speaker_input), runs))
    features = backend.speaker_features(speaker_input)
    rows = []
    worst = max(
        max_relative_error(got, want)
        for got, want in zip(features.arrays(), reference[0].arrays(), strict=True)
    )
    for batch in batches:
        face, mask = example_faces(config, batch)
        times = _times_ms(functools.partial(backend.inpaint, face, mask, features), runs)
        median_ms = statistics.median(times)
        out = backend.inpaint(face, mask, features)
        worst = max(worst, max_relative_error(out.inpainted, reference[1][batch]))
        rows.append(
            {
                "batch": batch,
                "ms_per_face": round(median_ms / batch, 2),
                "p90_ms_per_face": round(sorted(times)[int(0.9 * (len(times) - 1))] / batch, 2),
                "gflops_per_s": round(per_face_flops * batch / (median_ms / 1000.0) / 1e9, 1),
            }
        )
    return {
        "backend": backend.name,
        "speaker_ms_per_window": round(speaker_ms, 2),
        "max_relative_error_vs_torch": worst,
        "inpaint": rows,
    }


def bench_preset(
    name: str, batches: list[int], runs: int, cache_dir: Path, only: set[str] | None
) -> dict[str, Any]:
    """Measure every available backend on a random-initialised ``name`` model."""
    torch.manual_seed(0)
    model = Generator(preset(name)).eval()
    costs = {c.name: c for c in part_costs(model)}
    per_face_flops = sum(costs[p].flops for p in PER_FACE_PARTS)
    speaker_flops = sum(costs[p].flops for p in SPEAKER_PARTS if p in costs)
    with TorchBackend(model) as reference_backend:
        speaker = reference_backend.speaker_features(example_speaker_input(model.config))
        expected = {
            b: reference_backend.inpaint(*example_faces(model.config, b), speaker).inpainted
            for b in batches
        }
    options = BackendOptions(cache_dir=cache_dir, threads=1, max_batch=max(batches))
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for factory in default_factories():
        if only is not None and factory.name not in only:
            continue
        reason = factory.unavailable_reason(options)
        if reason is None:
            try:
                backend = factory.create(model, options)
            except BackendError as exc:
                reason = f"failed to start: {exc}"
            else:
                with backend:
                    measured = _measure(
                        backend, model, (speaker, expected), batches, runs, per_face_flops
                    )
                results.append(measured)
                continue
        skipped.append({"backend": factory.name, "reason": reason})
    return {
        "preset": name,
        "per_face_gflops": round(per_face_flops / 1e9, 3),
        # part_costs counts the audio decoder's last stage and RGB head too; the exported
        # speaker graph leaves them out (only training needs the audio face).
        "speaker_gflops_upper_bound": round(speaker_flops / 1e9, 3),
        "results": results,
        "skipped": skipped,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and print JSON."""
    parser = argparse.ArgumentParser(description="per-face latency of each runtime backend")
    parser.add_argument("--presets", nargs="+", default=["lite"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--backends", nargs="+", default=None, help="only these backend names")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: a temporary one")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import onnxruntime

    with tempfile.TemporaryDirectory() as temp:
        cache_dir = args.cache_dir or Path(temp)
        only = set(args.backends) if args.backends else None
        presets = [bench_preset(p, args.batches, args.runs, cache_dir, only) for p in args.presets]
    report = {
        "threads": 1,
        "host_device_copies_included": True,
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "presets": presets,
    }
    print(json.dumps(report, indent=2))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
