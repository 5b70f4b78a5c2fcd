"""The dataset manifest: one JSON line per face crop and per audio segment.

A prepared dataset directory looks like this (every path in a record is relative to it)::

    dataset.json     the settings that shaped the files (checked when a run resumes)
    manifest.jsonl   one CropRecord or AudioRecord per line
    psi.npy          (crops, D) float32 identity embeddings; CropRecord.psi_row indexes it
    splits.json      identities per split (a split is by identity, never by frame)
    errors.jsonl     sources that could not be read, one ErrorRecord per line
    crops/IDENTITY/*.png   aligned CROP_SIZE x CROP_SIZE BGR face crops (lossless)
    audio/IDENTITY/*.npy   SPEAKER_WINDOW_S of speech, 16 kHz mono float32
    state/           per-source completion records that make a run resumable

Records are frozen dataclasses with strict ``to_json``/``from_json``: an unknown or missing
key is an error, so a manifest written by another version fails loudly instead of silently
losing a field.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = get_args(Split)

SourceKind = Literal["video", "frames", "image", "speech"]
"""Where a record came from: a video file, a folder of numbered video frames, a still image,
or a speech-only audio file."""
SOURCE_KINDS: tuple[SourceKind, ...] = get_args(SourceKind)

Point = tuple[float, float]
AffineRows = tuple[tuple[float, float, float], tuple[float, float, float]]

MANIFEST_FILE = "manifest.jsonl"
PSI_FILE = "psi.npy"
SPLITS_FILE = "splits.json"
ERRORS_FILE = "errors.jsonl"
SETTINGS_FILE = "dataset.json"


@dataclass(frozen=True)
class CropRecord:
    """One aligned face crop.

    ``landmarks`` are the detector's 5 points (YuNet/ArcFace order) mapped into crop pixels;
    ``source_affine`` is the 2x3 matrix that maps source-image pixels to crop pixels;
    ``frame_index`` counts decoded frames from 0 (0 for a still image) and ``time_s`` is the
    demuxer's presentation time (None for a still image); ``inside_fraction`` is the share of
    crop pixels that lie inside the source image (the rest repeats its border: a face at the
    edge of a tight photo); ``psi_row`` indexes ``psi.npy``
    (None when the dataset was prepared without embeddings); ``audio`` lists the speech
    segments of the same video (empty when the face has no paired audio)."""

    identity: str
    split: Split
    source: str
    source_kind: SourceKind
    image: str
    frame_index: int
    time_s: float | None
    landmarks: tuple[Point, ...]
    source_affine: AffineRows
    detection_score: float
    inside_fraction: float
    psi_row: int | None
    audio: tuple[str, ...]
    kind: Literal["crop"] = "crop"

    def __post_init__(self) -> None:
        _check_common(self.split, self.source_kind)
        if len(self.landmarks) != 5:
            raise ValueError(f"a crop needs 5 landmarks, got {len(self.landmarks)}")

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready object, ``kind`` first."""
        return _to_dict(self)

    def to_json(self) -> str:
        """One JSON line (no newline)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> CropRecord:
        """Parse a line written by ``to_json``; unknown or missing keys raise ValueError."""
        return cls.from_dict(_loads(line))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CropRecord:
        """Build from a parsed JSON object, converting lists back to tuples."""
        _check_keys(cls, data)
        time_s = data["time_s"]
        return cls(
            identity=str(data["identity"]),
            split=data["split"],
            source=str(data["source"]),
            source_kind=data["source_kind"],
            image=str(data["image"]),
            frame_index=int(data["frame_index"]),
            time_s=None if time_s is None else float(time_s),
            landmarks=tuple((float(x), float(y)) for x, y in data["landmarks"]),
            source_affine=_affine_rows(data["source_affine"]),
            detection_score=float(data["detection_score"]),
            inside_fraction=float(data["inside_fraction"]),
            psi_row=None if data["psi_row"] is None else int(data["psi_row"]),
            audio=tuple(str(p) for p in data["audio"]),
        )


@dataclass(frozen=True)
class AudioRecord:
    """One ``SPEAKER_WINDOW_S`` segment of speech (silence removed by VAD).

    ``speech_s`` is how much distinct speech it holds: a segment cut from less speech than
    the window is filled by repeating that speech (as the seed paper does). ``paired`` is
    True when the audio comes from a video whose face crops carry the same identity."""

    identity: str
    split: Split
    source: str
    source_kind: SourceKind
    audio: str
    segment_index: int
    speech_s: float
    paired: bool
    kind: Literal["audio"] = "audio"

    def __post_init__(self) -> None:
        _check_common(self.split, self.source_kind)

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready object, ``kind`` first."""
        return _to_dict(self)

    def to_json(self) -> str:
        """One JSON line (no newline)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> AudioRecord:
        """Parse a line written by ``to_json``; unknown or missing keys raise ValueError."""
        return cls.from_dict(_loads(line))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AudioRecord:
        """Build from a parsed JSON object."""
        _check_keys(cls, data)
        return cls(
            identity=str(data["identity"]),
            split=data["split"],
            source=str(data["source"]),
            source_kind=data["source_kind"],
            audio=str(data["audio"]),
            segment_index=int(data["segment_index"]),
            speech_s=float(data["speech_s"]),
            paired=bool(data["paired"]),
        )


Record = CropRecord | AudioRecord


@dataclass(frozen=True)
class ErrorRecord:
    """A source that could not be read, and why."""

    source: str
    source_kind: SourceKind
    error: str

    def to_json(self) -> str:
        """One JSON line (no newline)."""
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> ErrorRecord:
        """Parse a line written by ``to_json``."""
        data = _loads(line)
        _check_keys(cls, data)
        return cls(
            source=str(data["source"]), source_kind=data["source_kind"], error=str(data["error"])
        )


def record_from_json(line: str) -> Record:
    """Parse one manifest line into the record type its ``kind`` names."""
    data = _loads(line)
    kind = data.get("kind")
    if kind == "crop":
        return CropRecord.from_dict(data)
    if kind == "audio":
        return AudioRecord.from_dict(data)
    raise ValueError(f"unknown manifest record kind {kind!r}")


def read_manifest(path: Path) -> list[Record]:
    """All records of a manifest file, in file order."""
    with path.open(encoding="utf-8") as f:
        return [record_from_json(line) for line in f if line.strip()]


def write_manifest(path: Path, records: Iterable[Record]) -> None:
    """Write records as JSON lines, atomically (a reader sees the old file or the new one)."""
    write_text_atomic(path, "".join(r.to_json() + "\n" for r in records))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a hidden temporary file beside ``path``, flush it to disk, then
    rename it over ``path``: a crash leaves either the old file or the complete new one,
    never a truncated file that a resumed run would trust."""
    temp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.partial"
    try:
        with temp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        temp.replace(path)
    finally:
        temp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """``write_bytes_atomic`` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def is_partial_file(path: Path) -> bool:
    """True for the temporary files ``write_bytes_atomic`` leaves behind when killed."""
    return path.name.startswith(".") and path.name.endswith(".partial")


# --- helpers ----------------------------------------------------------------------------


def _check_common(split: str, source_kind: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if source_kind not in SOURCE_KINDS:
        raise ValueError(f"source_kind must be one of {SOURCE_KINDS}, got {source_kind!r}")


def _check_keys(cls: type[Any], data: Mapping[str, Any]) -> None:
    expected = {f.name for f in fields(cls)}
    unknown = set(data) - expected
    missing = expected - set(data)
    if unknown or missing:
        raise ValueError(
            f"{cls.__name__}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}"
        )


def _to_dict(record: CropRecord | AudioRecord) -> dict[str, Any]:
    # "kind" first so a person reading the file sees at once what each line is.
    data: dict[str, Any] = {"kind": record.kind}
    data.update((k, v) for k, v in asdict(record).items() if k != "kind")
    return data


def _loads(line: str) -> dict[str, Any]:
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("a record must be a JSON object")
    return data


def _affine_rows(rows: Any) -> AffineRows:
    if len(rows) != 2 or any(len(row) != 3 for row in rows):
        raise ValueError("source_affine must be 2 rows of 3 numbers")
    first, second = ((float(a), float(b), float(c)) for a, b, c in rows)
    return (first, second)
