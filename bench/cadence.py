"""How often the occlusion segmenter must run per face (``MaskDetectOptions.refresh_every``).

For real talking heads of people we never trained on (``eval_only``), each with a face mask
or hand painted on every frame (``bench.restore_video``), and the same clips unpainted:
track, align and detect with each cadence, and score the restored region against the
painted truth (precision, recall), against the every-frame region (IoU), and count how
many faces the segmenter actually ran on and the faces wrongly flagged on the clean clips.

    python -m bench.cadence [--clips N] [--frames 100] [--cadences 1,2,3,4,6] [-o OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from bench.quality import EVAL_CLIPS, occluder_shapes
from bench.restore_video import BoolMask, make_masked_clip, to_frame, transcode
from stream.mask_detect import MaskDetectOptions, MaskDetector, Predictor, load_predictor
from stream.media import VideoReader
from stream.restore import FaceAnalyser


def _timed(predictor: Predictor, seconds: list[float]) -> Predictor:
    def predict(crops: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = predictor(crops)
        seconds.append(time.perf_counter() - start)
        return out

    return predict


def regions(path: Path, refresh_every: int, predictor: Predictor) -> dict[str, Any]:
    """Per-frame restored regions (frame space) of one clip at one cadence."""
    seconds: list[float] = []
    detector = MaskDetector(
        MaskDetectOptions(refresh_every=refresh_every), _timed(predictor, seconds)
    )
    analyser = FaceAnalyser()
    masks: list[BoolMask] = []
    faces = covered = 0
    with VideoReader(path, threads=1) as reader:
        for frame in reader:
            work = analyser.analyse(frame)
            shape = (frame.image.shape[0], frame.image.shape[1])
            region = np.zeros(shape, dtype=bool)
            occlusions = detector.predict([f.aligned for f in work.faces], work.track_ids)
            for face, occ in zip(work.faces, occlusions, strict=True):
                faces += 1
                if occ.mask_256.any():
                    covered += 1
                    region |= to_frame(occ.mask_256, face.aligned.inverse_affine, shape)
            masks.append(region)
    return {
        "masks": masks,
        "faces": faces,
        "covered": covered,
        "segmented": detector.segmented,
        "segmenter_s": sum(seconds),
    }


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def score(
    masks: Sequence[BoolMask], reference: Sequence[BoolMask], truth: Sequence[BoolMask] | None
) -> dict[str, float | None]:
    """Pooled precision/recall against the truth and IoU against the every-frame region."""
    inter = union = hit = shown = true = 0
    for index, mask in enumerate(masks):
        ref = reference[index]
        inter += int((mask & ref).sum())
        union += int((mask | ref).sum())
        if truth is not None:
            hit += int((mask & truth[index]).sum())
            shown += int(mask.sum())
            true += int(truth[index].sum())
    out: dict[str, float | None] = {"iou_vs_every_frame": _ratio(inter, union) if union else 1.0}
    if truth is not None:
        out["precision"] = _ratio(hit, shown)
        out["recall"] = _ratio(hit, true)
    return out


def run(clips: Sequence[Path], frames: int, cadences: Sequence[int], work: Path) -> dict[str, Any]:
    """Every clip at every cadence; per clip and pooled."""
    predictor = load_predictor(MaskDetectOptions())
    per_clip: dict[str, Any] = {}
    for number, source in enumerate(clips):
        kind = "hand" if number % 4 == 3 else "surgical"
        masked = make_masked_clip(
            source,
            work / f"masked_{number}.mp4",
            seed=number,
            max_frames=frames,
            shapes=occluder_shapes(kind),
        )
        truth = [masked.truth[i] for i in range(len(masked.truth))]
        clean = work / f"clean_{number}.mp4"
        transcode(source, clean, max_frames=frames, copy_audio=False)
        rows: dict[str, Any] = {}
        base_masked = regions(masked.path, 1, predictor)
        base_clean = regions(clean, 1, predictor)
        for cadence in cadences:
            on_masked = base_masked if cadence == 1 else regions(masked.path, cadence, predictor)
            on_clean = base_clean if cadence == 1 else regions(clean, cadence, predictor)
            rows[str(cadence)] = {
                **score(on_masked["masks"], base_masked["masks"], truth),
                "segmented_share": _ratio(on_masked["segmented"], on_masked["faces"]),
                "segmenter_ms_per_face": 1000.0
                * on_masked["segmenter_s"]
                / max(1, on_masked["faces"]),
                "clean_faces_flagged": _ratio(on_clean["covered"], on_clean["faces"]),
                "clean_segmented_share": _ratio(on_clean["segmented"], on_clean["faces"]),
            }
        per_clip[f"{source.parent.name}/{source.name} ({kind})"] = rows
        print(f"{number + 1}/{len(clips)} {source.name}", file=sys.stderr, flush=True)
    pooled = {
        str(c): {
            key: statistics.fmean(
                v for v in (clip[str(c)][key] for clip in per_clip.values()) if v is not None
            )
            for key in next(iter(per_clip.values()))[str(c)]
        }
        for c in cadences
    }
    return {"frames_per_clip": frames, "clips": per_clip, "mean": pooled}


def main(argv: list[str] | None = None) -> int:
    """Run and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--cadences", default="1,2,3,4,6")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args(argv)
    clips = sorted(p for p in EVAL_CLIPS.rglob("*.mp4"))[: args.clips]
    if not clips:
        print(f"no clips under {EVAL_CLIPS}", file=sys.stderr)
        return 1
    cadences = [int(c) for c in args.cadences.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        report = run(clips, args.frames, cadences, Path(tmp))
    text = json.dumps(report, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
