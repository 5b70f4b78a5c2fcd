"""Temporal stability of the restored region, with and without per-track crop reuse.

Flicker = the mean absolute frame-to-frame change (8-bit levels) inside the restored region,
measured in each face's aligned crop so that head motion does not count, only the restored
pixels changing under it. Prints JSON with flicker, fps and the fraction of faces regenerated.

    python -m bench.stability [--input clip.mp4] [--inpainter model|telea|ns] [--model lite]

The model runs with the neutral (no voice) speaker input: the bench restores frames without
the pipeline's speaker windows, so only pose and visibility changes move the fill.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["OMP_NUM_THREADS"] = "1"

import cv2
import numpy as np

from avinpaint.spec import CROP_SIZE
from stream.engines_cli import add_backend_arguments, open_model_inpainter
from stream.inpaint import Inpainter, OpenCVInpainter
from stream.media import VideoReader
from stream.occlusion import FixedRegion, OcclusionModel
from stream.region import box_mask
from stream.restore import FaceAnalyser, ReuseCache, ReuseOptions, restore_frame


def measure(
    path: Path, inpainter: Inpainter, occlusion: OcclusionModel, reuse: ReuseOptions | None
) -> dict[str, Any]:
    """Run track + restore over ``path``; flicker, fps and regenerated fraction."""
    analyser = FaceAnalyser()
    cache = ReuseCache(reuse) if reuse is not None else None
    previous: dict[int, np.ndarray] = {}
    changes: list[float] = []
    faces = regenerated = 0
    elapsed_s = 0.0
    with VideoReader(path, threads=1) as reader:
        for frame in reader:
            start = time.perf_counter()
            work = analyser.analyse(frame)
            restored = restore_frame(work, inpainter, occlusion, 6.0, cache)
            elapsed_s += time.perf_counter() - start
            for face, done in zip(work.faces, restored.faces, strict=True):
                faces += 1
                regenerated += not done.result.backend.endswith("+reuse")
                crop = cv2.warpAffine(
                    restored.frame.image, face.aligned.affine, (CROP_SIZE, CROP_SIZE)
                ).astype(np.int16)
                hole = done.occlusion.mask_256 > 0.5
                if face.track_id in previous:
                    changes.append(float(np.abs(crop - previous[face.track_id])[hole].mean()))
                previous[face.track_id] = crop
    frames = reader.stats.frames
    return {
        "flicker_levels": round(statistics.fmean(changes), 3) if changes else None,
        "fps": round(frames / elapsed_s, 2) if elapsed_s else None,
        "regenerated_fraction": round(regenerated / faces, 3) if faces else None,
        "frames": frames,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure with and without reuse and print JSON."""
    parser = argparse.ArgumentParser(description="flicker and speed with and without reuse")
    parser.add_argument("--input", type=Path, help="video (default: a generated 6 s clip)")
    parser.add_argument("--inpainter", choices=["model", "telea", "ns"], default="telea")
    parser.add_argument("--mask-box", type=int, nargs=4, default=[32, 128, 192, 128])
    add_backend_arguments(parser)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    region = FixedRegion(box_mask(tuple(args.mask_box)))
    with contextlib.ExitStack() as stack:
        inpainter: Inpainter
        if args.inpainter == "model":
            inpainter = stack.enter_context(open_model_inpainter(args, threads=1))
        else:
            inpainter = OpenCVInpainter(args.inpainter)
        results = _compare(args, inpainter, region)
    print(json.dumps(results, indent=2))
    return 0


def _compare(
    args: argparse.Namespace, inpainter: Inpainter, region: OcclusionModel
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        source = args.input
        if source is None:
            from stream.testclip import ClipSpec, make_talking_head_clip

            source = Path(tmp) / "clip.mp4"
            make_talking_head_clip(source, ClipSpec(duration_s=6.0))
        return {
            "input": str(args.input) if args.input else "generated 6 s 640x480",
            "inpainter": inpainter.name,
            "mask_box": args.mask_box,
            "reuse": measure(source, inpainter, region, ReuseOptions()),
            "no_reuse": measure(source, inpainter, region, None),
        }


if __name__ == "__main__":
    sys.exit(main())
