"""Many files through the ``process`` pipeline on a Ray cluster (``avstream batch``).

Each file is one Ray actor task on a pool of workers; a worker (one process) opens the region
model and the inpainter once and then runs ``process_file`` on file after file, exactly as
``avstream process`` would (same options, same atomic output). The driver (this process) is
the only writer of the ledger, a JSONL file beside the outputs with one record per finished
attempt; a re-run reads it to skip what is done and redo what changed or failed.

Faults: a worker process that dies (killed, out of memory, node lost) is restarted by Ray
and its file is retried on it, up to ``BatchSettings.retries`` times; the temporary output a
killed worker leaves behind is removed before the retry. A file that fails on its own (not a
media file, damaged header) is recorded as failed with its one-line error and the others go
on. A full disk stops the batch with an ``OutputError``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import errno
import glob
import hashlib
import json
import logging
import os
import re
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from avinpaint.files import file_sha256
from stream.errors import AvstreamError, OutputError, UsageError
from stream.media import OUTPUT_EXTENSIONS

if TYPE_CHECKING:
    from stream.inpaint import Inpainter
    from stream.occlusion import OcclusionModel
    from stream.pipeline import ProcessOptions

log = logging.getLogger(__name__)

LEDGER_NAME = "avstream-batch.jsonl"
SUMMARY_NAME = "avstream-batch-summary.json"
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".mkv", ".mov", ".m4v", ".avi", ".webm", ".ts", ".mts", ".m2ts", ".flv", ".mpg"}
)
"""What a folder or glob input picks up (``process`` reads anything FFmpeg opens)."""
_GLOB_CHARS = re.compile(r"[*?\[]")
_KILL_WAIT_S = 10.0
"""How long a stopped batch waits for its killed workers to be gone."""
_CLIENT_CONNECT_ATTEMPTS = 3
_CLIENT_RETRY_S = 2.0

Status = Literal["done", "failed"]


@dataclass(frozen=True)
class Job:
    """One file to restore: where it is read from and where its output goes."""

    input: Path
    output: Path


@dataclass(frozen=True)
class Fingerprint:
    """What changes when a file is rewritten, read without hashing it."""

    size: int
    mtime_ns: int

    @staticmethod
    def of(path: Path) -> Fingerprint:
        """The size and modification time of ``path``."""
        stat = path.stat()
        return Fingerprint(size=stat.st_size, mtime_ns=stat.st_mtime_ns)


@dataclass(frozen=True)
class FileRecord:
    """One ledger line: a finished attempt at one file (the latest line per output wins)."""

    input: str
    output: str
    status: Status
    error: str | None
    input_sha256: str | None
    input_size: int | None
    input_mtime_ns: int | None
    options_sha256: str
    options: dict[str, Any]
    frames: int
    wall_s: float
    """Time the worker spent on the last attempt (hashing, decode, restore, encode)."""
    attempts: int
    worker_pid: int | None
    node_id: str | None
    hostname: str | None
    finished_at: str
    """UTC, ISO 8601."""

    def to_json(self) -> str:
        """One JSON line (no newline)."""
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(line: str) -> FileRecord:
        """Parse a line written by ``to_json``; raises ``ValueError`` on anything else."""
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return FileRecord(**data)


@dataclass(frozen=True)
class WorkerInfo:
    """Where a worker runs."""

    pid: int
    node_id: str
    hostname: str


@dataclass(frozen=True)
class Outcome:
    """What a worker returns for one file."""

    status: Status
    error: str | None
    fatal: bool
    """The batch cannot go on (disk full): stop submitting."""
    input_sha256: str | None
    fingerprint: Fingerprint | None
    frames: int
    wall_s: float
    worker: WorkerInfo


@dataclass(frozen=True)
class BatchSettings:
    """How the batch runs on Ray. ``address``: None starts a local Ray in this process,
    ``auto`` or ``HOST:PORT`` joins a running cluster, ``ray://HOST:PORT`` through Ray
    Client; ``workers``: actors in the pool (None: as many as the cluster's CPUs allow);
    ``retries``: extra attempts for a file whose worker died; ``force``: redo done files."""

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    retries: int = 2
    force: bool = False
    local_cpus: int | None = None
    """CPUs of the local Ray started when ``address`` is None (None: all of this machine's)."""

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {self.workers}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise UsageError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")
        if self.retries < 0:
            raise UsageError(f"--retries must be >= 0, got {self.retries}")


@dataclass(frozen=True)
class BatchSummary:
    """What a batch run did."""

    total: int
    done: int
    skipped: int
    failed: int
    frames: int
    retried: int
    """Attempts lost to a worker that died (each was retried or, past the limit, failed)."""
    workers: int
    wall_s: float
    ledger: str
    failures: tuple[tuple[str, str], ...] = ()
    """(input, one-line error) of each failed file."""

    @property
    def files_per_hour(self) -> float:
        """Files finished (done or failed) per hour of wall time."""
        finished = self.done + self.failed
        return finished * 3600.0 / self.wall_s if self.wall_s > 0 else 0.0

    def line(self) -> str:
        """One human-readable line."""
        return (
            f"{self.done} done, {self.skipped} skipped, {self.failed} failed of {self.total} "
            f"files; {self.frames} frames in {self.wall_s:.1f} s on {self.workers} workers "
            f"({self.files_per_hour:.0f} files/h, {self.retried} retried)"
        )

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON values."""
        data = asdict(self)
        data["failures"] = [{"input": i, "error": e} for i, e in self.failures]
        data["files_per_hour"] = self.files_per_hour
        return data


# --- inputs ----------------------------------------------------------------------------


def output_for(relative: Path, output_dir: Path) -> Path:
    """The output mirroring ``relative`` under ``output_dir``; inputs in a container the
    writer does not make (.avi, .webm, ...) get ``.mp4``."""
    out = output_dir / relative
    if out.suffix.lower() not in OUTPUT_EXTENSIONS:
        out = out.with_suffix(".mp4")
    return out


def expand_inputs(specs: Sequence[str], output_dir: Path) -> tuple[Job, ...]:
    """Jobs for files, folders (every video below, recursively) and globs (``**`` allowed).

    Outputs mirror the inputs' paths below the folder or the glob's fixed prefix; a single
    file goes to ``output_dir / name``. Files inside ``output_dir`` are never inputs."""
    jobs: list[Job] = []
    out_root = output_dir.resolve()
    for spec in specs:
        path = Path(spec)
        if _GLOB_CHARS.search(spec):
            base = _glob_base(spec)
            # glob.glob, not Path.glob: the pattern may be absolute.
            found = [Path(p) for p in sorted(glob.glob(spec, recursive=True))]  # noqa: PTH207
            files = [p for p in found if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
            if not files:
                raise UsageError(f"no video file matches {spec}")
            jobs += [Job(p, output_for(p.relative_to(base), output_dir)) for p in files]
        elif path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in VIDEO_SUFFIXES
                and not p.name.startswith(".")
                and not p.resolve().is_relative_to(out_root)
            )
            if not files:
                raise UsageError(f"no video file in folder {path}")
            jobs += [Job(p, output_for(p.relative_to(path), output_dir)) for p in files]
        elif path.is_file():
            jobs.append(Job(path, output_for(Path(path.name), output_dir)))
        else:
            raise UsageError(f"input not found: {spec}")
    return tuple(jobs)


def _glob_base(pattern: str) -> Path:
    """The leading folders of ``pattern`` that hold no wildcard."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path()


def read_manifest(path: Path, output_dir: Path) -> tuple[Job, ...]:
    """Jobs from a manifest: CSV with an ``input`` column and an optional ``output`` column,
    or JSONL with ``{"input": ..., "output": ...}`` per line. Relative inputs are relative to
    the manifest's folder, relative outputs to ``output_dir``; a missing output mirrors the
    input's name."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read manifest {path}: {exc.strerror}") from None
    rows: list[Mapping[str, Any]]
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or "input" not in reader.fieldnames:
            raise UsageError(f"manifest {path} needs a header with an 'input' column")
        rows = list(reader)
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"manifest {path} line {number}: {exc.msg}") from None
            if not isinstance(row, dict):
                raise UsageError(f"manifest {path} line {number}: not a JSON object")
            rows.append(row)
    else:
        raise UsageError(f"manifest {path}: use .csv or .jsonl")
    jobs = []
    for number, row in enumerate(rows, start=1):
        source = row.get("input")
        if not source:
            raise UsageError(f"manifest {path} entry {number} has no input")
        input_path = Path(str(source))
        if not input_path.is_absolute():
            input_path = path.parent / input_path
        target = row.get("output")
        output = (
            output_dir / str(target) if target else output_for(Path(input_path.name), output_dir)
        )
        jobs.append(Job(input_path, output))
    return tuple(jobs)


def check_jobs(jobs: Sequence[Job]) -> None:
    """Refuse an empty batch, two jobs writing one output, and an output that is an input."""
    if not jobs:
        raise UsageError("no input files")
    inputs = {job.input.resolve() for job in jobs}
    seen: dict[Path, Path] = {}
    for job in jobs:
        out = job.output.resolve()
        if out in seen:
            raise UsageError(f"{seen[out]} and {job.input} would both write {job.output}")
        if out in inputs:
            raise UsageError(f"output {job.output} is an input file")
        if out.suffix.lower() not in OUTPUT_EXTENSIONS:
            raise UsageError(
                f"output {job.output}: use one of " + ", ".join(sorted(OUTPUT_EXTENSIONS))
            )
        seen[out] = job.input


# --- ledger ----------------------------------------------------------------------------


def options_digest(options: Mapping[str, Any]) -> str:
    """SHA-256 of the options' canonical JSON: equal options, equal digest."""
    canonical = json.dumps(options, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def read_ledger(path: Path) -> dict[str, FileRecord]:
    """The latest record per output path (absolute); an absent ledger is empty. A torn last
    line (the driver was killed while writing it) is ignored."""
    records: dict[str, FileRecord] = {}
    if not path.is_file():
        return records
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = FileRecord.from_json(line)
        except (ValueError, TypeError):
            log.warning("ledger %s line %d is not a record; ignored", path, number)
            continue
        records[record.output] = record
    return records


class Ledger:
    """The append-only JSONL ledger; each record is flushed and synced before the next file
    is counted, so a crash loses at most the line being written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: a record is written by one call or not at all, and a failed write
        # leaves nothing behind to fail again on close.
        self._file = path.open("ab", buffering=0)

    def append(self, record: FileRecord) -> None:
        """Write one record durably; a full disk raises ``OutputError``."""
        try:
            self._file.write((record.to_json() + "\n").encode())
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write the ledger {self.path}: {_os_error(exc)}") from exc

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_done(record: FileRecord | None, job: Job, options_sha256: str) -> bool:
    """True when ``record`` says ``job`` was restored with these options from this input and
    its output is still there. The input is hashed only when its size or time changed."""
    if record is None or record.status != "done" or record.options_sha256 != options_sha256:
        return False
    if not job.output.is_file() or not job.input.is_file():
        return False
    now = Fingerprint.of(job.input)
    if (record.input_size, record.input_mtime_ns) == (now.size, now.mtime_ns):
        return True
    return record.input_sha256 == file_sha256(job.input)


def remove_partials(output: Path) -> int:
    """Delete temporary files (``AtomicOutput``'s ``.NAME.<hex>.partial.EXT``) of ``output``
    and of its provenance sidecar left by a process that was killed; returns how many."""
    from stream.provenance import sidecar_path

    removed = 0
    for final in (output, sidecar_path(output)):
        pattern = re.compile(
            rf"^\.{re.escape(final.stem)}\.[0-9a-f]{{12}}\.partial{re.escape(final.suffix)}$"
        )
        if not final.parent.is_dir():
            continue
        for candidate in final.parent.iterdir():
            if pattern.match(candidate.name):
                candidate.unlink(missing_ok=True)
                removed += 1
    return removed


def _os_error(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "disk full (no space left on device)"
    return exc.strerror or str(exc)


def _is_disk_full(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(exc):
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --- the worker ------------------------------------------------------------------------


class FileWorker:
    """One worker process: the region model and inpainter of ``args`` (the ``process``
    options), opened once and used for file after file. Runs as a Ray actor."""

    def __init__(self, args: argparse.Namespace) -> None:
        # Imported here: stream.cli imports this module for its subcommand.
        from stream import cli

        self._occlusion: OcclusionModel = cli.occlusion_model(args)
        self._options: ProcessOptions = cli.process_options(args)
        self._stack = contextlib.ExitStack()
        inpainter, sink = self._stack.enter_context(cli.open_inpainter(args, threads=args.threads))
        self._inpainter: Inpainter = inpainter
        self._sink = cli.process_speaker_sink(args, inpainter, sink)
        self._info = WorkerInfo(pid=os.getpid(), node_id=_node_id(), hostname=socket.gethostname())

    def describe(self) -> WorkerInfo:
        """Where this worker runs."""
        return self._info

    def process(self, job: Job) -> Outcome:
        """Restore one file as ``avstream process`` would; errors become a failed outcome."""
        from stream.model_inpainter import ModelInpainter
        from stream.pipeline import process_file

        started = time.perf_counter()
        sha: str | None = None
        fingerprint: Fingerprint | None = None
        try:
            # A killed earlier attempt leaves its temporary file: nothing partial may stay.
            remove_partials(job.output)
            fingerprint = Fingerprint.of(job.input)
            sha = file_sha256(job.input)
            job.output.parent.mkdir(parents=True, exist_ok=True)
            # Each file starts as a fresh `process` would: the region model without the
            # previous file's tracks (the segmenter smooths and reuses masks per track),
            # the network with the neutral speaker rather than the previous file's voice.
            self._occlusion.reset()
            if isinstance(self._inpainter, ModelInpainter):
                self._inpainter.use_features(None)
            report = process_file(
                job.input,
                job.output,
                self._inpainter,
                self._occlusion,
                self._options,
                None,
                self._sink,
            )
        except (AvstreamError, OSError) as exc:
            full = _is_disk_full(exc)
            error = f"disk full writing {job.output}" if full else _one_line(exc)
            return Outcome("failed", error, full, sha, fingerprint, 0, _since(started), self._info)
        return Outcome(
            "done", None, False, sha, fingerprint, report.frames_out, _since(started), self._info
        )

    def close(self) -> None:
        """Close the inpainter."""
        self._stack.close()


def _since(started: float) -> float:
    return time.perf_counter() - started


def _node_id() -> str:
    import ray

    if ray.is_initialized():
        return str(ray.get_runtime_context().get_node_id())
    return "local"


# --- the driver ------------------------------------------------------------------------


@contextlib.contextmanager
def ray_session(address: str | None, local_cpus: int | None = None) -> Iterator[None]:
    """Ray for the duration of the block: a local instance started here when ``address`` is
    None, else the cluster at ``address``. Raises ``AvstreamError`` when it cannot connect."""
    import ray

    # ray.init replaces the SIGTERM handler with sys.exit; the caller's (the CLI's: stop
    # cleanly as on Ctrl-C) is put back below.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main else None
    # Ray Client's server starts a process per client, which can miss its start-up deadline
    # on a loaded head ("Initialization failure from server"): try again a few times.
    attempts = _CLIENT_CONNECT_ATTEMPTS if address and address.startswith("ray://") else 1
    for attempt in range(1, attempts + 1):
        try:
            if address is None:
                ray.init(
                    num_cpus=local_cpus,
                    include_dashboard=False,
                    configure_logging=False,
                    log_to_driver=True,
                )
            else:
                ray.init(address=address, configure_logging=False, log_to_driver=True)
            break
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = address or "a local Ray"
            if attempt == attempts:
                raise AvstreamError(f"cannot start or join {where}: {_one_line(exc)}") from exc
            log.warning("cannot join %s (%s); trying again", where, _one_line(exc))
            time.sleep(_CLIENT_RETRY_S)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    try:
        yield
    finally:
        ray.shutdown()


ResultCallback = Callable[[FileRecord], None]


@dataclass
class _InFlight:
    job: Job
    attempt: int
    actor: Any


@dataclass
class _Tally:
    done: int = 0
    failed: int = 0
    frames: int = 0
    retried: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    fatal: str | None = None


def plan(
    jobs: Sequence[Job], ledger: Mapping[str, FileRecord], options_sha256: str, force: bool
) -> tuple[list[Job], list[Job]]:
    """(to run, to skip): a job is skipped when the ledger says it is done (``is_done``)."""
    pending: list[Job] = []
    skipped: list[Job] = []
    for job in jobs:
        record = ledger.get(str(job.output.resolve()))
        if not force and is_done(record, job, options_sha256):
            skipped.append(job)
        else:
            pending.append(job)
    return pending, skipped


def run_batch(
    jobs: Sequence[Job],
    args: argparse.Namespace,
    options: Mapping[str, Any],
    ledger_path: Path,
    settings: BatchSettings = BatchSettings(),
    *,
    on_plan: Callable[[int, int], None] | None = None,
    on_record: ResultCallback | None = None,
    on_workers: Callable[[list[WorkerInfo]], None] | None = None,
) -> BatchSummary:
    """Restore ``jobs`` with the ``process`` arguments ``args`` on Ray.

    ``options`` are the option values recorded in the ledger (their digest decides whether a
    done file is redone). ``on_plan`` is called with the numbers of files to run and to
    skip; ``on_record`` with each ledger record as it is written;
    ``on_workers`` once the pool is up. Raises ``OutputError`` when the disk is full and
    ``AvstreamError`` when Ray or the workers cannot start."""
    check_jobs(jobs)
    started = time.perf_counter()
    digest = options_digest(options)
    pending, skipped = plan(jobs, read_ledger(ledger_path), digest, settings.force)
    if on_plan is not None:
        on_plan(len(pending), len(skipped))
    tally = _Tally()
    workers = 0
    if pending:
        with Ledger(ledger_path) as ledger, ray_session(settings.address, settings.local_cpus):
            workers = _run_pool(
                pending, args, dict(options), digest, settings, ledger, tally, on_record, on_workers
            )
    summary = BatchSummary(
        total=len(jobs),
        done=tally.done,
        skipped=len(skipped),
        failed=tally.failed,
        frames=tally.frames,
        retried=tally.retried,
        workers=workers,
        wall_s=time.perf_counter() - started,
        ledger=str(ledger_path),
        failures=tuple(tally.failures),
    )
    if tally.fatal is not None:
        raise OutputError(tally.fatal)
    return summary


def _pool_size(settings: BatchSettings, pending: int) -> int:
    import ray

    if settings.workers is not None:
        return min(settings.workers, pending)
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    size = int(resources.get("CPU", 1.0) // settings.cpus_per_worker)
    if settings.gpus_per_worker > 0:
        size = min(size, int(resources.get("GPU", 0.0) // settings.gpus_per_worker))
    return max(1, min(size, pending))


def _run_pool(
    pending: Sequence[Job],
    args: argparse.Namespace,
    options: dict[str, Any],
    digest: str,
    settings: BatchSettings,
    ledger: Ledger,
    tally: _Tally,
    on_record: ResultCallback | None,
    on_workers: Callable[[list[WorkerInfo]], None] | None,
) -> int:
    import ray
    import ray.exceptions

    size = _pool_size(settings, len(pending))
    # Any: Ray's handle types do not follow the method calls made through them.
    worker_class: Any = ray.remote(FileWorker).options(
        num_cpus=settings.cpus_per_worker,
        num_gpus=settings.gpus_per_worker,
        # Ray restarts a worker process that dies (the model is opened again); the file it
        # was on is resubmitted by the loop below, which bounds the attempts per file.
        max_restarts=-1,
        max_task_retries=0,
    )
    actors: list[Any] = [worker_class.remote(args) for _ in range(size)]
    try:
        infos = ray.get([actor.describe.remote() for actor in actors])
    except ray.exceptions.RayError as exc:
        raise AvstreamError(f"batch workers could not start: {_ray_error(exc)}") from exc
    log.info("batch: %d workers on %d node(s)", size, len({i.node_id for i in infos}))
    if on_workers is not None:
        on_workers(list(infos))

    queue: deque[tuple[Job, int]] = deque((job, 1) for job in pending)
    idle = list(actors)
    alive = len(actors)
    running: dict[Any, _InFlight] = {}
    pings: dict[Any, Any] = {}
    """A worker whose process died is used again once Ray has restarted it: a ``describe``
    call (ref -> actor) says when."""
    lost = (
        ray.exceptions.RayActorError,
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.NodeDiedError,
        ray.exceptions.ObjectLostError,
    )

    def finish(flight: _InFlight, outcome: Outcome | None, error: str | None) -> None:
        record = _record(flight, outcome, error, options, digest)
        if record.status == "done":
            tally.done += 1
            tally.frames += record.frames
        else:
            tally.failed += 1
            tally.failures.append((record.input, record.error or "failed"))
            remove_partials(flight.job.output)
        if outcome is not None and outcome.fatal:
            tally.fatal = record.error
        ledger.append(record)
        if on_record is not None:
            on_record(record)

    def check_back(ref: Any) -> None:
        nonlocal alive
        actor = pings.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.ActorDiedError as exc:
            # Dead for good (its restart failed, e.g. the model did not load there).
            alive -= 1
            log.warning("batch: a worker could not be restarted: %s", _ray_error(exc))
            if alive == 0:
                while queue:
                    job, attempt = queue.popleft()
                    finish(_InFlight(job, attempt, actor), None, f"no worker left: {exc}")
            return
        except lost:
            time.sleep(0.2)  # still restarting
            pings[actor.describe.remote()] = actor
            return
        idle.append(actor)

    def collect(ref: Any) -> None:
        flight = running.pop(ref)
        try:
            outcome: Outcome = ray.get(ref)
        except lost as exc:
            # The worker process died (killed, out of memory, node lost) during the file.
            tally.retried += 1
            pings[flight.actor.describe.remote()] = flight.actor
            remove_partials(flight.job.output)
            if flight.attempt <= settings.retries:
                log.warning("batch: worker died on %s (%s); retrying", flight.job.input, exc)
                queue.appendleft((flight.job, flight.attempt + 1))
            else:
                error = f"worker died {flight.attempt} times, last: {_ray_error(exc)}"
                finish(flight, None, error)
            return
        except ray.exceptions.RayTaskError as exc:
            idle.append(flight.actor)
            finish(flight, None, _ray_error(exc))
            return
        idle.append(flight.actor)
        finish(flight, outcome, None)

    try:
        while (queue and tally.fatal is None) or running:
            while queue and idle and tally.fatal is None:
                job, attempt = queue.popleft()
                actor = idle.pop()
                running[actor.process.remote(job)] = _InFlight(job, attempt, actor)
            ready, _ = ray.wait([*running, *pings], num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in pings:
                    check_back(ref)
                else:
                    collect(ref)
    finally:
        # Ctrl-C or an error: stop the workers, and once their calls say they are gone (no
        # more writes), remove what they were writing.
        for actor in actors:
            ray.kill(actor)
        if running:
            ray.wait(list(running), num_returns=len(running), timeout=_KILL_WAIT_S)
        for flight in running.values():
            remove_partials(flight.job.output)
    return size


def _ray_error(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return _one_line(cause)
    return _one_line(exc)


def _record(
    flight: _InFlight,
    outcome: Outcome | None,
    error: str | None,
    options: dict[str, Any],
    digest: str,
) -> FileRecord:
    worker = outcome.worker if outcome is not None else None
    fingerprint = outcome.fingerprint if outcome is not None else None
    return FileRecord(
        input=str(flight.job.input.resolve()),
        output=str(flight.job.output.resolve()),
        status=outcome.status if outcome is not None else "failed",
        error=outcome.error if outcome is not None else error,
        input_sha256=outcome.input_sha256 if outcome is not None else None,
        input_size=fingerprint.size if fingerprint is not None else None,
        input_mtime_ns=fingerprint.mtime_ns if fingerprint is not None else None,
        options_sha256=digest,
        options=options,
        frames=outcome.frames if outcome is not None else 0,
        wall_s=round(outcome.wall_s, 3) if outcome is not None else 0.0,
        attempts=flight.attempt,
        worker_pid=worker.pid if worker is not None else None,
        node_id=worker.node_id if worker is not None else None,
        hostname=worker.hostname if worker is not None else None,
        finished_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )


def option_values(args: argparse.Namespace, dests: Iterable[str]) -> dict[str, Any]:
    """The JSON-able values of ``args`` named by ``dests`` (paths as strings)."""
    values: dict[str, Any] = {}
    for dest in sorted(dests):
        value = getattr(args, dest, None)
        values[dest] = str(value) if isinstance(value, Path) else value
    return values
