"""The on-disk cache of exported ONNX graphs and built TensorRT engines.

Building a TensorRT engine takes minutes and exporting ``paper`` tens of seconds, so both are
done once per key and shared by every process on the host. Layout::

    ROOT/onnx/<digest>/        entry.json, speaker.onnx, inpaint.onnx
    ROOT/tensorrt/<digest>/    entry.json, engine.plan
    ROOT/<kind>/.<digest>.lock the per-key build lock (fcntl)
    ROOT/timing/<name>.cache   TensorRT timing caches, shared by every build on one GPU type

Two rules keep concurrent processes safe:

- An entry is built in a private ``.tmp-*`` folder and appears under its final name by one
  ``rename``: a reader sees a complete entry or none, never a half-written one.
- Builders take an exclusive ``fcntl.flock`` on the key's lock file and look again once they
  hold it, so when two processes ask for the same missing entry one builds and the other
  waits and then reads it: one build, one entry.

This module uses the standard library only (no torch), so it is cheap to import in tools and
in the processes the tests spawn.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

Precision = Literal["fp16", "fp32"]
PRECISIONS: tuple[Precision, ...] = ("fp16", "fp32")

ENTRY_FILE = "entry.json"
ENTRY_FORMAT_VERSION = 1
SHARED_DIRS = ("timing", "ort-tensorrt")
"""Folders of ROOT that hold no entries: TensorRT timing caches and onnxruntime's own
TensorRT engine cache."""
DEFAULT_LOCK_TIMEOUT_S = 3600.0
"""How long a process waits for another one's build: a paper engine takes minutes."""


class CacheError(Exception):
    """The cache cannot be read or written."""


class CacheLockTimeoutError(CacheError):
    """Another process held a build lock for longer than the timeout."""


class CacheKey(Protocol):
    """What identifies one cache entry: every input that changes the built artefact."""

    @property
    def kind(self) -> str:
        """Cache folder of this kind of entry (``onnx``, ``tensorrt``)."""
        ...

    def describe(self) -> Mapping[str, str | int | bool]:
        """Every field of the key, JSON-ready; the digest is taken over this."""
        ...


def key_digest(key: CacheKey) -> str:
    """sha256 (hex) of the key's kind and fields in canonical JSON."""
    payload = {"kind": key.kind, "fields": dict(key.describe())}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class BatchProfile:
    """A TensorRT optimisation profile for the face batch: engines run any batch in
    [min, max] and are tuned for ``opt``."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"need 1 <= min <= opt <= max, got {self.min}, {self.opt}, {self.max}")

    @classmethod
    def up_to(cls, max_batch: int) -> BatchProfile:
        """Batches 1..max_batch, tuned for 1: talking-head frames mostly hold one face, and
        the pipeline batches the faces of one frame."""
        return cls(1, 1, max_batch)

    def describe(self) -> str:
        """``min:opt:max``."""
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass(frozen=True)
class EngineKey:
    """Everything a TensorRT engine depends on. Engines are specific to the TensorRT version
    and to the GPU model, so both are in the key; ``graph`` is only for listings (the ONNX
    hash already tells the graphs apart)."""

    graph: str
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: Precision
    profile: BatchProfile

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        if len(self.onnx_sha256) != 64:
            raise ValueError(f"onnx_sha256 must be a sha256 hex digest, got {self.onnx_sha256!r}")

    @property
    def kind(self) -> str:
        """Cache folder of engines."""
        return "tensorrt"

    def describe(self) -> dict[str, str | int | bool]:
        """Every field, JSON-ready."""
        major, minor = self.compute_capability
        return {
            "graph": self.graph,
            "onnx_sha256": self.onnx_sha256,
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": f"{major}.{minor}",
            "precision": self.precision,
            "profile": self.profile.describe(),
        }


@dataclass(frozen=True)
class CacheEntry:
    """A complete entry: its folder, the key fields it was built for, what the builder said
    about it (``info``), when it was made and its size on disk."""

    kind: str
    digest: str
    path: Path
    key: Mapping[str, Any]
    info: Mapping[str, str]
    created_unix: float
    size_bytes: int


Create = Callable[[Path], Mapping[str, str] | None]
"""Writes an entry's files into the folder it is given; may return info strings to record."""


def default_cache_dir() -> Path:
    """``$AVSTREAM_CACHE_DIR``, else ``$XDG_CACHE_HOME/avstream/engines``, else
    ``~/.cache/avstream/engines``."""
    explicit = os.environ.get("AVSTREAM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "avstream" / "engines"


class EngineCache:
    """Entries under ``root``, built at most once per key across processes."""

    def __init__(self, root: Path, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.root = root
        self.lock_timeout_s = lock_timeout_s

    def entry_path(self, key: CacheKey) -> Path:
        """Where the entry for ``key`` lives (whether or not it exists)."""
        return self.root / key.kind / key_digest(key)

    def lookup(self, key: CacheKey) -> CacheEntry | None:
        """The complete entry for ``key``, or None."""
        entry = _read_entry(self.entry_path(key))
        if entry is None or dict(entry.key) != dict(key.describe()):
            return None
        return entry

    def get_or_create(self, key: CacheKey, create: Create) -> CacheEntry:
        """The entry for ``key``; when missing, ``create`` fills a private folder that then
        becomes the entry by one rename. Concurrent callers for the same key wait for the
        one that builds (up to ``lock_timeout_s``) and reuse its entry. An exception from
        ``create`` leaves no entry and no temporary files."""
        found = self.lookup(key)
        if found is not None:
            return found
        digest = key_digest(key)
        kind_dir = self.root / key.kind
        kind_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(kind_dir / f".{digest}.lock", self.lock_timeout_s):
            # Another process may have built it while this one waited for the lock.
            found = self.lookup(key)
            if found is not None:
                return found
            final = kind_dir / digest
            if final.exists():  # present but unreadable: damaged on disk, so replaced
                _remove_tree(final)
            self._build(key, digest, kind_dir, create)
        built = self.lookup(key)
        if built is None:
            raise CacheError(f"entry {digest} vanished right after it was written")
        return built

    def entries(self, kinds: Collection[str] | None = None) -> list[CacheEntry]:
        """Every complete entry (of ``kinds``, or all), oldest first."""
        found = []
        for kind_dir in self._kind_dirs(kinds):
            for child in kind_dir.iterdir():
                if child.is_dir() and not child.name.startswith("."):
                    entry = _read_entry(child)
                    if entry is not None:
                        found.append(entry)
        return sorted(found, key=lambda e: (e.created_unix, e.kind, e.digest))

    def clean(self, kinds: Collection[str] | None = None, shared: bool = False) -> list[Path]:
        """Remove every entry (of ``kinds``, or all), damaged ones and the leftovers of
        crashed builds; returns the folders removed. Entries whose build lock is held
        right now (being built, or being waited for) are left alone. ``shared`` also removes
        the timing caches and onnxruntime's TensorRT cache (do not while engines build)."""
        removed: list[Path] = []
        for name in SHARED_DIRS if shared else ():
            if (self.root / name).is_dir():
                _remove_tree(self.root / name)
                removed.append(self.root / name)
        for kind_dir in self._kind_dirs(kinds):
            digests = {_digest_of(child.name) for child in kind_dir.iterdir()} - {None}
            for digest in sorted(d for d in digests if d is not None):
                lock_path = kind_dir / f".{digest}.lock"
                with try_file_lock(lock_path) as held:
                    if not held:
                        continue
                    for child in sorted(kind_dir.iterdir()):
                        if child.is_dir() and _digest_of(child.name) == digest:
                            _remove_tree(child)
                            removed.append(child)
                    # Safe while held: a waiter finds the path replaced and locks the new file.
                    lock_path.unlink(missing_ok=True)
        return removed

    def timing_cache_path(self, name: str) -> Path:
        """Where the TensorRT timing cache ``name`` is kept."""
        return self.root / "timing" / f"{name}.cache"

    @contextmanager
    def locked(self, path: Path) -> Iterator[None]:
        """Hold the lock of a shared file (e.g. a timing cache) for a read-modify-write."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_name(f".{path.name}.lock"), self.lock_timeout_s):
            yield

    def _build(self, key: CacheKey, digest: str, kind_dir: Path, create: Create) -> None:
        temp = kind_dir / f".tmp-{digest}-{os.getpid()}-{secrets.token_hex(4)}"
        temp.mkdir()
        try:
            info = {str(k): str(v) for k, v in (create(temp) or {}).items()}
            record = {
                "format_version": ENTRY_FORMAT_VERSION,
                "kind": key.kind,
                "digest": digest,
                "key": dict(key.describe()),
                "info": info,
                "created_unix": time.time(),
            }
            (temp / ENTRY_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
            _fsync_tree(temp)
            temp.rename(kind_dir / digest)
            _fsync_path(kind_dir)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise

    def _kind_dirs(self, kinds: Collection[str] | None) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [
            d
            for d in sorted(self.root.iterdir())
            if d.is_dir() and d.name not in SHARED_DIRS and (kinds is None or d.name in kinds)
        ]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with temp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        temp.replace(path)
    finally:
        temp.unlink(missing_ok=True)


@contextmanager
def file_lock(path: Path, timeout_s: float, poll_s: float = 0.05) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created if missing); raise
    ``CacheLockTimeoutError`` after ``timeout_s``. Works between processes and between
    threads (each call opens its own file description)."""
    deadline = time.monotonic() + timeout_s
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            while not _try_flock(fd):
                if time.monotonic() >= deadline:
                    raise CacheLockTimeoutError(
                        f"waited {timeout_s:.0f} s for {path}: another process is still "
                        "building this entry (or died holding the lock file open)"
                    )
                time.sleep(poll_s)
            if _is_current(fd, path):
                yield
                return
        finally:
            os.close(fd)  # also releases the lock
        # ``clean`` unlinked the lock file while this process waited on it: lock the new one.


@contextmanager
def try_file_lock(path: Path) -> Iterator[bool]:
    """Try once to lock ``path``; yields whether the lock is held (released on exit)."""
    if not path.parent.is_dir():
        yield False
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        yield _try_flock(fd) and _is_current(fd, path)
    finally:
        os.close(fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not unlinked or replaced meanwhile)."""
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _digest_of(name: str) -> str | None:
    """The key digest an entry folder, temporary folder or lock file belongs to."""
    if name.startswith(".tmp-") or name.startswith(".trash-"):
        name = name.split("-")[1]
    elif name.startswith(".") and name.endswith(".lock"):
        name = name[1 : -len(".lock")]
    is_digest = len(name) == 64 and all(c in "0123456789abcdef" for c in name)
    return name if is_digest else None


def _read_entry(path: Path) -> CacheEntry | None:
    try:
        record = json.loads((path / ENTRY_FILE).read_text())
        if record["format_version"] != ENTRY_FORMAT_VERSION or record["digest"] != path.name:
            return None
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return CacheEntry(
            kind=str(record["kind"]),
            digest=path.name,
            path=path,
            key=dict(record["key"]),
            info={str(k): str(v) for k, v in record["info"].items()},
            created_unix=float(record["created_unix"]),
            size_bytes=size,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _remove_tree(path: Path) -> None:
    # Renamed first, so no reader ever finds a half-deleted entry under the real name.
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        path.rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            _fsync_path(path)
    _fsync_path(directory)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
