"""Restoration quality on real talking-head video, through the real file pipeline.

Every clip (default: the ``eval_only`` talking heads of ``../shared/data``, people the shipped
model never saw) gets one occluder painted on its face by ``bench.restore_video``: a
surgical, cloth, N95 or KN95 mask or a hand (``training.masks.HandBlob``), the kind chosen
by the clip's file name, the shape and material drawn from a seed; so the true covered
pixels of every frame are known. The masked clip carries the whole clip's audio. It is
restored under every condition, each from the same masked file:

- ``masked``: the masked input itself (nothing restored);
- ``telea_true``: OpenCV Telea at full frame resolution with the TRUE painted mask, the
  reference (``bench.restore_video.telea_true_mask``);
- ``telea``: ``avstream process --mask-detect --inpainter telea``;
- ``model``: ``avstream process --mask-detect`` with the network (``--model``, default the
  shipped ``lite``) hearing the clip's own speech;
- ``model_swapped``: the same, hearing another person's speech (``--speaker-audio``: the
  partner clip's audio, preferably a voice of the other pitch class, see ``pick_partner``);
- ``model_novoice``: the same with no speech (``--speaker-audio none``: the neutral speaker).
- ``model_true``: the network given the TRUE painted region instead of the detector's
  (``model_true_mask``: each painted face's crop, the truth warped into it, the pipeline's
  ``context_px`` of context, composited into exactly that region, no temporal reuse), with
  the speaker the ``model`` run heard last (the clip's own voice at its end), or the neutral
  speaker when that run is not asked for. It separates the fill's quality from the
  detector's: ``model`` vs ``model_true`` is what detection costs.
- ``model_placed``: as ``model_true``, but each face cut where the ``model`` run's
  ``--mask-detect`` placed it (``placed_affines``; a face it placed no crop for is cut with
  the painting's alignment). ``model_true`` vs ``model_placed`` is what the covered-face
  placement costs, ``model_placed`` vs ``model`` what the detected region costs.

Only the last ``--max-frames`` frames of a clip are restored and measured (``--head`` takes
the first ones): the speaker window is causal and needs 2 s of speech, so a frame hears
only the speech before it; the tail of a clip hears the most. A clip shorter than 2 s of
speech never gets a speaker window: its three model conditions are the same (the JSON's
``speaker_windows`` says so per condition).

Metrics, per clip and condition, against the unmasked original over the restored frames, on
8-bit levels (all three channels): PSNR and L1 (mean absolute error) INSIDE the true painted
mask, and inside it split into the pixels the ``model`` run restored and those it left (its
provenance sidecar; every condition is split by the same pixels, so the columns compare
alike); PSNR outside it within the face (the face ellipse of ``stream.mask_detect`` warped to
the frame, minus the painted mask grown by ``DILATE_PX``: damage to visible skin); PSNR in
the band between the two (``psnr_edge_db``: the occluder's soft edge, painted at under half
coverage, and the skin beside it: what a region that stops short or spills over changes); SFace
cosine similarity of each face to the same face in the original, every frame; dlib's
descriptor cosine similarity and distance (the ``eval`` extra) every ``--dlib-every``-th
frame. Both identity networks read the face aligned by the ORIGINAL frame's landmarks (the
project's 5-point alignment), so every condition is cut out alike. Pipeline conditions add
the detector's overlap with the painted mask and what the pipeline reports (restored
frames, faces regenerated, speaker windows, and any guard or coverage counts it has).

With ``--training-manifest`` (the ``manifest.jsonl`` of the dataset the model was trained
on) each clip is labelled by whether the model trained on its person (``model_saw``:
``train``, ``test`` for a person the data holds out, ``none``), and every table gets a mean
row per group (``means_by_split``): a model restores the people it trained on far better
than strangers, so only the held-out rows say what a user's clips will get.

Writes ``quality.json`` (settings, per clip, means, summary), ``quality.md`` (tables, a row
per clip and a mean row) and ``montage.png`` (a row per clip: original, masked, telea_true,
model; the middle frame's face) into ``-o DIR``.

    python -m bench.quality [-o DIR] [--clips PATH|DIR|GLOB ...] [--max-frames 50]
        [--conditions masked telea_true telea model model_swapped model_novoice]
        [--model lite|PATH.safetensors] [--no-guard] [--seed 0] [--dlib-every 10] [--keep]
        [--training-manifest DATASET/manifest.jsonl]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, get_args

os.environ["OMP_NUM_THREADS"] = "1"

import cv2
import numpy as np
import numpy.typing as npt

from avinpaint.spec import AUDIO_SAMPLE_RATE_HZ, CROP_SIZE
from bench.restore_video import (
    DILATE_PX,
    DetectionOverlap,
    MaskedClip,
    PixelErrors,
    Restoration,
    face_crops,
    frames_in_step,
    make_masked_clip,
    pipeline_summary,
    restore_with,
    rewrite_frames,
    telea_true_mask,
    to_frame,
)
from stream.align import crop_at
from stream.audio import read_audio_16k
from stream.batch import VIDEO_SUFFIXES
from stream.composite import composite, inpaint_hole
from stream.engines_cli import open_model_inpainter, parse_backend_arguments
from stream.inpaint import Inpainter, OpenCVInpainter
from stream.mask_detect import MaskDetectOptions, PlacementSource, face_region
from stream.media import VideoReader, probe
from stream.model_inpainter import ModelInpainter
from stream.past_crop import PastCropOptions
from stream.provenance import read_sidecar, restored_mask, sidecar_path
from stream.types import Image, InpaintResult, Mask, Occlusion
from training.manifest import CropRecord, read_manifest
from training.masks import FACE_MASK_KINDS, FaceMaskShape, HandBlob, ShapeGenerator
from training.metrics import DlibFace, dlib_available
from training.prepare import OpenCvSFace

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

ROOT = Path(__file__).resolve().parent.parent
EVAL_CLIPS = ROOT.parent / "shared" / "data" / "talking_heads" / "eval_only"
EVAL_INDEX = EVAL_CLIPS.parent / "index_more_and_eval.csv"
CONDITIONS = (
    "masked",
    "telea_true",
    "telea",
    "model",
    "model_true",
    "model_placed",
    "model_swapped",
    "model_novoice",
)
MODEL_CONDITIONS = ("model", "model_true", "model_placed", "model_swapped", "model_novoice")
OCCLUDERS = (*(str(kind) for kind in FACE_MASK_KINDS), "hand")
MONTAGE = ("original", "masked", "telea_true", "model")
LOW_VOICE_HZ = 175.0
"""Median pitch under which a voice counts as low rather than high: most men speak under it
and most women over it, though emotional speech (MEAD) lifts some men above it."""
SFACE_MARGIN = 0.03
"""The summary checks SFace(model) >= SFace(masked) - SFACE_MARGIN per clip."""
VOICE_NOISE = 0.005
"""SFace differences under this are run-to-run noise: the threaded pipeline does not give
bit-identical output twice (measured: the three model rows of a clip that heard no speaker
window, whose inputs are the same, differ by up to 0.005)."""
TILE_PX = 128

BoolMask = npt.NDArray[np.bool_]
Samples = npt.NDArray[np.float32]


# --- clips -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """A clip to measure: its person (from the index, else its name), its voice's median
    pitch and the occluder it gets."""

    path: Path
    person: str
    duration_s: float
    pitch_hz: float | None

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def occluder(self) -> str:
        """The occluder kind, fixed by the file name (``occluder_for``)."""
        return occluder_for(self.name)

    @property
    def voice(self) -> str | None:
        """``low`` or ``high`` (median pitch under or over ``LOW_VOICE_HZ``)."""
        if self.pitch_hz is None:
            return None
        return "low" if self.pitch_hz < LOW_VOICE_HZ else "high"


def find_clips(specs: Sequence[str]) -> list[Path]:
    """Video files named by ``specs`` (files, folders searched for every video suffix
    ``avstream batch`` takes, or globs), sorted by name, each once."""
    found: set[Path] = set()
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found.update(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
            )
        elif path.is_file():
            found.add(path)
        else:
            # A glob: relative to its first fixed part, so "/abs/*/x*.mp4" works too.
            anchor = Path(path.anchor) if path.is_absolute() else Path()
            pattern = str(path.relative_to(anchor)) if path.is_absolute() else spec
            found.update(p for p in anchor.glob(pattern) if p.is_file())
    return sorted(found, key=lambda p: (p.name, str(p)))


def read_people(index: Path | None) -> dict[str, str]:
    """File name -> person, from the data's index CSV (``file`` and ``person`` columns)."""
    if index is None or not index.is_file():
        return {}
    with index.open(newline="") as f:
        return {Path(row["file"]).name: row["person"] for row in csv.DictReader(f)}


@dataclass(frozen=True)
class TrainingData:
    """Which files and people a model's training dataset holds, and in which split, read
    from its ``manifest.jsonl`` (``python -m training prepare``). A model fills the lower
    face of someone it trained on far better than a stranger's, so a clip of a person it
    trained on says little about the people it will meet: ``split_of`` labels each clip."""

    split_by_file: dict[str, str]
    split_by_identity: dict[str, str]

    @classmethod
    def read(cls, manifest: Path) -> TrainingData:
        """Raises ``ValueError`` when ``manifest`` is missing or not a training manifest."""
        try:
            records = read_manifest(manifest)
        except OSError as exc:
            raise ValueError(f"cannot read training manifest {manifest}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{manifest} is not a training manifest: {exc}") from exc
        by_file: dict[str, str] = {}
        by_identity: dict[str, str] = {}
        for record in records:
            if isinstance(record, CropRecord):
                by_file[Path(record.source).name] = record.split
                by_identity[record.identity] = record.split
        if not by_identity:
            raise ValueError(f"{manifest} holds no face crops")
        return cls(by_file, by_identity)

    def split_of(self, clip: Clip) -> str:
        """``train`` when the model learned from this clip's file or person, ``test`` when
        the data holds them out of training, ``none`` when the data never had them."""
        split = self.split_by_file.get(clip.path.name) or self.split_by_identity.get(clip.person)
        return split or "none"


def median_pitch_hz(samples: Samples, rate: int = AUDIO_SAMPLE_RATE_HZ) -> float | None:
    """Median fundamental frequency of the louder, periodic 40 ms frames of ``samples``
    (autocorrelation peak between 60 and 400 Hz), or None when no frame is voiced."""
    size, hop = round(0.04 * rate), round(0.02 * rate)
    if len(samples) < size:
        return None
    windows = np.lib.stride_tricks.sliding_window_view(samples, size)[::hop]
    frames = windows - windows.mean(axis=1, keepdims=True)
    energy = np.sqrt(np.mean(np.square(frames), axis=1))
    loud = frames[energy >= 0.3 * np.percentile(energy, 90)]
    lo, hi = rate // 400, rate // 60
    spectrum = np.fft.rfft(loud, n=2 * size, axis=1)
    autocorrelation = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, : hi + 1]
    lags = lo + np.argmax(autocorrelation[:, lo:], axis=1)
    peaks = autocorrelation[np.arange(len(lags)), lags] / np.maximum(autocorrelation[:, 0], 1e-12)
    voiced = lags[peaks >= 0.4]
    return round(float(rate / np.median(voiced)), 1) if len(voiced) else None


def describe_clip(path: Path, people: dict[str, str]) -> Clip:
    """``path`` as a ``Clip``: its person, duration and voice pitch (decoded once)."""
    audio = read_audio_16k(path)
    samples = audio.samples_16k if audio is not None else np.zeros(0, np.float32)
    info = probe(path)
    duration = info.duration_s or len(samples) / AUDIO_SAMPLE_RATE_HZ
    return Clip(path, people.get(path.name, path.stem), duration, median_pitch_hz(samples))


def pick_partner(clip: Clip, clips: Sequence[Clip]) -> Clip | None:
    """The clip whose speech ``clip`` hears in ``model_swapped``: another person, preferably
    of the other voice class (pitch), with at least as much audio, then closest in length,
    then by name."""
    others = [c for c in clips if c.person != clip.person]

    def rank(other: Clip) -> tuple[bool, bool, float, str]:
        same_voice = other.voice is None or other.voice == clip.voice
        return (
            same_voice,
            other.duration_s < clip.duration_s,
            abs(other.duration_s - clip.duration_s),
            other.name,
        )

    return min(others, key=rank) if others else None


def count_frames(path: Path) -> int:
    """Frames of ``path`` (from the container, else by decoding)."""
    known = probe(path).frame_count
    if known:
        return known
    with VideoReader(path, threads=1) as reader:
        return sum(1 for _ in reader)


def occluder_shapes(kind: str) -> ShapeGenerator:
    """The shape generator painting ``kind``."""
    if kind == "hand":
        return HandBlob()
    return FaceMaskShape(styles=tuple(k for k in FACE_MASK_KINDS if str(k) == kind))


def occluder_for(name: str) -> str:
    """The occluder kind a clip of this file stem gets: fixed by the name, so the same in any
    subset of clips and in every tool that paints clips as this bench does."""
    return OCCLUDERS[zlib.crc32(name.encode()) % len(OCCLUDERS)]


@dataclass(frozen=True)
class PaintedClip:
    """A clip painted as this bench paints it: the masked clip, the seed that drew its
    occluder and the source's frame count."""

    masked: MaskedClip
    seed: int
    frames_in_clip: int


def paint_clip(
    source: Path, output: Path, frames: int, seed: int = 0, head: bool = False
) -> PaintedClip:
    """``source`` with its occluder (``occluder_for``) painted on its last ``frames`` frames
    (``head``: its first), seeded by its name and ``seed``: the masked clip every condition
    of this bench restores."""
    total = count_frames(source)
    paint_seed = zlib.crc32(source.stem.encode()) ^ seed
    masked = make_masked_clip(
        source,
        output,
        paint_seed,
        frames,
        first_frame=0 if head else max(0, total - frames),
        shapes=occluder_shapes(occluder_for(source.stem)),
    )
    return PaintedClip(masked=masked, seed=paint_seed, frames_in_clip=total)


# --- restoring -------------------------------------------------------------------------------


@dataclass
class CountingInpainter:
    """Passes an inpainter's results through, counting its fills, those the fill guard
    judged and those it failed (``InpaintResult.guard`` and ``fallback``, where the inpainter
    sets them; the pipeline then shows the track's last good fill or the safe fill,
    ``ProcessReport.faces_held``)."""

    inner: Inpainter
    fills: int = 0
    judged: int = 0
    fallbacks: int = 0

    @property
    def name(self) -> str:
        return self.inner.name

    def inpaint(self, crops: Sequence[Image], masks: Sequence[Mask]) -> list[InpaintResult]:
        results = self.inner.inpaint(crops, masks)
        self.fills += len(results)
        self.judged += sum(getattr(r, "guard", None) is not None for r in results)
        self.fallbacks += sum(bool(getattr(r, "fallback", False)) for r in results)
        return results

    def counts(self) -> dict[str, Any]:
        share = round(self.fallbacks / self.fills, 3) if self.fills else None
        return {
            "fills": self.fills,
            "guard_judged": self.judged,
            "guard_fallbacks": self.fallbacks,
            "guard_fallback_share": share,
        }


@dataclass
class Restorer:
    """Runs the conditions on one masked clip; the model is opened once for every clip."""

    conditions: tuple[str, ...]
    model: ModelInpainter | None
    work: Path
    detect: MaskDetectOptions = field(default_factory=MaskDetectOptions)
    """``--mask-detect``'s options (``--mask-weights``, ``--placement-from``,
    ``--refine-passes``)."""
    seconds: dict[str, float] = field(default_factory=dict)
    fills: dict[str, dict[str, int]] = field(default_factory=dict)

    def run(
        self, clip: MaskedClip, partner: Path | None
    ) -> tuple[dict[str, Path], dict[str, Restoration]]:
        """Every condition's file (``masked`` is the masked clip) and, for the pipeline
        conditions, what the pipeline did."""
        files: dict[str, Path] = {}
        restorations: dict[str, Restoration] = {}
        for name in self.conditions:
            start = time.perf_counter()
            output = self.work / f"{clip.path.stem.removesuffix('_masked')}_{name}.mp4"
            if name == "masked":
                files[name] = clip.path
            elif name == "telea_true":
                files[name] = telea_true_mask(clip, output)
            elif name in ("model_true", "model_placed"):
                if self.model is None:
                    raise RuntimeError(f"{name} needs the model")
                if "model" not in self.conditions:
                    self.model.use_features(None)
                affines: Sequence[Sequence[npt.NDArray[np.float64]]] = clip.affines
                if name == "model_placed":
                    if "model" not in restorations:
                        raise RuntimeError("model_placed needs the model condition run first")
                    affines = placed_affines(clip, restorations["model"].regions)
                counting = CountingInpainter(self.model)
                files[name] = model_true_mask(clip, output, counting, affines)
                self.fills[name] = counting.counts()
            else:
                restorations[name] = self._pipeline(name, clip.path, output, partner)
                files[name] = output
            self.seconds[name] = round(time.perf_counter() - start, 2)
        return files, restorations

    def _pipeline(self, name: str, masked: Path, output: Path, partner: Path | None) -> Restoration:
        if name == "telea":
            counting = CountingInpainter(OpenCVInpainter("telea"))
            restoration = restore_with(
                masked,
                output,
                name,
                counting,
                detect_options=self.detect,
            )
        else:
            counting, restoration = self._model(name, masked, output, partner)
        self.fills[name] = counting.counts()
        return restoration

    def _model(
        self, name: str, masked: Path, output: Path, partner: Path | None
    ) -> tuple[CountingInpainter, Restoration]:
        if self.model is None:
            raise RuntimeError(f"{name} needs the model")
        self.model.use_features(None)  # start every run from the neutral speaker, as when opened
        counting = CountingInpainter(self.model)
        if name == "model_novoice":  # --speaker-audio none
            return counting, restore_with(
                masked,
                output,
                name,
                counting,
                detect_options=self.detect,
            )
        audio = partner if name == "model_swapped" else None  # --speaker-audio PATH
        if name == "model_swapped" and audio is None:
            raise RuntimeError("model_swapped needs another person's clip")
        sink = self.model.use_speech
        return counting, restore_with(
            masked,
            output,
            name,
            counting,
            sink,
            speaker_audio=audio,
            detect_options=self.detect,
        )


def model_true_mask(
    clip: MaskedClip,
    output: Path,
    inpainter: Inpainter,
    affines: Sequence[Sequence[npt.NDArray[np.float64]]] | None = None,
) -> Path:
    """``inpainter`` on every painted face with the TRUE painted region: the face's crop cut
    with the painting's own alignment (or per frame ``affines``: frame -> crop), the truth
    warped into it (covered where >= 0.5), the inpainter seeing that region grown by the
    pipeline's ``context_px`` and the composite changing exactly the region, as the pipeline
    does with a detected one."""
    context_px = MaskDetectOptions().context_px
    crops = clip.affines if affines is None else affines

    def restore(index: int, image: Image) -> Image:
        truth = clip.truth[index].astype(np.float32)
        for affine in crops[index]:
            face = crop_at(image, affine)
            warped = cv2.warpAffine(truth, affine, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR)
            hole = np.asarray(warped >= 0.5, np.float32)
            if not hole.any():
                continue
            (result,) = inpainter.inpaint([face.crop], [inpaint_hole(hole, context_px)])
            image = composite(image, result.face_256, hole, face.inverse_affine)
        return image

    return rewrite_frames(clip, output, restore)


def placed_affines(
    clip: MaskedClip, regions: dict[int, list[tuple[Occlusion, npt.NDArray[np.float64]]]]
) -> list[list[npt.NDArray[np.float64]]]:
    """Per frame, each painted face's crop as a pipeline run placed it: the run's crop whose
    centre lies nearest the painting's crop centre, within half a crop; else the painting's
    own alignment (a face the run did not restore)."""
    centre = np.array([CROP_SIZE / 2.0, CROP_SIZE / 2.0, 1.0])
    placed: list[list[npt.NDArray[np.float64]]] = []
    for index, truths in enumerate(clip.affines):
        candidates = [
            (np.asarray(cv2.invertAffineTransform(inverse), np.float64), inverse @ centre)
            for _, inverse in regions.get(index, [])
        ]
        faces = []
        for affine in truths:
            # The crop's half size in frame pixels, from the scale of its inverse.
            inverse = cv2.invertAffineTransform(affine)
            reach = 0.5 * CROP_SIZE * math.sqrt(abs(np.linalg.det(inverse[:, :2])))
            middle = inverse @ centre
            best, best_d = affine, reach
            for candidate, candidate_middle in candidates:
                d = float(np.linalg.norm(candidate_middle - middle))
                if d < best_d:
                    best, best_d = candidate, d
            faces.append(np.asarray(best, np.float64))
        placed.append(faces)
    return placed


# --- measuring -------------------------------------------------------------------------------


@dataclass
class Similarity:
    """Mean cosine similarity (and, for dlib, Euclidean distance) over faces."""

    cosines: list[float] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)

    def add(self, a: npt.NDArray[Any], b: npt.NDArray[Any]) -> None:
        a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        norms = max(float(np.linalg.norm(a64) * np.linalg.norm(b64)), 1e-12)
        self.cosines.append(float(np.dot(a64, b64)) / norms)
        self.distances.append(float(np.linalg.norm(a64 - b64)))

    def cosine(self) -> float | None:
        return round(statistics.fmean(self.cosines), 4) if self.cosines else None

    def distance(self) -> float | None:
        return round(statistics.fmean(self.distances), 4) if self.distances else None


@dataclass
class Identity:
    """SFace on every face, dlib (when installed) every ``dlib_every``-th frame."""

    dlib_every: int
    sface: OpenCvSFace = field(default_factory=OpenCvSFace)
    dlib: DlibFace | None = None

    def measure(
        self,
        index: int,
        crops: dict[str, npt.NDArray[np.uint8]],
        sface: dict[str, Similarity],
        dlib: dict[str, Similarity],
    ) -> None:
        """Compare every condition's face crops (N, 256, 256, 3) with ``crops["original"]``."""
        embeddings = {name: self.sface(batch) for name, batch in crops.items()}
        others = [name for name in crops if name != "original"]
        for name in others:
            for got, want in zip(embeddings[name], embeddings["original"], strict=True):
                sface[name].add(got, want)
        if self.dlib is None or index % self.dlib_every:
            return
        for face, face_original in enumerate(crops["original"]):
            box = self.dlib.face_box(face_original)
            reference = self.dlib.measure(face_original, box).descriptor
            for name in others:
                dlib[name].add(self.dlib.measure(crops[name][face], box).descriptor, reference)


def _grow(mask: BoolMask, px: int) -> BoolMask:
    side = 2 * px + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    return cv2.dilate(mask.view(np.uint8), kernel).view(bool)


def face_area(affines: Sequence[npt.NDArray[np.float64]], shape: tuple[int, int]) -> BoolMask:
    """The frame pixels inside any face's ellipse (``face_region``, warped from the crop)."""
    height, width = shape
    area = np.zeros(shape, dtype=bool)
    ellipse = face_region().astype(np.uint8)
    for affine in affines:
        flags = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
        area |= cv2.warpAffine(ellipse, affine, (width, height), flags=flags).astype(bool)
    return area


@dataclass
class ClipMeasures:
    """Everything accumulated over one clip's frames, per condition."""

    names: list[str]
    inside: dict[str, PixelErrors]
    restored: dict[str, PixelErrors]
    """Inside the painted mask, where the ``model`` run (else the first pipeline run)
    restored: the same pixels for every condition."""
    missed: dict[str, PixelErrors]
    """Inside the painted mask, where that run restored nothing."""
    outside: dict[str, PixelErrors]
    edge: dict[str, PixelErrors]
    """Within ``DILATE_PX`` outside the painted mask: the occluder's anti-aliased rim
    (painted at under half coverage) and the skin beside it, which neither ``inside`` nor
    ``outside`` counts."""
    sface: dict[str, Similarity]
    dlib: dict[str, Similarity]
    detection: dict[str, DetectionOverlap]
    changed: dict[str, DetectionOverlap]
    """The frame pixels the pipeline recorded as restored (its provenance sidecar: the
    region inside each face's crop and what ``stream.past_crop`` followed past it)."""
    tiles: dict[str, Image] = field(default_factory=dict)

    @classmethod
    def for_conditions(cls, names: Sequence[str], pipeline: Sequence[str]) -> ClipMeasures:
        return cls(
            list(names),
            {n: PixelErrors() for n in names},
            {n: PixelErrors() for n in names},
            {n: PixelErrors() for n in names},
            {n: PixelErrors() for n in names},
            {n: PixelErrors() for n in names},
            {n: Similarity() for n in names},
            {n: Similarity() for n in names},
            {n: DetectionOverlap() for n in pipeline},
            {n: DetectionOverlap() for n in pipeline},
        )

    def summary(self, name: str) -> dict[str, Any]:
        inside, outside = self.inside[name].summary(), self.outside[name].summary()
        result: dict[str, Any] = {
            "psnr_in_db": inside["psnr_db"],
            "l1_in_levels": inside["mae_levels"],
            "psnr_in_restored_db": self.restored[name].summary()["psnr_db"],
            "psnr_in_missed_db": self.missed[name].summary()["psnr_db"],
            "psnr_out_db": outside["psnr_db"],
            "l1_out_levels": outside["mae_levels"],
            "psnr_edge_db": self.edge[name].summary()["psnr_db"],
            "sface_cosine": self.sface[name].cosine(),
            "dlib_cosine": self.dlib[name].cosine(),
            "dlib_distance": self.dlib[name].distance(),
        }
        if name in self.detection:
            result.update(self.detection[name].summary())
            result.update(self.changed[name].summary("changed"))
        return result


def measure_clip(
    original: Path,
    clip: MaskedClip,
    files: dict[str, Path],
    restorations: dict[str, Restoration],
    identity: Identity,
) -> ClipMeasures:
    """Per condition: pixel errors inside and outside the true mask, identity, detection,
    and the montage tiles of the middle frame."""
    names = list(files)
    measures = ClipMeasures.for_conditions(names, list(restorations))
    paths = [original, *files.values()]
    restored = {
        name: restored_by_frame(r.path, clip.truth.shape) for name, r in restorations.items()
    }
    split_by = "model" if "model" in restored else next(iter(restored), None)
    middle = len(clip.pts) // 2
    for index, images in enumerate(frames_in_step(paths, clip.pts, clip.first_frame)):
        truth = clip.truth[index]
        face = face_area(clip.affines[index], truth.shape)
        grown = _grow(truth, DILATE_PX)
        outside, edge = face & ~grown, face & grown & ~truth
        hit = truth & restored[split_by].get(index, np.zeros_like(truth)) if split_by else None
        for name, image in zip(names, images[1:], strict=True):
            measures.inside[name].add(image, images[0], truth)
            measures.outside[name].add(image, images[0], outside)
            measures.edge[name].add(image, images[0], edge)
            if hit is not None:
                measures.restored[name].add(image, images[0], hit)
                measures.missed[name].add(image, images[0], truth & ~hit)
        for name, restoration in restorations.items():
            detected = np.zeros(truth.shape, dtype=bool)
            for occlusion, inverse in restoration.regions.get(index, []):
                detected |= to_frame(occlusion.mask_256, inverse, truth.shape)
            measures.detection[name].add(truth, detected)
            changed = restored[name].get(index)
            measures.changed[name].add(truth, np.zeros_like(truth) if changed is None else changed)
        if not clip.affines[index]:
            continue
        crops = {
            name: face_crops(image, clip.affines[index])
            for name, image in zip(["original", *names], images, strict=True)
        }
        identity.measure(index, crops, measures.sface, measures.dlib)
        if index >= middle and not measures.tiles:
            measures.tiles = {name: batch[0] for name, batch in crops.items() if name in MONTAGE}
    return measures


def restored_by_frame(output: Path, shape: tuple[int, int]) -> dict[int, BoolMask]:
    """Per frame index, the pixels the pipeline's provenance sidecar beside ``output`` says
    it restored (frames with nothing restored are left out)."""
    _, frames = read_sidecar(sidecar_path(output))
    return {f.index: restored_mask(f, shape) for f in frames if f.faces}


# --- one clip, all clips ---------------------------------------------------------------------


def run_clip(
    clip: Clip,
    partner: Clip | None,
    restorer: Restorer,
    identity: Identity,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], dict[str, Image]]:
    """Paint, restore under every condition and measure one clip: its JSON and tiles."""
    painted = paint_clip(
        clip.path, restorer.work / f"{clip.name}_masked.mp4", args.max_frames, args.seed, args.head
    )
    masked = painted.masked
    swap = partner.path if partner is not None else None
    files, restorations = restorer.run(masked, swap)
    measures = measure_clip(clip.path, masked, files, restorations, identity)
    conditions: dict[str, Any] = {}
    for name in files:
        conditions[name] = measures.summary(name)
        if name in restorations:
            conditions[name].update(pipeline_summary(restorations[name].report))
            conditions[name].update(report_extras(restorations[name]))
            conditions[name].update(restorer.fills[name])
        conditions[name]["seconds"] = restorer.seconds[name]
    result = {
        "path": str(clip.path),
        "person": clip.person,
        "occluder": clip.occluder,
        "painted": sorted(set(masked.kinds.values())),
        "seed": painted.seed,
        "frames": len(masked.pts),
        "first_frame": masked.first_frame,
        "frames_in_clip": painted.frames_in_clip,
        "frames_with_mask": sum(1 for i in range(len(masked.pts)) if masked.truth[i].any()),
        "duration_s": round(clip.duration_s, 2),
        "pitch_hz": clip.pitch_hz,
        "voice": clip.voice,
        "swap_partner": None if partner is None else partner.name,
        "swap_partner_voice": None if partner is None else partner.voice,
        "conditions": conditions,
    }
    return result, measures.tiles


_KNOWN_REPORT_FIELDS = {
    "output",
    "track_ids",
    "stages",
    "faces_restored",
    "faces_regenerated",
    "speaker_windows",
    "audio_mode",
}


def report_extras(restoration: Restoration) -> dict[str, Any]:
    """The pipeline report's other plain fields (guard and coverage counts where the
    pipeline has them), JSON-ready."""
    extras: dict[str, Any] = {"pipeline_wall_s": round(restoration.report.wall_s, 2)}
    for item in dataclasses.fields(restoration.report):
        if item.name in _KNOWN_REPORT_FIELDS:
            continue
        extras[item.name] = _jsonable(getattr(restoration.report, item.name))
    return extras


def _jsonable(value: Any) -> Any:
    """``value`` with dataclasses as dicts and tuples as lists; anything else JSON cannot
    hold as its string."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return json.loads(json.dumps(value, default=str))


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and math.isfinite(v)]
    return round(statistics.fmean(present), 4) if present else None


MEAN_METRICS = (
    "psnr_in_db",
    "l1_in_levels",
    "psnr_in_restored_db",
    "psnr_in_missed_db",
    "psnr_out_db",
    "l1_out_levels",
    "psnr_edge_db",
    "sface_cosine",
    "dlib_cosine",
    "dlib_distance",
    "detect_iou",
    "detect_recall",
    "changed_precision",
    "changed_recall",
    "restored_frame_fraction",
    "guard_fallback_share",
    "speaker_windows",
)


def means(clips: dict[str, Any], conditions: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Per condition, the mean over clips of each metric (clips lacking it are left out)."""
    return {
        name: {
            metric: _mean([c["conditions"][name].get(metric) for c in clips.values()])
            for metric in MEAN_METRICS
        }
        for name in conditions
    }


SPLIT_LABELS = {
    "train": "people the model trained on",
    "test": "people held out of its training",
    "none": "people not in its training data",
}
"""What ``model_saw`` (``TrainingData.split_of``) says of a clip, in the tables' words."""


def means_by_split(
    clips: dict[str, Any], conditions: Sequence[str]
) -> dict[str, dict[str, dict[str, float | None]]]:
    """``means`` over the clips of each ``model_saw`` label; empty without a training
    manifest."""
    groups: dict[str, dict[str, Any]] = {}
    for name, clip in clips.items():
        label = clip.get("model_saw")
        if label is not None:
            groups.setdefault(label, {})[name] = clip
    return {label: means(groups[label], conditions) for label in SPLIT_LABELS if label in groups}


def _metric(clip: dict[str, Any], condition: str, metric: str) -> float | None:
    value = clip["conditions"].get(condition, {}).get(metric)
    return float(value) if value is not None else None


def summary(clips: dict[str, Any]) -> dict[str, Any]:
    """The headline comparisons: model vs the true-mask reference, identity vs the masked
    input, own voice vs another's."""
    result: dict[str, Any] = {}
    gaps = {}
    for name, clip in clips.items():
        model, reference = (
            _metric(clip, "model", "psnr_in_db"),
            _metric(clip, "telea_true", "psnr_in_db"),
        )
        if model is not None and reference is not None:
            gaps[name] = round(model - reference, 2)
    if gaps:
        worst = min(gaps, key=lambda n: gaps[n])
        result["model_minus_telea_true_psnr_in_db"] = {
            "mean": round(statistics.fmean(gaps.values()), 2),
            "min": gaps[worst],
            "min_clip": worst,
            "per_clip": gaps,
        }
    keeps = {}
    for name, clip in clips.items():
        model, masked = (
            _metric(clip, "model", "sface_cosine"),
            _metric(clip, "masked", "sface_cosine"),
        )
        if model is not None and masked is not None:
            keeps[name] = {"model": model, "masked": masked, "ok": model >= masked - SFACE_MARGIN}
    if keeps:
        result["sface_model_vs_masked"] = {
            "rule": f"sface(model) >= sface(masked) - {SFACE_MARGIN}",
            "clips_ok": sum(1 for k in keeps.values() if k["ok"]),
            "clips": len(keeps),
            "per_clip": keeps,
        }
    result["own_voice_vs_swapped_sface"] = _voice_share(clips)
    return result


def _voice_share(clips: dict[str, Any]) -> dict[str, Any]:
    """Share of clips where the own voice gives a closer face (SFace) than the swapped one,
    over all clips and over those where both runs heard a speaker window; and, of those,
    how many differ by more than ``VOICE_NOISE`` either way."""
    closer, heard, closer_heard, ties = 0, 0, 0, 0
    compared = 0
    beyond_noise = {"own_closer": 0, "swapped_closer": 0}
    for clip in clips.values():
        own, swapped = (
            _metric(clip, "model", "sface_cosine"),
            _metric(clip, "model_swapped", "sface_cosine"),
        )
        if own is None or swapped is None:
            continue
        compared += 1
        closer += own > swapped
        ties += own == swapped
        windows = [_metric(clip, c, "speaker_windows") for c in ("model", "model_swapped")]
        if all(w is not None and w > 0 for w in windows):
            heard += 1
            closer_heard += own > swapped
            if abs(own - swapped) > VOICE_NOISE:
                beyond_noise["own_closer" if own > swapped else "swapped_closer"] += 1
    return {
        "clips": compared,
        "own_closer": closer,
        "ties": ties,
        "share_own_closer": round(closer / compared, 3) if compared else None,
        "clips_both_heard_speech": heard,
        "share_own_closer_when_both_heard": round(closer_heard / heard, 3) if heard else None,
        f"when_both_heard_by_more_than_{VOICE_NOISE}": beyond_noise,
    }


# --- writing ---------------------------------------------------------------------------------

_TABLES = (
    ("psnr_in_db", "PSNR inside the painted mask (dB, 8-bit) ↑", "{:.2f}"),
    ("l1_in_levels", "L1 inside the painted mask (8-bit levels) ↓", "{:.2f}"),
    (
        "psnr_in_restored_db",
        "PSNR inside the painted mask, where the `model` run restored (dB) ↑",
        "{:.2f}",
    ),
    (
        "psnr_in_missed_db",
        "PSNR inside the painted mask, where the `model` run restored nothing (dB) ↑",
        "{:.2f}",
    ),
    ("psnr_out_db", "PSNR outside the mask, within the face (dB) ↑", "{:.2f}"),
    (
        "psnr_edge_db",
        f"PSNR just outside the mask (within {DILATE_PX} px: the occluder's soft edge and the "
        "skin beside it; dB) ↑",
        "{:.2f}",
    ),
    ("sface_cosine", "SFace cosine to the original face ↑", "{:.3f}"),
    ("dlib_cosine", "dlib descriptor cosine to the original face ↑", "{:.4f}"),
    (
        "guard_fallback_share",
        "Share of fills the guard failed (shown instead: the track's last good fill, else "
        "the safe fill; `faces_held` in the JSON says which)",
        "{:.2f}",
    ),
    ("speaker_windows", "Speaker windows the model heard", "{:.0f}"),
)


def markdown(report: dict[str, Any]) -> str:
    """One table per metric: a row per clip and a mean row, a column per condition."""
    conditions: list[str] = report["settings"]["conditions"]
    guard = "" if report["settings"]["guard"] else ", no fill guard"
    lines = [f"# Restoration quality ({report['settings']['model']}{guard})", ""]
    by_split: dict[str, dict[str, dict[str, float | None]]] = report.get("means_by_split", {})
    header = "| clip | person | occluder | frames | voice | swapped with |"
    lines += ["## Clips", "", header + (" model's training data |" if by_split else "")]
    lines.append("|---|---|---|---|---|---|" + ("---|" if by_split else ""))
    for name, clip in report["clips"].items():
        frames = f"{clip['first_frame']}-{clip['first_frame'] + clip['frames'] - 1}"
        frames += f" of {clip['frames_in_clip']}"
        pitch = "n/a" if clip["pitch_hz"] is None else f"{clip['voice']} {clip['pitch_hz']:.0f} Hz"
        cells = [name, clip["person"], clip["occluder"], frames, pitch, str(clip["swap_partner"])]
        if by_split:
            cells.append(SPLIT_LABELS[clip["model_saw"]])
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for metric, title, fmt in _TABLES:
        lines += [f"## {title}", "", "| clip | occluder | " + " | ".join(conditions) + " |"]
        lines.append("|---|---|" + "---:|" * len(conditions))
        for name, clip in report["clips"].items():
            cells = [_cell(_metric(clip, c, metric), fmt) for c in conditions]
            lines.append(f"| {name} | {clip['occluder']} | " + " | ".join(cells) + " |")
        mean_cells = [_cell(report["means"][c].get(metric), fmt) for c in conditions]
        lines.append("| **mean** | | " + " | ".join(mean_cells) + " |")
        for label, split_means in by_split.items():
            cells = [_cell(split_means[c].get(metric), fmt) for c in conditions]
            lines.append(f"| mean, {SPLIT_LABELS[label]} | | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Summary", "", "```json", json.dumps(report["summary"], indent=1), "```", ""]
    return "\n".join(lines)


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def montage(rows: dict[str, dict[str, Image]], columns: Sequence[str]) -> Image:
    """A row per clip (its name above), a column per condition (named on top)."""
    label_h = 16
    header = np.full((label_h, TILE_PX * len(columns), 3), 255, np.uint8)
    for i, name in enumerate(columns):
        cv2.putText(header, name, (i * TILE_PX + 3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 0, 1)
    blocks = [header]
    blank = np.zeros((TILE_PX, TILE_PX, 3), np.uint8)
    for clip, tiles in rows.items():
        label = np.full((label_h, TILE_PX * len(columns), 3), 255, np.uint8)
        cv2.putText(label, clip, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 0, 1)
        cells = [
            cv2.resize(tiles[c], (TILE_PX, TILE_PX), interpolation=cv2.INTER_AREA)
            if c in tiles
            else blank
            for c in columns
        ]
        blocks += [label, np.hstack(cells)]
    return np.vstack(blocks)


# --- the command -----------------------------------------------------------------------------


@contextlib.contextmanager
def _open_model(args: argparse.Namespace) -> Iterator[ModelInpainter | None]:
    if not set(args.conditions) & set(MODEL_CONDITIONS):
        yield None
        return
    argv = ["--model", args.model, "--backend", "onnxruntime"]
    backend = parse_backend_arguments([*argv, "--no-guard"] if args.no_guard else argv)
    with open_model_inpainter(backend, threads=1) as model:
        yield model


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Measure every clip; returns the report and writes the montage into ``args.output``."""
    people = read_people(args.index)
    try:
        training = TrainingData.read(args.training_manifest) if args.training_manifest else None
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    paths = find_clips(args.clips)
    if not paths:
        raise SystemExit(f"no clips found in {' '.join(args.clips)}")
    clips = [describe_clip(p, people) for p in paths]
    identity = Identity(args.dlib_every, dlib=DlibFace() if dlib_available() else None)
    results: dict[str, Any] = {}
    tiles: dict[str, dict[str, Image]] = {}
    started = time.perf_counter()
    with _open_model(args) as model:
        detect = MaskDetectOptions(
            weights=args.mask_weights,
            placement_from=args.placement_from,
            refine_passes=args.refine_passes,
            placement_weights=args.placement_weights,
            rim_px=args.rim_px,
            hole_share=args.hole_share,
            past_crop=past_crop_options(args.past_crop),
        )
        restorer = Restorer(tuple(args.conditions), model, work, detect)
        for clip in clips:
            partner = pick_partner(clip, clips)
            print(f"{clip.name}: {clip.occluder}", file=sys.stderr, flush=True)
            results[clip.name], tiles[f"{clip.name} ({clip.occluder})"] = run_clip(
                clip, partner, restorer, identity, args
            )
            results[clip.name]["model_saw"] = training.split_of(clip) if training else None
    cv2.imwrite(str(args.output / "montage.png"), montage(tiles, MONTAGE))
    return {
        "settings": settings(args, identity),
        "clips": results,
        "means": means(results, args.conditions),
        "means_by_split": means_by_split(results, args.conditions),
        "summary": summary(results),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def settings(args: argparse.Namespace, identity: Identity) -> dict[str, Any]:
    """What the numbers depend on, and how to read them."""
    return {
        "model": args.model,
        "guard": not args.no_guard,
        "conditions": list(args.conditions),
        "max_frames": args.max_frames,
        "frames": "first" if args.head else "last",
        "seed": args.seed,
        "mask_weights": str(args.mask_weights or "shipped"),
        "training_manifest": str(args.training_manifest) if args.training_manifest else None,
        "placement_from": args.placement_from,
        "refine_passes": args.refine_passes,
        "placement_weights": str(args.placement_weights or "shipped"),
        "rim_px": args.rim_px,
        "hole_share": args.hole_share,
        "dlib": identity.dlib is not None,
        "dlib_every": args.dlib_every,
        "levels": "8-bit (0..255), all three channels; PSNR peak 255",
        "inside": "the painted occluder's coverage (>= 0.5) in frame pixels",
        "outside": f"face ellipse minus the painted mask grown by {DILATE_PX} px",
        "edge": f"face ellipse within {DILATE_PX} px outside the painted mask",
        "identity_alignment": "5-point alignment of the original frame's landmarks",
        "crop_px": CROP_SIZE,
        "voice_classes": f"median pitch < {LOW_VOICE_HZ} Hz is low, else high",
    }


def build_parser() -> argparse.ArgumentParser:
    """The bench's arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality",
        description="restoration quality on real talking-head clips with painted occluders, "
        "through avstream process --mask-detect",
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("/tmp/avstream_quality"), help="report folder"
    )
    parser.add_argument(
        "--clips",
        nargs="+",
        default=[str(EVAL_CLIPS)],
        metavar="PATH|DIR|GLOB",
        help="clips to measure (default: the eval_only talking heads)",
    )
    parser.add_argument("--index", type=Path, default=EVAL_INDEX, help="CSV: file -> person")
    parser.add_argument(
        "--training-manifest",
        type=Path,
        help="the model's training dataset's manifest.jsonl: label each clip by whether the "
        "model trained on its person, and give the means of each group",
    )
    parser.add_argument("--max-frames", type=int, default=50, help="frames per clip")
    parser.add_argument("--head", action="store_true", help="the first frames, not the last")
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    parser.add_argument("--model", default="lite", help="lite or a generator .safetensors")
    parser.add_argument(
        "--no-guard", action="store_true", help="the model without its fill guard (--no-guard)"
    )
    parser.add_argument("--seed", type=int, default=0, help="varies every clip's occluder")
    parser.add_argument(
        "--mask-weights",
        type=Path,
        help="--mask-detect's segmenter (.onnx; default the shipped one)",
    )
    parser.add_argument(
        "--placement-weights",
        type=Path,
        help="--mask-detect's placement network (.onnx; default the shipped one)",
    )
    parser.add_argument(
        "--placement-from",
        choices=get_args(PlacementSource),
        default="both",
        help="how --mask-detect places covered faces (MaskDetectOptions.placement_from)",
    )
    parser.add_argument(
        "--refine-passes",
        type=int,
        default=MaskDetectOptions.refine_passes,
        help="second looks of the placement network (MaskDetectOptions.refine_passes; 0: off)",
    )
    parser.add_argument(
        "--hole-share",
        type=float,
        default=MaskDetectOptions.hole_share,
        help="islands the region encloses are restored up to this share of its area "
        "(MaskDetectOptions.hole_share; 0: off)",
    )
    parser.add_argument(
        "--rim-px",
        type=int,
        default=MaskDetectOptions.rim_px,
        help="the occluder's soft edge restored around the region (MaskDetectOptions.rim_px; "
        "0: off, avstream process --mask-hard-edges)",
    )
    parser.add_argument(
        "--past-crop",
        nargs="*",
        metavar="KEY=VALUE",
        default=[],
        help="PastCropOptions fields to change (e.g. reach=0.4), or 'off' "
        "(avstream process --no-past-crop)",
    )
    parser.add_argument("--dlib-every", type=int, default=10, help="dlib on every Nth frame")
    parser.add_argument("--keep", action="store_true", help="keep the mp4 files in -o DIR")
    return parser


OptionsT = TypeVar("OptionsT", bound="DataclassInstance")


def override_fields(options: OptionsT, assignments: Sequence[str]) -> OptionsT:
    """A frozen options dataclass with ``KEY=VALUE`` assignments applied (values as bools,
    ints, floats or strings, by the field's annotation); exits with a one-line message for
    an unknown key or an empty value. Shared by ``--past-crop`` here and ``--set`` of
    ``bench.false_flags`` and ``bench.seg_diagnose``."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(options)}
    changes: dict[str, Any] = {}
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        if key not in fields or not value:
            name = type(options).__name__
            raise SystemExit(f"expected KEY=VALUE of {name}, got {assignment!r}")
        kind = fields[key]
        if kind == "bool":
            changes[key] = value.lower() in ("1", "true", "yes")
        elif kind in ("int", "float"):
            changes[key] = int(value) if kind == "int" else float(value)
        else:
            changes[key] = value
    return dataclasses.replace(options, **changes)


def past_crop_options(assignments: Sequence[str]) -> PastCropOptions | None:
    """``--past-crop``: the default options, ``off`` (None), or fields set to numbers."""
    if list(assignments) == ["off"]:
        return None
    return override_fields(PastCropOptions(), assignments)


def main(argv: list[str] | None = None) -> int:
    """Run the bench, write quality.json, quality.md and montage.png; returns 0."""
    args = build_parser().parse_args(argv)
    if args.max_frames < 1 or args.dlib_every < 1:
        raise SystemExit("--max-frames and --dlib-every must be >= 1")
    args.conditions = [c for c in CONDITIONS if c in args.conditions]
    cv2.setNumThreads(1)
    args.output.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if args.keep:
            work = args.output / "videos"
            work.mkdir(exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="avq_")))
        report = run(args, work)
    (args.output / "quality.json").write_text(json.dumps(report, indent=1))
    (args.output / "quality.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
