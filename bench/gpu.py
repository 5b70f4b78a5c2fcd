"""Faces per second of the network through the torch backend, FP32 and under autocast.

For each preset, autocast type (``fp32`` = none, ``fp16``, ``bf16``) and face batch: a
warm-up call, then timed ``TorchBackend.inpaint`` calls for ``--seconds`` (at least
``--min-runs``); faces/s = batch x calls / time. Calls include the host-device copies of the
faces, masks and outputs, as in ``avstream process``. Each autocast result is also compared
with the FP32 output of the same input (max relative error). Models are random-initialised:
speed does not depend on the weights. Writes JSON (``--out``) and prints one line per case.

    python -m bench.gpu --out bench.json [--presets paper lite] [--batches 1 8 32]
        [--dtypes fp32 fp16 bf16] [--seconds 2] [--device auto]

Runs on the CPU too (``--device cpu``: the GPU run's test mode, tiny sizes).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Run as a script, this file's folder is first on sys.path: the repository root goes first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from avinpaint.config import preset
from avinpaint.model import Generator
from engines.backends import TorchBackend
from engines.export import example_faces, example_speaker_input, max_relative_error

AUTOCAST: dict[str, torch.dtype | None] = {
    "fp32": None,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


@dataclass(frozen=True)
class Case:
    """One measured (preset, autocast type, batch)."""

    preset: str
    dtype: str
    batch: int
    runs: int
    seconds: float
    faces_per_s: float
    ms_per_call: float
    max_relative_error_vs_fp32: float | None
    peak_memory_mib: float | None


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def measure(
    preset_name: str,
    model: Generator,
    device: torch.device,
    dtype: str,
    batch: int,
    seconds: float,
    min_runs: int,
    reference: dict[int, torch.Tensor],
) -> Case:
    """Time ``inpaint`` of one batch size under one autocast type (see the module docstring).
    ``reference`` holds the FP32 output per batch size (filled by the FP32 case)."""
    speaker_input = example_speaker_input(model.config, seed=1)
    face, mask = example_faces(model.config, batch, seed=2)
    backend = TorchBackend(model, device, AUTOCAST[dtype])
    features = backend.speaker_features(speaker_input)
    first = backend.inpaint(face, mask, features).inpainted  # warm-up (cuDNN autotuning)
    if dtype == "fp32":
        reference[batch] = torch.from_numpy(first)
    error = (
        max_relative_error(first, reference[batch].numpy())
        if dtype != "fp32" and batch in reference
        else None
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    runs = 0
    start = time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < seconds:
        backend.inpaint(face, mask, features)  # returns host arrays: synchronised
        runs += 1
    elapsed = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Case(
        preset=preset_name,
        dtype=dtype,
        batch=batch,
        runs=runs,
        seconds=round(elapsed, 3),
        faces_per_s=round(batch * runs / elapsed, 2),
        ms_per_call=round(1000 * elapsed / runs, 3),
        max_relative_error_vs_fp32=None if error is None else float(f"{error:.3g}"),
        peak_memory_mib=None if memory is None else round(memory, 1),
    )


def run(args: argparse.Namespace) -> dict[str, object]:
    """Every case of the arguments; a case that fails (e.g. out of memory) is recorded with
    its error and the others go on."""
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    cases: list[dict[str, object]] = []
    deadline = time.monotonic() + args.budget_s
    for name in args.presets:
        torch.manual_seed(0)
        model = Generator(preset(name)).eval()
        reference: dict[int, torch.Tensor] = {}
        for dtype in args.dtypes:
            for batch in args.batches:
                if time.monotonic() > deadline:
                    cases.append(
                        {"preset": name, "dtype": dtype, "batch": batch, "skipped": "budget"}
                    )
                    continue
                try:
                    case = measure(
                        name, model, device, dtype, batch, args.seconds, args.min_runs, reference
                    )
                except (RuntimeError, ValueError) as exc:  # out of memory, no bf16 kernel, ...
                    cases.append(
                        {"preset": name, "dtype": dtype, "batch": batch, "error": str(exc)[:300]}
                    )
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                cases.append(asdict(case))
                print(
                    f"{name:6} {dtype} batch {batch:3}: {case.faces_per_s:9.1f} faces/s "
                    f"({case.ms_per_call:.2f} ms/call, error vs fp32 "
                    f"{case.max_relative_error_vs_fp32})",
                    flush=True,
                )
        del model
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cases": cases,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--presets", nargs="+", default=["paper", "lite"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument(
        "--dtypes", nargs="+", choices=sorted(AUTOCAST), default=["fp32", "fp16", "bf16"]
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per case")
    parser.add_argument("--min-runs", type=int, default=3, help="timed calls per case, at least")
    parser.add_argument("--budget-s", type=float, default=1e9, help="skip cases after this")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    args = parser.parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
