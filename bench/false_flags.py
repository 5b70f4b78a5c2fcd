"""False flags on clean real faces against recall on painted occluders, per clip.

Detection is the default region: every face the segmenter calls covered is repainted, so a
clean face flagged is the worst error the product makes. For each clip (at its own size and,
with ``--sizes``, re-encoded at e.g. 160x160 so its face is LRS2-sized) this runs the real
tracker and aligner once and caches the aligned crops, of the clean clip and of the clip with
an occluder painted on every frame (``bench.restore_video.make_masked_clip``; surgical, hand,
KN95, N95 and cloth in turn), then runs ``MaskDetector`` (default options: cadence, smoothing,
hysteresis) with each set of weights and reports

- ``clean_flagged``: share of clean face instances with a non-empty region (a false flag),
- ``precision`` / ``recall`` / ``iou``: the restored region on the painted clip in frame
  pixels against the painted truth, pooled over frames, and ``painted_flagged``: share of
  painted face instances flagged;
- with ``--clean-alignment``, the same three (``*_clean_alignment``) when each painted frame
  is cropped where the aligner put the face in the clean clip instead: on an occluded face
  YuNet guesses the hidden nose and mouth too high, the crop zooms in and the occluder's
  lower part falls outside it, where nothing can restore it. The gap is what better
  landmarks on occluded faces would buy (an upper bound: the occluder was painted in
  exactly that crop).

    python -m bench.false_flags --clips 'DIR/*.mp4' --sizes 0,160 --frames 60 \\
        --cache /tmp/ff --weights a.onnx b.onnx [--set covered_fraction=0.05] \\
        [--clean-alignment] [-o OUT.json]

``--dump-flagged DIR`` writes, per weights file, the aligned crops of the flagged clean faces
(``flagged.npy`` and ``flagged.json``): hard negatives to mine from training-split clips
only. Choose on training-split clips; ``eval_only`` clips are for reporting.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import os
import statistics
import sys
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import av
import cv2
import numpy as np
import numpy.typing as npt

from bench.quality import occluder_shapes, override_fields
from bench.restore_video import make_masked_clip, to_frame
from stream.align import crop_at
from stream.mask_detect import MaskDetectOptions, MaskDetector
from stream.media import VideoReader
from stream.restore import FaceAnalyser, place_covered_faces
from stream.types import AlignedFace

KINDS = ("surgical", "hand", "kn95", "n95", "cloth")


def resized_copy(source: Path, output: Path, side: int, frames: int) -> Path:
    """The first ``frames`` frames of ``source`` scaled to ``side`` x ``side`` (H.264, CRF 23,
    as a small face in broadcast video would be), or ``source`` itself for side 0."""
    if side <= 0:
        return source
    if output.is_file():
        return output
    partial = output.with_suffix(".partial.mp4")
    with av.open(str(source)) as inp, av.open(str(partial), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for index, frame in enumerate(inp.decode(video=0)):
            if index >= frames:
                break
            image = cv2.resize(
                frame.to_ndarray(format="bgr24"), (side, side), interpolation=cv2.INTER_AREA
            )
            pixels = np.ascontiguousarray(image, dtype=np.uint8)
            new = av.VideoFrame.from_ndarray(pixels, format="bgr24")
            new.pts = index
            new.time_base = Fraction(1, 25)
            for packet in stream.encode(new):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    partial.replace(output)
    return output


def analyse_clip(path: Path, frames: int, cache: Path) -> dict[str, Any]:
    """Aligned crops, inverse affines and track ids of every face of the first ``frames``
    frames (cached in ``cache``)."""
    if cache.is_file():
        with np.load(cache) as data:
            return {k: data[k] for k in data.files}
    analyser = FaceAnalyser()
    crops: list[npt.NDArray[np.uint8]] = []
    inverses: list[npt.NDArray[np.float64]] = []
    tracks: list[int] = []
    frame_of: list[int] = []
    shape = (0, 0)
    with VideoReader(path, threads=1) as reader:
        for index, frame in enumerate(reader):
            if index >= frames:
                break
            shape = (frame.image.shape[0], frame.image.shape[1])
            work = analyser.analyse(frame)
            for face, track in zip(work.faces, work.track_ids, strict=True):
                crops.append(face.aligned.crop)
                inverses.append(np.asarray(face.aligned.inverse_affine, np.float64))
                tracks.append(int(track))
                frame_of.append(index)
    out: dict[str, Any] = {
        "crops": np.stack(crops) if crops else np.zeros((0, 256, 256, 3), np.uint8),
        "inverse": np.stack(inverses) if inverses else np.zeros((0, 2, 3)),
        "track": np.asarray(tracks, np.int64),
        "frame": np.asarray(frame_of, np.int64),
        "shape": np.asarray(shape, np.int64),
        "frames": np.asarray(min(frames, index + 1) if frames else 0, np.int64),
    }
    np.savez(cache, **out)
    return out


def crop_like(clip: dict[str, Any], video: Path) -> dict[str, Any]:
    """``clip`` (a cached analysis) with its crops taken from ``video`` instead, frame by frame
    under the same affines: the painted frames where the clean clip's faces were aligned (and
    no second placement: every face stays where the clean clip put it)."""
    inverses = clip["inverse"]
    crops = np.empty_like(clip["crops"])
    with VideoReader(video, threads=1) as reader:
        for index, frame in enumerate(reader):
            if index >= int(clip["frames"]):
                break
            for row in np.flatnonzero(clip["frame"] == index):
                affine = cv2.invertAffineTransform(inverses[row])
                crops[row] = crop_at(frame.image, np.asarray(affine, np.float64)).crop
    kept = {k: v for k, v in clip.items() if k != "video"}
    return {**kept, "crops": crops}


def run_detector(
    clip: dict[str, Any], options: MaskDetectOptions
) -> tuple[list[npt.NDArray[Any]], npt.NDArray[np.float64]]:
    """The detector's mask (crop space) of every face of a cached clip, in order, and the
    inverse affine of the crop each was found in, as ``plan_frame`` runs the detector: where
    the clip names its ``video``, a face found covered is cropped again where its mask says
    the face lies and segmented again (``stream.restore.place_covered_faces``)."""
    detector = MaskDetector(options)
    masks: list[npt.NDArray[Any]] = []
    inverses = np.array(clip["inverse"], np.float64, copy=True)
    frame_ids = clip["frame"]
    placing = detector.placement() is not None and "video" in clip
    with contextlib.ExitStack() as stack:
        frames = None
        if placing:
            frames = iter(stack.enter_context(VideoReader(Path(clip["video"]), threads=1)))
        for index in range(int(clip["frames"])):
            image = next(frames).image if frames is not None else None
            rows = np.flatnonzero(frame_ids == index)
            faces = []
            for r in rows:
                affine = np.asarray(cv2.invertAffineTransform(inverses[r]), np.float64)
                faces.append(AlignedFace(clip["crops"][r], affine, inverses[r]))
            ids = [int(clip["track"][r]) for r in rows]
            occlusions = detector.predict(faces, ids)
            if image is not None:
                faces, occlusions = place_covered_faces(image, faces, occlusions, ids, detector)
                for r, face in zip(rows, faces, strict=True):
                    inverses[r] = np.asarray(face.inverse_affine, np.float64)
            masks.extend(o.mask_256 for o in occlusions)
    return masks, inverses


def score_painted(
    clip: dict[str, Any],
    masks: Sequence[npt.NDArray[Any]],
    truth: npt.NDArray[np.bool_],
    inverses: npt.NDArray[np.float64] | None = None,
) -> dict[str, float]:
    """Pooled frame-pixel precision, recall and IoU of the restored region, and the share of
    painted faces flagged; ``inverses``: each mask's crop -> frame affine (the clip's
    ``inverse`` by default)."""
    inverses = clip["inverse"] if inverses is None else inverses
    shape = (int(clip["shape"][0]), int(clip["shape"][1]))
    hit = shown = true = 0
    for index in range(int(clip["frames"])):
        region = np.zeros(shape, bool)
        for row in np.flatnonzero(clip["frame"] == index):
            if masks[int(row)].any():
                region |= to_frame(masks[int(row)], inverses[row], shape)
        hit += int((region & truth[index]).sum())
        shown += int(region.sum())
        true += int(truth[index].sum())
    flagged = sum(bool(m.any()) for m in masks)
    return {
        "precision": hit / shown if shown else 1.0,
        "recall": hit / true if true else 1.0,
        "iou": hit / (shown + true - hit) if shown + true - hit else 1.0,
        "painted_flagged": flagged / len(masks) if masks else 0.0,
    }


def paint_run(
    clean_path: Path, number: int, tag: str, frames: int, cache: Path
) -> tuple[str, Path, Path]:
    """The occluder kind of the ``number``-th clip (``KINDS`` in turn), its painted copy and
    truth masks in ``cache`` (painted now unless cached)."""
    kind = KINDS[number % len(KINDS)]
    truth_file = cache / f"{tag}.{kind}.truth.npy"
    masked_file = cache / f"{tag}.{kind}.mp4"
    if not truth_file.is_file():
        masked = make_masked_clip(
            clean_path, masked_file, seed=number, max_frames=frames, shapes=occluder_shapes(kind)
        )
        np.save(truth_file, np.stack([masked.truth[i] for i in range(len(masked.truth))]))
    return kind, masked_file, truth_file


def run_tag(source: Path, side: int) -> str:
    """The cache name of ``source`` at ``side`` (0: native size)."""
    return f"{source.parent.name}_{source.stem}_s{side or 'native'}"


def prepare(
    clips: Sequence[Path],
    sizes: Sequence[int],
    frames: int,
    cache: Path,
    paint: bool,
    clean_alignment: bool = False,
) -> list[dict[str, Any]]:
    """Every clip at every size: its cached clean analysis and, with ``paint``, the painted
    clip's analysis and truth (and, with ``clean_alignment``, the painted frames cropped with
    the clean clip's affines, ``crop_like``)."""
    cache.mkdir(parents=True, exist_ok=True)
    items: list[dict[str, Any]] = []
    for number, source in enumerate(clips):
        for side in sizes:
            tag = run_tag(source, side)
            clean_path = resized_copy(source, cache / f"{tag}.mp4", side, frames)
            item: dict[str, Any] = {
                "name": f"{source.parent.name}/{source.name} @{side or 'native'}",
                "clean": {
                    **analyse_clip(clean_path, frames, cache / f"{tag}.clean.npz"),
                    "video": str(clean_path),
                },
            }
            if paint:
                kind, masked_file, truth_file = paint_run(clean_path, number, tag, frames, cache)
                item["kind"] = kind
                item["truth"] = np.load(truth_file)
                item["painted"] = {
                    **analyse_clip(masked_file, frames, cache / f"{tag}.{kind}.npz"),
                    "video": str(masked_file),
                }
                if clean_alignment:
                    item["painted_clean_alignment"] = crop_like(item["clean"], masked_file)
            items.append(item)
            print(f"prepared {item['name']}", file=sys.stderr, flush=True)
    return items


def evaluate(
    items: Sequence[dict[str, Any]], options: MaskDetectOptions, dump: Path | None = None
) -> dict[str, Any]:
    """Per clip and pooled numbers of one detector configuration."""
    rows: dict[str, Any] = {}
    flagged_crops: list[npt.NDArray[np.uint8]] = []
    flagged_rows: list[dict[str, Any]] = []
    for item in items:
        clean = item["clean"]
        masks, _ = run_detector(clean, options)
        flags = [bool(m.any()) for m in masks]
        row: dict[str, Any] = {
            "clean_faces": len(flags),
            "clean_flagged": sum(flags) / len(flags) if flags else 0.0,
        }
        for index, flag in enumerate(flags):
            if flag:
                flagged_crops.append(clean["crops"][index])
                flagged_rows.append({"clip": item["name"], "frame": int(clean["frame"][index])})
        if "painted" in item:
            painted_masks, used = run_detector(item["painted"], options)
            row["kind"] = item["kind"]
            row.update(score_painted(item["painted"], painted_masks, item["truth"], used))
        if "painted_clean_alignment" in item:
            ideal = item["painted_clean_alignment"]
            ideal_masks, _ = run_detector(ideal, options)
            scores = score_painted(ideal, ideal_masks, item["truth"])
            row.update({f"{k}_clean_alignment": scores[k] for k in ("precision", "recall", "iou")})
        rows[item["name"]] = row
    keys = (
        "clean_flagged",
        "precision",
        "recall",
        "iou",
        "painted_flagged",
        "precision_clean_alignment",
        "recall_clean_alignment",
        "iou_clean_alignment",
    )
    pooled: dict[str, Any] = {
        k: statistics.fmean(r[k] for r in rows.values() if k in r)
        for k in keys
        if any(k in r for r in rows.values())
    }
    faces = sum(r["clean_faces"] for r in rows.values())
    pooled["clean_flagged_pooled"] = len(flagged_crops) / faces if faces else 0.0
    pooled["clips_with_false_flags"] = sum(r["clean_flagged"] > 0 for r in rows.values())
    for kind in KINDS:
        of_kind = [r for r in rows.values() if r.get("kind") == kind]
        if of_kind:
            pooled[f"recall_{kind}"] = statistics.fmean(r["recall"] for r in of_kind)
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
        empty = np.zeros((0, 256, 256, 3), np.uint8)
        np.save(dump / "flagged.npy", np.stack(flagged_crops) if flagged_crops else empty)
        (dump / "flagged.json").write_text(json.dumps(flagged_rows))
    return {"mean": pooled, "clips": rows}


def _expand(patterns: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        paths.extend(Path(p) for p in sorted(glob.glob(pattern, recursive=True)))  # noqa: PTH207
    return paths


def main(argv: list[str] | None = None) -> int:
    """Run and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", nargs="+", required=True, help="paths or globs")
    parser.add_argument("--sizes", default="0", help="0 = native, else re-encoded side px")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--no-paint", action="store_true", help="clean clips only")
    parser.add_argument("--weights", nargs="*", type=Path, default=[], help=".onnx files")
    parser.add_argument("--set", nargs="*", default=[], help="MaskDetectOptions KEY=VALUE")
    parser.add_argument(
        "--clean-alignment",
        action="store_true",
        help="also score the painted frames cropped where the clean clip's faces were aligned",
    )
    parser.add_argument("--dump-flagged", type=Path)
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args(argv)
    clips = _expand(args.clips)
    if not clips:
        print("no clips", file=sys.stderr)
        return 1
    sizes = [int(s) for s in args.sizes.split(",")]
    items = prepare(clips, sizes, args.frames, args.cache, not args.no_paint, args.clean_alignment)
    base = override_fields(MaskDetectOptions(), args.set)
    report: dict[str, Any] = {"frames": args.frames, "sizes": sizes, "options": args.set}
    for weights in args.weights or [None]:
        options = dataclasses.replace(base, weights=weights)
        name = str(weights) if weights is not None else "shipped"
        dump = None
        if args.dump_flagged is not None:
            dump = args.dump_flagged / (weights.stem if weights is not None else "shipped")
        report[name] = evaluate(items, options, dump)
        print(name, json.dumps(report[name]["mean"]), file=sys.stderr, flush=True)
    text = json.dumps(report, indent=1)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
