"""Fit and score the covered-face landmark correction (``stream.align.CoveredLandmarks``).

Under a face mask or a hand YuNet guesses the hidden nose tip and mouth corners too high and
moves the eyes up too, so the crop zooms in and moves up and the occluder's lower part falls
below it. For every training-split clip (at each size) this paints an occluder on every
frame as ``bench.false_flags`` does (same cache, same kinds), runs the real tracker on the
clean and on the painted clip, and pairs each frame's painted-face tracker output
(smoothed landmarks, box, score) with the clean face's landmarks of the same frame. A ridge
regression of each landmark's displacement in the eye-normalised frame on
``stream.align.covered_features`` is fitted on the pairs; it is scored by leave-identity-out
cross-validation (5 folds of identities) as crop error: where the clean clip's crop lands
in the corrected crop (scale; eye-line and chin rows, crop pixels; 5th/50th/95th
percentiles), against today's landmarks and simpler corrections (a fixed shift; box and
score only). The coefficients fitted on all pairs are written with ``-o``. With
``--recall``, each fold's correction (fitted on the other identities) also runs through the
real decision loop on its held-out runs (``bench.false_flags.run_detector``: the previous
frame's decision picks the crop, as ``stream.restore.plan_frame`` does) and the restored
region's precision, recall and IoU and the clean faces flagged are reported with and
without it.

    python -m bench.covered_landmarks --clips 'DIR/**/*.mp4' --sizes 0,160 --frames 100 \\
        --cache /tmp/ff [--ridge 10] [--recall] [-o stream/covered_landmarks.json]

Fit on training-split clips only; ``eval_only`` clips are for reporting (``bench.false_flags``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import numpy.typing as npt

from avinpaint.geometry import similarity_transform
from avinpaint.spec import CROP_TEMPLATE_256
from bench.false_flags import (
    _expand,
    analyse_clip,
    paint_run,
    resized_copy,
    run_detector,
    run_tag,
    score_painted,
)
from stream.align import (
    COVERED_FEATURES,
    CoveredLandmarks,
    covered_features,
    eye_frame,
    landmark_weights,
)
from stream.detect import FaceDetector
from stream.mask_detect import MaskDetectOptions
from stream.media import VideoReader
from stream.track import FaceTracker

FloatArray = npt.NDArray[np.float64]

CANDIDATES: dict[str, tuple[int, ...]] = {
    "today": (),
    "fixed shift": (0,),
    "box + score": (0, *range(7, COVERED_FEATURES)),
    "landmarks + box + score": tuple(range(COVERED_FEATURES)),
}
"""Columns of ``covered_features`` each candidate uses (none: today's landmarks)."""

EYE_ROW, CHIN_ROW = 78.0, 215.0
"""Rows of the crop template's eye line and (about) its chin."""


@dataclass(frozen=True)
class Pairs:
    """Painted-face tracker output (boxes (N, 4) x, y, w, h; scores (N,)) and its
    ``covered_features`` (N, ``COVERED_FEATURES``), the painted and the clean landmarks
    (N, 5, 2) of the same frames, and each pair's identity."""

    boxes: FloatArray
    scores: FloatArray
    features: FloatArray
    painted: FloatArray
    clean: FloatArray
    identity: list[str]
    run: list[str]
    """Each pair's run (``bench.false_flags.run_tag``)."""


def track_faces(path: Path, frames: int) -> list[tuple[FloatArray, FloatArray, float] | None]:
    """Per frame of the first ``frames``: the largest tracked face's smoothed landmarks, box
    and score (None where no face is tracked)."""
    tracker = FaceTracker(FaceDetector())
    out: list[tuple[FloatArray, FloatArray, float] | None] = []
    with VideoReader(path, threads=1) as reader:
        for index, frame in enumerate(reader):
            if index >= frames:
                break
            tracks = tracker.update(frame)
            if not tracks:
                out.append(None)
                continue
            best = max(tracks, key=lambda t: t.detection.box[2] * t.detection.box[3])
            box = np.asarray(best.detection.box, np.float64)
            out.append((best.smoothed_landmarks.copy(), box, float(best.detection.score)))
    return out


def displacement(painted: FloatArray, clean: FloatArray) -> FloatArray:
    """The 10 regression targets: clean minus painted landmarks in the painted face's
    eye-normalised frame."""
    _origin, unit, rotation = eye_frame(painted)
    return np.asarray(((clean - painted) @ rotation.T / unit).ravel(), np.float64)


def fit_ridge(features: FloatArray, targets: FloatArray, ridge: float) -> FloatArray:
    """Least squares with an L2 penalty ``ridge`` on every coefficient but the constant's."""
    penalty = ridge * np.eye(features.shape[1])
    penalty[0, 0] = 0.0
    return np.asarray(
        np.linalg.solve(features.T @ features + penalty, features.T @ targets), np.float64
    )


def fit_candidate(
    pairs: Pairs, rows: npt.NDArray[np.bool_], columns: Sequence[int], ridge: float
) -> CoveredLandmarks:
    """A correction using only ``columns`` of the features, fitted on ``rows``."""
    coefficients = np.zeros((COVERED_FEATURES, 10))
    if columns:
        targets = np.stack(
            [
                displacement(p, c)
                for p, c in zip(pairs.painted[rows], pairs.clean[rows], strict=True)
            ]
        )
        cols = list(columns)
        coefficients[cols] = fit_ridge(pairs.features[rows][:, cols], targets, ridge)
    return CoveredLandmarks(coefficients)


def crop_error(landmarks: FloatArray, clean: FloatArray) -> tuple[float, float, float]:
    """Where the clean landmarks' crop lands in the crop aligned from ``landmarks``: its
    scale, and the rows its eye line and chin move to, minus theirs (crop pixels)."""

    def affine(points: FloatArray) -> FloatArray:
        full = np.eye(3)
        full[:2] = similarity_transform(points, CROP_TEMPLATE_256, landmark_weights(points))
        return full

    moved = affine(landmarks) @ np.linalg.inv(affine(clean))
    scale = float(np.hypot(moved[0, 0], moved[1, 0]))
    eye = moved[:2, :2] @ [128.0, EYE_ROW] + moved[:2, 2]
    chin = moved[:2, :2] @ [128.0, CHIN_ROW] + moved[:2, 2]
    return scale, float(eye[1] - EYE_ROW), float(chin[1] - CHIN_ROW)


def identity_folds(identities: Sequence[str], folds: int, seed: int = 0) -> npt.NDArray[np.int64]:
    """A fold number per pair: identities shuffled into ``folds`` groups."""
    names = sorted(set(identities))
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {name: int(order[i]) % folds for i, name in enumerate(names)}
    return np.array([fold_of[name] for name in identities], np.int64)


def cross_validate(pairs: Pairs, ridge: float, folds: int = 5) -> dict[str, Any]:
    """Held-out crop error of every candidate: per fold of identities, fitted on the others."""
    fold = identity_folds(pairs.identity, folds)
    report: dict[str, Any] = {}
    for name, columns in CANDIDATES.items():
        errors = np.zeros((len(fold), 3))
        for k in range(folds):
            model = fit_candidate(pairs, fold != k, columns, ridge)
            for i in np.flatnonzero(fold == k):
                x, y, w, h = (float(v) for v in pairs.boxes[i])
                corrected = model.correct(pairs.painted[i], (x, y, w, h), float(pairs.scores[i]))
                errors[i] = crop_error(corrected, pairs.clean[i])
        report[name] = {
            metric: [round(float(v), 3) for v in np.percentile(errors[:, j], [5, 50, 95])]
            for j, metric in enumerate(("scale", "eye_dy_px", "chin_dy_px"))
        }
        report[name]["chin_abs_mean_px"] = round(float(np.abs(errors[:, 2]).mean()), 2)
    return report


def collect(
    clips: Sequence[Path], sizes: Sequence[int], frames: int, cache: Path, identity: str
) -> Pairs:
    """The painted/clean pairs of every clip at every size (painting the clips, as
    ``bench.false_flags`` does, where the cache lacks them)."""
    cache.mkdir(parents=True, exist_ok=True)
    boxes, scores, features, painted, clean, names, runs = [], [], [], [], [], [], []
    pattern = re.compile(identity)
    for number, source in enumerate(clips):
        found = pattern.search(source.stem)
        person = found.group(0) if found else f"{source.parent.name}/{source.stem}"
        for side in sizes:
            tag = run_tag(source, side)
            clean_path = resized_copy(source, cache / f"{tag}.mp4", side, frames)
            _, masked_file, _ = paint_run(clean_path, number, tag, frames, cache)
            for a, b in zip(
                track_faces(masked_file, frames), track_faces(clean_path, frames), strict=False
            ):
                if a is None or b is None:
                    continue
                lm, box, score = a
                x, y, w, h = (float(v) for v in box)
                boxes.append(box)
                scores.append(score)
                features.append(covered_features(lm, (x, y, w, h), score))
                painted.append(lm)
                clean.append(b[0])
                names.append(person)
                runs.append(tag)
            print(f"collected {tag}: {len(names)} pairs", file=sys.stderr, flush=True)
    return Pairs(
        np.stack(boxes),
        np.asarray(scores, np.float64),
        np.stack(features),
        np.stack(painted),
        np.stack(clean),
        names,
        runs,
    )


def held_out_recall(
    clips: Sequence[Path],
    sizes: Sequence[int],
    frames: int,
    cache: Path,
    pairs: Pairs,
    ridge: float,
    folds: int = 5,
) -> dict[str, Any]:
    """Restored-region precision, recall, IoU and clean faces flagged of every run (v3,
    default options) without and with the covered-face alignment, each run's correction
    fitted on the identities of the other folds (``identity_folds``, as ``cross_validate``)."""
    fold = identity_folds(pairs.identity, folds)
    fold_of_run = dict(zip(pairs.run, fold.tolist(), strict=True))
    models = {
        k: fit_candidate(pairs, fold != k, CANDIDATES["landmarks + box + score"], ridge)
        for k in range(folds)
    }
    on = MaskDetectOptions(realign_covered=True, place_covered=False)
    off = dataclasses.replace(on, realign_covered=False)
    rows: dict[str, dict[str, float]] = {}
    for number, source in enumerate(clips):
        for side in sizes:
            tag = run_tag(source, side)
            if tag not in fold_of_run:
                continue
            model = models[fold_of_run[tag]]
            clean_path = resized_copy(source, cache / f"{tag}.mp4", side, frames)
            kind, masked_file, truth_file = paint_run(clean_path, number, tag, frames, cache)
            truth = np.load(truth_file)
            painted = analyse_clip(masked_file, frames, None, model)
            clean = analyse_clip(clean_path, frames, None, model)
            row: dict[str, float] = {}
            for name, options in (("before", off), ("corrected", on)):
                masks, used = run_detector(painted, options)
                scores = score_painted(painted, masks, truth, used)
                clean_masks, _ = run_detector(clean, options)
                flagged = sum(bool(m.any()) for m in clean_masks) / max(1, len(clean_masks))
                row.update({f"{k}_{name}": scores[k] for k in ("precision", "recall", "iou")})
                row[f"clean_flagged_{name}"] = flagged
            rows[f"{tag}.{kind}"] = row
            print(f"held out {tag}.{kind}: {json.dumps(row)}", file=sys.stderr, flush=True)
    mean = {
        k: round(statistics.fmean(r[k] for r in rows.values()), 4)
        for k in next(iter(rows.values()))
    }
    return {"mean": mean, "runs": rows}


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


def main(argv: list[str] | None = None) -> int:
    """Collect, cross-validate, fit on all pairs; print JSON (and write the coefficients)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", nargs="+", required=True, help="paths or globs")
    parser.add_argument("--sizes", default="0", help="0 = native, else re-encoded side px")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--ridge", type=float, default=10.0)
    parser.add_argument(
        "--identity",
        default=r"^cremad_\d+",
        help="regex whose match in a clip's name is its person (else the clip is its own)",
    )
    parser.add_argument(
        "--recall", action="store_true", help="also run each fold's correction end to end"
    )
    parser.add_argument("-o", "--output", type=Path, help="coefficients JSON to write")
    args = parser.parse_args(argv)
    clips = _expand(args.clips)
    if not clips:
        print("no clips", file=sys.stderr)
        return 1
    sizes = [int(s) for s in args.sizes.split(",")]
    pairs = collect(clips, sizes, args.frames, args.cache, args.identity)
    report: dict[str, Any] = {
        "pairs": len(pairs.identity),
        "identities": len(set(pairs.identity)),
        "ridge": args.ridge,
        "held_out_crop_error": cross_validate(pairs, args.ridge),
    }
    if args.recall:
        report["held_out_recall"] = held_out_recall(
            clips, sizes, args.frames, args.cache, pairs, args.ridge
        )
    model = fit_candidate(
        pairs, np.ones(len(pairs.identity), bool), CANDIDATES["landmarks + box + score"], args.ridge
    )
    if args.output is not None:
        data = {
            "about": "stream.align.CoveredLandmarks coefficients (rows: covered_features; "
            "columns: x, y displacement of the 5 landmarks in eye distances), fitted by "
            "bench.covered_landmarks on training-split clips only",
            "command": "python -m bench.covered_landmarks " + " ".join(argv or sys.argv[1:]),
            "held_out": "crop error of each candidate, leave-identity-out (5 folds): scale, "
            "rows of the clean crop's eye line and chin in the corrected crop minus theirs, "
            "5th/50th/95th percentiles",
            "pairs": report["pairs"],
            "identities": report["identities"],
            "ridge": args.ridge,
            "held_out_crop_error": report["held_out_crop_error"],
            "coefficients": [[round(float(v), 6) for v in row] for row in model.coefficients],
        }
        args.output.write_text(compact_json(data))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
