"""End-to-end restoration quality: a real video with a face mask painted on, restored by
``avstream process --mask-detect``, compared with the original unmasked video.

1. Every tracked face of the (unmasked) input gets one face mask (surgical, cloth, N95 or
   KN95, painted by ``training.occluders``), drawn once per track from a fixed seed and
   painted in the aligned crop every frame, so the same mask rides on the face. The masked
   clip keeps the input's timestamps and audio packets (the model listens to the speaker).
2. The masked clip is restored by the real file pipeline (``process_file`` with the
   ``MaskDetector`` the CLI builds for ``--mask-detect``), once per inpainter, and a plain
   decode + encode of the same file is timed in the same run: speed is reported as a ratio
   to it because the cores here are shared and noisy.
3. Every file is decoded again, frame by frame against the original (frame counts and
   timestamps must match): PSNR and mean absolute error (8-bit levels) inside the painted
   region dilated by ``DILATE_PX``, for the masked input (no restoration) and each
   inpainter; the detector's restored region against the painted one (IoU, precision,
   recall, pooled over frames), both the mask it returned (``detect_*``) and the frame
   pixels the compositor was allowed to change with it (``changed_*``: the blend ramp
   included); the SFace cosine similarity of every face to the same face in the original
   (``sface_cosine``, mean over faces and frames: what the restoration keeps of the
   identity); and flicker, the mean absolute frame-to-frame change inside the painted
   region (the ``original`` row is what head motion alone gives).
4. A reference row, ``telea_true_mask``: OpenCV Telea on every full-resolution frame of the
   masked clip with the true painted mask as its hole (no detector, no crop, no blend),
   encoded like the others. The detector path should come close to it.

    python -m bench.restore_video --input CLIP.mp4 [--inpainters model telea]
        [--max-frames N] [--seed S] [--keep DIR] [--feather-px F] [--dilate-px D]

Run it with ``-m``: as a script, ``bench/`` comes first on ``sys.path`` and ``bench/engines.py``
shadows the ``engines`` package. With ``--max-frames`` the masked clip still carries the
whole input's audio (the writer copies every remaining audio packet when it finishes).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ["OMP_NUM_THREADS"] = "1"

import cv2
import numpy as np
import numpy.typing as npt

from stream.align import Placement
from stream.composite import changed_region, composite_weight
from stream.engines_cli import open_model_inpainter, parse_backend_arguments
from stream.inpaint import Inpainter, OpenCVInpainter, OpenCVMethod
from stream.mask_detect import MaskDetectOptions, MaskDetector
from stream.media import EncodeOptions, MediaInfo, VideoReader, VideoWriter, probe
from stream.pipeline import ProcessOptions, ProcessReport, process_file
from stream.restore import FaceAnalyser, TrackedFace
from stream.speaker import SpeechWindow
from stream.types import AlignedFace, FloatArray, Image, Mask, Occlusion, VideoFrame
from training.masks import FACE_MASK_KINDS, FaceMaskShape, ShapeGenerator, ShapeSample
from training.occluders import OccluderStyle, render_occluder
from training.prepare import OpenCvSFace

INPAINTERS = ("model", "telea", "ns")
TRUE_MASK = "telea_true_mask"
"""The reference row: full-resolution Telea with the painted mask as its hole."""
TELEA_RADIUS_PX = 5.0
"""Telea's neighbourhood for the reference row: the CLI's --inpaint-radius-px default."""
DILATE_PX = 3
"""Growth of the painted region for PSNR/MAE (frame pixels): the restored blend and the
occluder's anti-aliased edge reach a little beyond the painted coverage."""

ENCODE = EncodeOptions(crf=18, preset="medium", threads=1)
"""The CLI's encoder defaults, on one thread: for the masked clip, every restored file and
the transcode floor alike, so the speed ratio compares like with like."""

BoolMask = npt.NDArray[np.bool_]


# --- per-frame masks, kept small -----------------------------------------------------------


@dataclass
class FrameMasks:
    """One boolean (H, W) mask per frame, bit-packed: a long clip's truth stays small."""

    shape: tuple[int, int]
    _packed: list[npt.NDArray[np.uint8]] = field(default_factory=list)

    def append(self, mask: BoolMask) -> None:
        """Add the next frame's mask."""
        if mask.shape != self.shape:
            raise ValueError(f"mask shape {mask.shape} is not the frame shape {self.shape}")
        self._packed.append(np.packbits(mask, axis=None))

    def __getitem__(self, index: int) -> BoolMask:
        count = self.shape[0] * self.shape[1]
        bits = np.unpackbits(self._packed[index], count=count)
        return bits.reshape(self.shape).astype(bool)

    def __len__(self) -> int:
        return len(self._packed)


def to_frame(mask_256: Mask, inverse_affine: FloatArray, shape: tuple[int, int]) -> BoolMask:
    """A crop-space coverage mask in frame pixels (covered where the warped value >= 0.5)."""
    height, width = shape
    warped = cv2.warpAffine(mask_256, inverse_affine, (width, height), flags=cv2.INTER_LINEAR)
    return np.asarray(warped >= 0.5, dtype=bool)


# --- 1. painting the face masks -------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _TrackMask:
    shape: ShapeSample
    paint_seed: int


class FaceMaskPainter:
    """Paints one face mask per track: its shape and material are drawn once per track id
    (from ``seed``), so the same mask stays on the face and moves with it. ``shapes``: what
    is painted (default: any of the face-mask kinds; e.g. ``HandBlob()`` for a hand)."""

    def __init__(
        self,
        seed: int,
        style: OccluderStyle | None = None,
        shapes: ShapeGenerator | None = None,
    ) -> None:
        self._seed = seed
        self._style = style or OccluderStyle()
        self._shapes = shapes or FaceMaskShape(styles=FACE_MASK_KINDS)
        self._tracks: dict[int, _TrackMask] = {}

    @property
    def kinds(self) -> dict[int, str]:
        """The face-mask kind painted on each track so far."""
        return {track_id: str(t.shape.kind) for track_id, t in sorted(self._tracks.items())}

    def paint(self, image: Image, face: TrackedFace) -> tuple[Image, BoolMask]:
        """``image`` with the track's mask painted on ``face``, and the frame pixels it
        covers (the occluder's coverage, warped from the crop)."""
        track = self._track(face.track_id)
        # The same paint seed every frame: the same colour, shading and grain, one object
        # riding on the face instead of a new one each frame.
        painted, coverage = render_occluder(
            face.aligned.crop, track.shape, np.random.default_rng(track.paint_seed), self._style
        )
        return _paste(image, painted, track.shape.alpha, coverage, face.aligned)

    def _track(self, track_id: int) -> _TrackMask:
        if track_id not in self._tracks:
            shape_seed, paint_seed = np.random.SeedSequence([self._seed, track_id]).generate_state(
                2
            )
            shape = self._shapes.sample(np.random.default_rng(int(shape_seed)))
            self._tracks[track_id] = _TrackMask(shape, int(paint_seed))
        return self._tracks[track_id]


def _paste(
    image: Image, painted: Image, alpha: Mask, coverage: Mask, aligned: AlignedFace
) -> tuple[Image, BoolMask]:
    """Warp the painted crop back into the frame and blend it in by the occluder's soft
    coverage; pixels with no coverage are left exactly as decoded."""
    height, width = image.shape[:2]
    warped = cv2.warpAffine(
        painted, aligned.inverse_affine, (width, height), flags=cv2.INTER_LINEAR
    ).astype(np.float32)
    weight = cv2.warpAffine(alpha, aligned.inverse_affine, (width, height), flags=cv2.INTER_LINEAR)
    touched = weight > 0
    # The painted crop's soft edge already holds the (resampled) face; blending it with the
    # frame's own pixels keeps the edge's face detail sharp.
    w = weight[touched][:, None]
    out = image.copy()
    out[touched] = np.clip(np.rint(warped[touched] * w + image[touched] * (1.0 - w)), 0, 255)
    return out, to_frame(coverage, aligned.inverse_affine, (height, width))


@dataclass(frozen=True, eq=False)
class MaskedClip:
    """The masked file and what was painted: per-frame truth and timestamps. The masked
    file holds the source's frames from ``first_frame`` on (and all of its audio)."""

    path: Path
    info: MediaInfo
    pts: tuple[int | None, ...]
    truth: FrameMasks
    kinds: dict[int, str]
    affines: tuple[tuple[FloatArray, ...], ...]
    """Per frame, each face's frame -> crop affine in the original (for SFace crops)."""
    first_frame: int = 0


def make_masked_clip(
    source: Path,
    output: Path,
    seed: int,
    max_frames: int | None = None,
    *,
    first_frame: int = 0,
    shapes: ShapeGenerator | None = None,
) -> MaskedClip:
    """Paint a face mask (or ``shapes``) on every tracked face of ``max_frames`` frames of
    ``source`` from ``first_frame`` on, and write them to ``output`` with their timestamps
    and all of the input's audio packets. Raises ``ValueError`` when nothing decodes."""
    info = probe(source)
    analyser = FaceAnalyser()
    painter = FaceMaskPainter(seed, shapes=shapes)
    truth = FrameMasks((info.height, info.width))
    pts: list[int | None] = []
    affines: list[tuple[FloatArray, ...]] = []
    stop = None if max_frames is None else first_frame + max_frames
    with (
        VideoReader(source, threads=1) as reader,
        VideoWriter(output, info, ENCODE, copy_audio_from=source) as writer,
    ):
        for frame in itertools.islice(reader, stop):
            # Frames before first_frame are tracked too: the painted ones see a steady tracker.
            faces = analyser.analyse(frame).faces
            if frame.index < first_frame:
                continue
            image = frame.image
            covered = np.zeros(truth.shape, dtype=bool)
            for face in faces:
                image, face_covered = painter.paint(image, face)
                covered |= face_covered
            affines.append(tuple(f.aligned.affine for f in faces))
            writer.write(
                VideoFrame(index=frame.index, pts=frame.pts, time_base=frame.time_base, image=image)
            )
            truth.append(covered)
            pts.append(frame.pts)
        if not pts:
            raise ValueError(f"no video frame of {source} could be decoded")
        writer.finish()
    return MaskedClip(output, info, tuple(pts), truth, painter.kinds, tuple(affines), first_frame)


def rewrite_frames(clip: MaskedClip, output: Path, restore: Callable[[int, Image], Image]) -> Path:
    """Every frame of the masked clip through ``restore(index, image)`` (``index`` counts
    the masked clip's frames, as ``clip.truth`` does), written with the same encoder and
    audio as every restoration: the references that work on the truth, not the pipeline."""
    with (
        VideoReader(clip.path, threads=1) as reader,
        VideoWriter(output, clip.info, ENCODE, copy_audio_from=clip.path) as writer,
    ):
        for index, frame in enumerate(reader):
            image = restore(index, frame.image)
            writer.write(
                VideoFrame(index=frame.index, pts=frame.pts, time_base=frame.time_base, image=image)
            )
        writer.finish()
    return output


def telea_true_mask(clip: MaskedClip, output: Path) -> Path:
    """The reference: Telea on each full-resolution masked frame with the painted truth as
    its hole, written with the same encoder as every restoration."""

    def telea(index: int, image: Image) -> Image:
        hole = clip.truth[index].astype(np.uint8) * 255
        return np.asarray(cv2.inpaint(image, hole, TELEA_RADIUS_PX, cv2.INPAINT_TELEA), np.uint8)

    return rewrite_frames(clip, output, telea)


# --- 2. restoring ---------------------------------------------------------------------------

_Region = tuple[Occlusion, FloatArray]
"""A restored face's occlusion (its crop-space region and soft rim) and inverse affine."""


def _covered_regions(faces: list[AlignedFace], occlusions: list[Occlusion]) -> list[_Region]:
    """The occlusion (its arrays copied) and crop -> frame affine of each face with
    something to restore."""
    return [
        (
            dataclasses.replace(
                occ,
                mask_256=occ.mask_256.copy(),
                rim_256=None if occ.rim_256 is None else occ.rim_256.copy(),
            ),
            face.inverse_affine,
        )
        for face, occ in zip(faces, occlusions, strict=True)
        if occ.mask_256.any()
    ]


class RecordingDetector:
    """An ``OcclusionModel`` passing ``MaskDetector``'s answers through unchanged while
    keeping, per call, the region of every face it asked to restore. It places covered
    faces as the detector does (``PlacesCovered``: ``placement``, ``predict_placed``), and
    then keeps the placed crops' regions, which are what the pipeline restores."""

    def __init__(self, detector: MaskDetector) -> None:
        self._detector = detector
        self.calls: list[list[_Region]] = []

    def predict(
        self, faces: list[AlignedFace], track_ids: Sequence[int] | None = None
    ) -> list[Occlusion]:
        """The detector's occlusions; the covered ones are recorded."""
        occlusions = self._detector.predict(faces, track_ids)
        self.calls.append(_covered_regions(faces, occlusions))
        return occlusions

    def placement(self) -> Placement | None:
        """The detector's placement of covered faces."""
        return self._detector.placement()

    def predict_placed(self, faces: list[AlignedFace], track_ids: Sequence[int]) -> list[Occlusion]:
        """The detector's second pass on the placed crops of the latest call's covered faces
        (all of them, in order); their regions replace that call's record."""
        occlusions = self._detector.predict_placed(faces, track_ids)
        self.calls[-1] = _covered_regions(faces, occlusions)
        return occlusions

    def reset(self) -> None:
        """Forget the detector's per-track state."""
        self._detector.reset()

    def regions_by_frame(self, report: ProcessReport) -> dict[int, list[_Region]]:
        """The recorded regions keyed by frame index.

        The pipeline calls ``predict`` only for frames with faces, and restores exactly the
        faces with a non-empty mask; so the calls with a covered face are, in order, the
        frames whose ``track_ids`` (the restored faces) are not empty."""
        covered_calls = [regions for regions in self.calls if regions]
        restored_frames = [i for i, ids in enumerate(report.track_ids) if ids]
        if len(covered_calls) != len(restored_frames):
            raise RuntimeError(
                f"{len(covered_calls)} detector calls restored a face but "
                f"{len(restored_frames)} frames were restored"
            )
        by_frame = dict(zip(restored_frames, covered_calls, strict=True))
        for index, regions in by_frame.items():
            if len(regions) != len(report.track_ids[index]):
                raise RuntimeError(f"frame {index}: detector and pipeline disagree on faces")
        return by_frame


@dataclass(frozen=True, eq=False)
class Restoration:
    """One inpainter's run of the pipeline over the masked clip."""

    name: str
    path: Path
    report: ProcessReport
    regions: dict[int, list[_Region]]
    open_s: float
    """Time to load the inpainter (model and backend), outside the pipeline's wall time."""
    feather_px: float
    """The blend ramp the pipeline ran with: with the regions, it gives the changed pixels."""


def restore(
    masked: Path,
    output: Path,
    name: str,
    feather_px: float | None = None,
    dilate_px: int | None = None,
) -> Restoration:
    """Run ``avstream process --mask-detect --inpainter NAME`` on ``masked`` as a library
    call, the way ``stream.cli`` does (the model hears the file's own speech).
    ``feather_px`` and ``dilate_px`` override the pipeline's and detector's defaults."""
    if name not in INPAINTERS:
        raise ValueError(f"unknown inpainter {name!r}; one of {', '.join(INPAINTERS)}")
    with contextlib.ExitStack() as stack:
        start = time.perf_counter()
        inpainter: Inpainter
        sink: Callable[[SpeechWindow], None] | None = None
        if name == "model":
            model = stack.enter_context(open_model_inpainter(_model_arguments(), threads=1))
            inpainter, sink = model, model.use_speech
        else:
            method: OpenCVMethod = "ns" if name == "ns" else "telea"
            inpainter = OpenCVInpainter(method)
        open_s = time.perf_counter() - start
        restoration = restore_with(
            masked, output, name, inpainter, sink, feather_px=feather_px, dilate_px=dilate_px
        )
    return dataclasses.replace(restoration, open_s=open_s)


def restore_with(
    masked: Path,
    output: Path,
    name: str,
    inpainter: Inpainter,
    speaker_sink: Callable[[SpeechWindow], None] | None = None,
    *,
    speaker_audio: Path | None = None,
    feather_px: float | None = None,
    dilate_px: int | None = None,
    detect_options: MaskDetectOptions | None = None,
) -> Restoration:
    """``avstream process --mask-detect`` of ``masked`` with an open ``inpainter`` and its
    speaker sink, as a library call (``speaker_audio``: ``--speaker-audio PATH``;
    ``detect_options``: the detector's, the CLI's defaults unless given: another segmenter,
    another placement)."""
    if detect_options is None:
        detect_options = MaskDetectOptions()
    if dilate_px is not None:
        detect_options = dataclasses.replace(detect_options, dilate_px=dilate_px)
    detector = RecordingDetector(MaskDetector(detect_options))
    options = ProcessOptions(encode=ENCODE, decode_threads=1, speaker_audio=speaker_audio)
    if feather_px is not None:
        options = dataclasses.replace(options, feather_px=feather_px)
    report = process_file(masked, output, inpainter, detector, options, speaker_sink=speaker_sink)
    regions = detector.regions_by_frame(report)
    return Restoration(name, output, report, regions, 0.0, options.feather_px)


def _model_arguments() -> argparse.Namespace:
    """The backend options of ``--model lite --backend onnxruntime``, with every other
    option at the CLI's default."""
    return parse_backend_arguments(["--model", "lite", "--backend", "onnxruntime"])


def transcode(
    source: Path,
    output: Path,
    encode: EncodeOptions = ENCODE,
    *,
    max_frames: int | None = None,
    copy_audio: bool = True,
) -> None:
    """A plain PyAV decode + encode of ``source`` (its first ``max_frames`` frames), with no
    restoration at all: the floor of the speed ratio and the reference of pass-through
    checks. ``copy_audio``: copy the audio packets too (all of them)."""
    info = probe(source)
    with (
        VideoReader(source, threads=1) as reader,
        VideoWriter(output, info, encode, copy_audio_from=source if copy_audio else None) as writer,
    ):
        for frame in itertools.islice(reader, max_frames):
            writer.write(frame)
        writer.finish()


def transcode_seconds(source: Path, output: Path) -> float:
    """Wall time of ``transcode`` (same encoder settings, audio copied): the floor that the
    pipeline's wall time is divided by."""
    start = time.perf_counter()
    transcode(source, output)
    return time.perf_counter() - start


# --- 3. measuring ---------------------------------------------------------------------------


@dataclass
class PixelErrors:
    """Pooled pixel errors against the original (all three channels)."""

    squared: float = 0.0
    absolute: float = 0.0
    count: int = 0

    def add(self, image: Image, original: Image, region: BoolMask) -> None:
        diff = image[region].astype(np.float64) - original[region]
        self.squared += float(np.square(diff).sum())
        self.absolute += float(np.abs(diff).sum())
        self.count += diff.size

    def summary(self) -> dict[str, float | None]:
        if not self.count:
            return {"psnr_db": None, "mae_levels": None}
        mse = self.squared / self.count
        psnr = round(10.0 * math.log10(255.0**2 / mse), 2) if mse > 0 else None
        return {"psnr_db": psnr, "mae_levels": round(self.absolute / self.count, 3)}


@dataclass
class _Flicker:
    """Mean absolute change between consecutive frames (pooled over pixels)."""

    total: float = 0.0
    count: int = 0

    def add(self, previous: Image, current: Image, region: BoolMask) -> None:
        diff = current[region].astype(np.int16) - previous[region]
        self.total += float(np.abs(diff).sum())
        self.count += diff.size

    def summary(self) -> float | None:
        return round(self.total / self.count, 3) if self.count else None


@dataclass
class DetectionOverlap:
    """The detector's restored region against the painted truth, pooled over frames."""

    intersection: int = 0
    union: int = 0
    truth: int = 0
    detected: int = 0

    def add(self, truth: BoolMask, detected: BoolMask) -> None:
        self.intersection += int(np.count_nonzero(truth & detected))
        self.union += int(np.count_nonzero(truth | detected))
        self.truth += int(np.count_nonzero(truth))
        self.detected += int(np.count_nonzero(detected))

    def summary(self, prefix: str = "detect") -> dict[str, float | None]:
        def ratio(part: int, whole: int) -> float | None:
            return round(part / whole, 3) if whole else None

        return {
            f"{prefix}_iou": ratio(self.intersection, self.union),
            f"{prefix}_precision": ratio(self.intersection, self.detected),
            f"{prefix}_recall": ratio(self.intersection, self.truth),
        }


@dataclass
class _Identity:
    """Mean SFace cosine similarity of a method's faces to the same faces in the original."""

    total: float = 0.0
    count: int = 0

    def add(self, embedding: npt.NDArray[np.float32], original: npt.NDArray[np.float32]) -> None:
        norms = np.linalg.norm(embedding) * np.linalg.norm(original)
        self.total += float(np.dot(embedding, original) / max(float(norms), 1e-12))
        self.count += 1

    def summary(self) -> float | None:
        return round(self.total / self.count, 4) if self.count else None


def face_crops(image: Image, affines: Sequence[FloatArray]) -> npt.NDArray[np.uint8]:
    """The aligned crops of ``image`` at the original's face positions, (N, 256, 256, 3)."""
    crops = [
        cv2.warpAffine(image, affine, (256, 256), flags=cv2.INTER_LINEAR) for affine in affines
    ]
    return np.stack(crops).astype(np.uint8)


def frames_in_step(
    paths: Sequence[Path], pts: Sequence[int | None], first: int = 0
) -> Iterator[list[Image]]:
    """The i-th frame of every file together. Raises ``ValueError`` unless every file has
    exactly ``len(pts)`` frames with these timestamps (the first file, the original, from
    its frame ``first`` on; it may have more)."""
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(VideoReader(p, threads=1)) for p in paths]
        original = itertools.islice(readers[0], first, first + len(pts))
        streams: list[Iterable[VideoFrame]] = [original]
        streams += readers[1:]
        for index, frames in enumerate(itertools.zip_longest(*streams)):
            images: list[Image] = []
            for path, frame in zip(paths, frames, strict=True):
                if frame is None:
                    counts = ", ".join(
                        f"{p.name}: {r.stats.frames}" for p, r in zip(paths, readers, strict=True)
                    )
                    raise ValueError(f"frame counts differ at frame {index} ({counts})")
                if frame.pts != pts[index]:
                    raise ValueError(
                        f"{path.name} frame {index}: pts {frame.pts}, expected {pts[index]}"
                    )
                images.append(frame.image)
            yield images


def measure(
    original: Path,
    clip: MaskedClip,
    restorations: Sequence[Restoration],
    references: Sequence[tuple[str, Path]] = (),
) -> dict[str, dict[str, Any]]:
    """Per method (``original``, ``masked``, each inpainter, each reference file): errors
    inside the dilated painted region, flicker inside the painted region, SFace cosine to
    the original's faces and, per inpainter, detection quality against the painted
    region."""
    names = ["original", "masked", *(r.name for r in restorations), *(n for n, _ in references)]
    paths = [original, clip.path, *(r.path for r in restorations), *(p for _, p in references)]
    errors = {name: PixelErrors() for name in names[1:]}
    flicker = {name: _Flicker() for name in names}
    identity = {name: _Identity() for name in names[1:]}
    overlap = {r.name: DetectionOverlap() for r in restorations}
    changed = {r.name: DetectionOverlap() for r in restorations}
    sface = OpenCvSFace()
    side = 2 * DILATE_PX + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    previous: list[Image] | None = None
    previous_truth = np.zeros(clip.truth.shape, dtype=bool)
    for index, images in enumerate(frames_in_step(paths, clip.pts, clip.first_frame)):
        truth = clip.truth[index]
        region = cv2.dilate(truth.view(np.uint8), kernel).view(bool)
        for name, image in zip(names[1:], images[1:], strict=True):
            errors[name].add(image, images[0], region)
        if previous is not None:
            steady = truth & previous_truth  # painted in both frames
            for name, before, now in zip(names, previous, images, strict=True):
                flicker[name].add(before, now, steady)
        for r in restorations:
            detected = np.zeros(clip.truth.shape, dtype=bool)
            touched = np.zeros(clip.truth.shape, dtype=bool)
            for occlusion, inverse in r.regions.get(index, []):
                detected |= to_frame(occlusion.mask_256, inverse, clip.truth.shape)
                weight = composite_weight(occlusion, r.feather_px)
                touched |= changed_region(weight, inverse, clip.truth.shape)
            overlap[r.name].add(truth, detected)
            changed[r.name].add(truth, touched)
        if clip.affines[index]:
            embeddings = [sface(face_crops(image, clip.affines[index])) for image in images]
            for name, faces in zip(names[1:], embeddings[1:], strict=True):
                for face, face_original in zip(faces, embeddings[0], strict=True):
                    identity[name].add(face, face_original)
        previous, previous_truth = images, truth
    metrics: dict[str, dict[str, Any]] = {
        "original": {"flicker_levels": flicker["original"].summary()}
    }
    for name in names[1:]:
        metrics[name] = {
            **errors[name].summary(),
            "flicker_levels": flicker[name].summary(),
            "sface_cosine": identity[name].summary(),
        }
    for r in restorations:
        metrics[r.name].update(overlap[r.name].summary())
        metrics[r.name].update(changed[r.name].summary("changed"))
        metrics[r.name].update(pipeline_summary(r.report))
    return metrics


def pipeline_summary(report: ProcessReport) -> dict[str, Any]:
    """What the pipeline itself says it did."""
    restored_frames = sum(1 for ids in report.track_ids if ids)
    return {
        "restored_frame_fraction": round(restored_frames / max(report.frames_out, 1), 3),
        "faces_restored": report.faces_restored,
        "faces_regenerated": report.faces_regenerated,
        "speaker_windows": report.speaker_windows,
        "audio": report.audio_mode,
        "tracks": [
            {
                "track_id": t.track_id,
                "frames": t.frames,
                "covered_frames": t.covered_frames,
                "restored_frames": t.restored_frames,
                "mean_coverage": round(t.mean_coverage, 4),
                "max_coverage": round(t.max_coverage, 4),
            }
            for t in report.coverage
        ],
    }


# --- the command ----------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Paint, restore with every inpainter, time the transcode floor and measure; files are
    written into ``work``. Returns the JSON-ready result."""
    clip = make_masked_clip(args.input, work / "masked.mp4", args.seed, args.max_frames)
    transcode_s = transcode_seconds(clip.path, work / "transcoded.mp4")
    restorations = [
        restore(clip.path, work / f"restored_{name}.mp4", name, args.feather_px, args.dilate_px)
        for name in args.inpainters
    ]
    reference = telea_true_mask(clip, work / f"restored_{TRUE_MASK}.mp4")
    metrics = measure(args.input, clip, restorations, [(TRUE_MASK, reference)])
    frames = len(clip.pts)
    rate = clip.info.average_rate
    return {
        "input": str(args.input),
        "frames": frames,
        "fps": round(float(rate), 3) if rate else None,
        "size": [clip.info.width, clip.info.height],
        "seed": args.seed,
        "feather_px": {r.name: r.feather_px for r in restorations},
        "dilate_px": args.dilate_px
        if args.dilate_px is not None
        else MaskDetectOptions().dilate_px,
        "face_masks": {str(k): v for k, v in clip.kinds.items()},
        "frames_with_face_mask": sum(1 for i in range(frames) if clip.truth[i].any()),
        "frames_and_timestamps_match": True,  # measure() raises when they do not
        "transcode_s": round(transcode_s, 3),
        "seconds": {r.name: round(r.report.wall_s, 3) for r in restorations},
        "open_s": {r.name: round(r.open_s, 3) for r in restorations},
        "ratio_to_transcode": {
            r.name: round(r.report.wall_s / transcode_s, 2) for r in restorations
        },
        "metrics": metrics,
    }


def build_parser() -> argparse.ArgumentParser:
    """The bench's arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.restore_video",
        description="paint a face mask on a real video, restore it with --mask-detect and "
        "compare with the original",
    )
    parser.add_argument("--input", type=Path, required=True, help="unmasked talking-head video")
    parser.add_argument("--inpainters", nargs="+", choices=INPAINTERS, default=["model", "telea"])
    parser.add_argument("--max-frames", type=int, help="use only the first N frames")
    parser.add_argument("--seed", type=int, default=0, help="face-mask shape and material")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the mp4 files here")
    parser.add_argument(
        "--feather-px", type=float, help="the pipeline's blend ramp (default: its default)"
    )
    parser.add_argument(
        "--dilate-px", type=int, help="growth of detected masks (default: the detector's)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the bench and print one JSON object; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {args.max_frames}")
    args.inpainters = list(dict.fromkeys(args.inpainters))  # each once, in the order given
    cv2.setNumThreads(1)
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            work = args.keep
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        result = run(args, work)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
