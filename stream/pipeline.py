"""The file pipeline: decode -> track + align -> region + reuse decisions -> inpaint ->
composite -> encode + mux.

Each stage is a thread; bounded queues join them, so memory stays flat on long files and a
slow stage applies back-pressure instead of buffering the video. Every stage is a single
FIFO worker, so output order equals input order and no frame is ever dropped. The restore
work is split in three stages (``stream.restore.plan_frame``, ``inpaint_frame``,
``composite_frame``) so that the segmenter, the inpainter and the composite of different
frames overlap on a multi-core machine: the inpainter's stage bounds the throughput.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from stream.audio import iter_audio_16k
from stream.composite import FEATHER_PX
from stream.detect import DetectorOptions
from stream.errors import InputError
from stream.inpaint import Inpainter
from stream.media import (
    AtomicOutput,
    AudioMode,
    EncodeOptions,
    VideoReader,
    VideoWriter,
    check_output_path,
    probe,
)
from stream.occlusion import OcclusionModel
from stream.provenance import (
    SidecarHeader,
    SidecarWriter,
    frame_provenance,
    marked,
    sidecar_path,
)
from stream.restore import (
    FaceAnalyser,
    FaceDecision,
    FrameFaces,
    InpaintedFrame,
    PlannedFrame,
    RestoredFrame,
    ReuseCache,
    ReuseOptions,
    composite_frame,
    inpaint_frame,
    plan_frame,
)
from stream.speaker import SileroVad, SpeakerTrack, SpeechWindow, StagedSpeakerSink
from stream.track import TrackerOptions


@dataclass(frozen=True)
class ProcessOptions:
    """Pipeline settings. ``feather_px``: width of the blend ramp inside the covered region
    (crop pixels; nothing outside the region ever changes); ``queue_size``: frames buffered
    between two stages."""

    detector: DetectorOptions = field(default_factory=DetectorOptions)
    tracker: TrackerOptions = field(default_factory=TrackerOptions)
    encode: EncodeOptions = field(default_factory=EncodeOptions)
    feather_px: float = FEATHER_PX
    reuse: ReuseOptions | None = field(default_factory=ReuseOptions)
    """Reuse each track's restored crop while it still fits (None: regenerate every frame)."""
    queue_size: int = 8
    decode_threads: int = 0
    speaker_audio: Path | None = None
    """The audio the speaker sink hears, on the input's timeline (None: the input's own
    audio): another person's speech, to see what the voice changes."""
    sidecar: bool = True
    """Write the provenance sidecar (``stream.provenance.sidecar_path`` of the output)."""
    mark_restored: bool = False
    """Burn an outline around every restored region into the video."""


@dataclass(frozen=True)
class StageStats:
    """Per-item wall time of one stage."""

    count: int
    p50_ms: float
    p95_ms: float
    total_ms: float


@dataclass(frozen=True)
class TrackCoverage:
    """What the region model decided for one track over the whole file: ``frames`` it was
    seen in, ``covered_frames`` with a non-empty region, ``restored_frames`` composited,
    and its coverage score (``FaceDecision.coverage``: with ``--mask-detect`` the covered
    fraction of the face region) as a mean and a maximum over its frames."""

    track_id: int
    frames: int
    covered_frames: int
    restored_frames: int
    mean_coverage: float
    max_coverage: float

    def line(self) -> str:
        """One human-readable line for logs."""
        return (
            f"track {self.track_id}: {self.frames} frames, covered in {self.covered_frames}, "
            f"restored in {self.restored_frames}, coverage mean {self.mean_coverage:.3f} "
            f"max {self.max_coverage:.3f}"
        )


@dataclass
class _TrackTally:
    frames: int = 0
    covered: int = 0
    restored: int = 0
    coverage_sum: float = 0.0
    coverage_max: float = 0.0
    last_covered: bool | None = None


@dataclass
class _CoverageTally:
    """Running per-track sums behind ``TrackCoverage``; logs when a track's decision flips
    (a handful of lines per file, not one per frame)."""

    tracks: dict[int, _TrackTally] = field(default_factory=dict)

    def add(self, frame_index: int, decisions: tuple[FaceDecision, ...]) -> None:
        for d in decisions:
            t = self.tracks.setdefault(d.track_id, _TrackTally())
            t.frames += 1
            t.covered += int(d.covered)
            t.restored += int(d.restored)
            t.coverage_sum += d.coverage
            t.coverage_max = max(t.coverage_max, d.coverage)
            if t.last_covered != d.covered:
                _log.info(
                    "frame %d: track %d %s (coverage %.3f)",
                    frame_index,
                    d.track_id,
                    "covered, restoring" if d.covered else "not covered, left as decoded",
                    d.coverage,
                )
                t.last_covered = d.covered

    def summary(self) -> tuple[TrackCoverage, ...]:
        return tuple(
            TrackCoverage(
                track_id=track_id,
                frames=t.frames,
                covered_frames=t.covered,
                restored_frames=t.restored,
                mean_coverage=t.coverage_sum / t.frames,
                max_coverage=t.coverage_max,
            )
            for track_id, t in sorted(self.tracks.items())
        )


@dataclass(frozen=True)
class ProcessReport:
    """What a run did, for the CLI, tests and benchmarks."""

    output: Path
    frames_in: int
    frames_out: int
    expected_frames: int | None
    corrupt_packets: int
    stopped_early: str | None
    audio_mode: AudioMode
    audio_packets: int
    faces_restored: int
    speaker_windows: int
    faces_regenerated: int
    """Faces sent to the inpainter; the rest reused their track's last restored crop."""
    """Speaker windows handed to the speaker sink (0 without one or without audio)."""
    track_ids: tuple[tuple[int, ...], ...]
    """Track ids present in each output frame."""
    stages: dict[str, StageStats]
    wall_s: float
    coverage: tuple[TrackCoverage, ...] = ()
    """Per track, what the region model decided (see ``TrackCoverage``)."""
    faces_guarded: int = 0
    """Fills the inpainter's fill guard judged (``stream.guard``; 0 without a guard)."""
    faces_fell_back: int = 0
    """Of those, fills the guard failed: replaced by the safe Telea fill, or by the track's
    last good crop where it has one (``faces_held``)."""
    faces_held: int = 0
    """Of the failed fills, those replaced by the track's last good crop
    (``ReuseCache.show_held``)."""

    @property
    def fps(self) -> float:
        """Frames written per second of wall time."""
        return self.frames_out / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def damaged(self) -> bool:
        """True when the input did not decode cleanly to its end."""
        short = self.expected_frames is not None and self.frames_in < self.expected_frames
        return bool(self.stopped_early or self.corrupt_packets or short)


_END = object()
_log = logging.getLogger(__name__)
T = TypeVar("T")
U = TypeVar("U")


@dataclass
class _Runner:
    """Threads, queues, the first error, and a stop flag that unblocks everyone."""

    queue_size: int
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    timings: dict[str, list[float]] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)

    def _put(self, q: queue.Queue[object], item: object) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue[object]) -> object:
        while not self.stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return _END

    def _fail(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.stop.set()

    def source(self, name: str, items: Iterable[T]) -> queue.Queue[object]:
        """Feed ``items`` into a new queue from a thread, timing each item."""
        out: queue.Queue[object] = queue.Queue(self.queue_size)
        times = self.timings.setdefault(name, [])

        def run() -> None:
            try:
                iterator = iter(items)
                while True:
                    start = time.perf_counter()
                    try:
                        item = next(iterator)
                    except StopIteration:
                        break
                    times.append(time.perf_counter() - start)
                    if not self._put(out, item):
                        return
            except BaseException as exc:
                self._fail(exc)
            self._put(out, _END)

        self._start(name, run)
        return out

    def stage(
        self, name: str, fn: Callable[[T], U], inq: queue.Queue[object]
    ) -> queue.Queue[object]:
        """Apply ``fn`` to every item of ``inq`` in a thread, in order."""
        out: queue.Queue[object] = queue.Queue(self.queue_size)
        times = self.timings.setdefault(name, [])

        def run() -> None:
            try:
                while True:
                    item = self._get(inq)
                    if item is _END:
                        break
                    start = time.perf_counter()
                    result = fn(item)  # type: ignore[arg-type]
                    times.append(time.perf_counter() - start)
                    if not self._put(out, result):
                        return
            except BaseException as exc:
                self._fail(exc)
            self._put(out, _END)

        self._start(name, run)
        return out

    def drain(self, inq: queue.Queue[object]) -> Iterator[object]:
        """Yield the items of the last queue in the calling thread."""
        while True:
            item = self._get(inq)
            if item is _END:
                return
            yield item

    def _start(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"avstream-{name}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


@dataclass(frozen=True, eq=False)
class _Spoken:
    """A planned frame and the speaker window due at it (None: none is due); with a
    ``StagedSpeakerSink``, the window's features, made ahead."""

    plan: PlannedFrame
    window: SpeechWindow | None = None
    features: object = None


def _sidecar(
    output_path: Path, width: int, height: int, wanted: bool
) -> contextlib.AbstractContextManager[SidecarWriter | None]:
    """The provenance sidecar's writer beside ``output_path`` (None when not ``wanted``)."""
    if not wanted:
        return contextlib.nullcontext()
    return SidecarWriter(sidecar_path(output_path), SidecarHeader(width, height, output_path.name))


def _stats(seconds: list[float]) -> StageStats:
    if not seconds:
        return StageStats(count=0, p50_ms=0.0, p95_ms=0.0, total_ms=0.0)
    ms = np.asarray(seconds) * 1000.0
    return StageStats(
        count=len(ms),
        p50_ms=float(np.percentile(ms, 50)),
        p95_ms=float(np.percentile(ms, 95)),
        total_ms=float(ms.sum()),
    )


def process_file(
    input_path: Path,
    output_path: Path,
    inpainter: Inpainter,
    occlusion: OcclusionModel,
    options: ProcessOptions = ProcessOptions(),
    progress: Callable[[int, int | None], None] | None = None,
    speaker_sink: Callable[[SpeechWindow], None] | StagedSpeakerSink | None = None,
) -> ProcessReport:
    """Restore the covered region of every tracked face in ``input_path``.

    Writes ``output_path`` atomically (a temporary file beside it, renamed on success); the
    original audio packets are copied unchanged. With ``options.sidecar`` the provenance
    sidecar (which pixels of which frame were made up, ``stream.provenance``) is written
    beside it the same way, and renamed only with it. Raises ``AvstreamError`` subclasses on bad
    input or output; ``progress`` is called after every frame with the number written so far
    and the number expected (None where the container does not say).

    ``speaker_sink`` (for audio-driven inpainters) receives the speaker window of the file's
    own speech (or of ``options.speaker_audio``) whenever it is due for re-embedding (about
    once a second of speech), always before the first frame that should use it. A
    ``StagedSpeakerSink`` (``ModelInpainter`` itself, rather than its ``use_speech``) gets the
    work split and skipped where unused: its ``speech_features`` run in a stage of their own
    (the speaker front end took ~130 ms a window on the inpainter's stage, the slowest), only
    for the latest window due when a frame next needs the network, and ``use_features``
    switches to them there, so every fill hears the same window as with a plain sink
    (``speaker_windows`` then counts the windows prepared)."""
    check_output_path(input_path, output_path)
    info = probe(input_path)
    started = time.perf_counter()
    analyser = FaceAnalyser(options.detector, options.tracker)
    speaker_audio = options.speaker_audio
    speaker_track = (
        SpeakerTrack(iter_audio_16k(speaker_audio or input_path), SileroVad())
        if speaker_sink is not None and (speaker_audio is not None or info.audio_codec is not None)
        else None
    )
    speaker_windows = 0
    reuse = ReuseCache(options.reuse) if options.reuse is not None else None

    def plan(work: FrameFaces) -> PlannedFrame:
        return plan_frame(work, occlusion, reuse)

    pending: list[SpeechWindow] = []  # a staged sink's due window not prepared yet

    def speak(planned: PlannedFrame) -> _Spoken:
        # Runs in frame order (one stage), so a window is due at the same frame as before.
        if speaker_track is None:
            return _Spoken(planned)
        frame = planned.work.frame
        window = speaker_track.advance_to(frame.time_s if frame.time_s is not None else 0.0)
        if not isinstance(speaker_sink, StagedSpeakerSink):
            return _Spoken(planned, window)
        # The network uses only the latest window's features, so a staged sink's are made
        # when a frame first needs the network (none at all for a clip with nothing covered):
        # every fill still gets the window due at its frame.
        if window is not None:
            pending[:] = [window]
        if not planned.fresh or not pending:
            return _Spoken(planned)
        due = pending.pop()
        return _Spoken(planned, due, speaker_sink.speech_features(due))

    def inpaint(spoken: _Spoken) -> InpaintedFrame:
        # The sink takes effect in the inpainter's stage, in frame order, so every fill uses
        # the window due at its own frame.
        nonlocal speaker_windows
        if spoken.window is not None:
            if isinstance(speaker_sink, StagedSpeakerSink):
                speaker_sink.use_features(spoken.features)
            elif speaker_sink is not None:
                speaker_sink(spoken.window)
            speaker_windows += 1
        return inpaint_frame(spoken.plan, inpainter)

    def composite(inpainted: InpaintedFrame) -> RestoredFrame:
        return composite_frame(inpainted, options.feather_px, reuse)

    runner = _Runner(queue_size=options.queue_size)
    track_ids: list[tuple[int, ...]] = []
    faces_restored = 0
    guarded = fell_back = held = 0
    tally = _CoverageTally()
    encode_times = runner.timings.setdefault("encode", [])
    with (
        VideoReader(input_path, threads=options.decode_threads) as reader,
        AtomicOutput(output_path) as atomic,
        VideoWriter(atomic.temp_path, info, options.encode, copy_audio_from=input_path) as writer,
        _sidecar(output_path, info.width, info.height, options.sidecar) as sidecar,
    ):
        try:
            decoded = runner.source("decode", reader)
            analysed = runner.stage("track_align", analyser.analyse, decoded)
            planned = runner.stage("region", plan, analysed)
            spoken = runner.stage("speaker", speak, planned)
            inpainted = runner.stage("inpaint", inpaint, spoken)
            restored = runner.stage("composite", composite, inpainted)
            for item in runner.drain(restored):
                assert isinstance(item, RestoredFrame)
                start = time.perf_counter()
                if sidecar is not None:
                    sidecar.write(frame_provenance(item))
                if options.mark_restored:
                    item = marked(item)
                writer.write(item.frame)
                encode_times.append(time.perf_counter() - start)
                track_ids.append(item.track_ids)
                faces_restored += len(item.faces)
                tally.add(item.frame.index, item.decisions)
                for face in item.faces:
                    guarded += face.result.guard is not None
                    fell_back += face.result.fallback
                    held += face.result.held
                    if face.result.fallback and face.result.guard is not None:
                        _log.info(
                            "frame %d: track %d: fill failed the guard (%s), %s",
                            item.frame.index,
                            face.track_id,
                            face.result.guard.reason,
                            "the track's last good fill held"
                            if face.result.held
                            else "safe fill used",
                        )
                if progress is not None:
                    progress(len(track_ids), info.expected_frames)
        finally:
            runner.close()
        if runner.errors:
            raise runner.errors[0]
        if not track_ids:
            raise InputError(f"no video frame of {input_path} could be decoded")
        start = time.perf_counter()
        writer.finish()
        encode_times.append(time.perf_counter() - start)
        if sidecar is not None:
            sidecar.commit()
        atomic.commit()
    return ProcessReport(
        output=output_path,
        frames_in=reader.stats.frames,
        frames_out=len(track_ids),
        expected_frames=info.expected_frames,
        corrupt_packets=reader.stats.corrupt_packets,
        stopped_early=reader.stats.stopped_early,
        audio_mode=writer.audio_mode,
        audio_packets=writer.audio_packets_written,
        faces_restored=faces_restored,
        speaker_windows=speaker_windows,
        faces_regenerated=reuse.regenerated if reuse is not None else faces_restored,
        track_ids=tuple(track_ids),
        stages={name: _stats(times) for name, times in runner.timings.items()},
        wall_s=time.perf_counter() - started,
        coverage=tally.summary(),
        faces_guarded=guarded,
        faces_fell_back=fell_back,
        faces_held=held,
    )
