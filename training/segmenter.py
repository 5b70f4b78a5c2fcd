"""Training the occlusion segmenter (``avinpaint.occlusion_net``): data, loop, evaluation.

Real unmasked faces are found with our detector and aligned with our aligner (exactly what
``--mask-detect`` sees at run time), then every training sample paints a fresh synthetic
occluder on one of them: ``training.occluders`` shapes and materials, or a MaskTheFace
template warped onto the lower face; some samples stay clean, so that the network learns
that most of a face is not covered. Held-out sets are split by identity (or by photo where
identities are unknown) and never meet the training set.

    python -m training.segmenter prepare --data ../shared/data --out /tmp/seg/faces
    python -m training.segmenter train --data ../shared/data --faces /tmp/seg/faces \
        --run /tmp/seg/run
    python -m training.segmenter export --run /tmp/seg/run --out avinpaint/weights
    python -m training.segmenter evaluate --data ../shared/data --faces /tmp/seg/faces \
        --out /tmp/seg/eval

Training is resumable: a checkpoint is written atomically every ``checkpoint_every_s`` and
a rerun of ``train`` with the same ``--run`` carries on from it. Batches are drawn from a
generator seeded by the step number, so a resumed run draws the same batches. Run it in the
background with one thread, e.g. ``OMP_NUM_THREADS=1 nohup python -m training.segmenter
train ... > /tmp/seg/train.log 2>&1 &``; ``RUN/log.jsonl`` has one line per checkpoint.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import av
import cv2
import numpy as np
import numpy.typing as npt
import torch

from avinpaint.occlusion_net import (
    SHIPPED_NAME,
    OcclusionNet,
    OcclusionNetConfig,
    export_onnx,
    load_occlusion_net,
    save_occlusion_net,
)
from avinpaint.spec import CROP_SIZE
from stream.align import align_face
from stream.detect import DetectorOptions, FaceDetector
from stream.mask_detect import FaceCoverage, MaskDetectOptions, MaskDetector
from stream.types import FaceDetection
from training.augment import draw_glasses, side_light, specular_highlight
from training.masks import (
    FaceMaskShape,
    FreeFormStrokes,
    HandBlob,
    MaskMixture,
    ObjectBlob,
    Scribble,
    ShapeGenerator,
)
from training.occluders import OccluderRenderer

log = logging.getLogger("training.segmenter")

Image = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.float32]
Split = Literal["train", "val", "test"]

# --- sources -------------------------------------------------------------------------------

_VIDEO_SUFFIXES = (".mp4", ".mpg", ".avi", ".mov", ".mkv")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".pgm", ".bmp")

TRAINING_SOURCES = (
    "talking_heads/pcavs",
    "talking_heads/grid",
    "identities/deepface",
    "identities/orl",
    "faces/unmasked/fmd",
)
"""Folders under the shared data root whose faces train the segmenter (training split)."""

HARD_NEGATIVE_SOURCES = (
    "faces/lfw",
    "faces/face_research_lab",
    "talking_heads/more",
)
"""Folders (beyond ``TRAINING_SOURCES``) whose clean faces ``occlusion_v3`` fine-tuned on as
hard negatives (news photos, studio portraits, TV and HDTF video): training split only."""

MASKED_SOURCE = "faces/masked/fmd"
"""Real masked photos: evaluation only."""

MASKTHEFACE_ROOT = "occluders/maskthface"
"""MaskTheFace templates and fabric textures (MIT)."""


@dataclass(frozen=True)
class FaceSource:
    """One file to take faces from: a photo, or a video read every ``frame_step`` frames.

    ``group`` is the identity (or the photo where the identity is unknown): the unit that the
    train/val/test split keeps together."""

    path: Path
    dataset: str
    group: str
    frame_step: int = 0

    @property
    def split(self) -> Split:
        """Deterministic split of this source's group."""
        return split_of(self.group)


def split_of(group: str) -> Split:
    """70% train, 10% val, 20% test, by a hash of the group (stable across runs and
    machines, and independent of which other files exist)."""
    bucket = int(hashlib.sha1(group.encode()).hexdigest()[:8], 16) % 100
    if bucket < 70:
        return "train"
    if bucket < 80:
        return "val"
    return "test"


def list_sources(data_root: Path, folders: Sequence[str] = TRAINING_SOURCES) -> list[FaceSource]:
    """Every face source under these folders of the shared data root, sorted by path.

    Raises FileNotFoundError when a folder is missing."""
    sources: list[FaceSource] = []
    for folder in folders:
        root = data_root / folder
        if not root.is_dir():
            raise FileNotFoundError(f"face source folder missing: {root}")
        dataset = folder.replace("/", "_")
        for path in sorted(root.rglob("*")):
            suffix = path.suffix.lower()
            if not path.is_file() or suffix not in _VIDEO_SUFFIXES + _IMAGE_SUFFIXES:
                continue
            is_video = suffix in _VIDEO_SUFFIXES
            # PC-AVS frame folders: one frame in 8 (25 fps: 8 apart they differ in pose).
            if folder == "talking_heads/pcavs" and not is_video and int(path.stem) % 8 != 0:
                continue
            # Videos: 25 fps, neighbouring frames are near duplicates.
            step = 6 if is_video else 0
            sources.append(FaceSource(path, dataset, _group(folder, path), step))
    return sources


def _group(folder: str, path: Path) -> str:
    """Identity key of a file, from what each collection's names say (data README)."""
    if folder == "talking_heads/pcavs":
        # Ids of 9 digits are VoxCeleb ids: their first 4 digits name the person.
        name = path.stem if path.suffix.lower() in _VIDEO_SUFFIXES else path.parent.name
        return f"pcavs:{name[:4] if len(name) == 9 else name}"
    if folder == "talking_heads/grid":
        # The data README: sbia1a and id2_vcd_swwp2s look like the same man.
        return "grid:sbia1a" if path.stem == "id2_vcd_swwp2s" else f"grid:{path.stem}"
    if folder == "identities/orl":
        return f"orl:{path.parent.name}"
    if folder == "identities/deepface":
        return f"deepface:{_deepface_identity(path)}"
    if folder == "faces/unmasked/fmd":
        parts = path.stem.split("_")
        if len(parts) == 4 and parts[:2] == ["0", "0"]:
            return f"fmd:{parts[2]}"  # RMFD names: 0_0_<person>_<n>
        if path.stem.startswith("augmented_image"):
            return "fmd:augmented"  # augmented copies of each other: keep them together
        return f"fmd:{path.stem}"
    if folder == "faces/face_research_lab":
        # London set: <person>_neutral / <person>_smiling; the Lisa set is one woman.
        if path.parent.name == "lisa":
            return "frl:lisa"
        return f"frl:{path.parent.name}:{path.stem.split('_')[0]}"
    if folder == "talking_heads/more" and path.stem.startswith("cremad_"):
        return "more:cremad_" + path.stem.split("_")[1]  # one CREMA-D actor per id
    return f"{folder}:{path.stem}"


def _deepface_identity(path: Path) -> str:
    table = path.parent / "identity_clusters.csv"
    if table.is_file():
        for line in table.read_text().splitlines()[1:]:
            cluster, _, name = line.partition(",")
            if name.strip() == path.name:
                return cluster.strip()
    return path.stem


def read_images(source: FaceSource) -> Iterator[Image]:
    """The BGR images of a source: the photo, or every ``frame_step``-th video frame."""
    if source.frame_step <= 0:
        image = cv2.imread(str(source.path), cv2.IMREAD_COLOR)
        if image is not None:
            yield np.asarray(image, np.uint8)
        return
    with av.open(str(source.path)) as container:
        if not container.streams.video:
            return
        stream = container.streams.video[0]
        stream.thread_count = 1
        for index, frame in enumerate(container.decode(stream)):
            if index % source.frame_step == 0:
                yield np.asarray(frame.to_ndarray(format="bgr24"), np.uint8)


# --- finding and aligning faces --------------------------------------------------------------


def find_face(detector: FaceDetector, image: Image) -> FaceDetection | None:
    """The largest face YuNet finds, retrying on a padded, enlarged copy.

    Web photos are often cropped tight to the face (YuNet wants some context around it) or
    tiny; the second try adds a half-face border of replicated pixels on every side and
    scales the image up to at least 320 px."""
    faces = detector.detect(image)
    if not faces:
        height, width = image.shape[:2]
        scale = max(1.0, 320.0 / max(height, width))
        pad = round(0.5 * max(height, width))
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        if scale > 1.0:
            padded = cv2.resize(padded, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        found = detector.detect(np.asarray(padded, np.uint8))
        faces = [_unpad(f, pad, scale) for f in found]
    if not faces:
        return None
    return max(faces, key=lambda f: f.box[2] * f.box[3])


def _unpad(face: FaceDetection, pad: int, scale: float) -> FaceDetection:
    x, y, w, h = face.box
    return FaceDetection(
        box=(x / scale - pad, y / scale - pad, w / scale, h / scale),
        landmarks5=face.landmarks5 / scale - pad,
        score=face.score,
    )


def aligned_face(detector: FaceDetector, image: Image) -> Image | None:
    """The largest face of ``image`` aligned to the CROP_SIZE template, or None."""
    face = find_face(detector, image)
    if face is None:
        return None
    return align_face(image, face.landmarks5).crop


@dataclass(frozen=True)
class FaceSet:
    """Aligned crops (N, CROP_SIZE, CROP_SIZE, 3) with, per crop, its source file, dataset,
    group and split."""

    crops: npt.NDArray[np.uint8]
    paths: tuple[str, ...]
    datasets: tuple[str, ...]
    groups: tuple[str, ...]
    splits: tuple[Split, ...]

    def select(self, split: Split, datasets: Sequence[str] | None = None) -> npt.NDArray[np.intp]:
        """Indices of the crops in ``split`` (and in ``datasets`` when given)."""
        keep = [
            i
            for i, (s, d) in enumerate(zip(self.splits, self.datasets, strict=True))
            if s == split and (datasets is None or d in datasets)
        ]
        return np.asarray(keep, np.intp)


def prepare_faces(data_root: Path, out_dir: Path, folders: Sequence[str] = TRAINING_SOURCES) -> int:
    """Detect, align and store the faces of ``folders`` as ``crops.npy`` + ``index.json``.

    Returns the number of crops. Written under temporary names and renamed, so a partial
    run never leaves a set that ``load_faces`` would read."""
    detector = FaceDetector(DetectorOptions(min_face_px=32.0))
    crops, sources, misses = collect_faces(
        data_root, folders, lambda image: aligned_face(detector, image)
    )
    if not crops:
        raise RuntimeError(f"no face found under {data_root} in {list(folders)}")
    rows = [
        {
            "path": str(source.path.relative_to(data_root)),
            "dataset": source.dataset,
            "group": source.group,
            "split": source.split,
        }
        for source in sources
    ]
    save_with_index(out_dir, "crops", np.stack(crops), {"misses": misses, "crops": rows})
    log.info("prepared %d crops (%d images without a face) in %s", len(crops), misses, out_dir)
    return len(crops)


def collect_faces(
    data_root: Path, folders: Sequence[str], view: Callable[[Image], Image | None]
) -> tuple[list[Image], list[FaceSource], int]:
    """``view`` of every image of ``folders`` (None: no usable face in it): the views kept,
    the source of each, and how many images gave none."""
    views: list[Image] = []
    sources: list[FaceSource] = []
    skipped = 0
    for source in list_sources(data_root, folders):
        for image in read_images(source):
            kept = view(image)
            if kept is None:
                skipped += 1
                continue
            views.append(kept)
            sources.append(source)
    return views, sources, skipped


def save_with_index(
    out_dir: Path, name: str, array: npt.NDArray[np.uint8], index: dict[str, object]
) -> None:
    """Write ``out_dir/NAME.npy`` and ``out_dir/index.json``, each under a temporary name
    first and renamed once both are written, so a partial run never leaves a set to read."""
    out_dir.mkdir(parents=True, exist_ok=True)
    array_tmp = out_dir / f"{name}.partial.npy"
    np.save(array_tmp, array)
    index_tmp = out_dir / "index.partial.json"
    index_tmp.write_text(json.dumps(index, indent=1))
    array_tmp.replace(out_dir / f"{name}.npy")
    index_tmp.replace(out_dir / "index.json")


def load_faces(faces_dir: Path) -> FaceSet:
    """Read what ``prepare_faces`` wrote (the crops memory-mapped)."""
    index = json.loads((faces_dir / "index.json").read_text())
    crops = np.load(faces_dir / "crops.npy", mmap_mode="r")
    rows = index["crops"]
    if len(rows) != len(crops):
        raise RuntimeError(f"{faces_dir}: {len(crops)} crops but {len(rows)} index rows")
    return FaceSet(
        crops=crops,
        paths=tuple(r["path"] for r in rows),
        datasets=tuple(r["dataset"] for r in rows),
        groups=tuple(r["group"] for r in rows),
        splits=tuple(r["split"] for r in rows),
    )


# --- MaskTheFace templates -----------------------------------------------------------------

# Where MaskTheFace's six anchors (a: left cheek at the nose bridge, b: nose bridge, c: right
# cheek, d: left jaw, e: under the chin, f: right jaw) fall on our 256 crop template (eyes on
# row 78, 80 px apart; nose tip row ~124; mouth row ~170; chin ~row 215).
_ANCHORS_256 = np.array(
    [[50, 104], [128, 96], [206, 104], [62, 190], [128, 230], [194, 190]], np.float32
)


@dataclass(frozen=True, eq=False)
class MaskTemplate:
    """A MaskTheFace mask image (BGR + alpha) and its six anchor points (pixels)."""

    name: str
    bgr: Image
    alpha: Mask
    anchors: npt.NDArray[np.float32]


def load_mask_templates(maskthface_root: Path) -> tuple[MaskTemplate, ...]:
    """The templates listed in ``masks/masks.cfg``; raises FileNotFoundError if absent."""
    config_path = maskthface_root / "masks" / "masks.cfg"
    if not config_path.is_file():
        raise FileNotFoundError(f"MaskTheFace config missing: {config_path}")
    parser = configparser.ConfigParser()
    parser.read(config_path)
    templates = []
    for name in parser.sections():
        section = parser[name]
        if "template" not in section:
            continue  # MaskTheFace's own placeholders ("empty", "inpaint")
        image = cv2.imread(str(maskthface_root / section["template"]), cv2.IMREAD_UNCHANGED)
        if image is None or image.ndim != 3 or image.shape[2] != 4:
            continue
        anchors = np.array(
            [[float(v) for v in section[f"mask_{k}"].split(",")] for k in "abcdef"], np.float32
        )
        templates.append(
            MaskTemplate(
                name=name,
                bgr=np.ascontiguousarray(image[:, :, :3]),
                alpha=image[:, :, 3].astype(np.float32) / 255.0,
                anchors=anchors,
            )
        )
    return tuple(templates)


def load_textures(maskthface_root: Path) -> tuple[Image, ...]:
    """MaskTheFace's fabric texture photos, BGR."""
    textures = []
    for path in sorted((maskthface_root / "masks" / "textures").rglob("*")):
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None and min(image.shape[:2]) >= 8:
                textures.append(np.asarray(image, np.uint8))
    return tuple(textures)


def paint_template(
    face: Image,
    template: MaskTemplate,
    rng: np.random.Generator,
    textures: Sequence[Image] = (),
) -> tuple[Image, Mask]:
    """Warp a MaskTheFace template onto the lower face of an aligned crop, jittered in
    place, size and shape, optionally recoloured or re-textured and lit like the face.
    Returns the occluded crop and its coverage (alpha >= 0.5)."""
    target = _ANCHORS_256 + rng.normal(0.0, 3.0, _ANCHORS_256.shape).astype(np.float32)
    centre = np.array([128.0, 160.0], np.float32)
    scale = float(rng.uniform(0.9, 1.12))
    shift = np.array([rng.uniform(-6, 6), rng.uniform(-8, 10)], np.float32)
    target = (target - centre) * scale + centre + shift
    homography, _ = cv2.findHomography(template.anchors, target, 0)
    size = (CROP_SIZE, CROP_SIZE)
    alpha = cv2.warpPerspective(template.alpha, homography, size, flags=cv2.INTER_LINEAR)
    colour = cv2.warpPerspective(template.bgr, homography, size, flags=cv2.INTER_LINEAR)
    colour_f = np.asarray(colour, np.float32)
    choice = rng.random()
    if choice < 0.35 or (choice < 0.55 and not textures):
        # Keep the template's shading, change its colour.
        grey = colour_f.mean(axis=2, keepdims=True) / 200.0
        colour_f = grey * rng.uniform(30.0, 240.0, 3).astype(np.float32)
    elif choice < 0.55:
        texture = textures[int(rng.integers(len(textures)))]
        tile = cv2.resize(texture, size, interpolation=cv2.INTER_LINEAR)
        grey = colour_f.mean(axis=2, keepdims=True) / 200.0
        colour_f = grey * np.asarray(tile, np.float32)
    # Real masks share the scene's light: pull the material towards the face's brightness.
    face_mean = float(face.mean())
    colour_f *= np.float32(min(max(math.sqrt(max(face_mean, 1.0) / 140.0), 0.5), 1.15))
    a = np.asarray(alpha, np.float32)[..., None]
    out = face.astype(np.float32) * (1.0 - a) + np.clip(colour_f, 0.0, 255.0) * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), (alpha >= 0.5).astype(np.float32)


# --- samples -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SampleMaker:
    """One training sample from a clean aligned face: ``maker(face, rng) -> (image, mask)``.

    ``clean_probability``: the face stays uncovered (target all zeros).
    ``template_probability``: the occluder is a MaskTheFace template (otherwise a
    ``training.occluders`` shape). ``second_probability``: a second occluder is added on top
    (a hand over a mask, say). ``jitter``: the crop and its mask are moved together by a
    small random similarity, as a misplaced landmark would move them at run time (YuNet's
    mouth landmarks are often off on masked faces). ``degrade``: web-photo degradations
    (blur from a low-resolution source, JPEG, noise, colour casts). ``small_face_probability``:
    the crop is made the way the aligner makes it from a small face in compressed video (LRS2's
    160 px frames hold faces of 90-110 px): shrunk to 30-65% (an 80-170 px crop), compressed
    hard there, and scaled back up (``small_face``), before the other degradations.
    ``lighting_probability``: real-video lighting on the face before any occluder is painted
    (``real_look``: strong one-sided light that may clip, specular sheens on cheekbones,
    forehead, nose or chin, spectacle frames); what it adds is never covered, so on a clean
    face the target stays empty (``occlusion_v3``'s hard negatives).
    ``misalign_probability``: instead of ``jitter``'s small similarity, the crop and its mask
    are moved the way the aligner misplaces an occluded face (``_misalign``: YuNet guesses
    the hidden nose and mouth too high, so the crop zooms in and the occluder runs off its
    bottom edge); drawn for clean faces as often as for covered ones, so that a zoomed crop
    alone never means "covered" (recipe ``v4``)."""

    renderer: OccluderRenderer
    templates: tuple[MaskTemplate, ...] = ()
    clean_probability: float = 0.2
    template_probability: float = 0.25
    second_probability: float = 0.15
    jitter: bool = True
    degrade: bool = True
    small_face_probability: float = 0.0
    lighting_probability: float = 0.0
    misalign_probability: float = 0.0

    def __call__(self, face: Image, rng: np.random.Generator) -> tuple[Image, Mask]:
        """A (possibly) occluded, augmented crop and its coverage mask."""
        image = face[:, ::-1].copy() if rng.random() < 0.5 else face.copy()
        mask = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
        # Drawn only when enabled: v1's and v2's samples stay as they were.
        if self.lighting_probability > 0.0 and rng.random() < self.lighting_probability:
            image = real_look(image, rng)
        if rng.random() >= self.clean_probability:
            image, mask = self.occlude(image, rng)
            if rng.random() < self.second_probability:
                image, second = self.occlude(image, rng)
                mask = np.maximum(mask, second)
        # Drawn only when enabled: v1-v3's samples stay as they were.
        if self.misalign_probability > 0.0 and rng.random() < self.misalign_probability:
            image, mask = _misalign(image, mask, rng)
        elif self.jitter:
            image, mask = _jitter(image, mask, rng)
        # Drawn only when enabled: v1's samples (and its numbers) stay as they were.
        if self.small_face_probability > 0.0 and rng.random() < self.small_face_probability:
            image = small_face(image, rng)
        if self.degrade:
            image = degrade(image, rng)
        return image, mask

    def occlude(self, image: Image, rng: np.random.Generator) -> tuple[Image, Mask]:
        """One occluder painted on ``image``: a real mask template (``template_probability``)
        or a rendered shape (``training.occluders``); returns the image and its coverage mask."""
        if self.templates and rng.random() < self.template_probability:
            template = self.templates[int(rng.integers(len(self.templates)))]
            return paint_template(image, template, rng, self.renderer.textures)
        return self.renderer(image, rng)


def _jitter(image: Image, mask: Mask, rng: np.random.Generator) -> tuple[Image, Mask]:
    angle = float(rng.normal(0.0, 5.0))
    scale = float(np.exp(rng.normal(0.0, 0.06)))
    shift = rng.normal(0.0, 5.0, 2)
    return _move(image, mask, angle, scale, shift)


def _misalign(image: Image, mask: Mask, rng: np.random.Generator) -> tuple[Image, Mask]:
    """The crop as the aligner makes it of an occluded face. Measured on the training-split
    clips of ``bench.false_flags`` (the painted clip's crop against the clean clip's, same
    frame): scale 0.89-1.19, the eye line 8 px up to 20 px down, rotation -12 to +8 degrees
    (5th-95th percentiles), against ``_jitter``'s 0.91-1.10 and +-8 px; small faces in
    broadcast video go further (zoomed 1.3-1.4, the occluder's lower part off the crop). So:
    zoom 0.9-1.45 about the crop centre, the face moved down 0-30 px (up to 8 px up),
    rotation sd 7 degrees, sideways sd 8 px (sd 14 px, closer to the measured spread of the
    eye line sideways, was tried: lower precision, more held-out photos flagged)."""
    angle = float(rng.normal(0.0, 7.0))
    scale = float(np.exp(rng.uniform(math.log(0.9), math.log(1.45))))
    shift = np.array([rng.normal(0.0, 8.0), rng.uniform(-8.0, 30.0)])
    return _move(image, mask, angle, scale, shift)


def _move(
    image: Image, mask: Mask, angle: float, scale: float, shift: npt.NDArray[np.float64]
) -> tuple[Image, Mask]:
    """Crop and mask under one similarity about the crop centre, then ``shift`` (x, y) px."""
    centre = (CROP_SIZE / 2.0, CROP_SIZE / 2.0)
    matrix = np.asarray(cv2.getRotationMatrix2D(centre, angle, scale), np.float64)
    matrix[:, 2] += shift
    size = (CROP_SIZE, CROP_SIZE)
    moved = cv2.warpAffine(
        image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    # Replicated borders extend the mask too where it touches the crop edge.
    moved_mask = cv2.warpAffine(
        mask, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return np.asarray(moved, np.uint8), (np.asarray(moved_mask) >= 0.5).astype(np.float32)


def real_look(image: Image, rng: np.random.Generator) -> Image:
    """How real video lights a face that training photos rarely show: 60% strong side light
    (``training.augment.side_light``), else 1-2 specular sheens; then 35% spectacle frames."""
    if rng.random() < 0.6:
        image = side_light(image, rng)
    else:
        for _ in range(int(rng.integers(1, 3))):
            image = specular_highlight(image, rng)
    if rng.random() < 0.35:
        image = draw_glasses(image, rng)
    return image


def small_face(image: Image, rng: np.random.Generator) -> Image:
    """The crop as the aligner makes it from a small face in compressed video: the face
    exists only at 30-65% of the crop's size, softened by the camera or the codec, coded in
    8x8 blocks with half-resolution colour (JPEG, 4:2:0) at low quality, then scaled back up."""
    side = round(CROP_SIZE * float(rng.uniform(0.3, 0.65)))
    small = np.asarray(cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA), np.uint8)
    if rng.random() < 0.5:
        small = np.asarray(cv2.GaussianBlur(small, (0, 0), float(rng.uniform(0.3, 0.9))), np.uint8)
    quality = int(rng.integers(20, 80))
    ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if ok:
        small = np.asarray(cv2.imdecode(data, cv2.IMREAD_COLOR), np.uint8)
    interpolation = cv2.INTER_LINEAR if rng.random() < 0.7 else cv2.INTER_CUBIC
    return np.asarray(
        cv2.resize(small, (CROP_SIZE, CROP_SIZE), interpolation=interpolation), np.uint8
    )


def degrade(image: Image, rng: np.random.Generator) -> Image:
    """Web-photo and camera degradations: 40% downscaled and back, gain, contrast, colour
    cast and offset, 8% greyscale, 30% sensor noise, 50% JPEG at quality 30-95."""
    out = image
    if rng.random() < 0.4:
        # A small face scaled up to the crop: the commonest web-photo look.
        side = int(rng.integers(48, 200))
        small = cv2.resize(out, (side, side), interpolation=cv2.INTER_AREA)
        out = np.asarray(
            cv2.resize(small, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LINEAR), np.uint8
        )
    values = out.astype(np.float32)
    gain = rng.uniform(0.7, 1.3) * np.exp(rng.normal(0.0, 0.06, 3))
    values = (values - 128.0) * np.float32(rng.uniform(0.75, 1.25)) + 128.0
    values = values * gain.astype(np.float32) + np.float32(rng.normal(0.0, 10.0))
    if rng.random() < 0.08:
        values[:] = values.mean(axis=2, keepdims=True)  # greyscale photos exist (ORL too)
    if rng.random() < 0.3:
        values += rng.normal(0.0, rng.uniform(2.0, 8.0), values.shape).astype(np.float32)
    out = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        quality = int(rng.integers(30, 95))
        ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            out = np.asarray(cv2.imdecode(data, cv2.IMREAD_COLOR), np.uint8)
    return out


def make_batch(
    faces: npt.NDArray[np.uint8],
    indices: npt.NDArray[np.intp],
    maker: SampleMaker,
    rng: np.random.Generator,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` samples from random faces among ``indices``: crops (N, 3, 256, 256) float
    BGR 0..255 and masks (N, 1, 256, 256) float {0, 1}."""
    images = np.empty((size, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    masks = np.empty((size, 1, CROP_SIZE, CROP_SIZE), np.float32)
    for k in range(size):
        face = np.asarray(faces[int(indices[int(rng.integers(len(indices)))])])
        images[k], masks[k, 0] = maker(face, rng)
    crops = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return crops, torch.from_numpy(masks)


# --- training ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """``steps``: optimiser steps in all (the cosine schedule spans them); ``batch``: samples
    per step (16 keeps a step near half a second on one CPU thread); ``lr``: AdamW peak
    learning rate after ``warmup_steps``; ``dice_weight``: soft-Dice loss beside BCE (Dice
    cares about the overlap of thin shapes that BCE, dominated by the uncovered majority,
    barely sees); ``checkpoint_every_s``: wall seconds between checkpoints;
    ``val_samples``: fixed held-out synthetic samples scored at every checkpoint; ``init``: a
    ``.safetensors`` to start from (fine-tuning; its network config replaces ``net``);
    ``recipe``: the sample mixture's name (``build_maker``), recorded in the run's config.
    ``hard_faces``: more ``prepare``-format face folders (hard negatives: news photos,
    studio portraits, TV video, training-split frames a model wrongly flagged) whose
    train-split crops are drawn for ``hard_share`` of the samples (0: in proportion to their
    number); validation stays on ``faces``' own validation split."""

    steps: int = 5500
    batch: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 150
    dice_weight: float = 0.5
    checkpoint_every_s: float = 180.0
    val_samples: int = 96
    seed: int = 7
    net: OcclusionNetConfig = field(default_factory=OcclusionNetConfig)
    init: str | None = None
    recipe: str = "v1"
    hard_faces: tuple[str, ...] = ()
    hard_share: float = 0.0


Recipe = Literal["v1", "v2", "v3", "v4", "v5"]


def v2_mixture() -> MaskMixture:
    """``occlusion_v2``'s fine-tuning shapes: more face masks and hands (what the real
    pipeline missed most on small faces), fewer objects and thin strokes."""
    return MaskMixture(
        (
            (0.55, FaceMaskShape()),
            (0.25, HandBlob()),
            (0.1, ObjectBlob()),
            (0.05, Scribble()),
            (0.05, FreeFormStrokes()),
        )
    )


def v5_mixture() -> MaskMixture:
    """v2's shapes with hands drawn about twice as often: the hands' fingertips over the
    upper face were the largest in-crop miss left (``bench.seg_diagnose``)."""
    return MaskMixture(
        (
            (0.42, FaceMaskShape()),
            (0.45, HandBlob()),
            (0.07, ObjectBlob()),
            (0.03, Scribble()),
            (0.03, FreeFormStrokes()),
        )
    )


def build_maker(data_root: Path, recipe: Recipe = "v1") -> SampleMaker:
    """The sample maker with MaskTheFace templates and textures from the shared data.

    ``v1``: ``occlusion_v1``'s mixture. ``v2``: ``v2_mixture()`` and, in 45% of samples, a
    small face in compressed video (``SampleMaker.small_face_probability``). ``v3``: v2's,
    with 30% clean samples (v2: 20%) and real-video lighting and glasses on half of all
    faces (``SampleMaker.lighting_probability``): ``occlusion_v3``'s fine-tuning against
    false flags. ``v4``: v3's, with half of all crops (clean or covered) placed as the aligner
    places occluded faces (``SampleMaker.misalign_probability``): a fine-tune for recall
    that was tried and not shipped (it flagged more clean real faces; see
    docs/MODEL_CARD_occlusion.md, "v4 candidate"). ``v5``: v3's with ``v5_mixture()``, hands
    twice as often."""
    root = data_root / MASKTHEFACE_ROOT
    textures = load_textures(root)
    templates = load_mask_templates(root)
    if recipe in ("v3", "v4", "v5"):
        shapes = v5_mixture() if recipe == "v5" else v2_mixture()
        return SampleMaker(
            renderer=OccluderRenderer(shapes=shapes, textures=textures),
            templates=templates,
            clean_probability=0.3,
            small_face_probability=0.45,
            lighting_probability=0.5,
            misalign_probability=0.5 if recipe == "v4" else 0.0,
        )
    if recipe == "v2":
        return SampleMaker(
            renderer=OccluderRenderer(shapes=v2_mixture(), textures=textures),
            templates=templates,
            small_face_probability=0.45,
        )
    return SampleMaker(renderer=OccluderRenderer(textures=textures), templates=templates)


def _lr_at(config: TrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, dice_weight: float
) -> torch.Tensor:
    """BCE plus ``dice_weight`` times a soft Dice loss computed over the whole batch (a
    per-image Dice is undefined on clean faces, whose target is empty)."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    intersection = (prob * target).sum()
    dice = 1.0 - (2.0 * intersection + 1.0) / (prob.sum() + target.sum() + 1.0)
    return bce + dice_weight * dice


def _val_set(
    faces: FaceSet, maker: SampleMaker, count: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    indices = faces.select("val")
    if len(indices) == 0:
        raise RuntimeError("no validation faces")
    return make_batch(faces.crops, indices, maker, np.random.default_rng([seed, 1_000_003]), count)


def batch_iou(logits: torch.Tensor, target: torch.Tensor) -> float:
    """IoU of (sigmoid > 0.5) against the target over all pixels of the batch."""
    predicted = logits > 0.0
    truth = target > 0.5
    union = float((predicted | truth).sum())
    return float((predicted & truth).sum()) / union if union > 0 else 1.0


def train(faces_dir: Path, run_dir: Path, maker: SampleMaker, config: TrainConfig) -> Path:
    """Train (or resume) in ``run_dir``; returns the path of the final checkpoint.

    ``run_dir/last.pt`` holds the model, optimiser and step (``torch.load`` with
    ``weights_only=True`` reads it); ``run_dir/log.jsonl`` one line per checkpoint."""
    torch.manual_seed(config.seed)
    faces = load_faces(faces_dir)
    train_indices = faces.select("train")
    if len(train_indices) == 0:
        raise RuntimeError(f"no training faces in {faces_dir}")
    val_crops, val_masks = _val_set(faces, maker, config.val_samples, config.seed)
    pool, train_indices = _training_pool(faces, train_indices, config)
    net = OcclusionNet(config.net)
    if config.init is not None:
        net = load_occlusion_net(Path(config.init)).train()
        config = replace(config, net=net.config)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / "last.pt"
    step = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        net.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        step = int(state["step"])
        log.info("resumed from %s at step %d", checkpoint, step)
    (run_dir / "config.json").write_text(
        json.dumps({**asdict(config), "faces": str(faces_dir), "train_faces": len(train_indices)})
    )
    last_save = time.monotonic()
    losses: list[float] = []
    net.train()
    while step < config.steps:
        rng = np.random.default_rng([config.seed, step])
        crops, masks = make_batch(pool, train_indices, maker, rng, config.batch)
        for group in optimiser.param_groups:
            group["lr"] = _lr_at(config, step)
        loss = segmentation_loss(net(crops), masks, config.dice_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        losses.append(float(loss.detach()))
        step += 1
        if time.monotonic() - last_save >= config.checkpoint_every_s or step == config.steps:
            _checkpoint(run_dir, net, optimiser, step, losses, val_crops, val_masks)
            losses = []
            last_save = time.monotonic()
    return checkpoint


def _training_pool(
    faces: FaceSet, train_indices: npt.NDArray[np.intp], config: TrainConfig
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.intp]]:
    """The crops to draw training samples from and the indices to draw among: ``faces``
    alone, or with the train-split crops of ``config.hard_faces`` appended, repeated so that
    they make up about ``hard_share`` of the draws."""
    if not config.hard_faces:
        return faces.crops, train_indices
    hard = [load_faces(Path(d)) for d in config.hard_faces]
    hard_crops = [h.crops[h.select("train")] for h in hard]
    extra = np.concatenate(hard_crops) if hard_crops else faces.crops[:0]
    if len(extra) == 0:
        raise RuntimeError(f"no train-split faces in {config.hard_faces}")
    pool = np.concatenate([np.asarray(faces.crops[train_indices]), extra])
    base = np.arange(len(train_indices), dtype=np.intp)
    extra_indices = np.arange(len(train_indices), len(pool), dtype=np.intp)
    if config.hard_share > 0.0:
        # Whole copies of the smaller side, so that every face stays equally likely within it.
        ratio = config.hard_share / (1.0 - config.hard_share) * len(base) / len(extra_indices)
        if ratio >= 1.0:
            extra_indices = np.tile(extra_indices, round(ratio))
        else:
            base = np.tile(base, max(1, round(1.0 / ratio)))
    log.info(
        "training pool: %d faces + %d hard; hard share of the draws %.3f",
        len(train_indices),
        len(extra),
        len(extra_indices) / (len(base) + len(extra_indices)),
    )
    return pool, np.concatenate([base, extra_indices])


def _checkpoint(
    run_dir: Path,
    net: OcclusionNet,
    optimiser: torch.optim.Optimizer,
    step: int,
    losses: list[float],
    val_crops: torch.Tensor,
    val_masks: torch.Tensor,
) -> None:
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(chunk) for chunk in torch.split(val_crops, 16)])
    val_iou = batch_iou(logits, val_masks)
    net.train()
    temp = run_dir / "last.partial.pt"
    torch.save({"model": net.state_dict(), "optimiser": optimiser.state_dict(), "step": step}, temp)
    temp.replace(run_dir / "last.pt")
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "step": step,
        "train_loss": float(np.mean(losses)) if losses else None,
        "val_iou": round(val_iou, 4),
    }
    with (run_dir / "log.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    log.info("checkpoint %s", record)


def load_run(run_dir: Path) -> OcclusionNet:
    """The network of a run's last checkpoint, in eval mode."""
    config = json.loads((run_dir / "config.json").read_text())
    net_config = config["net"]
    net_config["widths"] = tuple(net_config["widths"])
    net = OcclusionNet(OcclusionNetConfig(**net_config))
    state = torch.load(run_dir / "last.pt", weights_only=True)
    net.load_state_dict(state["model"])
    return net.eval()


def export_run(run_dir: Path, out_dir: Path, name: str, metadata: dict[str, str]) -> Path:
    """Write ``name.safetensors`` and ``name.onnx`` from a run's last checkpoint."""
    net = load_run(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.safetensors"
    save_occlusion_net(weights, net, metadata)
    export_onnx(net, out_dir / f"{name}.onnx")
    return weights


# --- evaluation ----------------------------------------------------------------------------


def kind_makers(maker: SampleMaker) -> dict[str, SampleMaker]:
    """One sample maker per occluder family, always occluded, one occluder per sample."""
    textures = maker.renderer.textures

    def only(shape: ShapeGenerator) -> SampleMaker:
        renderer = OccluderRenderer(shapes=MaskMixture(((1.0, shape),)), textures=textures)
        return replace(
            maker,
            renderer=renderer,
            template_probability=0.0,
            clean_probability=0.0,
            second_probability=0.0,
        )

    return {
        "face_mask_shapes": only(FaceMaskShape()),
        "maskthface_templates": replace(
            maker, template_probability=1.0, clean_probability=0.0, second_probability=0.0
        ),
        "hands": only(HandBlob()),
        "objects": only(ObjectBlob()),
        "scribbles": only(Scribble()),
        "strokes": only(FreeFormStrokes()),
    }


@dataclass(frozen=True)
class SyntheticScore:
    """Held-out synthetic occlusions: ``iou`` over all pixels of all samples, and
    ``mean_image_iou`` the mean of per-sample IoUs."""

    samples: int
    iou: float
    mean_image_iou: float


def synthetic_samples(
    faces: FaceSet, indices: npt.NDArray[np.intp], maker: SampleMaker, count: int, seed: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """``count`` seeded samples painted on the faces at ``indices``: crops and truths."""
    rng = np.random.default_rng([seed, 99])
    crops = np.empty((count, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    truths = np.empty((count, CROP_SIZE, CROP_SIZE), bool)
    for k in range(count):
        face = np.asarray(faces.crops[int(indices[int(rng.integers(len(indices)))])])
        image, mask = maker(face, rng)
        crops[k], truths[k] = image, mask > 0.5
    return crops, truths


def score_masks(predicted: npt.NDArray[np.bool_], truths: npt.NDArray[np.bool_]) -> SyntheticScore:
    """IoU over all pixels and the mean per-sample IoU (a sample with an empty truth and an
    empty prediction scores 1)."""
    union = float((predicted | truths).sum())
    per_sample = []
    for p, t in zip(predicted, truths, strict=True):
        u = float((p | t).sum())
        per_sample.append(float((p & t).sum()) / u if u > 0 else 1.0)
    return SyntheticScore(
        samples=len(truths),
        iou=float((predicted & truths).sum()) / union if union > 0 else 1.0,
        mean_image_iou=float(np.mean(per_sample)),
    )


def align_folder(
    folder: Path, detector: FaceDetector
) -> tuple[list[str], npt.NDArray[np.uint8], int]:
    """Aligned largest faces of every image in ``folder`` (any file OpenCV can read: web
    sets have odd names such as ``x.jpg_1088Wx1632H``): names, crops, images with none."""
    names: list[str] = []
    crops: list[Image] = []
    misses = 0
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            continue  # not an image (a licence or index file)
        crop = aligned_face(detector, np.asarray(image, np.uint8))
        if crop is None:
            misses += 1
            continue
        names.append(path.name)
        crops.append(crop)
    empty = np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    return names, np.stack(crops) if crops else empty, misses


def evaluate(
    data_root: Path,
    faces_dir: Path,
    out_dir: Path,
    options: MaskDetectOptions,
    synthetic_count: int = 400,
    seed: int = 11,
) -> dict[str, object]:
    """Every number of the model card; writes ``metrics.json`` and contact sheets.

    - synthetic: IoU of (probability > pixel_threshold) on held-out (test split) faces with
      fresh occluders, overall and per occluder family, and the area flagged on clean faces;
    - masked: the fraction of the real masked photos (``faces/masked/fmd``) whose face is
      flagged covered, with contact sheets;
    - unmasked: the fraction of held-out real unmasked faces wrongly flagged, per dataset;
    - calibration: coverage fractions on the validation split, where ``covered_fraction``
      is chosen (never on the test split or the masked photos).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    faces = load_faces(faces_dir)
    maker = build_maker(data_root)
    detector = MaskDetector(options)
    metrics: dict[str, object] = {"options": {k: str(v) for k, v in asdict(options).items()}}

    def still(crops: npt.NDArray[np.uint8]) -> list[FaceCoverage]:
        return [
            c
            for start in range(0, len(crops), 16)
            for c in detector.analyse_still(crops[start : start + 16])
        ]

    def predicted(crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
        return np.stack([c.probability_256 > options.pixel_threshold for c in still(crops)])

    test = faces.select("test")
    occluded = replace(maker, clean_probability=0.0)
    crops, truths = synthetic_samples(faces, test, occluded, synthetic_count, seed)
    synthetic: dict[str, object] = {"all": asdict(score_masks(predicted(crops), truths))}
    sheet_flags = [True] * min(60, len(crops))
    probabilities = [c.probability_256 for c in still(crops[:60])]
    cv2.imwrite(
        str(out_dir / "synthetic_test.png"), contact_sheet(crops[:60], probabilities, sheet_flags)
    )
    for name, kind_maker in kind_makers(maker).items():
        crops, truths = synthetic_samples(faces, test, kind_maker, synthetic_count // 4, seed + 1)
        synthetic[name] = asdict(score_masks(predicted(crops), truths))
    clean = faces.crops[test]
    clean_coverage = [c.coverage_fraction for c in still(np.asarray(clean))]
    synthetic["clean_test_faces_mean_coverage"] = float(np.mean(clean_coverage))
    metrics["synthetic_test"] = synthetic

    face_finder = FaceDetector(DetectorOptions())
    names, masked, misses = align_folder(data_root / MASKED_SOURCE, face_finder)
    results = still(masked)
    flags = [c.covered for c in results]
    metrics["masked_real"] = {
        "photos": len(names) + misses,
        "faces_found": len(names),
        "flagged_covered": float(np.mean(flags)) if flags else 0.0,
        "coverage_fraction_quantiles": _quantiles([c.coverage_fraction for c in results]),
        "not_flagged": [n for n, f in zip(names, flags, strict=True) if not f],
    }
    for start in range(0, len(masked), 80):
        part = slice(start, start + 80)
        sheet = contact_sheet(masked[part], [c.probability_256 for c in results[part]], flags[part])
        cv2.imwrite(str(out_dir / f"masked_real_{start // 80:02d}.png"), sheet)

    unmasked: dict[str, object] = {}
    false_crops: list[Image] = []
    false_results: list[FaceCoverage] = []
    for dataset in sorted(set(faces.datasets)):
        indices = faces.select("test", [dataset])
        if len(indices) == 0:
            continue
        results = still(np.asarray(faces.crops[indices]))
        unmasked[dataset] = {
            "faces": len(indices),
            "wrongly_flagged": float(np.mean([c.covered for c in results])),
        }
        for index, c in zip(indices, results, strict=True):
            if c.covered:
                false_crops.append(np.asarray(faces.crops[index]))
                false_results.append(c)
    all_test = faces.select("test")
    wrong = len(false_crops)
    unmasked["all"] = {"faces": len(all_test), "wrongly_flagged": wrong / max(1, len(all_test))}
    metrics["unmasked_test"] = unmasked
    if false_crops:
        sheet = contact_sheet(
            false_crops[:80],
            [c.probability_256 for c in false_results[:80]],
            [True] * min(80, wrong),
        )
        cv2.imwrite(str(out_dir / "unmasked_wrongly_flagged.png"), sheet)

    val = faces.select("val")
    val_clean = [c.coverage_fraction for c in still(np.asarray(faces.crops[val]))]
    crops, _ = synthetic_samples(faces, val, occluded, synthetic_count // 2, seed + 2)
    val_occluded = [c.coverage_fraction for c in still(crops)]
    metrics["calibration_val"] = {
        "clean_coverage_quantiles": _quantiles(val_clean),
        "occluded_coverage_quantiles": _quantiles(val_occluded),
        "clean_flagged_at": {
            str(t): float(np.mean(np.asarray(val_clean) >= t)) for t in _CANDIDATE_FRACTIONS
        },
        "occluded_flagged_at": {
            str(t): float(np.mean(np.asarray(val_occluded) >= t)) for t in _CANDIDATE_FRACTIONS
        },
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


_CANDIDATE_FRACTIONS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1)


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    points = (0.01, 0.05, 0.1, 0.5, 0.9, 0.95, 0.99)
    return {str(q): round(float(np.quantile(values, q)), 4) for q in points}


def contact_sheet(
    crops: Sequence[Image] | npt.NDArray[np.uint8],
    probabilities: Sequence[Mask],
    flags: Sequence[bool],
    columns: int = 10,
) -> Image:
    """Crops at 128 px with the predicted mask (probability > 0.5) tinted magenta inside a
    yellow outline, framed green where the face is flagged covered and red where it is not:
    the picture to look at."""
    tiles = []
    tint = np.array([255.0, 0.0, 255.0], np.float32)
    for crop, prob, flag in zip(crops, probabilities, flags, strict=True):
        small = cv2.resize(np.asarray(crop), (128, 128), interpolation=cv2.INTER_AREA)
        covered = cv2.resize(prob, (128, 128), interpolation=cv2.INTER_LINEAR) > 0.5
        tile = small.astype(np.float32)
        tile[covered] = 0.6 * tile[covered] + 0.4 * tint
        tile_u8 = np.clip(tile, 0, 255).astype(np.uint8)
        contours, _ = cv2.findContours(
            covered.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        cv2.drawContours(tile_u8, contours, -1, (0, 255, 255), 1)
        colour = (0, 200, 0) if flag else (0, 0, 255)
        framed = cv2.copyMakeBorder(
            tile_u8[3:-3, 3:-3], 3, 3, 3, 3, cv2.BORDER_CONSTANT, value=colour
        )
        tiles.append(np.asarray(framed, np.uint8))
    if not tiles:
        return np.zeros((128, 128 * columns, 3), np.uint8)
    while len(tiles) % columns:
        tiles.append(np.zeros((128, 128, 3), np.uint8))
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    return np.asarray(np.vstack(rows), np.uint8)


# --- command line --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m training.segmenter {prepare,train,export,evaluate}``."""
    parser = argparse.ArgumentParser(prog="python -m training.segmenter")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="detect and align the training faces")
    prep.add_argument("--data", type=Path, required=True, help="the shared data root")
    prep.add_argument("--out", type=Path, required=True)
    run = sub.add_parser("train", help="train or resume")
    run.add_argument("--data", type=Path, required=True)
    run.add_argument("--faces", type=Path, required=True)
    run.add_argument("--run", type=Path, required=True)
    run.add_argument("--steps", type=int, default=TrainConfig.steps)
    run.add_argument("--recipe", choices=get_args(Recipe), default="v1", help="sample mixture")
    run.add_argument("--hard-faces", type=Path, nargs="*", default=[], help="hard-negative faces")
    run.add_argument("--hard-share", type=float, default=0.0, help="their share of the draws")
    run.add_argument("--init", type=Path, help=".safetensors to fine-tune from")
    run.add_argument("--lr", type=float, default=TrainConfig.lr)
    run.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps)
    exp = sub.add_parser("export", help="write safetensors + onnx from a run")
    exp.add_argument("--run", type=Path, required=True)
    exp.add_argument("--out", type=Path, required=True)
    exp.add_argument("--name", default=SHIPPED_NAME)
    ev = sub.add_parser("evaluate", help="the model card's numbers and contact sheets")
    ev.add_argument("--data", type=Path, required=True)
    ev.add_argument("--faces", type=Path, required=True)
    ev.add_argument("--out", type=Path, required=True)
    ev.add_argument("--weights", type=Path, help=".onnx to evaluate (default: the shipped one)")
    ev.add_argument("--covered-fraction", type=float, default=MaskDetectOptions.covered_fraction)
    ev.add_argument("--pixel-threshold", type=float, default=MaskDetectOptions.pixel_threshold)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    if args.command == "prepare":
        prepare_faces(args.data, args.out)
    elif args.command == "train":
        config = TrainConfig(
            steps=args.steps,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            init=None if args.init is None else str(args.init),
            recipe=args.recipe,
            hard_faces=tuple(str(d) for d in args.hard_faces),
            hard_share=args.hard_share,
        )
        train(args.faces, args.run, build_maker(args.data, args.recipe), config)
    elif args.command == "export":
        run_config = json.loads((args.run / "config.json").read_text())
        metadata = {
            "training_run": json.dumps(run_config, sort_keys=True),
            "training_data": json.dumps(
                {
                    "faces": list(TRAINING_SOURCES)
                    + (list(HARD_NEGATIVE_SOURCES) if run_config.get("hard_faces") else []),
                    "hard_faces": run_config.get("hard_faces", []),
                    "split": "train split only: sha1(identity group) % 100 < 70",
                    "occluders": "training.occluders + MaskTheFace templates and textures",
                }
            ),
            "model_card": "docs/MODEL_CARD_occlusion.md",
        }
        export_run(args.run, args.out, args.name, metadata)
    elif args.command == "evaluate":
        options = MaskDetectOptions(
            weights=args.weights,
            covered_fraction=args.covered_fraction,
            pixel_threshold=args.pixel_threshold,
        )
        metrics = evaluate(args.data, args.faces, args.out, options)
        print(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
