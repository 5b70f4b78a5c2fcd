"""Why does detection miss a painted occluder? Per frame, split the lost truth pixels by cause.

A clip is painted the way ``bench.quality`` paints it (the occluder kind and seed fixed by the
file name, the last ``--frames`` frames), then the real tracker and aligner run on the painted
clip and ``MaskDetector`` (default options unless ``--set``) on its crops. Every truth pixel
(frame pixels, ``make_masked_clip``'s truth) that the restored region misses is charged to
one cause, in this order:

- ``no_face``: the tracker gave no face whose crop holds that pixel (tracker or aligner lost
  the face, or the crop does not reach the occluder);
- ``segmenter``: neither the newest raw sigmoid of its face nor the smoothed map is above
  ``pixel_threshold`` there (the network does not see it);
- ``smoothing``: raw above the threshold, the smoothed map (what decides) not;
- ``decision``: the smoothed map covers it but the face was decided uncovered
  (``covered_fraction``, hysteresis) or its reused mask (``refresh_every``) misses it.

This is the first pass only: covered faces are not cropped again (``place_covered``), so
the shares describe the aligner's crops; ``bench.false_flags`` and ``bench.quality``
measure the region the pipeline restores, placement included.

    python -m bench.seg_diagnose CLIP.mp4 [CLIP ...] --out DIR [--frames 50] \\
        [--weights X.onnx] [--set pixel_threshold=0.45] [--sheet-frames 4]

Writes ``DIR/<clip>.<weights>.json`` (per frame and totals) and ``DIR/<clip>.<weights>.png``
(``<weights>``: the file's stem, or ``shipped``): for a few frames,
the aligned crop, the truth in the crop (green), the raw sigmoid (heat) and the restored
region (red over the crop, missed truth in yellow). The painted clip and its truth are kept
in ``DIR`` and reused, so that a second model (``--weights``) sees the same frames. For
diagnosis only: ``eval_only`` clips may be looked at, never chosen on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np
import numpy.typing as npt

from bench.quality import occluder_for, override_fields, paint_clip
from bench.restore_video import to_frame
from stream.mask_detect import MaskDetectOptions, MaskDetector, load_predictor
from stream.media import VideoReader
from stream.restore import FaceAnalyser
from stream.types import AlignedFace

CAUSES = ("no_face", "segmenter", "smoothing", "decision")


def diagnose(
    clip: Path, out: Path, frames: int, options: MaskDetectOptions, sheet_frames: int
) -> dict[str, Any]:
    """Paint, track, segment and charge every missed truth pixel to a cause."""
    out.mkdir(parents=True, exist_ok=True)
    name = clip.stem
    kind = occluder_for(name)
    painted, truths, kinds = _painted(clip, out, frames)
    analyser = FaceAnalyser()
    detector = MaskDetector(options)
    raw_predict = load_predictor(options)
    threshold = options.pixel_threshold
    lost = dict.fromkeys(CAUSES, 0)
    true_total = hit_total = shown_total = 0
    rows: list[dict[str, Any]] = []
    tiles: list[npt.NDArray[np.uint8]] = []
    picks = set(np.linspace(0, len(truths) - 1, sheet_frames).round().astype(int).tolist())
    with VideoReader(painted, threads=1) as reader:
        for index, frame in enumerate(reader):
            if index >= len(truths):
                break
            truth = truths[index]
            shape = truth.shape
            work = analyser.analyse(frame)
            faces = [f.aligned for f in work.faces]
            ids = list(work.track_ids)
            raws: list[npt.NDArray[np.float32]] = (
                list(raw_predict(np.stack([f.crop for f in faces]))) if faces else []
            )
            coverages = detector.analyse(faces, ids)
            seen = np.zeros(shape, bool)
            raw_on = np.zeros(shape, bool)
            smooth_on = np.zeros(shape, bool)
            region = np.zeros(shape, bool)
            face_rows = []
            for face, raw, cov in zip(faces, raws, coverages, strict=True):
                inverse = face.inverse_affine
                seen |= to_frame(np.ones((256, 256), np.float32), inverse, shape)
                raw_on |= to_frame((raw > threshold).astype(np.float32), inverse, shape)
                smooth_on |= to_frame(
                    (cov.probability_256 > threshold).astype(np.float32), inverse, shape
                )
                region |= to_frame(cov.mask_256, inverse, shape)
                face_rows.append(
                    {
                        "raw_fraction": _fraction(raw > threshold),
                        "smoothed_fraction": round(cov.coverage_fraction, 4),
                        "covered": cov.covered,
                        "face_px": round(256.0 * float(np.hypot(*inverse[:, 0])), 1),
                    }
                )
            missed = truth & ~region
            causes = {
                "no_face": missed & ~seen,
                "segmenter": missed & seen & ~raw_on & ~smooth_on,
                "smoothing": missed & seen & raw_on & ~smooth_on,
                "decision": missed & seen & smooth_on,
            }
            for cause, pixels in causes.items():
                lost[cause] += int(pixels.sum())
            n_true, n_hit = int(truth.sum()), int((truth & region).sum())
            true_total += n_true
            hit_total += n_hit
            shown_total += int(region.sum())
            rows.append(
                {
                    "frame": index,
                    "truth_px": n_true,
                    "recall": round(n_hit / n_true, 4) if n_true else None,
                    "faces": face_rows,
                    **{c: int(p.sum()) for c, p in causes.items()},
                }
            )
            if index in picks and faces:
                tiles.append(_tile(faces[0], raws[0], coverages[0].mask_256, truth))
    result = {
        "clip": name,
        "occluder": kind,
        "painted": kinds,
        "frames": len(rows),
        "recall": round(hit_total / true_total, 4) if true_total else None,
        "precision": round(hit_total / shown_total, 4) if shown_total else None,
        "lost_share": {c: round(v / true_total, 4) for c, v in lost.items()} if true_total else {},
        "frames_covered": sum(any(f["covered"] for f in r["faces"]) for r in rows),
        "frames_without_face": sum(not r["faces"] for r in rows),
        "per_frame": rows,
    }
    stem = f"{name}.{options.weights.stem if options.weights is not None else 'shipped'}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    if tiles:
        cv2.imwrite(str(out / f"{stem}.png"), np.concatenate(tiles, axis=0))
    return result


def _painted(clip: Path, out: Path, frames: int) -> tuple[Path, npt.NDArray[np.bool_], list[str]]:
    """The painted clip, its truth (frames, H, W) and the kinds painted, made once per
    ``out`` and reused: ``make_masked_clip`` is not bit-identical from run to run (the
    tracker on a re-encoded clip), so models are compared on one painted clip."""
    video, truth_file = out / f"{clip.stem}_masked.mp4", out / f"{clip.stem}_truth.npz"
    if video.is_file() and truth_file.is_file():
        with np.load(truth_file) as cached:
            return video, cached["truth"], [str(k) for k in cached["kinds"]]
    masked = paint_clip(clip, video, frames).masked
    truth = np.stack([np.asarray(masked.truth[i], bool) for i in range(len(masked.truth))])
    kinds = sorted(set(masked.kinds.values()))
    np.savez_compressed(truth_file, truth=truth, kinds=np.asarray(kinds))
    return video, truth, kinds


def _fraction(pixels: npt.NDArray[np.bool_]) -> float:
    from stream.mask_detect import face_region

    region = face_region()
    return round(float((pixels & region).sum()) / float(region.sum()), 4)


def _tile(
    face: AlignedFace,
    raw: npt.NDArray[np.float32],
    mask: npt.NDArray[np.float32],
    truth_frame: npt.NDArray[np.bool_],
) -> npt.NDArray[np.uint8]:
    """Crop | truth (green) | raw sigmoid | restored (red), missed truth (yellow)."""
    crop = face.crop
    truth = cv2.warpAffine(truth_frame.astype(np.float32), face.affine, (256, 256)) >= 0.5
    with_truth = crop.copy()
    with_truth[truth] = (0.5 * with_truth[truth] + (0, 127, 0)).astype(np.uint8)
    levels = np.asarray(np.clip(raw, 0.0, 1.0) * 255.0, np.uint8)
    heat = np.asarray(cv2.applyColorMap(levels, cv2.COLORMAP_JET), np.uint8)
    restored = crop.copy()
    shown = mask > 0.5
    restored[shown] = (0.5 * restored[shown] + (0, 0, 127)).astype(np.uint8)
    restored[truth & ~shown] = (0, 255, 255)
    return np.concatenate([crop, with_truth, heat, restored], axis=1)


def main(argv: list[str] | None = None) -> int:
    """Diagnose each clip; print a one-line summary per clip."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clips", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--weights", type=Path, help=".onnx (default: the shipped one)")
    parser.add_argument("--set", nargs="*", default=[], help="MaskDetectOptions KEY=VALUE")
    parser.add_argument("--sheet-frames", type=int, default=4)
    args = parser.parse_args(argv)
    options = dataclasses.replace(
        override_fields(MaskDetectOptions(), args.set), weights=args.weights
    )
    for clip in args.clips:
        result = diagnose(clip, args.out, args.frames, options, args.sheet_frames)
        summary = {k: v for k, v in result.items() if k != "per_frame"}
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
