"""Fit and score the covered-face placement (``stream.align.CoveredPlacement``): re-place a
covered face's crop from the segmenter's own mask.

On a painted face YuNet's landmarks leave the crop zoomed in and high in a way that differs
from clip to clip (a correction from the landmarks, box and score removes little of it:
docs/MODEL_CARD_occlusion.md). The occluder mask the segmenter finds in that crop shows where
the crop sits: a mask running off the crop's lower edge, or filling too much of it, says
the crop is too tight. For every painted training-split run in a ``bench.false_flags``
cache (its ``crops``/``inverse`` and the clean clip's), this runs ``MaskDetector`` (v3,
default options, no placement) on the painted crops, describes each mask by
its coverage profile (``mask_features``), and fits a ridge regression from it to the
similarity between the clean clip's crop and the painted crop (``crop_offset``),
leave-identity-out (5 folds of identities, ``identity_folds``). Then, per fold,
the held-out runs are cropped again where the prediction puts the clean crop (two passes
in the same frame) and segmented again; the restored region's precision, recall and IoU
before and after are printed as JSON. ``--report CACHE`` also applies the ridge fitted on
every training run to another cache's runs (``eval_only``: reported, never fitted on).

    python -m bench.mask_realign --cache /tmp/ff [--ridge 10] [--report /tmp/ff_eval] \\
        [-o stream/covered_placement.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np
import numpy.typing as npt

from bench.false_flags import crop_like, run_detector, score_painted
from stream.align import CoveredPlacement, mask_features, offset_matrix
from stream.mask_detect import MaskDetectOptions

FloatArray = npt.NDArray[np.float64]

MAX_CHIN_SHIFT_PX = 60.0
"""Pairs whose clean chin lands further than this from the template's are left out of the
fit (a face the tracker lost or swapped, not an aligner's error)."""


def fit_ridge(features: FloatArray, targets: FloatArray, ridge: float) -> FloatArray:
    """Least squares with an L2 penalty ``ridge`` on every coefficient but the constant's."""
    penalty = ridge * np.eye(features.shape[1])
    penalty[0, 0] = 0.0
    return np.asarray(
        np.linalg.solve(features.T @ features + penalty, features.T @ targets), np.float64
    )


def identity_folds(identities: Sequence[str], folds: int, seed: int = 0) -> npt.NDArray[np.int64]:
    """A fold number per item: identities shuffled into ``folds`` groups."""
    names = sorted(set(identities))
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {name: int(order[i]) % folds for i, name in enumerate(names)}
    return np.array([fold_of[name] for name in identities], np.int64)


def compact_json(data: dict[str, Any]) -> str:
    """``data`` as JSON, one top-level key (and one row of a list of lists) per line."""
    lines = []
    for key, value in data.items():
        if isinstance(value, list) and value and isinstance(value[0], list):
            rows = ",\n".join(f"  {json.dumps(row)}" for row in value)
            lines.append(f" {json.dumps(key)}: [\n{rows}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _full(affine: npt.ArrayLike) -> FloatArray:
    out = np.eye(3)
    out[:2] = np.asarray(affine, np.float64)
    return out


def crop_offset(painted_inverse: FloatArray, clean_inverse: FloatArray) -> FloatArray:
    """The similarity from the clean crop to the painted crop of one frame as (log scale,
    angle, x and y shift of the crop centre in crop pixels)."""
    moved = np.linalg.inv(_full(painted_inverse)) @ _full(clean_inverse)
    scale = float(np.hypot(moved[0, 0], moved[1, 0]))
    angle = float(np.arctan2(moved[1, 0], moved[0, 0]))
    centre = moved[:2, :2] @ [128.0, 128.0] + moved[:2, 2] - 128.0
    return np.array([np.log(scale), angle, centre[0], centre[1]])


def chin_shift(offset: FloatArray) -> float:
    """Rows the template's chin (128, 215) moves under ``offset``."""
    return float((offset_matrix(offset) @ [128.0, 215.0, 1.0])[1] - 215.0)


def load_runs(cache: Path) -> list[dict[str, Any]]:
    """Every painted run of a ``bench.false_flags`` cache, with its masks (today's crops),
    their features, and the offsets to the clean crops of the same frames (nan where the
    clean clip has no face)."""
    options = MaskDetectOptions(place_covered=False)
    runs = []
    for path in sorted(cache.glob("*.npz")):
        if path.name.endswith(".clean.npz"):
            continue
        tag, kind = path.name.split(".")[:2]
        with np.load(path) as data:
            painted = {k: data[k] for k in data.files}
        with np.load(cache / f"{tag}.clean.npz") as data:
            clean = {k: data[k] for k in ("inverse", "frame")}
        masks, _ = run_detector(painted, options)
        offsets = np.full((len(masks), 4), np.nan)
        for row in range(len(masks)):
            rows = np.flatnonzero(clean["frame"] == painted["frame"][row])
            if len(rows):
                centre = painted["inverse"][row] @ [128.0, 128.0, 1.0]
                nearest = min(
                    rows, key=lambda r: np.linalg.norm(clean["inverse"][r] @ [128, 128, 1] - centre)
                )
                offsets[row] = crop_offset(painted["inverse"][row], clean["inverse"][nearest])
        runs.append(
            {
                "tag": tag,
                "kind": kind,
                "person": "cremad_1001"
                if tag.startswith("cremad_cremad_1001")
                else tag.rsplit("_s", 1)[0],
                "painted": painted,
                "masks": masks,
                "features": np.stack([mask_features(m) for m in masks]),
                "offsets": offsets,
                "truth": np.load(cache / f"{tag}.{kind}.truth.npy"),
                "video": cache / f"{tag}.{kind}.mp4",
            }
        )
        print(f"loaded {tag}.{kind}", file=sys.stderr, flush=True)
    return runs


def second_pass(run: dict[str, Any], coefficients: FloatArray) -> dict[str, float]:
    """The run's covered faces cropped where ``coefficients`` put the clean crop
    (``CoveredPlacement.place``), segmented again; the restored region's scores."""
    painted = run["painted"]
    placement = CoveredPlacement(coefficients)
    inverses = np.array(painted["inverse"], np.float64, copy=True)
    for row, mask in enumerate(run["masks"]):
        if mask.any():
            affine = np.asarray(cv2.invertAffineTransform(inverses[row]), np.float64)
            inverses[row] = cv2.invertAffineTransform(placement.place(affine, mask))
    clip = crop_like({**painted, "inverse": inverses}, run["video"])
    masks, _ = run_detector(clip, MaskDetectOptions(place_covered=False))
    return score_painted(clip, masks, run["truth"], inverses)


def mean_scores(rows: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Mean precision, recall and IoU of the runs' scores before and after the placement."""
    return {
        when: {
            k: round(statistics.fmean(r[when][k] for r in rows.values()), 4)
            for k in ("precision", "recall", "iou")
        }
        for when in ("before", "after")
    }


def main(argv: list[str] | None = None) -> int:
    """Fit per fold, score the held-out runs before and after; print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="a bench.false_flags cache")
    parser.add_argument("--ridge", type=float, default=10.0)
    parser.add_argument("--report", type=Path, help="a cache to apply the full fit to")
    parser.add_argument("-o", "--output", type=Path, help="coefficients JSON to write")
    args = parser.parse_args(argv)
    runs = load_runs(args.cache)
    fold_of = dict(
        zip(
            [r["person"] for r in runs],
            identity_folds([r["person"] for r in runs], 5).tolist(),
            strict=True,
        )
    )
    features = np.concatenate([r["features"] for r in runs])
    offsets = np.concatenate([r["offsets"] for r in runs])
    folds = np.concatenate([[fold_of[r["person"]]] * len(r["masks"]) for r in runs])
    usable = np.isfinite(offsets).all(axis=1)
    usable[usable] = [abs(chin_shift(o)) < MAX_CHIN_SHIFT_PX for o in offsets[usable]]
    rows: dict[str, Any] = {}
    for fold in range(5):
        train = usable & (folds != fold)
        coefficients = fit_ridge(features[train], offsets[train], args.ridge)
        for run in runs:
            if fold_of[run["person"]] != fold:
                continue
            before = score_painted(run["painted"], run["masks"], run["truth"])
            after = second_pass(run, coefficients)
            rows[f"{run['tag']}.{run['kind']}"] = {"before": before, "after": after}
            print(
                f"{run['tag']}.{run['kind']}: {before['recall']:.3f} -> {after['recall']:.3f}",
                file=sys.stderr,
                flush=True,
            )
    mean = mean_scores(rows)
    report: dict[str, Any] = {"mean": mean, "runs": rows}
    coefficients = fit_ridge(features[usable], offsets[usable], args.ridge)
    if args.output is not None:
        data = {
            "about": "stream.align.CoveredPlacement coefficients (rows: mask_features; "
            "columns: log scale, angle, x and y shift of the crop centre from the well-placed "
            "crop to the crop the mask was found in), fitted by bench.mask_realign on "
            "training-split clips only",
            "command": "python -m bench.mask_realign " + " ".join(argv or sys.argv[1:]),
            "frames": int(usable.sum()),
            "ridge": args.ridge,
            "held_out": mean,
            "coefficients": [[round(float(v), 6) for v in row] for row in coefficients],
        }
        args.output.write_text(compact_json(data))
    if args.report is not None:
        reported = {}
        for run in load_runs(args.report):
            before = score_painted(run["painted"], run["masks"], run["truth"])
            reported[f"{run['tag']}.{run['kind']}"] = {
                "before": before,
                "after": second_pass(run, coefficients),
            }
        report["reported"] = {"mean": mean_scores(reported), "runs": reported}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
