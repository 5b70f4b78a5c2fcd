"""Calibrate and measure the fill guard (``stream.guard``) on real faces of unseen people.

Faces: UTKFace and 3d.sk crops (``faces/eval_only``) and frames of the LRS2/LRS3/MEAD clips
(``talking_heads/eval_only``), detected with YuNet and aligned to the 256 crop as the
pipeline does. Each face gets one seeded hole shaped like what the pipeline restores: a
face mask (surgical, cloth, N95, KN95) grown by ``HOLE_DILATE_PX`` (60%), the paper's box
(the default ``--mask-box``, 20%), or a hand, object, scribble or stroke from the occluder
mixture (20%). The input crop's hole is painted mid-grey: no fill sees the ground truth.

Good fills (should pass): the real face itself (``truth``: a perfect fill), the shipped
``lite`` network as the pipeline runs it (onnxruntime, Poisson-blended, neutral speaker:
the stills have no voice), OpenCV Telea and Navier-Stokes. The lite rate is not meant to be
1: on unseen faces some lite fills are broken, which is what the guard is for.
Broken fills (should fail), made from the lite fill unless said otherwise: 1-3 soft dark
ellipses pasted in (8-25 px half-axes, 35-70% darker; ``blotch``, and ``blotch_telea`` on
the Telea fill), a tint of 12-30 Lab units in a random (a, b) direction, brightness x0.65
or x1.4, the hole filled from another person's aligned face, uniform noise, Gaussian noise
(sigma 25) added to the fill, and the network with corrupted weights (``CORRUPTION``:
shuffled entries, or overflowing to NaN) and zeroed weights without blending.
Reported, counted in neither rate: lite without blending (``--no-blend``), another person's
face Poisson-blended in (the blend gives it the face's colour: a plausible face), and the
zeroed network blended (a constant fill, which the blend turns into a smooth Telea-like
membrane: not broken).

Prints one JSON object: per source, the pass rate of each good fill and the catch rate of
each broken fill; the distribution of every score per fill kind (how the limits in
``GuardOptions`` were chosen: about the 97-99th percentile of the real faces'); PSNR
against the real face of the lite fills the guard passed and failed, with Telea's on the
same faces; and the cost per face of the guard, the safe fill and the network, interleaved.

    python -m bench.guard [--data ../shared/data] [--faces 240] [--cache /tmp/guard.npz]
                          [--sheet failed.png]

The slow part (detection, the network with each set of weights) is cached in ``--cache``;
re-running with other limits then takes a few minutes. Run it with ``-m`` (see
``bench/restore_video.py``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np
import numpy.typing as npt

from stream.guard import GuardOptions, GuardVerdict, check_fill, safe_fill
from stream.types import Image, Mask

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PAPER_BOX = (64, 89, 128, 128)  # x, y, w, h: the default --mask-box
HOLE_DILATE_PX = 3
"""Face-mask holes are grown by this much, as ``--mask-detect`` grew its masks when the
limits were calibrated (it has since stopped growing them by default: ``--mask-dilate-px``)."""
GOOD = ("truth", "lite", "telea", "ns")
BROKEN = (
    "blotch",
    "blotch_telea",
    "tint",
    "brightness",
    "other_face",
    "noise",
    "noisy_fill",
    "corrupt",
    "corrupt_full",
    "corrupt_nan",
    "zeroed_noblend",
)
INFORMATIONAL = ("lite_noblend", "other_face_blended", "zeroed")
NETWORK_FILLS = {
    # cache key: (weights, Poisson blend)
    "lite": ("shipped", True),
    "lite_noblend": ("shipped", False),
    "corrupt": ("corrupt", True),
    "corrupt_full": ("corrupt_full", True),
    "corrupt_nan": ("corrupt_nan", True),
    "zeroed": ("zeroed", True),
    "zeroed_noblend": ("zeroed", False),
}
CORRUPTION = {
    "corrupt": ("shuffle", 0.1),
    "corrupt_full": ("shuffle", 1.0),
    "corrupt_nan": ("noise", 1.0),
}
"""How each corrupted network is made: ``shuffle`` permutes that fraction of the entries of
every weight tensor (10%: blotchy, checkered, grainy faces; all: a noise texture),
``noise`` adds Gaussian noise of that many times each tensor's std (up to 0.15 the network
draws much what it drew before; from 0.2 its activations overflow and every output is NaN,
written as 0)."""


# --- faces ---------------------------------------------------------------------------------


def _still_crops(paths: list[Path]) -> Iterator[tuple[str, Image]]:
    from stream.align import align_face
    from stream.detect import DetectorOptions, FaceDetector

    detector = FaceDetector(DetectorOptions(min_face_px=20))
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            continue
        # UTKFace crops are tight: pad so YuNet sees the whole head.
        pad = image.shape[0] // 4
        padded = np.asarray(
            cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE), np.uint8
        )
        faces = detector.detect(padded)
        if faces:
            yield path.stem, align_face(padded, faces[0].landmarks5).crop


def _clip_crops(path: Path, frames: int) -> Iterator[tuple[str, Image]]:
    from stream.media import VideoReader
    from stream.restore import FaceAnalyser

    analyser = FaceAnalyser()
    decoded = list(VideoReader(path))
    wanted = {round(i) for i in np.linspace(5, len(decoded) - 1, frames)}
    for frame in decoded:
        work = analyser.analyse(frame)
        if frame.index in wanted and work.faces:
            yield f"{path.stem}#{frame.index}", work.faces[0].aligned.crop


def collect_faces(data: Path, count: int, seed: int) -> list[tuple[str, str, Image]]:
    """(source, name, aligned crop) for about ``count`` real faces: 45% UTKFace, 15% 3d.sk,
    40% talking-head frames (4 per clip)."""
    rng = np.random.default_rng(seed)
    utk = sorted((data / "faces/eval_only/utkface").glob("*.jpg"))
    sk = sorted((data / "faces/eval_only/3dsk").glob("*.jpg"))
    clips = sorted((data / "talking_heads/eval_only").glob("*/*.mp4"))
    n_utk, n_sk = int(count * 0.45), int(count * 0.15)
    picks_utk = [utk[i] for i in rng.choice(len(utk), min(n_utk, len(utk)), replace=False)]
    picks_sk = [sk[i] for i in rng.choice(len(sk), min(n_sk, len(sk)), replace=False)]
    per_clip = max(1, round(count * 0.4 / max(1, len(clips))))
    faces = [("utkface", n, c) for n, c in _still_crops(picks_utk)]
    faces += [("3dsk", n, c) for n, c in _still_crops(picks_sk)]
    for clip in clips:
        faces += [("talking_heads", n, c) for n, c in _clip_crops(clip, per_clip)]
    return faces


def make_hole(rng: np.random.Generator) -> Mask:
    """One hole of the mixture described in the module docstring, 256x256 float32 {0, 1}."""
    from training.masks import FaceMaskShape, default_occluder_mixture

    pick = rng.random()
    if pick < 0.6:
        mask = FaceMaskShape()(rng)
        size = 2 * HOLE_DILATE_PX + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        return np.asarray(cv2.dilate(mask.astype(np.uint8), kernel), np.float32)
    if pick < 0.8:
        mask = np.zeros((256, 256), np.float32)
        x, y, w, h = PAPER_BOX
        mask[y : y + h, x : x + w] = 1.0
        return mask
    return np.asarray(default_occluder_mixture()(rng) > 0.5, np.float32)


# --- fills ---------------------------------------------------------------------------------


def _model_fills(
    crops: list[Image], masks: list[Mask], weights: str, blend: bool, seed: int
) -> list[Image]:
    """The network's fills (neutral speaker), ``weights``: shipped, zeroed or a key of
    ``CORRUPTION``."""
    import torch

    from avinpaint.checkpoint import load
    from engines.backends import BackendOptions, select_backend
    from stream.model_inpainter import ModelInpainter

    model = load("lite")
    if weights != "shipped":
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if not tensor.is_floating_point() or tensor.numel() < 2 or "running" in name:
                    continue
                if weights == "zeroed":
                    tensor.zero_()
                    continue
                how, amount = CORRUPTION[weights]
                flat = tensor.view(-1)
                if how == "noise":
                    noise = torch.randn(flat.shape, generator=generator)
                    flat.add_(noise * float(flat.std()) * amount)
                else:
                    count = max(2, int(amount * flat.numel()))
                    picked = torch.randperm(flat.numel(), generator=generator)[:count]
                    flat[picked] = flat[picked[torch.randperm(count, generator=generator)]]
    preference = "onnxruntime" if weights == "shipped" else "torch"
    backend = select_backend(preference, model, BackendOptions(threads=1)).backend
    with ModelInpainter(backend, blend="always" if blend else "never", guard=None) as inpainter:
        fills: list[Image] = []
        for start in range(0, len(crops), 8):
            batch = inpainter.inpaint(crops[start : start + 8], masks[start : start + 8])
            fills += [r.face_256 for r in batch]
    return fills


def build_cache(data: Path, count: int, seed: int, cache: dict[str, Any]) -> dict[str, Any]:
    """Faces, holes and every network fill (the slow part); fills ``cache`` where it lacks
    them."""
    if "crop" not in cache:
        faces = collect_faces(data, count, seed)
        rng = np.random.default_rng(seed + 1)
        masks = [make_hole(rng) for _ in faces]
        truths = [c for _, _, c in faces]
        crops = [
            np.where(m[..., None] > 0.5, 127, c).astype(np.uint8)
            for c, m in zip(truths, masks, strict=True)
        ]
        cache["source"] = np.array([s for s, _, _ in faces])
        cache["name"] = np.array([n for _, n, _ in faces])
        cache["truth"], cache["crop"], cache["mask"] = (
            np.stack(truths),
            np.stack(crops),
            np.stack(masks),
        )
    for key, (weights, blend) in NETWORK_FILLS.items():
        if key not in cache:
            started = time.perf_counter()
            fills = _model_fills(list(cache["crop"]), list(cache["mask"]), weights, blend, seed)
            cache[key] = np.stack(fills)
            print(f"{key}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return cache


def _hole(mask: Mask) -> npt.NDArray[np.bool_]:
    return np.asarray(mask > 0.5)


def _paste(base: Image, content: Image, mask: Mask) -> Image:
    return np.where(_hole(mask)[..., None], content, base).astype(np.uint8)


def _blotch(fill: Image, mask: Mask, rng: np.random.Generator) -> Image:
    """1-3 soft dark ellipses (35-70% darker) centred inside the hole's face part."""
    from stream.mask_detect import face_region

    inside = np.argwhere(_hole(mask) & face_region())
    if len(inside) == 0:
        inside = np.argwhere(_hole(mask))
    shade = np.zeros(mask.shape, np.float32)
    for _ in range(int(rng.integers(1, 4))):
        y, x = inside[int(rng.integers(len(inside)))]
        axes = (int(rng.integers(8, 26)), int(rng.integers(8, 26)))
        blob = np.zeros(mask.shape, np.float32)
        cv2.ellipse(blob, (int(x), int(y)), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        shade = np.maximum(shade, cv2.GaussianBlur(blob, (0, 0), 3.0) * rng.uniform(0.35, 0.7))
    shade *= _hole(mask)
    return np.clip(fill * (1.0 - shade[..., None]), 0, 255).astype(np.uint8)


def _tint(fill: Image, mask: Mask, rng: np.random.Generator) -> Image:
    lab = cv2.cvtColor(fill, cv2.COLOR_BGR2Lab).astype(np.float32)
    angle, size = rng.uniform(0, 2 * np.pi), rng.uniform(12, 30)
    lab[..., 1] += size * np.cos(angle)
    lab[..., 2] += size * np.sin(angle)
    tinted = np.asarray(
        cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_Lab2BGR), np.uint8
    )
    return _paste(fill, tinted, mask)


def _brightness(fill: Image, mask: Mask, rng: np.random.Generator) -> Image:
    factor = 0.65 if rng.random() < 0.5 else 1.4
    return _paste(fill, np.clip(fill * factor, 0, 255).astype(np.uint8), mask)


def broken_fills(cache: dict[str, Any], telea: list[Image], seed: int) -> dict[str, list[Image]]:
    """Every broken (and informational) fill of the module docstring, per face."""
    from stream.blend import poisson_blend

    rng = np.random.default_rng(seed + 2)
    lite, crops, masks, truths = cache["lite"], cache["crop"], cache["mask"], cache["truth"]
    n = len(crops)
    other = [(i + 1 + int(rng.integers(n - 1))) % n for i in range(n)]
    out: dict[str, list[Image]] = {k: [] for k in BROKEN + INFORMATIONAL}
    for i in range(n):
        fill, crop, mask = lite[i], crops[i], masks[i]
        out["blotch"].append(_blotch(fill, mask, rng))
        out["blotch_telea"].append(_blotch(telea[i], mask, rng))
        out["tint"].append(_tint(fill, mask, rng))
        out["brightness"].append(_brightness(fill, mask, rng))
        donor = _paste(crop, truths[other[i]], mask)
        out["other_face"].append(donor)
        out["other_face_blended"].append(poisson_blend(donor, crop, mask))
        noise = rng.integers(0, 256, crop.shape, dtype=np.uint8)
        out["noise"].append(_paste(crop, noise, mask))
        noisy = np.clip(fill + rng.normal(0, 25, fill.shape), 0, 255).astype(np.uint8)
        out["noisy_fill"].append(_paste(fill, noisy, mask))
        for key in NETWORK_FILLS.keys() - {"lite"}:
            out[key].append(cache[key][i])
    return out


def good_fills(cache: dict[str, Any]) -> dict[str, list[Image]]:
    """The real face itself (a perfect fill), the lite fills, and Telea / Navier-Stokes of
    the same holes."""
    from stream.inpaint import OpenCVInpainter, OpenCVMethod

    fills: dict[str, list[Image]] = {"truth": list(cache["truth"]), "lite": list(cache["lite"])}
    methods: tuple[OpenCVMethod, ...] = ("telea", "ns")
    for method in methods:
        inpainter = OpenCVInpainter(method)
        fills[method] = [
            inpainter.inpaint([c], [m])[0].face_256
            for c, m in zip(cache["crop"], cache["mask"], strict=True)
        ]
    return fills


def _psnr(a: Image, b: Image, mask: Mask) -> float:
    diff = (a.astype(np.float64) - b)[_hole(mask)]
    mse = float(np.mean(diff**2)) if diff.size else 0.0
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, np.float64)
    qs = (0, 1, 5, 50, 95, 99, 100)
    return {f"p{q}": round(float(np.percentile(arr, q)), 4) for q in qs}


def _time_ms(job: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        job()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def evaluate(
    cache: dict[str, Any], options: GuardOptions, seed: int, sheet: Path | None = None
) -> dict[str, Any]:
    """Pass rates, catch rates, score distributions, PSNR split and cost (the JSON)."""
    crops, masks, truths, sources = cache["crop"], cache["mask"], cache["truth"], cache["source"]
    good = good_fills(cache)
    fills = {**good, **broken_fills(cache, good["telea"], seed)}
    verdicts = {
        kind: [check_fill(c, m, f, options) for c, m, f in zip(crops, masks, made, strict=True)]
        for kind, made in fills.items()
    }
    judged = [bool(v.scores) for v in verdicts["lite"]]
    result: dict[str, Any] = {
        "faces": len(crops),
        "faces_per_source": {s: int((sources == s).sum()) for s in sorted(set(sources))},
        "faces_judged": int(sum(judged)),
        "options": {f.name: getattr(options, f.name) for f in fields(options)},
    }
    per_source: dict[str, dict[str, float]] = {}
    for source in ["all", *sorted(set(sources))]:
        pick = [source in ("all", s) for s in sources]
        row: dict[str, float] = {}
        for kind, made in verdicts.items():
            chosen = [v for v, p in zip(made, pick, strict=True) if p]
            rate = sum(v.passed for v in chosen) / max(1, len(chosen))
            key = f"pass_{kind}" if kind in GOOD or kind in INFORMATIONAL else f"catch_{kind}"
            row[key] = round(rate if key.startswith("pass") else 1 - rate, 4)
        per_source[source] = row
    result["rates"] = per_source
    broken = [v for k in BROKEN for v in verdicts[k]]
    result["catch_all_broken"] = round(1 - sum(v.passed for v in broken) / len(broken), 4)
    result["scores"] = {
        kind: {
            name: _summary([v.scores[name] for v in made if v.scores]) for name in options.limits()
        }
        for kind, made in verdicts.items()
    }
    lite_psnr = [_psnr(f, t, m) for f, t, m in zip(fills["lite"], truths, masks, strict=True)]
    telea_psnr = [_psnr(f, t, m) for f, t, m in zip(fills["telea"], truths, masks, strict=True)]
    failed = [i for i, v in enumerate(verdicts["lite"]) if not v.passed]
    passed = [i for i, v in enumerate(verdicts["lite"]) if v.passed]
    result["lite_psnr_db"] = {
        "passed_lite": _mean([lite_psnr[i] for i in passed]),
        "passed_telea": _mean([telea_psnr[i] for i in passed]),
        "failed_lite": _mean([lite_psnr[i] for i in failed]),
        "failed_telea": _mean([telea_psnr[i] for i in failed]),
        "failed": [
            {
                "name": str(cache["name"][i]),
                "reason": verdicts["lite"][i].reason,
                "lite_db": round(lite_psnr[i], 2),
                "telea_db": round(telea_psnr[i], 2),
            }
            for i in failed
        ],
    }
    result["cost_ms_per_face"] = cost(crops, masks, fills["lite"])
    if sheet is not None:
        _write_sheet(sheet, failed, fills, verdicts["lite"])
    return result


def cost(
    crops: npt.NDArray[np.uint8], masks: npt.NDArray[np.float32], fills: Any
) -> dict[str, float]:
    """Median ms per face of the guard, of the safe fill, and of the network itself (lite on
    onnxruntime, one face per call, Poisson blend included, the guard off), interleaved on 40
    faces so the shared cores' load hits all three alike."""
    from avinpaint.checkpoint import load
    from engines.backends import BackendOptions, select_backend
    from stream.model_inpainter import ModelInpainter

    backend = select_backend("onnxruntime", load("lite"), BackendOptions(threads=1)).backend
    times: dict[str, list[float]] = {"check_fill": [], "safe_fill": [], "lite_inpaint": []}
    picks = list(range(0, len(crops), max(1, len(crops) // 40)))
    with ModelInpainter(backend, guard=None) as model:
        model.inpaint([crops[0]], [masks[0]])  # warm-up
        for _ in range(3):
            for i in picks:
                crop, mask, fill = crops[i], masks[i], fills[i]
                jobs: dict[str, Callable[[], object]] = {
                    "check_fill": functools.partial(check_fill, crop, mask, fill),
                    "safe_fill": functools.partial(safe_fill, crop, mask),
                    "lite_inpaint": functools.partial(model.inpaint, [crop], [mask]),
                }
                for name, job in jobs.items():
                    times[name].append(_time_ms(job, 1))
    return {name: round(statistics.median(ms), 3) for name, ms in times.items()}


def _write_sheet(
    path: Path, failed: list[int], fills: dict[str, list[Image]], verdicts: list[GuardVerdict]
) -> None:
    """The lite fills the guard failed beside the Telea fill that replaces them, with the
    reason, 4 pairs a row (at most 32)."""
    tiles = []
    for i in failed[:32]:
        pair = np.hstack([fills["lite"][i], fills["telea"][i]])
        for row, text in enumerate([str(i), *verdicts[i].reason.split("; ")]):
            cv2.putText(
                pair, text, (3, 12 + 12 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 255, 255), 1
            )
        tiles.append(pair)
    if not tiles:
        return
    while len(tiles) % 4:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[r : r + 4]) for r in range(0, len(tiles), 4)]
    cv2.imwrite(str(path), np.vstack(rows))


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 2) if values else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--faces", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="npz of faces and net fills")
    parser.add_argument("--sheet", type=Path, default=None, help="PNG of the failed lite fills")
    args = parser.parse_args(argv)
    cache: dict[str, Any] = {}
    if args.cache is not None and args.cache.is_file():
        with np.load(args.cache) as loaded:
            cache = {k: loaded[k] for k in loaded.files}
    missing = "crop" not in cache or any(k not in cache for k in NETWORK_FILLS)
    cache = build_cache(args.data, args.faces, args.seed, cache)
    if args.cache is not None and missing:
        np.savez(args.cache, **cache)
    result = evaluate(cache, GuardOptions(), args.seed, args.sheet)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
