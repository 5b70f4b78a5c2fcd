"""Provenance: which pixels of an output frame were synthesised, and by what.

Restored pixels are made up. Every mode that restores says so per frame and per face: the
track, its box, how much of it was covered, whether and how it was restored, and the exact
restored region as a compact mask encoding. ``process`` and ``live`` write this as a JSON
Lines sidecar next to the output (``out.mp4`` -> ``out.restored.jsonl``); the service puts
the same per-face objects in its replies.

Region encoding (``encode_region``): ``{"box": [x, y, w, h], "counts": "..."}``, the mask's
bounding box in frame pixels and the run lengths of the box's pixels in row-major order,
alternating False/True and starting with False (so the first run may be 0). ``counts`` is
base64 of unsigned LEB128 varints of zigzag(run[i] - run[i-2]) (run[-2] = run[-1] = 0): a
smooth shape's runs change little from one row to the next, so most take one byte. Measured
on a 201x121 filled ellipse: 304 characters, against 420 for plain varints and 754 for a
JSON list of the runs (a 400x520 ellipse: 1384 against 3683). ``decode_region`` also accepts
``counts`` as a plain list of the runs, for hand-written tools. An empty mask is
``{"box": [0, 0, 0, 0], "counts": ""}``.

Sidecar format: the first line is a header object (``{"avstream_provenance": 1, "width":
..., "height": ..., "video": ...}``), then one ``FrameProvenance.to_json()`` object per line.

``python -m stream.provenance SIDECAR --frame N -o mask.png`` writes frame N's restored-pixel
mask; ``--summary`` prints per-track counts.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypedDict

import cv2
import numpy as np
import numpy.typing as npt

from stream.media import AtomicOutput
from stream.restore import RestoredFrame
from stream.types import Image, VideoFrame

FORMAT_VERSION = 1
"""The ``avstream_provenance`` value of the sidecar header; bumped on incompatible change."""

SIDECAR_SUFFIX = ".restored.jsonl"

_HEADER_KEYS = ("avstream_provenance", "width", "height", "video")

_MAX_VARINT_BYTES = 5
"""35 bits: far more pixels than any frame has, and small enough never to overflow."""

BoolMask = npt.NDArray[np.bool_]


class EncodedRegion(TypedDict):
    """A boolean mask as ``encode_region`` writes it: plain JSON."""

    box: list[int]
    """[x, y, w, h] in frame pixels; [0, 0, 0, 0] for an empty mask."""
    counts: str
    """The box's run lengths, row-major, False first, packed as the module docstring says."""


# --- region encoding -------------------------------------------------------------------


def encode_region(mask: BoolMask, origin: tuple[int, int] = (0, 0)) -> EncodedRegion:
    """Encode a frame-space boolean mask: its bounding box plus the box's run lengths.
    ``origin``: the frame position (x, y) of ``mask``'s top-left pixel, when ``mask`` is a
    window of the frame (a composite's region) rather than the whole frame."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return EncodedRegion(box=[0, 0, 0, 0], counts="")
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    runs = _run_lengths(np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.bool_).ravel())
    box = [origin[0] + x0, origin[1] + y0, x1 - x0, y1 - y0]
    return EncodedRegion(box=box, counts=_pack_runs(runs))


def decode_region(encoded: Mapping[str, object], shape: tuple[int, int]) -> BoolMask:
    """The exact (height, width) mask that ``encoded`` describes.

    ``counts`` may be the base64 string ``encode_region`` writes or a list of non-negative
    ints. Raises ValueError with a one-line message for anything malformed: a box outside
    ``shape``, runs that do not add up to the box's area, a truncated varint, bad base64.
    """
    height, width = shape
    if height < 0 or width < 0:
        raise ValueError(f"shape must be non-negative, got {shape}")
    box, runs = _parse_region(encoded)
    x, y, w, h = box
    mask = np.zeros((height, width), dtype=np.bool_)
    if w == 0 or h == 0:
        if box != (0, 0, 0, 0) or runs.size != 0:
            raise ValueError(f"an empty region is box [0, 0, 0, 0] with no runs, got {box}")
        return mask
    if x + w > width or y + h > height:
        raise ValueError(f"region box {list(box)} lies outside a {width}x{height} frame")
    total = int(runs.sum())
    if total != w * h:
        raise ValueError(f"runs cover {total} pixels, the {w}x{h} box has {w * h}")
    values = np.zeros(runs.size, dtype=np.bool_)
    values[1::2] = True
    mask[y : y + h, x : x + w] = np.repeat(values, runs).reshape(h, w)
    return mask


def _parse_region(
    encoded: Mapping[str, object],
) -> tuple[tuple[int, int, int, int], npt.NDArray[np.int64]]:
    """Validated (box, runs) of an encoded region, without the frame-size checks."""
    if not isinstance(encoded, Mapping):
        raise ValueError(f"region must be an object, got {type(encoded).__name__}")
    box = encoded.get("box")
    if (
        not isinstance(box, list | tuple)
        or len(box) != 4
        or not all(_is_int(v) and v >= 0 for v in box)
    ):
        raise ValueError(f"region box must be 4 non-negative ints [x, y, w, h], got {box!r}")
    counts = encoded.get("counts")
    if isinstance(counts, str):
        runs = _runs_from_string(counts)
    elif isinstance(counts, list | tuple):
        if not all(_is_int(v) for v in counts):
            raise ValueError("region counts must be ints")
        try:
            runs = np.array(counts, dtype=np.int64)
        except OverflowError:
            raise ValueError("region counts hold a run too large for any frame") from None
        if (runs < 0).any():
            raise ValueError("region counts must not be negative")
    else:
        raise ValueError(f"region counts must be a string or a list, got {type(counts).__name__}")
    x, y, w, h = (int(v) for v in box)
    return (x, y, w, h), runs


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True is no pixel count.
    return isinstance(value, int) and not isinstance(value, bool)


def _run_lengths(flat: BoolMask) -> npt.NDArray[np.int64]:
    """Alternating run lengths of ``flat``, False first (a leading 0 when it starts True)."""
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).astype(np.int64)
    if flat.size and flat[0]:
        runs = np.concatenate(([0], runs))
    return runs


def _varints(values: npt.NDArray[np.int64]) -> bytes:
    """Unsigned LEB128: 7 bits a byte, low group first, high bit set on all but the last."""
    if values.size == 0:
        return b""
    groups = np.ones(values.size, dtype=np.int64)
    for k in range(1, _MAX_VARINT_BYTES):
        groups += (values >> (7 * k)) > 0
    if (values >> (7 * _MAX_VARINT_BYTES) > 0).any():
        raise ValueError(f"run length {int(values.max())} is too large to encode")
    starts = np.cumsum(groups) - groups
    out = np.zeros(int(groups.sum()), dtype=np.uint8)
    for k in range(int(groups.max())):
        has = groups > k
        low7 = (values[has] >> (7 * k)) & 0x7F
        more = (groups[has] > k + 1).astype(np.int64) << 7
        out[starts[has] + k] = (low7 | more).astype(np.uint8)
    return out.tobytes()


def _pack_runs(runs: npt.NDArray[np.int64]) -> str:
    """The ``counts`` string: base64 of the zigzag LEB128 varints of each run minus the run
    two before it (the same colour one row up, for a smooth shape: a small number)."""
    deltas = runs.copy()
    deltas[2:] -= runs[:-2]
    zigzag = np.where(deltas >= 0, 2 * deltas, -2 * deltas - 1)
    return base64.b64encode(_varints(zigzag)).decode("ascii")


def _runs_from_string(counts: str) -> npt.NDArray[np.int64]:
    """Inverse of ``_pack_runs``; ValueError for bad base64, varints or negative runs."""
    try:
        raw = base64.b64decode(counts.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"region counts are not base64: {exc}") from None
    zigzag = _from_varints(raw)
    deltas = np.where(zigzag % 2 == 0, zigzag // 2, -(zigzag + 1) // 2)
    runs = np.empty_like(deltas)
    # Each colour's runs are the running sum of its own deltas.
    runs[0::2] = np.cumsum(deltas[0::2])
    runs[1::2] = np.cumsum(deltas[1::2])
    if (runs < 0).any():
        raise ValueError("region counts decode to a negative run")
    return runs


def _from_varints(raw: bytes) -> npt.NDArray[np.int64]:
    data = np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    if data.size == 0:
        return np.zeros(0, dtype=np.int64)
    if data[-1] & 0x80:
        raise ValueError("region counts end inside a varint")
    ends = np.flatnonzero(data < 0x80)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _MAX_VARINT_BYTES:
        raise ValueError(f"region counts hold a varint longer than {_MAX_VARINT_BYTES} bytes")
    position = np.arange(data.size) - np.repeat(starts, lengths)
    parts = (data & 0x7F) << (7 * position)
    return np.asarray(np.add.reduceat(parts, starts), dtype=np.int64)


# --- per-face and per-frame records ------------------------------------------------------


@dataclass(frozen=True)
class FaceProvenance:
    """What happened to one face in one frame.

    ``box``: the face box (x, y, w, h) in frame pixels; ``coverage``: the share of the face
    found covered, 0..1; ``covered``: whether that made it a covered face; ``restored``:
    whether pixels were synthesised; ``backend``: what synthesised them (None when nothing
    was); ``fallback``: a fallback fill replaced the backend's; ``region``: exactly the
    pixels replaced (``encode_region``), None when none were.
    """

    track_id: int
    box: tuple[float, float, float, float]
    coverage: float
    covered: bool
    restored: bool
    backend: str | None = None
    fallback: bool = False
    region: EncodedRegion | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready object; floats as given (round them when building, to save bytes)."""
        return {
            "track_id": self.track_id,
            "box": list(self.box),
            "coverage": self.coverage,
            "covered": self.covered,
            "restored": self.restored,
            "backend": self.backend,
            "fallback": self.fallback,
            "region": None if self.region is None else dict(self.region),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> FaceProvenance:
        """Inverse of ``to_json``; ValueError with a one-line message when malformed."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"face must be an object, got {type(obj).__name__}")
        box = _get_list(obj, "box")
        numbers = [float(v) for v in box if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(box) != 4 or len(numbers) != 4:
            raise ValueError(f"face box must be 4 numbers [x, y, w, h], got {box!r}")
        x, y, w, h = numbers
        backend = obj.get("backend")
        if backend is not None and not isinstance(backend, str):
            raise ValueError(f"face backend must be a string or null, got {backend!r}")
        region_obj = obj.get("region")
        region = None
        if region_obj is not None:
            if not isinstance(region_obj, Mapping):
                raise ValueError("face region must be an object or null")
            region_box, runs = _parse_region(region_obj)
            counts = region_obj.get("counts")
            if not isinstance(counts, str):
                # Keep one representation in memory: the compact one.
                counts = _pack_runs(runs)
            region = EncodedRegion(box=list(region_box), counts=counts)
        return cls(
            track_id=_get_int(obj, "track_id"),
            box=(x, y, w, h),
            coverage=_get_float(obj, "coverage"),
            covered=_get_bool(obj, "covered"),
            restored=_get_bool(obj, "restored"),
            backend=backend,
            fallback=_get_bool(obj, "fallback"),
            region=region,
        )


@dataclass(frozen=True)
class FrameProvenance:
    """The faces of one output frame. ``index``: frame number from 0 in output order;
    ``pts``: its presentation timestamp in the stream's time base (None where there is none,
    e.g. live); ``time_s``: the same in seconds."""

    index: int
    pts: int | None
    time_s: float | None
    faces: tuple[FaceProvenance, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready object."""
        return {
            "index": self.index,
            "pts": self.pts,
            "time_s": self.time_s,
            "faces": [face.to_json() for face in self.faces],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> FrameProvenance:
        """Inverse of ``to_json``; ValueError with a one-line message when malformed."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"frame must be an object, got {type(obj).__name__}")
        faces = _get_list(obj, "faces")
        if not all(isinstance(face, Mapping) for face in faces):
            raise ValueError("frame faces must be objects")
        return cls(
            index=_get_int(obj, "index"),
            pts=None if obj.get("pts") is None else _get_int(obj, "pts"),
            time_s=None if obj.get("time_s") is None else _get_float(obj, "time_s"),
            faces=tuple(
                FaceProvenance.from_json(face) for face in faces if isinstance(face, Mapping)
            ),
        )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _get(obj: Mapping[str, object], key: str) -> object:
    if key not in obj:
        raise ValueError(f"missing key {key!r}")
    return obj[key]


def _get_int(obj: Mapping[str, object], key: str) -> int:
    value = _get(obj, key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key!r} must be an int, got {value!r}")
    return value


def _get_float(obj: Mapping[str, object], key: str) -> float:
    value = _get(obj, key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{key!r} must be a number, got {value!r}")
    return float(value)


def _get_bool(obj: Mapping[str, object], key: str) -> bool:
    value = _get(obj, key)
    if not isinstance(value, bool):
        raise ValueError(f"{key!r} must be true or false, got {value!r}")
    return value


def _get_list(obj: Mapping[str, object], key: str) -> list[object]:
    value = _get(obj, key)
    if not isinstance(value, list):
        raise ValueError(f"{key!r} must be a list, got {value!r}")
    return value


def restored_mask(frame: FrameProvenance, shape: tuple[int, int]) -> BoolMask:
    """The (height, width) mask of every pixel of ``frame`` that was synthesised: the union
    of its faces' regions (faces without a region contribute nothing)."""
    mask = np.zeros(shape, dtype=np.bool_)
    for face in frame.faces:
        if face.region is not None:
            mask |= decode_region(face.region, shape)
    return mask


def region_area(encoded: Mapping[str, object]) -> int:
    """How many pixels ``encoded`` marks, without decoding it to a frame."""
    _, runs = _parse_region(encoded)
    return int(runs[1::2].sum())


# --- the sidecar -------------------------------------------------------------------------


def sidecar_path(output: Path) -> Path:
    """Where the sidecar of ``output`` goes: ``out.mp4`` -> ``out.restored.jsonl``."""
    return output.with_name(output.stem + SIDECAR_SUFFIX)


@dataclass(frozen=True)
class SidecarHeader:
    """The sidecar's first line: the frame size that regions decode to, the video the
    sidecar describes (its file name, or None), and any ``extra`` keys the writer adds
    (e.g. the command's options)."""

    width: int
    height: int
    video: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width): the shape ``decode_region`` and ``restored_mask`` want."""
        return self.height, self.width

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready object; ValueError when ``extra`` reuses a reserved key."""
        clash = sorted(set(self.extra) & set(_HEADER_KEYS))
        if clash:
            raise ValueError(f"extra header keys clash with reserved ones: {clash}")
        return {
            "avstream_provenance": FORMAT_VERSION,
            "width": self.width,
            "height": self.height,
            "video": self.video,
            **self.extra,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> SidecarHeader:
        """Inverse of ``to_json``; ValueError for another format or a bad frame size."""
        if not isinstance(obj, Mapping) or "avstream_provenance" not in obj:
            raise ValueError("not an avstream provenance sidecar (no avstream_provenance key)")
        version = obj["avstream_provenance"]
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported provenance format {version!r} (this reads 1)")
        width, height = _get_int(obj, "width"), _get_int(obj, "height")
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        video = obj.get("video")
        if video is not None and not isinstance(video, str):
            raise ValueError(f"'video' must be a string or null, got {video!r}")
        extra = {k: v for k, v in obj.items() if k not in _HEADER_KEYS}
        return cls(width=width, height=height, video=video, extra=extra)


class SidecarWriter:
    """Write a provenance sidecar: ``with SidecarWriter(path, header) as w: w.write(frame)``.

    Lines go to a temporary file beside ``path`` that replaces ``path`` only when the block
    ends without an exception; on an exception the temporary file is removed, so a failed
    run leaves no partial sidecar (as ``stream.media.AtomicOutput`` does for the video).
    """

    def __init__(self, path: Path, header: SidecarHeader) -> None:
        self.path = Path(path)
        self.header = header
        self._atomic: AtomicOutput | None = None
        self._file: IO[str] | None = None
        self.frames_written = 0

    def __enter__(self) -> SidecarWriter:
        header_line = _dumps(self.header.to_json())
        self._atomic = AtomicOutput(self.path)
        try:
            self._file = self._atomic.temp_path.open("w", encoding="utf-8")
            self._file.write(header_line + "\n")
        except BaseException:
            self._close(commit=False)
            raise
        return self

    def write(self, frame: FrameProvenance) -> None:
        """Append one frame. ValueError when a region does not fit the header's frame size
        or a number is not finite (JSON has no NaN)."""
        if self._file is None:
            raise RuntimeError("SidecarWriter.write called outside its with block")
        for face in frame.faces:
            if face.region is not None:
                x, y, w, h = face.region["box"]
                if x + w > self.header.width or y + h > self.header.height:
                    raise ValueError(
                        f"frame {frame.index}: region box {face.region['box']} lies outside "
                        f"the {self.header.width}x{self.header.height} frame"
                    )
        self._file.write(_dumps(frame.to_json()) + "\n")
        self.frames_written += 1

    def commit(self) -> None:
        """Close and move the sidecar into place now (before the video it describes, so
        the video never appears without it); leaving the block afterwards does nothing."""
        self._close(commit=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close(commit=exc_type is None)

    def _close(self, *, commit: bool) -> None:
        atomic, file = self._atomic, self._file
        self._atomic, self._file = None, None
        if atomic is None:
            return
        try:
            if file is not None:
                file.close()
            if commit:
                atomic.commit()
        finally:
            # Removes the temporary file unless it was committed.
            atomic.__exit__(None, None, None)


def _dumps(obj: Mapping[str, object]) -> str:
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"provenance must be finite numbers: {exc}") from None


def read_sidecar(path: Path) -> tuple[SidecarHeader, Iterator[FrameProvenance]]:
    """The header (read now) and the frames (read lazily, in file order) of a sidecar.

    ValueError names the file and line of anything malformed; OSError if it cannot be read.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as file:
        first = file.readline()
    if not first.strip():
        raise ValueError(f"{path}: empty, no provenance header")
    try:
        header = SidecarHeader.from_json(_loads(first))
    except ValueError as exc:
        raise ValueError(f"{path}:1: {exc}") from None
    return header, _read_frames(path)


def _read_frames(path: Path) -> Iterator[FrameProvenance]:
    with path.open(encoding="utf-8") as file:
        file.readline()  # the header, read by read_sidecar
        for number, line in enumerate(file, start=2):
            if not line.strip():
                continue
            try:
                yield FrameProvenance.from_json(_loads(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None


def _loads(line: str) -> Mapping[str, object]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


# --- visible marker ----------------------------------------------------------------------


def outline_pixels(mask: BoolMask, thickness_px: int = 2) -> BoolMask:
    """The pixels of ``mask`` within ``thickness_px`` (chessboard distance) of its edge.

    The outline lies inside the region, so it covers only synthesised pixels; the frame
    border counts as an edge, so a region cut by the border is closed there too.
    """
    if thickness_px < 1:
        raise ValueError(f"thickness_px must be at least 1, got {thickness_px}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    size = 2 * thickness_px + 1
    inner = cv2.erode(
        mask.astype(np.uint8),
        np.ones((size, size), dtype=np.uint8),
        borderType=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return np.asarray(mask & (inner == 0), dtype=np.bool_)


def draw_outline(
    image: Image,
    mask: BoolMask,
    colour: tuple[int, int, int] = (0, 255, 255),
    thickness_px: int = 2,
) -> Image:
    """A copy of the BGR ``image`` with the edge of ``mask`` painted in ``colour`` (BGR;
    default yellow). Only ``outline_pixels(mask, thickness_px)`` change."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be BGR uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {image.shape[:2]}")
    if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
        raise ValueError(f"colour must be three 0..255 values (B, G, R), got {colour}")
    marked = image.copy()
    marked[outline_pixels(mask, thickness_px)] = colour
    return marked


# --- from restored frames ----------------------------------------------------------------


def frame_provenance(restored: RestoredFrame) -> FrameProvenance:
    """The record of one restored frame: every face the frame
    holds (``restored.decisions``), restored or passed through, and for each restored face
    exactly the pixels its composite replaced."""
    by_track = {face.track_id: face for face in restored.faces}
    faces = []
    for decision in restored.decisions:
        face = by_track.get(decision.track_id)
        region = face.region if face is not None else None
        faces.append(
            FaceProvenance(
                track_id=decision.track_id,
                box=(
                    round(decision.box[0], 2),
                    round(decision.box[1], 2),
                    round(decision.box[2], 2),
                    round(decision.box[3], 2),
                ),
                coverage=round(decision.coverage, 4),
                covered=decision.covered,
                restored=region is not None,
                backend=face.result.backend if face is not None else None,
                fallback=face.result.fallback if face is not None else False,
                region=(
                    encode_region(region.inside, (region.x, region.y))
                    if region is not None
                    else None
                ),
            )
        )
    frame = restored.frame
    return FrameProvenance(
        index=frame.index, pts=frame.pts, time_s=frame.time_s, faces=tuple(faces)
    )


def marked(restored: RestoredFrame) -> RestoredFrame:
    """``restored`` with a visible outline (``draw_outline``) around every restored region
    (``--mark-restored``); the frame's other fields are kept."""
    shape = (restored.frame.image.shape[0], restored.frame.image.shape[1])
    mask = np.zeros(shape, dtype=np.bool_)
    for face in restored.faces:
        if face.region is not None:
            mask |= face.region.full(shape)
    if not mask.any():
        return restored
    frame = restored.frame
    image = draw_outline(frame.image, mask)
    outlined = VideoFrame(index=frame.index, pts=frame.pts, time_base=frame.time_base, image=image)
    return dataclasses.replace(restored, frame=outlined)


def recorded_provenance(
    record: FrameProvenance | None, index: int, pts: int | None, time_s: float
) -> FrameProvenance:
    """A live recording's record of its frame ``index``: ``record`` renumbered to the
    recording's own frame and time, or no faces for a frame sent out as it came (its
    deadline missed)."""
    faces = record.faces if record is not None else ()
    return FrameProvenance(index=index, pts=pts, time_s=time_s, faces=faces)


def rescaled(
    record: FrameProvenance, source: tuple[int, int], target: tuple[int, int]
) -> FrameProvenance:
    """``record`` of a frame of shape ``source`` for that frame scaled to ``target``
    (height, width): regions resized with nearest-neighbour sampling, as the picture was
    scaled; the boxes scaled too."""
    if source == target:
        return record
    sy, sx = target[0] / source[0], target[1] / source[1]
    faces = []
    for face in record.faces:
        region = face.region
        if region is not None:
            mask = decode_region(region, source).astype(np.uint8)
            resized = cv2.resize(mask, (target[1], target[0]), interpolation=cv2.INTER_NEAREST)
            region = encode_region(np.asarray(resized, dtype=bool))
        x, y, w, h = face.box
        box = (round(x * sx, 2), round(y * sy, 2), round(w * sx, 2), round(h * sy, 2))
        faces.append(dataclasses.replace(face, box=box, region=region))
    return dataclasses.replace(record, faces=tuple(faces))


# --- command line ------------------------------------------------------------------------


def track_summary(frames: Iterator[FrameProvenance]) -> dict[str, Any]:
    """Counts over a sidecar's frames: per track (frames seen, covered, restored, fallback,
    restored pixels) and per backend (faces restored)."""
    tracks: dict[int, dict[str, int]] = {}
    backends: dict[str, int] = {}
    frame_count = 0
    for frame in frames:
        frame_count += 1
        for face in frame.faces:
            counts = tracks.setdefault(
                face.track_id,
                {"frames": 0, "covered": 0, "restored": 0, "fallback": 0, "restored_px": 0},
            )
            counts["frames"] += 1
            counts["covered"] += face.covered
            counts["restored"] += face.restored
            counts["fallback"] += face.fallback
            if face.region is not None:
                counts["restored_px"] += region_area(face.region)
            if face.restored and face.backend is not None:
                backends[face.backend] = backends.get(face.backend, 0) + 1
    return {
        "frames": frame_count,
        "tracks": {str(track): tracks[track] for track in sorted(tracks)},
        "backends": backends,
    }


def _write_mask_png(path: Path, mask: BoolMask) -> None:
    """8-bit PNG, 255 where restored, written atomically."""
    with AtomicOutput(path) as atomic:
        if not cv2.imwrite(str(atomic.temp_path), mask.astype(np.uint8) * 255):
            raise OSError(f"cannot write {path} (OpenCV could not encode it)")
        atomic.commit()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stream.provenance SIDECAR (--frame N -o MASK.png | --summary)``."""
    parser = argparse.ArgumentParser(
        prog="python -m stream.provenance",
        description="Read an avstream provenance sidecar (OUT.restored.jsonl).",
    )
    parser.add_argument("sidecar", type=Path)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--frame", type=int, help="frame index whose restored mask to write")
    action.add_argument("--summary", action="store_true", help="print per-track counts as JSON")
    parser.add_argument("-o", "--output", type=Path, help="PNG for --frame (255 = restored)")
    args = parser.parse_args(argv)
    if args.frame is not None and args.output is None:
        parser.error("--frame needs -o/--output")
    try:
        header, frames = read_sidecar(args.sidecar)
        if args.summary:
            print(json.dumps(track_summary(frames), sort_keys=True))
            return 0
        frame = next((f for f in frames if f.index == args.frame), None)
        if frame is None:
            raise ValueError(f"{args.sidecar}: no frame with index {args.frame}")
        mask = restored_mask(frame, header.shape)
        _write_mask_png(args.output, mask)
    except (ValueError, OSError) as exc:
        print(f"provenance: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.output}: frame {args.frame}, {int(mask.sum())} restored pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
