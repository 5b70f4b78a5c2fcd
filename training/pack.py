"""A prepared dataset, cut down to a size budget so it can travel (e.g. to a GPU machine that
takes the checkout plus a few tens of MiB).

``pack_dataset`` writes a dataset folder that ``DatasetIndex`` and the trainer read as any
other, for models with a GE2E speaker input (``lite``):

- crops of the chosen split, re-encoded as JPEG (``jpeg_quality``; 0 keeps lossless PNG),
  a seeded uniform sample until the budget is spent: the same mix of video frames (voiced
  people) and photos (face-only people) as the whole split;
- the speech records of that split and their GE2E d-vectors (``speakers/``), but not the
  speech samples: a GE2E model reads the d-vector cache only (``SpeakerInputs``);
- ``psi.npy`` rows of the chosen crops, renumbered; ``splits.json``; ``dataset.json``;
- ``pack.json``: what was packed from where, and what was left out.

JPEG at quality 95 is about a quarter of the PNG bytes of a face crop; the trainer's own
augmentation re-encodes crops at JPEG quality 30-90, so the packed crops lose less than
training adds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from stream.errors import InputError
from training.data import (
    GE2E_CACHE,
    GE2E_CACHE_INDEX,
    GE2E_CACHE_NAME,
    SPEAKER_DIR,
    DatasetIndex,
    ensure_ge2e_cache,
    read_crop,
)
from training.manifest import (
    MANIFEST_FILE,
    PSI_FILE,
    SETTINGS_FILE,
    SPLITS_FILE,
    CropRecord,
    Split,
    write_manifest,
)

PACK_FILE = "pack.json"


@dataclass(frozen=True)
class PackOptions:
    """What to pack. ``max_bytes`` bounds the whole output folder."""

    max_bytes: int = 44 * 2**20
    jpeg_quality: int = 95
    split: Split = "train"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes}")
        if not 0 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 0 (PNG) or 1-100, got {self.jpeg_quality}")


@dataclass(frozen=True)
class PackSummary:
    """What ``pack_dataset`` wrote."""

    crops: int
    crops_available: int
    identities: int
    identities_available: int
    voiced_identities: int
    audio_segments: int
    bytes: int

    def line(self) -> str:
        """One line for the CLI."""
        return (
            f"{self.crops}/{self.crops_available} crops of {self.identities}/"
            f"{self.identities_available} identities ({self.voiced_identities} with voice), "
            f"{self.audio_segments} speech segments, {self.bytes / 2**20:.1f} MiB"
        )


def pack_dataset(
    source: Path, output: Path, options: PackOptions = PackOptions(), progress: bool = False
) -> PackSummary:
    """Write the pack of the dataset at ``source`` into ``output`` (which must not exist).
    Speech segments without a GE2E d-vector are embedded first (into the source's cache, as
    the trainer would). Raises ``InputError`` when the source has no psi rows."""
    if output.exists():
        raise InputError(f"{output} exists; packs are written to a new folder")
    index = DatasetIndex.load(source)
    if index.psi is None:
        raise InputError(f"{source} has no {PSI_FILE}: prepare it with psi embeddings")
    every_vector = ensure_ge2e_cache(index, progress=progress)
    audio = [r for r in index.audio if r.split == options.split]
    vectors = {
        r.audio: every_vector[i] for i, r in enumerate(index.audio) if r.split == options.split
    }
    crops = [r for r in index.crops if r.split == options.split]
    voiced = {r.identity for r in audio} & {r.identity for r in crops}
    order = sample_order(crops, options.seed)

    # Fixed costs first (speaker cache, records of speech, settings): crops get the rest.
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / SPEAKER_DIR).mkdir(parents=True)
    paths = sorted(vectors)
    np.save(staging / SPEAKER_DIR / GE2E_CACHE, np.stack([vectors[p] for p in paths]))
    (staging / SPEAKER_DIR / GE2E_CACHE_INDEX).write_text(
        json.dumps({"encoder": GE2E_CACHE_NAME, "audio": paths})
    )
    settings = source / SETTINGS_FILE
    if settings.is_file():
        shutil.copyfile(settings, staging / SETTINGS_FILE)
    budget = options.max_bytes - _folder_bytes(staging)
    budget -= 1024 * len(audio) + 4096  # manifest lines of the speech, pack.json, splits
    assert index.psi is not None
    psi_row_bytes = index.psi.shape[1] * 4

    kept: list[CropRecord] = []
    for record in order:
        data = encode_crop(source / record.image, options.jpeg_quality)
        cost = len(data) + psi_row_bytes + len(json.dumps(asdict(record))) + 64
        if cost > budget:
            break
        budget -= cost
        suffix = ".jpg" if options.jpeg_quality else ".png"
        image = str(Path(record.image).with_suffix(suffix))
        (staging / image).parent.mkdir(parents=True, exist_ok=True)
        (staging / image).write_bytes(data)
        kept.append(replace(record, image=image, psi_row=len(kept)))
    if not kept:
        raise InputError(f"no crop fits in {options.max_bytes} bytes")
    rows = [index.psi[r.psi_row] for r in order[: len(kept)] if r.psi_row is not None]
    if len(rows) != len(kept):
        raise InputError(f"{source}: some crops have no psi row")
    np.save(staging / PSI_FILE, np.stack(rows).astype(np.float32))
    identities = sorted({r.identity for r in kept})
    speech = [r for r in audio if r.identity in set(identities) or not r.paired]
    write_manifest(staging / MANIFEST_FILE, [*sorted(kept, key=_crop_key), *speech])
    (staging / SPLITS_FILE).write_text(
        json.dumps({"seed": options.seed, "train": [], "test": [], options.split: identities})
    )
    summary = PackSummary(
        crops=len(kept),
        crops_available=len(crops),
        identities=len(identities),
        identities_available=len({r.identity for r in crops}),
        voiced_identities=len(voiced & set(identities)),
        audio_segments=len(speech),
        bytes=0,
    )
    pack = {
        "source": str(source),
        "options": asdict(options),
        "summary": asdict(summary),
        "note": "GE2E speaker inputs only: speech samples are not packed",
    }
    (staging / PACK_FILE).write_text(json.dumps(pack, indent=2))
    summary = replace(summary, bytes=_folder_bytes(staging))
    if summary.bytes > options.max_bytes:  # the estimate above is conservative; check anyway
        raise InputError(f"pack is {summary.bytes} bytes, over {options.max_bytes}")
    staging.replace(output)
    return summary


def sample_order(crops: Sequence[CropRecord], seed: int) -> list[CropRecord]:
    """Crops in a seeded random order (a hash of the seed and the image path): any prefix is
    a uniform sample of the split, so a pack keeps the mix of videos and photos, voiced and
    face-only people, that the full dataset has."""

    def key(record: CropRecord) -> str:
        return hashlib.sha256(f"{seed}:{record.image}".encode()).hexdigest()

    return sorted(crops, key=key)


def encode_crop(path: Path, jpeg_quality: int) -> bytes:
    """The crop at ``path`` as JPEG bytes (``jpeg_quality`` 1-100) or PNG bytes (0)."""
    image = read_crop(path)
    if jpeg_quality:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    else:
        ok, data = cv2.imencode(".png", image)
    if not ok:
        raise InputError(f"could not encode {path}")
    return bytes(data.tobytes())


def _crop_key(record: CropRecord) -> tuple[str, str]:
    return (record.identity, record.image)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
