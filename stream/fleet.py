"""Many cameras on a Ray cluster (``avstream fleet cameras.toml``).

Each camera of the file is an ``avstream live`` session (its options are exactly ``live``'s)
run by a Ray actor of its own. The actor opens the region model and the inpainter once, then
runs sessions one after another: when a session ends because its source failed for good
(``give-up-after-s``) or ended, a new one starts after ``restart_delay_s``. When the actor's
process dies, Ray restarts it (anywhere in the cluster) and it starts again. Recordings are
written per session (``NAME-<UTC start>.EXT`` beside the configured ``record`` path), so a
restart never overwrites an earlier one, and every session's recording is finalised when it
ends, including on a clean stop of the fleet (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import logging
import os
import re
import socket
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.batch import ray_session
from stream.errors import AvstreamError, UsageError

if TYPE_CHECKING:
    from stream.inpaint import Inpainter
    from stream.live import LiveOptions, LiveOutputs, LiveSession, LiveStats
    from stream.occlusion import OcclusionModel
    from stream.speaker import SpeechWindow

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FLEET_KEYS = frozenset({"name", "source"})
"""Camera keys that are not ``live`` options."""


@dataclass(frozen=True)
class CameraConfig:
    """One camera: its ``name`` and the ``avstream live`` arguments that run it."""

    name: str
    argv: tuple[str, ...]


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def live_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` parsed by the real ``avstream live`` parser; raises ``UsageError``."""
    from stream import cli

    parser = _RaisingParser(prog="avstream")
    sub: Any = parser.add_subparsers(dest="command", parser_class=_RaisingParser)
    cli._add_live(sub)
    return parser.parse_args(["live", *argv])


def _option_argv(options: Mapping[str, Any], where: str) -> list[str]:
    """TOML keys and values as ``live`` arguments: ``key = true`` is the flag ``--key``,
    ``false`` leaves it out, anything else is ``--key VALUE``; ``_`` and ``-`` are the same."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                argv.append(flag)
        elif isinstance(value, str | int | float):
            argv += [flag, str(value)]
        else:
            raise UsageError(f"{where}: {key} must be a string, number or boolean")
    return argv


def parse_fleet(text: str, origin: str = "fleet file") -> tuple[CameraConfig, ...]:
    """Cameras of a fleet file: ``[defaults]`` (``live`` options for every camera) and one
    ``[[camera]]`` table per camera with ``name``, ``source`` and its own ``live`` options,
    which win over the defaults. Every camera is checked with the ``live`` parser and its
    option checks; raises ``UsageError``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{origin}: {exc}") from None
    unknown = set(data) - {"defaults", "camera"}
    if unknown:
        raise UsageError(f"{origin}: unknown table(s) {', '.join(sorted(unknown))}")
    defaults = data.get("defaults", {})
    cameras = data.get("camera", [])
    if not isinstance(defaults, dict) or not isinstance(cameras, list) or not cameras:
        raise UsageError(f"{origin}: needs [[camera]] tables (and optionally [defaults])")
    configs: list[CameraConfig] = []
    for index, camera in enumerate(cameras, start=1):
        name = str(camera.get("name", ""))
        where = f"{origin}: camera {name or index}"
        if not _NAME.match(name):
            raise UsageError(f"{where}: needs a name of letters, digits, '.', '_' or '-'")
        if any(c.name == name for c in configs):
            raise UsageError(f"{where}: the name is used twice")
        source = camera.get("source")
        if not isinstance(source, str) or not source:
            raise UsageError(f"{where}: needs a source (rtsp://... or a file)")
        merged = {k.replace("_", "-"): v for k, v in defaults.items()}
        merged.update({k.replace("_", "-"): v for k, v in camera.items() if k not in _FLEET_KEYS})
        argv = (source, *_option_argv(merged, where))
        try:
            live_settings_of(live_arguments(argv))
        except UsageError as exc:
            raise UsageError(f"{where}: {exc}") from None
        configs.append(CameraConfig(name=name, argv=argv))
    return tuple(configs)


def live_settings_of(args: argparse.Namespace) -> tuple[LiveOutputs, LiveOptions]:
    """``avstream live``'s outputs and options for ``args``."""
    from stream import cli

    return cli.live_settings(args)


def session_recording(record: Path, started: datetime.datetime) -> Path:
    """The recording of a session that started at ``started`` (UTC): ``NAME-<time>.EXT``."""
    stamp = started.strftime("%Y%m%dT%H%M%S%fZ")
    return record.with_name(f"{record.stem}-{stamp}{record.suffix}")


# --- the camera actor ------------------------------------------------------------------


@dataclass(frozen=True)
class CameraStatus:
    """One camera as its actor sees it."""

    name: str
    pid: int
    node_id: str
    hostname: str
    state: str
    """"starting", "running", "waiting" (between sessions) or "stopped"."""
    sessions: int
    """Sessions started by this process (the first, then one per session restart)."""
    session_failures: int
    last_error: str | None
    stats: LiveStats | None
    recordings: tuple[str, ...]
    """Finalised recordings of this process's sessions."""


class CameraWorker:
    """Runs one camera's live sessions in a thread, one after another, until ``stop``."""

    def __init__(self, camera: CameraConfig, restart_delay_s: float) -> None:
        from stream import cli

        self._camera = camera
        self._restart_delay_s = restart_delay_s
        args = live_arguments(camera.argv)
        self._source: str = args.source
        self._outputs, self._options = live_settings_of(args)
        self._occlusion: OcclusionModel = cli.occlusion_model(args)
        self._stack = contextlib.ExitStack()
        # The model is opened before any session loads GStreamer (see `avstream live`).
        inpainter, sink = self._stack.enter_context(
            cli.open_inpainter(args, threads=args.model_threads)
        )
        self._inpainter: Inpainter = inpainter
        self._sink: Callable[[SpeechWindow], None] | None = sink
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._session: LiveSession | None = None
        self._state = "starting"
        self._sessions = 0
        self._failures = 0
        self._last_error: str | None = None
        self._recordings: list[str] = []
        self._pid = os.getpid()
        self._node_id = _node_id()
        if self._outputs.record is not None:
            _remove_partial_recordings(self._outputs.record)
        self._thread = threading.Thread(target=self._run, name="avstream-camera", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from stream.live import LiveSession
        from stream.model_inpainter import ModelInpainter

        while not self._stop.is_set():
            outputs = self._outputs
            if outputs.record is not None:
                started = datetime.datetime.now(datetime.UTC)
                outputs = dataclasses.replace(
                    outputs, record=session_recording(outputs.record, started)
                )
            session: LiveSession | None = None
            if isinstance(self._inpainter, ModelInpainter):
                # Each session starts as a fresh `avstream live` would: the neutral speaker.
                self._inpainter.use_features(None)
            try:
                session = LiveSession(
                    self._source,
                    self._inpainter,
                    self._occlusion,
                    outputs,
                    self._options,
                    speaker_sink=self._sink,
                )
                with self._lock:
                    self._session, self._state = session, "running"
                    self._sessions += 1
                session.start()
                while not session.wait(0.2) and not self._stop.is_set():
                    pass
                report = session.close()
                if not self._stop.is_set():
                    self._note_failure(f"source ended ({report.stopped})")
            except AvstreamError as exc:
                self._note_failure(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            finally:
                if session is not None:
                    with contextlib.suppress(AvstreamError):
                        # Idempotent: the recording is finalised here even after an error.
                        recorded = session.close().recorded
                        if recorded is not None:
                            with self._lock:
                                self._recordings.append(str(recorded))
                with self._lock:
                    self._session = None
                    self._state = "stopped" if self._stop.is_set() else "waiting"
            self._stop.wait(self._restart_delay_s)

    def _note_failure(self, error: str) -> None:
        log.warning("camera %s: %s; restarting the session", self._camera.name, error)
        with self._lock:
            self._failures += 1
            self._last_error = error

    def status(self) -> CameraStatus:
        """The camera's state and its live counters (rates since the previous call)."""
        with self._lock:
            session = self._session
            stats = session.stats() if session is not None else None
            return CameraStatus(
                name=self._camera.name,
                pid=self._pid,
                node_id=self._node_id,
                hostname=socket.gethostname(),
                state=self._state,
                sessions=self._sessions,
                session_failures=self._failures,
                last_error=self._last_error,
                stats=stats,
                recordings=tuple(self._recordings),
            )

    def stop(self, timeout_s: float = 30.0) -> tuple[str, ...]:
        """End the running session (finalising its recording) and close the model; returns
        the recordings this process finalised."""
        self._stop.set()
        with self._lock:
            if self._session is not None:
                self._session.stop()
        self._thread.join(timeout_s)
        self._stack.close()
        with self._lock:
            return tuple(self._recordings)


def _remove_partial_recordings(record: Path) -> None:
    """Temporary recordings of a process that was killed (they cannot be finalised)."""
    # The recording's and its provenance sidecar's (NAME-<time>.restored.jsonl).
    pattern = re.compile(
        rf"^\.{re.escape(record.stem)}-\d{{8}}T\d{{12}}Z(\.restored)?\.[0-9a-f]{{12}}"
        r"\.partial\.[A-Za-z0-9]+$"
    )
    if record.parent.is_dir():
        for candidate in record.parent.iterdir():
            if pattern.match(candidate.name):
                candidate.unlink(missing_ok=True)


def _node_id() -> str:
    import ray

    if ray.is_initialized():
        return str(ray.get_runtime_context().get_node_id())
    return "local"


# --- the driver ------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetSettings:
    """How the fleet runs on Ray (``address``, ``local_cpus``: see ``BatchSettings``)."""

    address: str | None = None
    local_cpus: int | None = None
    cpus_per_camera: float = 1.0
    gpus_per_camera: float = 0.0
    stats_every_s: float = 5.0
    restart_delay_s: float = 2.0
    stop_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.cpus_per_camera <= 0 or self.gpus_per_camera < 0:
            raise UsageError("--cpus-per-camera must be > 0 and --gpus-per-camera >= 0")
        if self.stats_every_s <= 0 or self.restart_delay_s < 0:
            raise UsageError("--stats-every-s must be > 0 and --restart-delay-s >= 0")


@dataclass(frozen=True)
class CameraLine:
    """One camera in the fleet's stats: its latest status (None when its actor did not
    answer: it is being restarted) and how often its process was restarted."""

    name: str
    state: str
    restarts: int
    status: CameraStatus | None


@dataclass(frozen=True)
class FleetStats:
    """All cameras at one moment."""

    elapsed_s: float
    cameras: tuple[CameraLine, ...]

    @property
    def running(self) -> int:
        """Cameras with a session that is up."""
        return sum(c.state == "running" for c in self.cameras)

    def line(self) -> str:
        """One human-readable line for all cameras."""
        fps = sum(c.status.stats.fps_out for c in self.cameras if c.status and c.status.stats)
        parts = []
        for c in self.cameras:
            stats = c.status.stats if c.status is not None else None
            rate = f" {stats.fps_out:.1f} fps" if stats is not None else ""
            down = "" if stats is None or stats.connected else " source DOWN"
            parts.append(f"{c.name} {c.state}{rate}{down} (restarts {c.restarts})")
        return (
            f"{self.elapsed_s:.0f} s: {self.running}/{len(self.cameras)} cameras running, "
            f"out {fps:.1f} fps; " + "; ".join(parts)
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values."""
        cameras = []
        for c in self.cameras:
            item: dict[str, Any] = {"name": c.name, "state": c.state, "restarts": c.restarts}
            if c.status is not None:
                status = dataclasses.asdict(c.status)
                status.pop("name")
                item.update(status)
            cameras.append(item)
        return {"elapsed_s": round(self.elapsed_s, 3), "running": self.running, "cameras": cameras}


@dataclass(frozen=True)
class FleetReport:
    """How the fleet ended: the recordings finalised at the stop, restarts per camera."""

    wall_s: float
    recordings: tuple[str, ...]
    restarts: dict[str, int]


def run_fleet(
    cameras: Sequence[CameraConfig],
    settings: FleetSettings = FleetSettings(),
    *,
    on_stats: Callable[[FleetStats], None] | None = None,
    stop: threading.Event | None = None,
) -> FleetReport:
    """Run every camera as a Ray actor until ``stop`` is set or Ctrl-C / SIGTERM
    (``KeyboardInterrupt``); then stop every session cleanly (recordings finalised).
    ``on_stats`` gets all cameras every ``settings.stats_every_s``."""
    import ray

    if not cameras:
        raise UsageError("no cameras")
    stop = stop or threading.Event()
    started = time.monotonic()
    with ray_session(settings.address, settings.local_cpus):
        worker_class: Any = ray.remote(CameraWorker).options(
            num_cpus=settings.cpus_per_camera,
            num_gpus=settings.gpus_per_camera,
            # A camera whose process dies is started again, wherever there is room.
            max_restarts=-1,
            max_task_retries=0,
        )
        actors: dict[str, Any] = {
            c.name: worker_class.remote(c, settings.restart_delay_s) for c in cameras
        }
        pids: dict[str, set[int]] = {c.name: set() for c in cameras}
        recordings: list[str] = []
        try:
            with contextlib.suppress(KeyboardInterrupt):
                while not stop.wait(settings.stats_every_s):
                    lines = _poll(actors, pids, timeout_s=min(settings.stats_every_s, 10.0))
                    if on_stats is not None:
                        on_stats(FleetStats(time.monotonic() - started, lines))
        finally:
            recordings = _stop_all(actors, settings.stop_timeout_s)
    restarts = {name: max(0, len(seen) - 1) for name, seen in pids.items()}
    return FleetReport(time.monotonic() - started, tuple(recordings), restarts)


def _poll(
    actors: Mapping[str, Any], pids: dict[str, set[int]], timeout_s: float
) -> tuple[CameraLine, ...]:
    import ray
    import ray.exceptions

    refs = {name: actor.status.remote() for name, actor in actors.items()}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    done = set(ready)
    lines = []
    for name, ref in refs.items():
        status: CameraStatus | None = None
        # No answer yet: still opening its model, or busy; no answer after one, restarting.
        state = "not answering" if pids[name] else "starting"
        if ref in done:
            try:
                status = ray.get(ref)
            except ray.exceptions.RayError:
                state = "restarting"
        if status is not None:
            pids[name].add(status.pid)
            state = status.state
        lines.append(CameraLine(name, state, max(0, len(pids[name]) - 1), status))
    return tuple(lines)


def _stop_all(actors: Mapping[str, Any], timeout_s: float) -> list[str]:
    import ray
    import ray.exceptions

    refs = {name: actor.stop.remote() for name, actor in actors.items()}
    recordings: list[str] = []
    deadline = time.monotonic() + timeout_s + 5.0
    for name, ref in refs.items():
        try:
            recordings += ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
        except (ray.exceptions.RayError, TimeoutError) as exc:
            log.warning("camera %s did not stop cleanly: %s", name, exc)
    for actor in actors.values():
        ray.kill(actor)
    return recordings
