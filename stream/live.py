"""Live restoration: a camera stream (RTSP, or a file played at its native rate) in, restored
frames out to an RTSP mount and/or a recording, within a latency budget.

Threads: the *reader* demuxes and decodes the source, reconnecting with exponential backoff
when it fails or stalls; the *worker* takes frames in arrival order and emits each one; the
*restorer* runs face tracking, inpainting and compositing for one frame at a time; the
*speaker* thread (only with a ``speaker_sink``) hands each new speech window to the inpainter;
the *recorder* encodes the recording. Only the reader touches the source, only the restorer the
face tracker, the occlusion model and the reuse cache.

Latency policy (``max_latency_ms``, from a frame's arrival to its hand-off to the outputs):

- a frame already older than the budget when the worker reaches it is **dropped** (it could
  only make every later frame late too);
- a frame whose restoration does not finish within the budget, or that arrives while the
  restorer is still busy, is **passed through**: its original pixels are emitted on time;
- frames are emitted strictly in arrival order, never reordered.

Output timestamps come from the source's own timestamps, shifted per connection so that a
reconnect continues the timeline after the outage (the gap shows as a freeze, not a jump back).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import av.container
import av.error
import cv2
import numpy as np
import numpy.typing as npt

from avinpaint.spec import AUDIO_SAMPLE_RATE_HZ
from stream.composite import FEATHER_PX
from stream.detect import DetectorOptions
from stream.errors import AvstreamError, InputError, OutputError, UsageError
from stream.inpaint import Inpainter
from stream.media import (
    OUTPUT_EXTENSIONS,
    AtomicOutput,
    EncodeOptions,
    bgr_to_frame,
    frame_to_bgr,
    x264_options,
)
from stream.occlusion import OcclusionModel
from stream.provenance import (
    FrameProvenance,
    SidecarHeader,
    SidecarWriter,
    frame_provenance,
    marked,
    recorded_provenance,
    rescaled,
    sidecar_path,
)
from stream.restore import FaceAnalyser, RestoredFrame, ReuseCache, ReuseOptions, restore_frame
from stream.rtsp import FeedFormat, RtspAddress, RtspFeed, RtspServer
from stream.speaker import SileroVad, SpeakerWindow, SpeechWindow
from stream.track import TrackerOptions
from stream.types import AudioChunk, Image, VideoFrame

log = logging.getLogger(__name__)

Pcm = npt.NDArray[np.int16]
"""Interleaved 16-bit PCM, shape (samples, channels)."""

_URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "srt://")
_RESTORE_PROBE_EVERY_S = 2.0
"""While restoration is predicted to miss every deadline, still try one frame this often, so
a restorer that speeds up again is noticed."""


@dataclass(frozen=True)
class SourceOptions:
    """How the source is read and re-opened.

    ``open_timeout_s`` / ``read_timeout_s``: give up on a connection attempt or a blocking
    read after this long (FFmpeg's socket ``timeout`` plus PyAV's interrupt callback);
    ``stall_timeout_s``: reconnect when no video frame arrived for this long even though the
    connection delivers packets; ``probe_s``: how much of the stream FFmpeg analyses on open
    (shorter reconnects); backoff: the wait between attempts starts at
    ``backoff_initial_s`` and doubles up to ``backoff_max_s``; ``give_up_after_s``: fail when
    the source stayed unreachable this long (None: keep trying)."""

    rtsp_transport: str = "tcp"
    open_timeout_s: float = 5.0
    read_timeout_s: float = 3.0
    stall_timeout_s: float = 5.0
    probe_s: float = 0.5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    give_up_after_s: float | None = None
    decode_threads: int = 1
    """1 by default: frame threading holds frames back, which a live stream pays as latency."""

    def __post_init__(self) -> None:
        if self.rtsp_transport not in ("tcp", "udp", "udp_multicast", "http", "https"):
            raise UsageError(f"unknown RTSP transport {self.rtsp_transport!r}")
        positive = (self.open_timeout_s, self.read_timeout_s, self.stall_timeout_s)
        if min(positive) <= 0 or self.probe_s <= 0:
            raise UsageError("source timeouts and probe_s must be positive")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise UsageError("need 0 < backoff_initial_s <= backoff_max_s")
        if self.give_up_after_s is not None and self.give_up_after_s <= 0:
            raise UsageError("give_up_after_s must be positive")
        if self.decode_threads < 0:
            raise UsageError("decode_threads must be >= 0")


@dataclass(frozen=True)
class LiveOptions:
    """Live-mode settings. ``max_latency_ms``: budget from a frame's arrival to its hand-off
    to the outputs (see the module docstring for what happens when it is exceeded);
    ``stats_interval_s``: how often ``run_live`` reports; ``speaker``: keep the rolling speech
    window from the source audio (Silero VAD; without it a ``speaker_sink`` gets nothing);
    ``reuse``: reuse each track's restored crop while the visible face stays the same, as in
    ``process`` (None: regenerate every face of every restored frame)."""

    max_latency_ms: float = 250.0
    detector: DetectorOptions = field(default_factory=DetectorOptions)
    tracker: TrackerOptions = field(default_factory=TrackerOptions)
    feather_px: float = FEATHER_PX
    """Blend ramp inside the covered region, crop pixels (nothing outside it changes)."""
    source: SourceOptions = field(default_factory=SourceOptions)
    record_encode: EncodeOptions = field(
        default_factory=lambda: EncodeOptions(crf=23, preset="veryfast")
    )
    serve_bitrate_kbps: int = 2_000
    audio_rate_hz: int = 48_000
    audio_channels: int = 2
    stats_interval_s: float = 5.0
    speaker: bool = True
    reuse: ReuseOptions | None = field(default_factory=ReuseOptions)
    sidecar: bool = True
    """With a recording, write its provenance sidecar (``stream.provenance``) beside it."""
    mark_restored: bool = False
    """Burn an outline around every restored region into the served and recorded video."""

    def __post_init__(self) -> None:
        if self.max_latency_ms <= 0:
            raise UsageError(f"--max-latency-ms must be positive, got {self.max_latency_ms}")
        if self.stats_interval_s <= 0:
            raise UsageError("stats_interval_s must be positive")
        if self.serve_bitrate_kbps <= 0:
            raise UsageError("serve_bitrate_kbps must be positive")
        if self.audio_channels not in (1, 2) or self.audio_rate_hz <= 0:
            raise UsageError("audio_channels must be 1 or 2 and audio_rate_hz positive")


@dataclass(frozen=True)
class LiveOutputs:
    """Where restored frames go: an RTSP mount, a recording, or both."""

    serve: RtspAddress | None = None
    record: Path | None = None

    def __post_init__(self) -> None:
        if self.serve is None and self.record is None:
            raise UsageError("live needs an output: --serve rtsp://HOST:PORT/PATH or --record")
        if self.record is not None:
            check_record_path(self.record)


def check_record_path(path: Path) -> None:
    """Refuse a recording path that cannot be created; raise ``UsageError``."""
    if not path.parent.is_dir():
        raise UsageError(f"recording directory does not exist: {path.parent}")
    if path.is_dir():
        raise UsageError(f"recording path is a directory: {path}")
    if path.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise UsageError(
            f"unsupported recording container {path.suffix!r}; use one of "
            + ", ".join(sorted(OUTPUT_EXTENSIONS))
        )


def is_url(source: str) -> bool:
    """True for a network source (rtsp://, http://, ...), False for a file path."""
    return source.lower().startswith(_URL_SCHEMES)


@dataclass(frozen=True)
class EmittedFrame:
    """One frame handed to the outputs: its input index (every frame read counts), output
    time, whether it was restored or passed through, and its latency since arrival."""

    index: int
    time_s: float
    restored: bool
    faces: int
    latency_ms: float


@dataclass(frozen=True)
class LiveStats:
    """Counters since the session started; rates and latencies over the last interval."""

    elapsed_s: float
    connected: bool
    frames_in: int
    frames_out: int
    restored: int
    passed_through: int
    dropped: int
    reconnects: int
    fps_in: float
    fps_out: float
    latency_p50_ms: float
    latency_p95_ms: float
    speech_s: float
    inpainter: str
    """The inpainter's ``name``, e.g. ``opencv-telea`` or ``avinpaint-onnxruntime-cpu``."""
    speaker_windows: int
    """Speech windows handed to the speaker sink so far (0 without one)."""

    def line(self) -> str:
        """One human-readable status line."""
        state = "" if self.connected else ", source DOWN"
        return (
            f"{self.elapsed_s:.0f} s: in {self.fps_in:.1f} fps, out {self.fps_out:.1f} fps, "
            f"restored {self.restored} with {self.inpainter}, "
            f"passed through {self.passed_through}, "
            f"dropped {self.dropped}, latency p50 {self.latency_p50_ms:.0f} ms "
            f"p95 {self.latency_p95_ms:.0f} ms, speech {self.speech_s:.1f} s "
            f"({self.speaker_windows} windows used), "
            f"reconnects {self.reconnects}{state}"
        )


@dataclass(frozen=True)
class LiveReport:
    """What a whole session did. Latency percentiles cover the last 100 000 frames."""

    stopped: str
    """Why it ended: "end of source", "stopped" or "interrupted"."""
    wall_s: float
    frames_in: int
    frames_out: int
    restored: int
    passed_through: int
    dropped: int
    reconnects: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_max_ms: float
    served_url: str | None
    frames_not_served: int
    """Frames the RTSP encoder could not take (more than 2 s behind: CPU starvation)."""
    recorded: Path | None
    """The finished recording, or None (not asked for, or nothing was emitted)."""
    inpainter: str
    """The inpainter's ``name``."""
    speaker_windows: int
    """Speech windows handed to the speaker sink (0 without one, or without speech)."""
    faces_reused: int
    """Faces shown from the reuse cache instead of being sent to the inpainter."""

    @property
    def fps_out(self) -> float:
        """Frames emitted per second of wall time."""
        return self.frames_out / self.wall_s if self.wall_s > 0 else 0.0


# --- items flowing from the reader to the worker ---------------------------------------


@dataclass(frozen=True)
class _SegmentInfo:
    """What one connection to the source delivers."""

    number: int
    width: int
    height: int
    fps: Fraction
    has_audio: bool


@dataclass(frozen=True, eq=False)
class _VideoItem:
    segment: _SegmentInfo
    frame: VideoFrame
    time_s: float
    arrival_s: float


@dataclass(frozen=True, eq=False)
class _AudioItem:
    segment: _SegmentInfo
    time_s: float
    pcm: Pcm
    speech_16k: npt.NDArray[np.float32] | None


_Item = _VideoItem | _AudioItem


class _Inbox:
    """The reader -> worker FIFO. ``put`` never blocks (the source must be drained in real
    time); beyond ``max_video`` frames the oldest frame is dropped. Audio is never dropped."""

    def __init__(self, max_video: int, on_drop: Callable[[], None]) -> None:
        self._items: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._max_video = max_video
        self._video = 0
        self._closed = False
        self._on_drop = on_drop

    def put(self, item: _Item) -> None:
        with self._cond:
            self._items.append(item)
            if isinstance(item, _VideoItem):
                self._video += 1
                if self._video > self._max_video:
                    self._drop_oldest_video()
            self._cond.notify()

    def _drop_oldest_video(self) -> None:
        for i, queued in enumerate(self._items):
            if isinstance(queued, _VideoItem):
                del self._items[i]
                self._video -= 1
                self._on_drop()
                return

    def close(self) -> None:
        """No more items will come; ``get`` returns None once the rest are taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get(self, timeout_s: float) -> _Item | None:
        """The oldest item, or None after ``timeout_s`` (check ``finished``)."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout_s)
            if not self._items:
                return None
            item = self._items.popleft()
            if isinstance(item, _VideoItem):
                self._video -= 1
            return item

    def discard(self) -> int:
        """Forget everything still queued; returns how many video frames that was."""
        with self._cond:
            dropped = self._video
            self._items.clear()
            self._video = 0
            return dropped

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._closed and not self._items


class _StalledError(Exception):
    """The connection delivers packets but no video."""


class _Counters:
    """Shared counters; every field is guarded by ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames_in = 0
        self.frames_out = 0
        self.restored = 0
        self.passed_through = 0
        self.dropped = 0
        self.reconnects = 0
        self.speaker_windows = 0
        self.connected = False
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=100_000)
        self.interval_latencies_ms: list[float] = []
        self.interval_in = 0
        self.interval_out = 0

    def add_dropped(self) -> None:
        with self.lock:
            self.dropped += 1


def _percentile(values: list[float] | collections.deque[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


# --- the source --------------------------------------------------------------------------


class _SourceReader:
    """Runs in the reader thread: (re)opens the source, decodes, stamps output times."""

    def __init__(
        self,
        source: str,
        options: LiveOptions,
        inbox: _Inbox,
        counters: _Counters,
        stop: threading.Event,
    ) -> None:
        self._source = source
        self._url = is_url(source)
        self._options = options
        self._src = options.source
        self._inbox = inbox
        self._counters = counters
        self._stop = stop
        self._segments = 0
        self._start_s: float | None = None
        """Monotonic time of the first item: output time 0."""
        self._timeline_end_s = 0.0
        self._last_video_time_s: float | None = None

    def run(self) -> None:
        """Read until the source ends (files), stop is set, or the source is given up on."""
        try:
            if self._url:
                self._run_url()
            else:
                self._read_connection(self._open())
        finally:
            with self._counters.lock:
                self._counters.connected = False
            self._inbox.close()

    def _run_url(self) -> None:
        backoff_s = self._src.backoff_initial_s
        failing_since: float | None = None
        while not self._stop.is_set():
            try:
                container = self._open()
            except (av.error.FFmpegError, OSError) as exc:
                failing_since = failing_since or time.monotonic()
                self._check_give_up(failing_since, exc)
                log.warning("cannot open %s: %s; retrying in %.1f s", self._source, exc, backoff_s)
            else:
                delivered = self._read_connection(container)
                if self._stop.is_set():
                    return
                if delivered:
                    backoff_s = self._src.backoff_initial_s
                    failing_since = None
                else:
                    failing_since = failing_since or time.monotonic()
                    self._check_give_up(failing_since, InputError("it delivers no video"))
                log.warning("source %s lost; reconnecting in %.1f s", self._source, backoff_s)
            if self._stop.wait(backoff_s):
                return
            backoff_s = min(backoff_s * 2.0, self._src.backoff_max_s)

    def _check_give_up(self, failing_since: float, exc: BaseException) -> None:
        limit = self._src.give_up_after_s
        if limit is not None and time.monotonic() - failing_since >= limit:
            raise InputError(f"source {self._source} unreachable for {limit:.0f} s: {exc}")

    def _open(self) -> av.container.InputContainer:
        if not self._url:
            path = Path(self._source)
            if not path.is_file():
                raise InputError(f"source not found: {self._source}")
            try:
                return av.open(str(path))
            except av.error.FFmpegError as exc:
                raise InputError(f"cannot read {path}: {exc}") from exc
        options = {
            "timeout": str(round(self._src.read_timeout_s * 1_000_000)),
            "analyzeduration": str(round(self._src.probe_s * 1_000_000)),
        }
        if self._source.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = self._src.rtsp_transport
        return av.open(
            self._source,
            options=options,
            timeout=(self._src.open_timeout_s, self._src.read_timeout_s),
        )

    def _read_connection(self, container: av.container.InputContainer) -> bool:
        """Decode one connection until it ends or fails; True when it delivered video."""
        delivered = 0
        with container:
            if not container.streams.video:
                if not self._url:
                    raise InputError(f"no video stream in {self._source}")
                log.warning("source %s has no video stream", self._source)
                return False
            video = container.streams.video[0]
            video.codec_context.thread_count = self._src.decode_threads
            audio = container.streams.audio[0] if container.streams.audio else None
            self._segments += 1
            segment = _SegmentInfo(
                number=self._segments,
                width=video.codec_context.width,
                height=video.codec_context.height,
                fps=video.average_rate or video.guessed_rate or Fraction(25),
                has_audio=audio is not None,
            )
            with self._counters.lock:
                self._counters.connected = True
                if segment.number > 1:
                    self._counters.reconnects += 1
            log.info(
                "source %s: %dx%d at %s fps, audio %s",
                self._source,
                segment.width,
                segment.height,
                segment.fps,
                "yes" if audio else "no",
            )
            try:
                for item in self._decode(container, video, audio, segment):
                    if isinstance(item, _VideoItem):
                        delivered += 1
                    self._inbox.put(item)
            except (av.error.FFmpegError, OSError, _StalledError) as exc:
                if not self._url:
                    raise InputError(f"reading {self._source} failed: {exc}") from exc
                log.warning("source %s failed: %s", self._source, exc)
            finally:
                with self._counters.lock:
                    self._counters.connected = False
        return delivered > 0

    def _decode(
        self,
        container: av.container.InputContainer,
        video: av.video.stream.VideoStream,
        audio: av.audio.stream.AudioStream | None,
        segment: _SegmentInfo,
    ) -> Iterator[_Item]:
        clock = _SegmentClock(self, segment)
        audio_out = _AudioConverter(self._options, clock) if audio is not None else None
        last_video_s = time.monotonic()
        streams: list[Any] = [video] if audio is None else [video, audio]
        for packet in container.demux(streams):
            if self._stop.is_set():
                return
            if time.monotonic() - last_video_s > self._src.stall_timeout_s:
                raise _StalledError(f"no video for {self._src.stall_timeout_s:.1f} s")
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                log.debug("skipping a damaged packet: %s", exc)
                continue
            for frame in frames:
                if isinstance(frame, av.VideoFrame):
                    item = self._video_item(frame, video, clock, segment)
                    if item is None:
                        return
                    last_video_s = item.arrival_s
                    yield item
                elif isinstance(frame, av.AudioFrame) and audio_out is not None:
                    for chunk in audio_out.convert(frame, segment):
                        if not self._pace(chunk.time_s):
                            return
                        yield chunk

    def _video_item(
        self,
        frame: av.VideoFrame,
        stream: av.video.stream.VideoStream,
        clock: _SegmentClock,
        segment: _SegmentInfo,
    ) -> _VideoItem | None:
        time_base = stream.time_base or Fraction(1, 90_000)
        if frame.pts is not None:
            source_s = float(frame.pts * time_base)
        else:
            # RTSP's first frame often has no pts yet; place it one frame after the last.
            source_s = clock.last_video_source_s + 1.0 / float(segment.fps)
        time_s = clock.to_output(source_s)
        if self._last_video_time_s is not None and time_s <= self._last_video_time_s:
            time_s = self._last_video_time_s + 0.001  # repeated pts: keep strictly increasing
        clock.last_video_source_s = source_s
        if not self._pace(time_s):
            return None
        self._last_video_time_s = time_s
        self._timeline_end_s = max(self._timeline_end_s, time_s + 1.0 / float(segment.fps))
        with self._counters.lock:
            index = self._counters.frames_in
            self._counters.frames_in += 1
            self._counters.interval_in += 1
        image = frame_to_bgr(frame)
        return _VideoItem(
            segment=segment,
            frame=VideoFrame(index=index, pts=frame.pts, time_base=time_base, image=image),
            time_s=time_s,
            arrival_s=time.monotonic(),
        )

    def _pace(self, time_s: float) -> bool:
        """For a file, wait until ``time_s`` is due (native rate); False when stopped."""
        if self._url or self._start_s is None:
            return not self._stop.is_set()
        delay_s = self._start_s + time_s - time.monotonic()
        return not (delay_s > 0 and self._stop.wait(delay_s)) and not self._stop.is_set()

    def origin_for_new_segment(self) -> float:
        """Output time where a new connection's first item goes: after everything emitted
        so far and, for a reconnect, at the wall time elapsed (the outage shows as a gap)."""
        now = time.monotonic()
        if self._start_s is None:
            self._start_s = now
            return 0.0
        return max(now - self._start_s, self._timeline_end_s)

    def note_audio_end(self, end_s: float) -> None:
        self._timeline_end_s = max(self._timeline_end_s, end_s)


class _SegmentClock:
    """Maps one connection's source times onto the session's output timeline."""

    def __init__(self, reader: _SourceReader, segment: _SegmentInfo) -> None:
        self.reader = reader
        self._origin_source_s: float | None = None
        self._origin_output_s = 0.0
        self.last_video_source_s = 0.0
        self.segment = segment

    def to_output(self, source_s: float) -> float:
        if self._origin_source_s is None:
            self._origin_source_s = source_s
            self._origin_output_s = self.reader.origin_for_new_segment()
            self.last_video_source_s = source_s - 1.0 / float(self.segment.fps)
        return self._origin_output_s + (source_s - self._origin_source_s)


class _AudioConverter:
    """Decoded source audio -> output PCM (fixed rate and layout, so the outputs keep one
    format across reconnects) and 16 kHz mono speech for the speaker window."""

    _RESYNC_S = 0.1

    def __init__(self, options: LiveOptions, clock: _SegmentClock) -> None:
        self._rate_hz = options.audio_rate_hz
        layout = "stereo" if options.audio_channels == 2 else "mono"
        self._channels = options.audio_channels
        self._out = av.AudioResampler(format="s16", layout=layout, rate=options.audio_rate_hz)
        self._speech = (
            av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE_HZ)
            if options.speaker
            else None
        )
        self._clock = clock
        self._cursor_s: float | None = None
        """Source time of the next output sample."""

    def convert(self, frame: av.AudioFrame, segment: _SegmentInfo) -> list[_AudioItem]:
        source_s = (
            float(frame.pts * frame.time_base)
            if frame.pts is not None and frame.time_base is not None
            else self._cursor_s
        )
        if source_s is None:
            source_s = 0.0
        # Follow the demuxer's timestamps, but ignore sub-frame jitter so the PCM stays
        # contiguous; a real gap or jump resets the cursor.
        if self._cursor_s is None or abs(source_s - self._cursor_s) > self._RESYNC_S:
            self._cursor_s = source_s
        pcm_parts = [
            np.asarray(out.to_ndarray(), dtype=np.int16).reshape(-1, self._channels)
            for out in self._out.resample(frame)
        ]
        speech: npt.NDArray[np.float32] | None = None
        if self._speech is not None:
            parts = [
                np.asarray(out.to_ndarray(), dtype=np.float32).reshape(-1)
                for out in self._speech.resample(frame)
            ]
            speech = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        pcm = np.concatenate(pcm_parts) if pcm_parts else np.zeros((0, self._channels), np.int16)
        if len(pcm) == 0:
            return []
        time_s = self._clock.to_output(self._cursor_s)
        self._cursor_s += len(pcm) / self._rate_hz
        self._clock.reader.note_audio_end(time_s + len(pcm) / self._rate_hz)
        return [_AudioItem(segment=segment, time_s=time_s, pcm=pcm, speech_16k=speech)]


# --- the recording ----------------------------------------------------------------------


class LiveRecorder:
    """H.264 (+ AAC) recording of the live output, written atomically from its own thread.

    ``write_*`` queue work (blocking only when the encoder is far behind); ``finish`` drains,
    writes the trailer and renames the file into place. Audio gaps (source outages) are
    filled with silence so sound stays in sync with the picture."""

    _QUEUE_ITEMS = 256

    def __init__(
        self,
        path: Path,
        fmt: FeedFormat,
        encode: EncodeOptions,
        *,
        sidecar: bool = False,
    ) -> None:
        """``sidecar``: also write the provenance sidecar beside the recording, one line per
        recorded frame (renamed into place only with the recording)."""
        check_record_path(path)
        self.path = path
        self._fmt = fmt
        self._atomic = AtomicOutput(path)
        self._sidecar = (
            SidecarWriter(sidecar_path(path), SidecarHeader(fmt.width, fmt.height, path.name))
            if sidecar
            else None
        )
        if self._sidecar is not None:
            # Opened now, so a sidecar that cannot be written fails before any frame is.
            self._sidecar.__enter__()
        container_format = {".mkv": "matroska", ".m4v": "mp4"}.get(path.suffix.lower())
        try:
            self._out = av.open(str(self._atomic.temp_path), mode="w", format=container_format)
        except av.error.FFmpegError as exc:
            raise OutputError(f"cannot create {path}: {exc}") from exc
        self._time_base = Fraction(1, 90_000)
        self._video = self._out.add_stream("libx264", rate=fmt.fps, options=x264_options(encode))
        self._video.width = fmt.width
        self._video.height = fmt.height
        self._video.pix_fmt = "yuv420p"
        self._video.time_base = self._time_base
        self._video.codec_context.time_base = self._time_base
        self._video.codec_context.thread_count = encode.threads
        self._audio: av.audio.stream.AudioStream | None = None
        if fmt.has_audio:
            self._audio = self._out.add_stream("aac", rate=fmt.audio_rate_hz)
            self._audio.layout = "stereo" if fmt.audio_channels == 2 else "mono"
        self._audio_samples = 0
        self._last_pts: int | None = None
        self.frames = 0
        self._queue: queue.Queue[tuple[str, Any, float] | None] = queue.Queue(self._QUEUE_ITEMS)
        self._error: BaseException | None = None
        self._closed = False
        self._committed = False
        self._thread = threading.Thread(target=self._run, name="avstream-record", daemon=True)
        self._thread.start()

    def write_video(
        self, image: Image, time_s: float, record: FrameProvenance | None = None
    ) -> None:
        """Queue a BGR frame at output time ``time_s`` and what was restored in it (None: the
        frame went out as it came, nothing restored)."""
        self._enqueue(("video", (image, record), time_s))

    def write_audio(self, pcm: Pcm, time_s: float) -> None:
        """Queue interleaved PCM starting at output time ``time_s``."""
        if self._audio is not None and len(pcm):
            self._enqueue(("audio", pcm, time_s))

    def _enqueue(self, item: tuple[str, Any, float]) -> None:
        while self._error is None:
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        raise OutputError(f"recording {self.path} failed: {self._error}")

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                kind, data, time_s = item
                if kind == "video":
                    image, record = data
                    self._encode_video(image, time_s, record)
                else:
                    self._encode_audio(data, time_s)
            for packet in self._video.encode(None):
                self._out.mux(packet)
            if self._audio is not None:
                self._out.mux(self._audio.encode(None))
        except BaseException as exc:
            self._error = exc

    def _encode_video(self, image: Image, time_s: float, record: FrameProvenance | None) -> None:
        pts = round(time_s / self._time_base)
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        frame = bgr_to_frame(image, "yuv420p")
        frame.pts = pts
        frame.time_base = self._time_base
        self._out.mux(self._video.encode(frame))
        if self._sidecar is not None:
            # Indexed by the recording's own frames and times (the source's frame numbers
            # skip the frames live mode dropped).
            self._sidecar.write(recorded_provenance(record, self.frames, pts, time_s))
        self.frames += 1

    def _encode_audio(self, pcm: Pcm, time_s: float) -> None:
        assert self._audio is not None
        rate = self._fmt.audio_rate_hz
        start = round(time_s * rate)
        if start > self._audio_samples:
            # An outage: silence keeps the sound aligned with the picture after it.
            silence = np.zeros((start - self._audio_samples, pcm.shape[1]), dtype=np.int16)
            pcm = np.concatenate([silence, pcm])
        elif start < self._audio_samples:
            pcm = pcm[self._audio_samples - start :]
        if not len(pcm):
            return
        layout = "stereo" if pcm.shape[1] == 2 else "mono"
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout=layout
        )
        frame.sample_rate = rate
        frame.pts = self._audio_samples
        frame.time_base = Fraction(1, rate)
        self._audio_samples += len(pcm)
        self._out.mux(self._audio.encode(frame))

    def finish(self) -> Path | None:
        """Flush and close; move the file into place when it holds at least one frame.
        Returns the final path, or None when nothing was recorded. Idempotent."""
        if self._closed:
            return self.path if self._committed else None
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        with self._atomic, contextlib.ExitStack() as sidecar_scope:
            if self._sidecar is not None:
                # Its __exit__ removes the temporary sidecar unless commit() ran below.
                sidecar_scope.push(self._sidecar)
            try:
                self._out.close()
            except av.error.FFmpegError as exc:
                self._error = self._error or exc
            if self._error is not None:
                raise OutputError(f"recording {self.path} failed: {self._error}")
            if self.frames == 0:
                return None
            if self._sidecar is not None:
                self._sidecar.commit()
            self._atomic.commit()
        self._committed = True
        return self.path


# --- the speaker sink ---------------------------------------------------------------------


class _SpeakerFeed:
    """Hands speech windows to the speaker sink from its own thread.

    The sink (e.g. ``ModelInpainter.use_speech``: a speaker embedding plus the speaker graph)
    can take longer than a frame; run in the worker it would hold frames back past their
    deadline, run in the restorer it would make frames miss theirs. Only the newest waiting
    window is kept: an older one would only describe the voice less recently."""

    _POLL_S = 0.1

    def __init__(
        self,
        sink: Callable[[SpeechWindow], None],
        counters: _Counters,
        stop: threading.Event,
    ) -> None:
        self._sink = sink
        self._counters = counters
        self._stop = stop
        self._cond = threading.Condition()
        self._next: SpeechWindow | None = None

    def offer(self, window: SpeechWindow) -> None:
        """Queue ``window`` for the sink, replacing one not yet handed over."""
        with self._cond:
            self._next = window
            self._cond.notify()

    def run(self) -> None:
        """Feed the sink until stop is set; the sink's exceptions end the session."""
        while True:
            with self._cond:
                while self._next is None and not self._stop.is_set():
                    self._cond.wait(self._POLL_S)
                if self._stop.is_set():
                    return
                window, self._next = self._next, None
            assert window is not None
            self._sink(window)
            with self._counters.lock:
                self._counters.speaker_windows += 1


# --- the session --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Restored:
    frame: RestoredFrame
    duration_s: float

    @property
    def faces(self) -> int:
        return len(self.frame.faces)


class LiveSession:
    """A running live restoration. Use as a context manager, or call ``run_live``.

    ``start`` binds the RTSP server (if serving) and starts the threads; ``wait`` blocks until
    the source ends or ``stop`` is called; leaving the context (or ``close``) stops everything,
    finalises the recording and returns the ``LiveReport``. ``on_frame`` is called from the
    worker thread for every emitted frame (keep it quick).

    ``speaker_sink`` (for audio-driven inpainters, e.g. ``ModelInpainter.use_speech``, as in
    ``process_file``) receives each new speech window of the source audio, about once a
    second once 2 s of speech have been heard, from a thread of its own: restoration goes on
    meanwhile with the previous speaker. Nothing is fed when ``options.speaker`` is off."""

    def __init__(
        self,
        source: str,
        inpainter: Inpainter,
        occlusion: OcclusionModel,
        outputs: LiveOutputs,
        options: LiveOptions | None = None,
        *,
        on_frame: Callable[[EmittedFrame], None] | None = None,
        speaker_sink: Callable[[SpeechWindow], None] | None = None,
    ) -> None:
        self.options = options or LiveOptions()
        if not is_url(source) and not Path(source).is_file():
            raise InputError(f"source not found: {source}")
        self.source = source
        self.outputs = outputs
        self._inpainter = inpainter
        self._occlusion = occlusion
        self._on_frame = on_frame
        self._budget_s = self.options.max_latency_ms / 1000.0
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._counters = _Counters()
        # A budget's worth of frames at up to 60 fps: beyond that they are stale anyway.
        max_video = 8 + round(self._budget_s * 60)
        self._inbox = _Inbox(max_video, self._counters.add_dropped)
        self._errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._server: RtspServer | None = None
        self._feed: RtspFeed | None = None
        self._recorder: LiveRecorder | None = None
        self._fmt: FeedFormat | None = None
        self._restorer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="avstream-restore"
        )
        self._analyser: FaceAnalyser | None = None
        self._analyser_segment = 0
        self._reuse: ReuseCache | None = None
        self._faces_reused = 0
        """Reuses counted by caches of earlier connections."""
        self._speaker = SpeakerWindow(SileroVad()) if self.options.speaker else None
        self._speaker_feed = (
            _SpeakerFeed(speaker_sink, self._counters, self._stop)
            if speaker_sink is not None and self._speaker is not None
            else None
        )
        self._speech: SpeechWindow | None = None
        self._speech_lock = threading.Lock()
        self._started_s = 0.0
        self._interval_started_s = 0.0
        self._stopped_reason = "stopped"
        self._report: LiveReport | None = None

    # lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> LiveSession:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is KeyboardInterrupt:
            self._stopped_reason = "interrupted"
        if self._report is None:
            try:
                self.close()
            except AvstreamError:
                if exc_type is None:
                    raise

    def start(self) -> None:
        """Bind the RTSP server (when serving) and start reading the source."""
        if self._threads:
            return
        if self.outputs.serve is not None:
            address = self.outputs.serve
            self._server = RtspServer(address.host, address.port)
            self._server.start()
        self._started_s = self._interval_started_s = time.monotonic()
        reader = _SourceReader(self.source, self.options, self._inbox, self._counters, self._stop)
        self._spawn("read", reader.run)
        self._spawn("live", self._work)
        if self._speaker_feed is not None:
            self._spawn("speaker", self._speaker_feed.run)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                log.debug("%s thread failed", name, exc_info=True)
                self._errors.append(exc)
                self._stop.set()
            finally:
                if name == "live":
                    self._finished.set()

        thread = threading.Thread(target=run, name=f"avstream-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    @property
    def served_url(self) -> str | None:
        """The restored stream's URL (with the bound port), when serving."""
        if self._server is None or self.outputs.serve is None:
            return None
        return self._server.url(self.outputs.serve.path)

    @property
    def feed(self) -> RtspFeed | None:
        """The RTSP mount, once the first frame has set its format."""
        return self._feed

    @property
    def inpainter_name(self) -> str:
        """The inpainter's ``name`` (what the stats and the report say restored the faces)."""
        return self._inpainter.name

    @property
    def speaker_window(self) -> SpeechWindow | None:
        """The latest speech window taken from the source audio (shared by all faces)."""
        with self._speech_lock:
            return self._speech

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the session ends (source finished, stop, or an error); True if it did."""
        return self._finished.wait(timeout_s)

    def stop(self) -> None:
        """Ask every thread to stop (returns at once; ``close`` waits)."""
        self._stop.set()

    def close(self) -> LiveReport:
        """Stop, join the threads, finalise the recording and close the server.
        Raises the first error a thread hit (after cleaning up)."""
        if self._report is not None:
            return self._report
        if self._finished.is_set() and not self._stop.is_set() and not self._errors:
            self._stopped_reason = "end of source"
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.options.source.read_timeout_s + 5.0)
        self._restorer.shutdown(wait=True, cancel_futures=True)
        # Frames still queued at the stop were never emitted: count them as dropped, so
        # frames_in == frames_out + dropped always holds.
        unprocessed = self._inbox.discard()
        with self._counters.lock:
            self._counters.dropped += unprocessed
        recorded: Path | None = None
        try:
            if self._recorder is not None:
                recorded = self._recorder.finish()
        finally:
            if self._server is not None:
                self._server.close()
        self._report = self._make_report(recorded)
        if self._errors:
            raise self._errors[0]
        return self._report

    # stats -------------------------------------------------------------------------------

    def stats(self) -> LiveStats:
        """Counters so far; fps and latency over the time since the previous call."""
        now = time.monotonic()
        c = self._counters
        with c.lock:
            span_s = max(now - self._interval_started_s, 1e-6)
            latencies = c.interval_latencies_ms
            stats = LiveStats(
                elapsed_s=now - self._started_s,
                connected=c.connected,
                frames_in=c.frames_in,
                frames_out=c.frames_out,
                restored=c.restored,
                passed_through=c.passed_through,
                dropped=c.dropped,
                reconnects=c.reconnects,
                fps_in=c.interval_in / span_s,
                fps_out=c.interval_out / span_s,
                latency_p50_ms=_percentile(latencies, 50),
                latency_p95_ms=_percentile(latencies, 95),
                speech_s=self._speaker.speech_s if self._speaker is not None else 0.0,
                inpainter=self.inpainter_name,
                speaker_windows=c.speaker_windows,
            )
            c.interval_latencies_ms = []
            c.interval_in = c.interval_out = 0
        self._interval_started_s = now
        return stats

    def _make_report(self, recorded: Path | None) -> LiveReport:
        c = self._counters
        with c.lock:
            latencies = list(c.latencies_ms)
            return LiveReport(
                stopped=self._stopped_reason,
                wall_s=time.monotonic() - self._started_s,
                frames_in=c.frames_in,
                frames_out=c.frames_out,
                restored=c.restored,
                passed_through=c.passed_through,
                dropped=c.dropped,
                reconnects=c.reconnects,
                latency_p50_ms=_percentile(latencies, 50),
                latency_p95_ms=_percentile(latencies, 95),
                latency_max_ms=max(latencies, default=0.0),
                served_url=self.served_url,
                frames_not_served=self._feed.frames_overflowed if self._feed else 0,
                recorded=recorded,
                inpainter=self.inpainter_name,
                speaker_windows=c.speaker_windows,
                faces_reused=self._faces_reused + (self._reuse.reused if self._reuse else 0),
            )

    # the worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        pending: concurrent.futures.Future[_Restored] | None = None
        predicted_s = 0.0
        emit_s = 0.0
        last_submit_s = -1e9
        while not self._stop.is_set():
            item = self._inbox.get(timeout_s=0.1)
            if item is None:
                if self._inbox.finished:
                    return
                continue
            if isinstance(item, _AudioItem):
                self._emit_audio(item)
                continue
            now = time.monotonic()
            age_s = now - item.arrival_s
            if age_s > self._budget_s:
                self._counters.add_dropped()
                continue
            restored: _Restored | None = None
            if pending is not None and pending.done():
                predicted_s = _ewma(predicted_s, pending.result().duration_s)
                pending = None
            if pending is None:
                # Margin for the hand-off itself, so a restored frame still leaves on time.
                remaining_s = self._budget_s - age_s - (2.0 * emit_s + 0.002)
                if remaining_s > predicted_s or now - last_submit_s >= _RESTORE_PROBE_EVERY_S:
                    last_submit_s = now
                    pending = self._restorer.submit(self._restore, item)
                    try:
                        restored = pending.result(timeout=max(0.0, remaining_s))
                    except concurrent.futures.TimeoutError:
                        restored = None  # deadline missed: the original goes out instead
                    else:
                        predicted_s = _ewma(predicted_s, restored.duration_s)
                        pending = None
            started = time.monotonic()
            self._emit_video(item, restored)
            emit_s = _ewma(emit_s, time.monotonic() - started)

    def _restore(self, item: _VideoItem) -> _Restored:
        started = time.perf_counter()
        if self._analyser is None or self._analyser_segment != item.segment.number:
            # A new connection may show another scene: start tracking afresh. Track ids
            # start over too, so the reuse cache must not match them to old crops.
            self._analyser = FaceAnalyser(self.options.detector, self.options.tracker)
            self._analyser_segment = item.segment.number
            if self._reuse is not None:
                self._faces_reused += self._reuse.reused
            reuse = self.options.reuse
            self._reuse = ReuseCache(reuse) if reuse is not None else None
            self._occlusion.reset()
        work = self._analyser.analyse(item.frame)
        result = restore_frame(
            work, self._inpainter, self._occlusion, self.options.feather_px, self._reuse
        )
        return _Restored(frame=result, duration_s=time.perf_counter() - started)

    def _ensure_outputs(self, segment: _SegmentInfo) -> FeedFormat:
        if self._fmt is not None:
            return self._fmt
        opts = self.options
        fmt = FeedFormat(
            width=segment.width + segment.width % 2,
            height=segment.height + segment.height % 2,
            fps=segment.fps,
            audio_rate_hz=opts.audio_rate_hz if segment.has_audio else 0,
            audio_channels=opts.audio_channels,
            bitrate_kbps=opts.serve_bitrate_kbps,
        )
        if self._server is not None and self.outputs.serve is not None:
            self._feed = self._server.add_feed(self.outputs.serve.path, fmt)
        if self.outputs.record is not None:
            self._recorder = LiveRecorder(
                self.outputs.record, fmt, opts.record_encode, sidecar=opts.sidecar
            )
        self._fmt = fmt
        return fmt

    def _emit_video(self, item: _VideoItem, restored: _Restored | None) -> None:
        fmt = self._ensure_outputs(item.segment)
        shown = restored.frame if restored is not None else None
        shape = (item.frame.image.shape[0], item.frame.image.shape[1])
        if shown is not None and self.options.mark_restored:
            shown = marked(shown)
        image = _fit(shown.frame.image if shown is not None else item.frame.image, fmt)
        frame_s = 1.0 / float(fmt.fps)
        if self._feed is not None:
            self._feed.push_video(image, item.time_s, frame_s)
        if self._recorder is not None:
            record = None
            if shown is not None:
                # Regions are drawn on the source frame; where _fit scaled the picture (a
                # source that changed size on reconnect), they are scaled with it.
                record = frame_provenance(shown)
                if not _pads_only(shape, fmt):
                    record = rescaled(record, shape, (fmt.height, fmt.width))
            self._recorder.write_video(image, item.time_s, record)
        latency_ms = (time.monotonic() - item.arrival_s) * 1000.0
        c = self._counters
        with c.lock:
            c.frames_out += 1
            c.interval_out += 1
            if restored is not None:
                c.restored += 1
            else:
                c.passed_through += 1
            c.latencies_ms.append(latency_ms)
            c.interval_latencies_ms.append(latency_ms)
        if self._on_frame is not None:
            self._on_frame(
                EmittedFrame(
                    index=item.frame.index,
                    time_s=item.time_s,
                    restored=restored is not None,
                    faces=restored.faces if restored else 0,
                    latency_ms=latency_ms,
                )
            )

    def _emit_audio(self, item: _AudioItem) -> None:
        fmt = self._ensure_outputs(item.segment)
        if self._speaker is not None and item.speech_16k is not None and len(item.speech_16k):
            self._speaker.push(AudioChunk(pts_s=item.time_s, samples_16k=item.speech_16k))
            if self._speaker.due():
                window = self._speaker.take()
                with self._speech_lock:
                    self._speech = window
                if window is not None:
                    if self._speaker_feed is not None:
                        self._speaker_feed.offer(window)
                    log.info(
                        "speaker window %.1f-%.1f s: %.1f s of speech (%.0f%% voiced)",
                        window.start_s,
                        window.end_s,
                        window.speech_s,
                        100.0 * window.speech_ratio,
                    )
        if not fmt.has_audio:
            return
        if self._feed is not None:
            self._feed.push_audio(item.pcm, item.time_s)
        if self._recorder is not None:
            self._recorder.write_audio(item.pcm, item.time_s)


def _ewma(previous_s: float, sample_s: float) -> float:
    # Quick to rise (a slow frame is a warning), slower to fall.
    weight = 0.5 if sample_s > previous_s else 0.1
    return previous_s + weight * (sample_s - previous_s)


def _pads_only(shape: tuple[int, int], fmt: FeedFormat) -> bool:
    """Whether ``_fit`` keeps a (height, width) frame's pixels where they are (the same
    size, or one pixel of padding at the right or bottom) rather than scaling it."""
    return fmt.width - shape[1] in (0, 1) and fmt.height - shape[0] in (0, 1)


def _fit(image: Image, fmt: FeedFormat) -> Image:
    """The frame at the output size: odd sizes padded by one pixel (every pixel kept); a
    source that changed size on reconnect is scaled to the size the outputs started with."""
    height, width = image.shape[:2]
    if (width, height) == (fmt.width, fmt.height):
        return image
    if _pads_only((height, width), fmt):
        padded = cv2.copyMakeBorder(
            image, 0, fmt.height - height, 0, fmt.width - width, cv2.BORDER_REPLICATE
        )
        return np.asarray(padded, dtype=np.uint8)
    resized = cv2.resize(image, (fmt.width, fmt.height), interpolation=cv2.INTER_AREA)
    return np.asarray(resized, dtype=np.uint8)


def run_live(
    source: str,
    inpainter: Inpainter,
    occlusion: OcclusionModel,
    outputs: LiveOutputs,
    options: LiveOptions | None = None,
    *,
    on_start: Callable[[LiveSession], None] | None = None,
    on_stats: Callable[[LiveStats], None] | None = None,
    speaker_sink: Callable[[SpeechWindow], None] | None = None,
) -> LiveReport:
    """Run a live session until the source ends (a file) or Ctrl-C / SIGTERM
    (``KeyboardInterrupt``), which ends it cleanly: the recording is finalised either way.

    ``on_start`` is called once the server is bound; ``on_stats`` every
    ``options.stats_interval_s``; ``speaker_sink`` with each new speech window (see
    ``LiveSession``)."""
    session = LiveSession(source, inpainter, occlusion, outputs, options, speaker_sink=speaker_sink)
    interval_s = session.options.stats_interval_s
    with session:
        if on_start is not None:
            on_start(session)
        try:
            next_stats_s = time.monotonic() + interval_s
            while not session.wait(timeout_s=max(0.0, next_stats_s - time.monotonic())):
                if on_stats is not None:
                    on_stats(session.stats())
                next_stats_s += interval_s
        except KeyboardInterrupt:
            session._stopped_reason = "interrupted"
        return session.close()
