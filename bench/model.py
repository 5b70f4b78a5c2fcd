"""Cost of the generator's per-face graph: FLOPs, and ms per face in onnxruntime and torch
on one CPU thread (the `lite` budget: <= 2 GFLOPs and <= 40 ms per 256x256 face).

Prints JSON. Each configuration's per-face part (encoder, fusion, AVFF decoder, identity head)
is exported to ONNX in a temporary folder, with the speaker features as inputs (they are
computed once per speaker window, not per face).

    python bench/model.py [--presets lite paper] [--runs 30] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["OMP_NUM_THREADS"] = "1"

import torch
from torch import Tensor, nn

from avinpaint.config import preset
from avinpaint.model import Generator, SpeakerFeatures, part_costs


class _PerFace(nn.Module):
    """The per-face graph with the speaker features as plain tensor inputs."""

    def __init__(self, model: Generator) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        face: Tensor,
        mask: Tensor,
        emb: Tensor,
        x16: Tensor,
        x32: Tensor,
        x64: Tensor,
        x128: Tensor,
    ) -> Tensor:
        features = SpeakerFeatures(emb, x16, x32, x64, x128, torch.zeros(0))
        return self.model.inpaint(face, mask, features).inpainted


def _median_ms(fn: Any, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def measure(name: str, runs: int, batch: int) -> dict[str, Any]:
    """FLOPs and per-face latency of preset ``name``."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model = Generator(preset(name)).eval()
    costs = {c.name: c for c in part_costs(model)}
    per_face = ("encoder", "fusion", "decoder", "identity_head")
    gflops = sum(costs[p].flops for p in per_face if p in costs) / 1e9
    params_m = sum(costs[p].params for p in per_face if p in costs) / 1e6
    config = model.config
    size = config.image_size
    with torch.no_grad():
        if model.voice is not None:
            speaker_input = torch.randn(1, config.n_mels, config.n_frames)
        else:
            speaker_input = torch.nn.functional.normalize(torch.randn(1, config.speaker_dim), dim=1)
        features = model.speaker_features(speaker_input)
    face = torch.rand(batch, 3, size, size) * 2 - 1
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, 89:217, 64:192] = 1.0
    inputs = (face, mask, *features[:5])
    wrapper = _PerFace(model).eval()
    with torch.no_grad():
        torch_ms = _median_ms(lambda: wrapper(*inputs), runs) / batch
        reference = wrapper(*inputs)
    names = ["face", "mask", "emb", "x16", "x32", "x64", "x128"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}_inpaint.onnx"
        torch.onnx.export(
            wrapper,
            inputs,
            str(path),
            input_names=names,
            output_names=["inpainted"],
            opset_version=17,
            dynamo=False,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {n: t.numpy() for n, t in zip(names, inputs, strict=True)}
        ort_ms = _median_ms(lambda: session.run(None, feed), runs) / batch
        max_diff = float((torch.from_numpy(session.run(None, feed)[0]) - reference).abs().max())
    return {
        "preset": name,
        "batch": batch,
        "per_face_params_m": round(params_m, 2),
        "per_face_gflops": round(gflops, 3),
        "onnxruntime_ms_per_face": round(ort_ms, 2),
        "torch_ms_per_face": round(torch_ms, 2),
        "onnxruntime_gflops_per_s": round(gflops / (ort_ms / 1000.0), 1),
        "onnx_vs_torch_max_abs_diff": max_diff,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure each preset and print JSON."""
    parser = argparse.ArgumentParser(description="per-face cost of the generator")
    parser.add_argument("--presets", nargs="+", default=["lite"])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = [measure(name, args.runs, args.batch) for name in args.presets]
    print(json.dumps({"threads": 1, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
