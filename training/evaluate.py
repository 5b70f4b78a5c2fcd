"""``python -m training eval`` (``avstream eval``): the model against the baselines.

On the held-out identities of a prepared dataset (the ``test`` split: no identity in it was
trained on), every face that has its person's speech gets one seeded hole mask, and the same
(face, mask) pairs are restored by:

- ``telea`` and ``ns``: OpenCV's inpainting (``stream.inpaint.OpenCVInpainter``);
- ``ours_true``: the model with the person's own speech (the first segment of that identity
  in sorted order, as the official ``test.py`` takes the first audio file);
- ``ours_swapped``: the model with another held-out person's speech (the next identity in
  sorted order, cyclically);
- ``ours_no_audio``: the model with the zero "no audio" speaker input;
- ``masked_input``: no restoration at all (the hole left grey): the floor every method
  starts from.

Metrics (``training.metrics``) compare each result with the ground-truth crop: PSNR, SSIM,
L1 (whole crop and hole only), the SFace identity distance (1 - cosine of psi embeddings),
retrieval Acc@1/5/10 against every identity of the split, and with the ``eval`` extra dlib's
descriptor distance and 68-landmark distance. Written to the output folder: ``report.md``,
``report.json`` (means and per-face values) and ``grid.png`` (masked input | Telea | NS |
ours (true audio) | ours (swapped) | ground truth).
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from avinpaint.checkpoint import load as load_generator
from avinpaint.model import Generator
from stream.blend import BlendMode
from stream.errors import UsageError
from stream.guard import DEFAULT_GUARD
from stream.inpaint import OpenCVInpainter
from stream.model_inpainter import finish_fill
from training.config import HoleKind
from training.data import (
    DatasetIndex,
    ImageU8,
    Mask,
    SpeakerInputs,
    bgr_to_tensor,
    ensure_ge2e_cache,
    hole_generator,
    image_grid,
    read_crop,
    tensor_to_bgr,
)
from training.manifest import Split, write_text_atomic
from training.metrics import (
    DlibFace,
    DlibMeasure,
    cosine_distance_np,
    descriptor_distance,
    dlib_available,
    l1,
    l1_in_mask,
    landmark_distance,
    psnr,
    retrieval_accuracy,
    ssim,
)
from training.prepare import sface_psi
from training.trainer import resolve_device

log = logging.getLogger(__name__)

METHODS = ("masked_input", "telea", "ns", "ours_true", "ours_swapped", "ours_no_audio")
LABELS = {
    "masked_input": "masked input (no restoration)",
    "telea": "OpenCV Telea",
    "ns": "OpenCV Navier-Stokes",
    "ours_true": "ours, true speaker's audio",
    "ours_swapped": "ours, another speaker's audio",
    "ours_no_audio": "ours, no audio",
}
GRID_COLUMNS = (
    ("masked input", "masked_input"),
    ("Telea", "telea"),
    ("NS", "ns"),
    ("ours (true audio)", "ours_true"),
    ("ours (swapped)", "ours_swapped"),
    ("ground truth", "ground_truth"),
)
RETRIEVAL_KS = (1, 5, 10)
HOLE_GREY = 128  # the generator's 0 in [-1, 1] is mid-grey
People = Literal["with_speech", "all"]


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate and where to write it.

    ``model`` is a generator checkpoint path (or a shipped preset name); ``people``: the
    identities of the split with their own speech (``with_speech``, the default: the
    talking heads, a handful of people), or every identity of the split (``all``: the
    photo people too, hundreds of strangers; a face without its person's speech gets the
    zero speaker input as its "true" voice, and the own-voice comparison counts only the
    faces with it); ``max_faces`` 0 takes every face, otherwise faces are taken round-robin
    over identities (so with ``all`` the first faces are as many different people); ``dlib`` "auto"
    uses the ``eval`` extra when it is installed; ``blend`` and ``guard`` finish the model's
    fills as the video pipeline does (``stream.model_inpainter.finish_fill``: ``auto`` keeps
    a fill as drawn unless the fill guard fails it, then Poisson-blends it; ``guard`` off
    scores every fill as finished, with no safe fallback). Before 2026-12-05 (9th session)
    every fill was blended and none guarded: ``blend="always", guard=False``."""

    dataset: Path
    model: str
    output: Path
    split: Split = "test"
    people: People = "with_speech"
    holes: HoleKind = "mixture"
    seed: int = 0
    max_faces: int = 0
    batch_size: int = 8
    grid_rows: int = 8
    dlib: Literal["auto", "on", "off"] = "auto"
    device: str = "cpu"
    progress: bool = True
    blend: BlendMode = "auto"
    guard: bool = True


@dataclass(frozen=True)
class EvalFace:
    """One evaluated face: its crop, identity, mask and the speech segments it is given
    (``true_audio`` None: its person has no speech; the zero speaker input stands in)."""

    crop_index: int
    identity: str
    mask: Mask
    true_audio: int | None
    swapped_audio: int
    swapped_identity: str


@dataclass(frozen=True)
class EvalReport:
    """The numbers of ``report.json`` and where the files are."""

    means: dict[str, dict[str, float | None]]
    faces: int
    identities: int
    report_md: Path
    report_json: Path
    grid_png: Path
    seconds: float


def select_faces(index: DatasetIndex, options: EvalOptions) -> list[EvalFace]:
    """The faces of the split (of the identities with speech, or of all: ``people``),
    each with its seeded mask and its true and swapped speech segments."""
    speaking = index.paired_identities(options.split)
    if len(speaking) < 2:
        raise UsageError(
            f"the {options.split} split has {len(speaking)} identities with both faces and "
            "speech; the evaluation needs at least 2 (true vs swapped audio)"
        )
    audio = index.audio_by_identity(options.split)
    first_audio = {name: min(audio[name], key=lambda i: index.audio[i].audio) for name in speaking}
    by_identity: dict[str, list[int]] = defaultdict(list)  # each in manifest order
    for i in index.crop_indices(options.split):
        by_identity[index.crops[i].identity].append(i)
    identities = sorted(by_identity) if options.people == "all" else speaking
    order = _round_robin([by_identity[name] for name in identities])
    if options.max_faces:
        order = order[: options.max_faces]
    holes = hole_generator(options.holes)
    faces = []
    for n, crop_index in enumerate(order):
        name = index.crops[crop_index].identity
        # The next speaking identity after this one, in sorted order, cyclically.
        other = speaking[bisect.bisect_right(speaking, name) % len(speaking)]
        rng = np.random.default_rng([options.seed, n])
        faces.append(
            EvalFace(
                crop_index=crop_index,
                identity=name,
                mask=holes(rng),
                true_audio=first_audio.get(name),
                swapped_audio=first_audio[other],
                swapped_identity=other,
            )
        )
    return faces


def _round_robin(groups: Sequence[Sequence[int]]) -> list[int]:
    out: list[int] = []
    for k in range(max((len(g) for g in groups), default=0)):
        out.extend(g[k] for g in groups if k < len(g))
    return out


def _masked_view(crop: ImageU8, mask: Mask) -> ImageU8:
    hole = (mask > 0.5)[:, :, None]
    return np.where(hole, np.uint8(HOLE_GREY), crop).astype(np.uint8)


def _run_model(
    model: Generator,
    crops: Sequence[ImageU8],
    masks: Sequence[Mask],
    speaker: npt.NDArray[np.float32],
    device: torch.device,
    blend: BlendMode,
    guard: bool,
) -> list[ImageU8]:
    face = torch.stack([bgr_to_tensor(c) for c in crops]).to(device)
    mask = torch.from_numpy(np.stack(masks)[:, None]).to(device)
    with torch.no_grad():
        out = model(face, mask, torch.from_numpy(speaker).to(device))
    fills = list(tensor_to_bgr(out.inpainted))
    judge = DEFAULT_GUARD if guard else None
    # Neither the blend nor the guard reads the crop's hole pixels (here the ground truth).
    return [
        finish_fill(f, c, m, blend, judge).face for f, c, m in zip(fills, crops, masks, strict=True)
    ]


def restore_all(
    model: Generator,
    index: DatasetIndex,
    faces: Sequence[EvalFace],
    speakers: SpeakerInputs,
    options: EvalOptions,
    device: torch.device,
) -> dict[str, list[ImageU8]]:
    """Every method's result for every face (uint8 BGR crops), plus ``ground_truth``."""
    results: dict[str, list[ImageU8]] = {name: [] for name in (*METHODS, "ground_truth")}
    baselines = {"telea": OpenCVInpainter("telea"), "ns": OpenCVInpainter("ns")}
    bar = tqdm(total=len(faces), desc="restoring", disable=not options.progress)
    for start in range(0, len(faces), options.batch_size):
        chunk = faces[start : start + options.batch_size]
        crops = [read_crop(index.root / index.crops[f.crop_index].image) for f in chunk]
        masks = [f.mask for f in chunk]
        results["ground_truth"].extend(crops)
        results["masked_input"].extend(
            _masked_view(c, m) for c, m in zip(crops, masks, strict=True)
        )
        for name, inpainter in baselines.items():
            results[name].extend(r.face_256 for r in inpainter.inpaint(crops, masks))
        inputs = {
            "ours_true": np.stack(
                [
                    speakers.zero() if f.true_audio is None else speakers.of(f.true_audio)
                    for f in chunk
                ]
            ),
            "ours_swapped": np.stack([speakers.of(f.swapped_audio) for f in chunk]),
            "ours_no_audio": np.stack([speakers.zero() for _ in chunk]),
        }
        for name, speaker in inputs.items():
            results[name].extend(
                _run_model(model, crops, masks, speaker, device, options.blend, options.guard)
            )
        bar.update(len(chunk))
    bar.close()
    return results


def measure(
    results: dict[str, list[ImageU8]],
    faces: Sequence[EvalFace],
    index: DatasetIndex,
    options: EvalOptions,
) -> dict[str, dict[str, list[float]]]:
    """Per-face values of every metric for every method."""
    truth = results["ground_truth"]
    psi = sface_psi().embed
    per_face: dict[str, dict[str, list[float]]] = {name: {} for name in METHODS}
    for name in METHODS:
        images = results[name]
        per_face[name]["psnr"] = [psnr(a, b) for a, b in zip(images, truth, strict=True)]
        per_face[name]["ssim"] = [ssim(a, b) for a, b in zip(images, truth, strict=True)]
        per_face[name]["l1"] = [l1(a, b) for a, b in zip(images, truth, strict=True)]
        per_face[name]["l1_hole"] = [
            l1_in_mask(a, b, f.mask) for a, b, f in zip(images, truth, faces, strict=True)
        ]

    # Identity: psi (SFace) on every result, and a gallery of every crop of the split.
    gallery_ids = index.crop_indices(options.split)
    gallery = _embed(psi, [read_crop(index.root / index.crops[i].image) for i in gallery_ids])
    gallery_labels = [index.crops[i].identity for i in gallery_ids]
    own_rows = [gallery_ids.index(f.crop_index) for f in faces]
    truth_embeddings = gallery[own_rows]
    labels = [f.identity for f in faces]
    accuracy: dict[str, dict[int, float]] = {}
    for name in METHODS:
        embeddings = _embed(psi, results[name])
        per_face[name]["identity_distance"] = list(cosine_distance_np(embeddings, truth_embeddings))
        accuracy[name] = retrieval_accuracy(
            embeddings, labels, gallery, gallery_labels, own_rows, RETRIEVAL_KS
        )
    for name in METHODS:
        for k in RETRIEVAL_KS:
            # A rate over all faces: stored per method, repeated per face for one layout.
            per_face[name][f"acc@{k}"] = [accuracy[name][k]] * len(faces)

    if _use_dlib(options):
        _measure_dlib(results, per_face, options)
    return per_face


def _embed(psi: Callable[[Any], Any], images: Sequence[ImageU8]) -> npt.NDArray[np.float64]:
    rows = [
        np.asarray(psi(np.stack(images[i : i + 32])), np.float64) for i in range(0, len(images), 32)
    ]
    return np.concatenate(rows) if rows else np.zeros((0, 128))


def _use_dlib(options: EvalOptions) -> bool:
    if options.dlib == "off":
        return False
    available = dlib_available()
    if options.dlib == "on" and not available:
        raise UsageError("dlib metrics need the eval extra: pip install 'avstream[eval]'")
    return available


def _measure_dlib(
    results: dict[str, list[ImageU8]],
    per_face: dict[str, dict[str, list[float]]],
    options: EvalOptions,
) -> None:
    face = DlibFace()
    truth = results["ground_truth"]
    for name in METHODS:
        per_face[name]["dlib_distance"] = []
        per_face[name]["landmark_distance"] = []
    for i in tqdm(range(len(truth)), desc="dlib", disable=not options.progress):
        box = face.face_box(truth[i])
        reference: DlibMeasure = face.measure(truth[i], box)
        for name in METHODS:
            got = face.measure(results[name][i], box)
            per_face[name]["dlib_distance"].append(descriptor_distance(got, reference))
            per_face[name]["landmark_distance"].append(landmark_distance(got, reference))
    if face.fallbacks:
        log.info("dlib found no face in %d ground truths; used the template box", face.fallbacks)


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def evaluate(options: EvalOptions) -> EvalReport:
    """Restore, measure and write ``report.md``, ``report.json`` and ``grid.png``."""
    started = time.perf_counter()
    device = resolve_device(options.device)
    model = load_generator(options.model, device=device)
    index = DatasetIndex.load(options.dataset)
    ge2e = (
        ensure_ge2e_cache(index, options.progress)
        if model.config.speaker_encoder == "ge2e"
        else None
    )
    speakers = SpeakerInputs(index, model.config, ge2e)
    faces = select_faces(index, options)
    results = restore_all(model, index, faces, speakers, options, device)
    per_face = measure(results, faces, index, options)
    means = {name: {k: _mean(v) for k, v in metrics.items()} for name, metrics in per_face.items()}

    options.output.mkdir(parents=True, exist_ok=True)
    grid_png = options.output / "grid.png"
    rows = list(range(min(options.grid_rows, len(faces))))
    grid = image_grid(
        [(title, np.stack([results[key][i] for i in rows])) for title, key in GRID_COLUMNS]
    )
    cv2.imwrite(str(grid_png), grid)

    swap = _swap_summary(per_face, [f.true_audio is not None for f in faces])
    seconds = time.perf_counter() - started
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}
    identities = sorted({f.identity for f in faces})
    document = {
        "settings": settings,
        "model_config": model.config.to_dict(),
        "faces": len(faces),
        "identities": identities,
        "faces_with_own_speech": sum(f.true_audio is not None for f in faces),
        "gallery_identities": len(
            {index.crops[i].identity for i in index.crop_indices(options.split)}
        ),
        "means": means,
        "swap": swap,
        "per_face": {
            "crop": [index.crops[f.crop_index].image for f in faces],
            "identity": [f.identity for f in faces],
            "swapped_identity": [f.swapped_identity for f in faces],
            "metrics": per_face,
        },
        "seconds": round(seconds, 1),
    }
    report_json = options.output / "report.json"
    write_text_atomic(report_json, json.dumps(_json_safe(document), indent=1) + "\n")
    report_md = options.output / "report.md"
    write_text_atomic(report_md, render_markdown(document))
    return EvalReport(
        means=means,
        faces=len(faces),
        identities=len(identities),
        report_md=report_md,
        report_json=report_json,
        grid_png=grid_png,
        seconds=seconds,
    )


def _swap_summary(
    per_face: dict[str, dict[str, list[float]]], own_speech: Sequence[bool]
) -> dict[str, float | None]:
    """Own voice against another's, over the faces whose person has speech."""
    heard = np.asarray(own_speech, bool)
    true = np.array(per_face["ours_true"]["identity_distance"])[heard]
    swapped = np.array(per_face["ours_swapped"]["identity_distance"])[heard]
    return {
        "identity_distance_true": float(true.mean()) if len(true) else None,
        "identity_distance_swapped": float(swapped.mean()) if len(swapped) else None,
        "true_closer_fraction": float(np.mean(true < swapped)) if len(true) else None,
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


COLUMNS = (
    ("psnr", "PSNR ↑", "{:.2f}"),
    ("ssim", "SSIM ↑", "{:.4f}"),
    ("l1", "L1 ↓", "{:.4f}"),
    ("l1_hole", "L1 hole ↓", "{:.4f}"),
    ("identity_distance", "ID dist SFace ↓", "{:.4f}"),
    ("dlib_distance", "dlib dist ↓", "{:.4f}"),
    ("landmark_distance", "LMD px ↓", "{:.2f}"),
    ("acc@1", "Acc@1 ↑", "{:.3f}"),
    ("acc@5", "Acc@5 ↑", "{:.3f}"),
    ("acc@10", "Acc@10 ↑", "{:.3f}"),
)


def _people(document: dict[str, Any]) -> str:
    names: list[str] = document["identities"]
    if document["settings"].get("people", "with_speech") == "with_speech":
        return f"{len(names)} held-out identities with speech ({', '.join(names)})"
    own = document["faces_with_own_speech"]
    return (
        f"{len(names)} held-out identities, all of the split's people ({own} faces with their "
        "person's speech; the others hear the zero speaker input as their own voice)"
    )


def render_markdown(document: dict[str, Any]) -> str:
    """The Markdown report of a ``report.json`` document."""
    settings = document["settings"]
    means: dict[str, dict[str, float | None]] = document["means"]
    lines = [
        "# Evaluation",
        "",
        f"Model `{settings['model']}` on the `{settings['split']}` split of "
        f"`{settings['dataset']}`: {document['faces']} faces of {_people(document)}; "
        f"`{settings['holes']}` holes seeded {settings['seed']}; every method restores the "
        "same faces with the same masks.",
        "",
        "| method | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for name in METHODS:
        cells = []
        for key, _, fmt in COLUMNS:
            value = means[name].get(key)
            cells.append("n/a" if value is None else fmt.format(value))
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    swap = document["swap"]
    lines += ["", "Notes:", ""]
    if swap["identity_distance_true"] is not None:
        closer = swap["true_closer_fraction"]
        lines.append(
            f"- Identity distance with the true speaker's audio "
            f"{swap['identity_distance_true']:.4f}, with another speaker's "
            f"{swap['identity_distance_swapped']:.4f}; the true audio gives the closer face "
            f"for {100 * closer:.0f}% of the {document.get('faces_with_own_speech', '')} faces "
            "whose person has speech."
        )
    lines += [
        "- PSNR, SSIM and L1 cover the whole 256x256 crop (known pixels are kept by every "
        "method); L1 hole covers the hole only. L1 is in [0, 1] units.",
        "- ID dist: 1 - cosine similarity of SFace embeddings of result and ground truth.",
        f"- Acc@k: the result's SFace embedding ranked against identity centroids of every "
        f"crop of the split ({document['gallery_identities']} identities; the ground truth "
        "itself left out of its centroid).",
        "- dlib dist: Euclidean distance of dlib's 128-d descriptors (0.6 = dlib's same-person "
        "threshold); LMD: mean distance of dlib's 68 landmarks in crop pixels; n/a without "
        "the `eval` extra.",
        "- The true audio is the first segment (sorted) of the person's speech; the swapped "
        "audio is the first segment of the next held-out identity (sorted, cyclic).",
        "",
        f"Grid: `grid.png`. Time: {document['seconds']} s.",
        "",
    ]
    return "\n".join(lines)
