"""Training and evaluation samples from a prepared dataset (``python -m training prepare``).

A sample is a face crop, a hole mask, the speaker input of a voice and the identity target:

- the face: the aligned 256 crop, RGB in [-1, 1], randomly flipped and greyed (the official
  augmentation);
- the mask: one shape of the configured hole generator (``training.masks``), 1 = hole;
- the speaker input: for an identity with recorded speech (a "paired" identity: faces and
  voice under one label in the same split), a random 6 s segment of that person's speech;
  for a face-only identity, the ``face_only_audio`` policy (``training.config.FaceOnlyAudio``:
  the zero "no audio" input by default). For ``ge2e`` models it is the segment's GE2E
  d-vector, computed once per segment and cached in the dataset folder
  (``speakers/ge2e.npy``); for ``wen2019`` models, Wen's (64, 1000) log-mel window;
- the identity target: the psi (SFace) embedding of a random crop of the same identity (the
  official code draws a random identity feature of the person, not the crop's own).

Every random choice comes from ``numpy.random.default_rng([seed, epoch, index])``: a sample
depends only on the run seed, the epoch and its index, never on worker processes or on how
far a run got, which is what makes a resumed run see exactly the data it would have seen.

Stage 1 (voice -> face) uses the paired identities only and needs no mask.
"""

from __future__ import annotations

import io
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from avinpaint.config import ModelConfig
from avinpaint.spec import CROP_SIZE
from stream.errors import InputError
from training.augment import AugmentOptions, augment_crop
from training.config import FaceOnlyAudio, HoleKind
from training.manifest import (
    MANIFEST_FILE,
    PSI_FILE,
    AudioRecord,
    CropRecord,
    Split,
    read_manifest,
    write_bytes_atomic,
)
from training.masks import (
    FaceMaskShape,
    FreeFormStrokes,
    PaperBox,
    ShapeGenerator,
    default_hole_mixture,
    overhang_hole_mixture,
)

log = logging.getLogger(__name__)

SPEAKER_DIR = "speakers"
GE2E_CACHE = "ge2e.npy"
GE2E_CACHE_INDEX = "ge2e.json"
GE2E_CACHE_NAME = "resemblyzer-0.1.4-ge2e/avinpaint.ge2e"
"""Recorded in the cache index: a cache made by another encoder is recomputed, not reused."""

Stage = Literal[1, 2]
Sample = dict[str, Tensor]
ImageU8 = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.float32]


@dataclass(frozen=True)
class DatasetIndex:
    """The records of a prepared dataset, grouped for sampling.

    ``psi`` is (crops, D) float32 (rows indexed by ``CropRecord.psi_row``), or None when the
    dataset was prepared without embeddings."""

    root: Path
    crops: tuple[CropRecord, ...]
    audio: tuple[AudioRecord, ...]
    psi: npt.NDArray[np.float32] | None

    @classmethod
    def load(cls, root: Path) -> DatasetIndex:
        """Read ``manifest.jsonl`` and ``psi.npy`` of the dataset at ``root``."""
        manifest = root / MANIFEST_FILE
        if not manifest.is_file():
            raise InputError(f"{root} is not a prepared dataset (no {MANIFEST_FILE})")
        records = read_manifest(manifest)
        crops = tuple(r for r in records if isinstance(r, CropRecord))
        audio = tuple(r for r in records if isinstance(r, AudioRecord))
        psi_path = root / PSI_FILE
        psi = np.load(psi_path).astype(np.float32) if psi_path.is_file() else None
        return cls(root=root, crops=crops, audio=audio, psi=psi)

    def crop_indices(self, split: Split) -> list[int]:
        """Indices into ``crops`` of one split, in manifest order."""
        return [i for i, r in enumerate(self.crops) if r.split == split]

    def audio_by_identity(self, split: Split) -> dict[str, list[int]]:
        """Identity -> indices into ``audio`` of its segments in one split."""
        groups: dict[str, list[int]] = defaultdict(list)
        for i, record in enumerate(self.audio):
            if record.split == split:
                groups[record.identity].append(i)
        return dict(groups)

    def paired_identities(self, split: Split) -> list[str]:
        """Identities of one split with both face crops and speech, sorted."""
        faces = {r.identity for r in self.crops if r.split == split}
        return sorted(faces & set(self.audio_by_identity(split)))

    def psi_rows_by_identity(self) -> dict[str, list[int]]:
        """Identity -> psi rows of its crops (empty when there are no embeddings)."""
        groups: dict[str, list[int]] = defaultdict(list)
        for record in self.crops:
            if record.psi_row is not None:
                groups[record.identity].append(record.psi_row)
        return dict(groups)


# --- speaker inputs -------------------------------------------------------------------------


def ensure_ge2e_cache(index: DatasetIndex, progress: bool = True) -> npt.NDArray[np.float32]:
    """GE2E d-vectors (len(index.audio), 256) of every audio segment, rows in manifest order.

    Computed once and kept in ``speakers/`` beside the manifest; segments added to the
    dataset later are embedded on the next call, the others are reused."""
    from avinpaint.ge2e import GE2EEncoder, preprocess_wav  # torch LSTM: load only when needed

    folder = index.root / SPEAKER_DIR
    cached = _read_ge2e_cache(folder)
    wanted = [r.audio for r in index.audio]
    missing = [path for path in wanted if path not in cached]
    if missing:
        encoder = GE2EEncoder.pretrained()
        for path in tqdm(missing, desc="GE2E speaker embeddings", disable=not progress):
            samples = torch.from_numpy(np.load(index.root / path).astype(np.float32))
            speech = preprocess_wav(samples)
            # The segment is already voiced speech; if the silence trimming leaves too little
            # for one partial utterance, embed the segment as it is.
            if speech.shape[0] < samples.shape[0] // 4:
                speech = samples
            cached[path] = encoder.embed_utterance(speech).numpy().astype(np.float32)
        _write_ge2e_cache(folder, cached)
    if not wanted:
        return np.zeros((0, 256), np.float32)
    return np.stack([cached[path] for path in wanted])


def _read_ge2e_cache(folder: Path) -> dict[str, npt.NDArray[np.float32]]:
    index_path, array_path = folder / GE2E_CACHE_INDEX, folder / GE2E_CACHE
    if not (index_path.is_file() and array_path.is_file()):
        return {}
    meta = json.loads(index_path.read_text(encoding="utf-8"))
    rows = np.load(array_path)
    if meta.get("encoder") != GE2E_CACHE_NAME or len(meta.get("audio", [])) != len(rows):
        log.warning("speaker cache in %s was made differently; recomputing it", folder)
        return {}
    return {path: rows[i].astype(np.float32) for i, path in enumerate(meta["audio"])}


def _write_ge2e_cache(folder: Path, rows: dict[str, npt.NDArray[np.float32]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    paths = sorted(rows)
    buffer = io.BytesIO()
    np.save(buffer, np.stack([rows[p] for p in paths]).astype(np.float32))
    # Array first, index last: an index always describes a complete array.
    write_bytes_atomic(folder / GE2E_CACHE, buffer.getvalue())
    meta = {"encoder": GE2E_CACHE_NAME, "audio": paths}
    write_bytes_atomic(folder / GE2E_CACHE_INDEX, json.dumps(meta, indent=1).encode())


class SpeakerInputs:
    """The generator's speaker input for each audio segment of a dataset.

    ``ge2e`` models: the cached d-vector (256,). ``wen2019`` models: Wen's normalised log-mel
    window (n_mels, n_frames), computed from the segment when asked (about 20 ms)."""

    def __init__(
        self, index: DatasetIndex, model: ModelConfig, ge2e: npt.NDArray[np.float32] | None
    ) -> None:
        self.root = index.root
        self.paths = tuple(r.audio for r in index.audio)
        self.model = model
        if model.speaker_encoder == "ge2e" and ge2e is None:
            raise ValueError("ge2e models need the GE2E cache (ensure_ge2e_cache)")
        self.ge2e = ge2e

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one speaker input."""
        if self.model.speaker_encoder == "ge2e":
            return (self.model.speaker_dim,)
        return (self.model.n_mels, self.model.n_frames)

    def of(self, audio_index: int) -> npt.NDArray[np.float32]:
        """Speaker input of segment ``audio_index`` (an index into ``DatasetIndex.audio``)."""
        if self.ge2e is not None:
            return np.asarray(self.ge2e[audio_index], np.float32)
        from avinpaint.audio import wen_features_from_audio

        samples = torch.from_numpy(np.load(self.root / self.paths[audio_index]).astype(np.float32))
        features = wen_features_from_audio(samples)  # (n_mels, 1000)
        return features.numpy().astype(np.float32)

    def zero(self) -> npt.NDArray[np.float32]:
        """The "no audio" input: all zeros."""
        return np.zeros(self.shape, np.float32)


# --- images and masks ---------------------------------------------------------------------


def hole_generator(kind: HoleKind) -> ShapeGenerator:
    """The hole generator a config names."""
    generators: dict[str, ShapeGenerator] = {
        "mixture": default_hole_mixture(),
        "mixture_overhang": overhang_hole_mixture(),
        "paper_box": PaperBox(),
        "strokes": FreeFormStrokes(),
        "face_mask": FaceMaskShape(),
    }
    return generators[kind]


def read_crop(path: Path) -> ImageU8:
    """An aligned crop as stored: (256, 256, 3) uint8 BGR."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or image.shape != (CROP_SIZE, CROP_SIZE, 3):
        raise InputError(f"cannot read a {CROP_SIZE}x{CROP_SIZE} crop from {path}")
    return np.asarray(image, np.uint8)


def bgr_to_tensor(image: ImageU8) -> Tensor:
    """(H, W, 3) uint8 BGR -> (3, H, W) float32 RGB in [-1, 1] (the generator's images)."""
    rgb = np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))
    return torch.from_numpy(rgb).float() / 127.5 - 1.0


def tensor_to_bgr(images: Tensor) -> npt.NDArray[np.uint8]:
    """(B, 3, H, W) RGB in [-1, 1] -> (B, H, W, 3) uint8 BGR, rounded and clipped."""
    scaled = ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255)
    return np.ascontiguousarray(scaled.to(torch.uint8).numpy().transpose(0, 2, 3, 1)[..., ::-1])


def image_grid(columns: Sequence[tuple[str, npt.NDArray[np.uint8]]]) -> ImageU8:
    """One BGR image: a labelled column per ``(title, (B, H, W, 3) uint8 BGR)`` entry, one
    row per sample."""
    if not columns:
        raise ValueError("no columns")
    rows, height, width = columns[0][1].shape[:3]
    header_px = 28
    grid = np.full((header_px + rows * height, len(columns) * width, 3), 255, np.uint8)
    for c, (title, images) in enumerate(columns):
        if images.shape[:3] != (rows, height, width):
            raise ValueError(f"column {title!r} has shape {images.shape}, expected {rows} rows")
        x = c * width
        cv2.putText(
            grid, title, (x + 6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA
        )
        for r in range(rows):
            y = header_px + r * height
            grid[y : y + height, x : x + width] = images[r]
    return grid


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The one random source of sample ``index`` in ``epoch`` of a run seeded ``seed``."""
    return np.random.default_rng([seed, epoch, index])


# --- datasets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleOptions:
    """How samples are drawn (the ``[data]`` section of the config, plus the run seed)."""

    seed: int = 0
    holes: HoleKind = "mixture"
    face_only_audio: FaceOnlyAudio = "zero"
    flip: bool = True
    grayscale_probability: float = 0.1
    augment: AugmentOptions | None = None


class FaceVoiceDataset(Dataset[Sample]):
    """Samples of one split for stage 1 (voice -> face) or stage 2 (inpainting).

    Items are dicts of tensors: ``face`` (3, 256, 256) RGB [-1, 1]; ``mask`` (1, 256, 256),
    stage 2 only; ``speaker`` (the model's speaker input); ``has_audio`` (1.0 when the
    speaker input is the person's own voice); ``identity_target`` (D,) psi embedding of a
    random crop of the same person (zeros without psi); ``index`` (the sample's index).

    Stage 1 holds the crops of paired identities only. Stage 2 holds every crop, except
    face-only ones under the ``skip`` policy. Call ``set_epoch`` before each epoch (before
    worker processes start): it reseeds every random choice.
    """

    def __init__(
        self,
        index: DatasetIndex,
        split: Split,
        speakers: SpeakerInputs,
        options: SampleOptions,
        stage: Stage,
    ) -> None:
        self.index = index
        self.speakers = speakers
        self.options = options
        self.stage = stage
        self.epoch = 0
        self.audio_by_identity = index.audio_by_identity(split)
        self.split_audio = sorted(i for rows in self.audio_by_identity.values() for i in rows)
        paired = set(index.paired_identities(split))
        keep_face_only = stage == 2 and options.face_only_audio != "skip"
        self.crop_ids = [
            i
            for i in index.crop_indices(split)
            if index.crops[i].identity in paired or keep_face_only
        ]
        self.psi_rows = index.psi_rows_by_identity()
        self.psi_dim = index.psi.shape[1] if index.psi is not None else 0
        self.holes = hole_generator(options.holes)

    def set_epoch(self, epoch: int) -> None:
        """Reseed: the same (seed, epoch, index) always gives the same sample."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.crop_ids)

    def identities(self) -> list[str]:
        """The identity of each sample, in sample order."""
        return [self.index.crops[i].identity for i in self.crop_ids]

    def __getitem__(self, item: int) -> Sample:
        rng = sample_rng(self.options.seed, self.epoch, item)
        record = self.index.crops[self.crop_ids[item]]
        image = read_crop(self.index.root / record.image)
        if self.options.augment is not None:
            image = augment_crop(image, rng, self.options.augment)
        if self.options.flip and rng.random() < 0.5:
            image = np.ascontiguousarray(image[:, ::-1])
        if rng.random() < self.options.grayscale_probability:
            grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            image = np.asarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), np.uint8)
        speaker, has_audio = self._speaker(record.identity, rng)
        sample: Sample = {
            "face": bgr_to_tensor(image),
            "speaker": torch.from_numpy(np.array(speaker, np.float32)),
            "has_audio": torch.tensor(1.0 if has_audio else 0.0),
            "identity_target": torch.from_numpy(self._identity_target(record.identity, rng)),
            "index": torch.tensor(item, dtype=torch.int64),
        }
        if self.stage == 2:
            sample["mask"] = torch.from_numpy(self.holes(rng)[None].copy())
        return sample

    def _speaker(
        self, identity: str, rng: np.random.Generator
    ) -> tuple[npt.NDArray[np.float32], bool]:
        own = self.audio_by_identity.get(identity)
        if own:
            return self.speakers.of(own[int(rng.integers(len(own)))]), True
        others = [i for i in self.split_audio if self.index.audio[i].identity != identity]
        policy = self.options.face_only_audio
        if others and (policy == "other_speaker" or (policy == "mixed" and rng.random() < 0.5)):
            return self.speakers.of(others[int(rng.integers(len(others)))]), False
        return self.speakers.zero(), False

    def _identity_target(self, identity: str, rng: np.random.Generator) -> npt.NDArray[np.float32]:
        rows = self.psi_rows.get(identity)
        if self.index.psi is None or not rows:
            return np.zeros(self.psi_dim, np.float32)
        return np.asarray(self.index.psi[rows[int(rng.integers(len(rows)))]], np.float32)


def collate(samples: Sequence[Sample]) -> Sample:
    """Stack a list of samples into a batch (every key of the first sample)."""
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def describe(dataset: FaceVoiceDataset) -> dict[str, Any]:
    """Counts for the log: samples, identities, and how many have their own voice."""
    identities = dataset.identities()
    with_voice = sum(1 for i in identities if i in dataset.audio_by_identity)
    return {
        "samples": len(dataset),
        "identities": len(set(identities)),
        "samples_with_own_voice": with_voice,
    }
