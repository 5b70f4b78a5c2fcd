"""RTSP output: a GStreamer RTSP server whose mounts are fed frames and audio from Python.

Each mount is an ``appsrc`` pipeline (H.264 by x264 with zero-latency tuning, AAC audio)
behind ``GstRtspServer``; the server runs its own GLib main loop in a thread. The mount is
shared by all clients and created when the first one connects, so frames pushed while nobody
watches cost nothing; every client that presses play gets a key frame at once.

GStreamer's Python bindings are untyped; all of them stay in this module.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from types import TracebackType
from typing import Any, TypeVar

import cv2
import numpy as np
import numpy.typing as npt

from stream.errors import OutputError, UsageError
from stream.types import Image

log = logging.getLogger(__name__)

T = TypeVar("T")

_NS_PER_S = 1_000_000_000
_LOOP_CALL_TIMEOUT_S = 10.0


class GstUnavailableError(OutputError):
    """GStreamer, its RTSP server library or PyGObject is not installed."""


def load_gst() -> tuple[Any, Any, Any]:
    """Import and initialise GStreamer: ``(Gst, GstRtspServer, GLib)``.

    Raises ``GstUnavailableError`` with what to install when something is missing."""
    try:
        import gi  # type: ignore[import-untyped]

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer  # type: ignore[import-untyped]
    except (ImportError, ValueError) as exc:
        raise GstUnavailableError(
            "RTSP needs GStreamer and PyGObject: apt install gir1.2-gst-rtsp-server-1.0 "
            "gstreamer1.0-plugins-{base,good,bad,ugly} gstreamer1.0-libav and "
            f"pip install 'avstream[live]' ({exc})"
        ) from exc
    Gst.init(None)
    missing = [
        name
        for name in ("appsrc", "x264enc", "rtph264pay", "avenc_aac", "rtpmp4gpay", "h264parse")
        if Gst.ElementFactory.find(name) is None
    ]
    if missing:
        raise GstUnavailableError(
            "GStreamer elements missing: " + ", ".join(missing) + " (install "
            "gstreamer1.0-plugins-{base,good,bad,ugly} and gstreamer1.0-libav)"
        )
    return Gst, GstRtspServer, GLib


@dataclass(frozen=True)
class RtspAddress:
    """Where to serve: ``rtsp://HOST:PORT/PATH``."""

    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        """The address as a URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"rtsp://{host}:{self.port}{self.path}"


def parse_rtsp_url(url: str) -> RtspAddress:
    """Parse ``rtsp://HOST:PORT/PATH`` (port 8554 when omitted); raise ``UsageError``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "rtsp":
        raise UsageError(f"--serve wants rtsp://HOST:PORT/PATH, got {url!r}")
    if not parts.hostname:
        raise UsageError(f"--serve URL has no host: {url!r}")
    try:
        port = parts.port if parts.port is not None else 8554
    except ValueError:
        raise UsageError(f"--serve URL has a bad port: {url!r}") from None
    path = parts.path.rstrip("/")
    if not path:
        raise UsageError(f"--serve URL needs a path, e.g. rtsp://127.0.0.1:8554/restored: {url!r}")
    if parts.query or parts.fragment:
        raise UsageError(f"--serve URL takes no query or fragment: {url!r}")
    return RtspAddress(host=parts.hostname, port=port, path=path)


@dataclass(frozen=True)
class FeedFormat:
    """What a mount carries: video size and nominal rate, and the audio PCM format pushed
    (``audio_rate_hz`` 0 means no audio track)."""

    width: int
    height: int
    fps: Fraction = Fraction(25)
    audio_rate_hz: int = 48_000
    audio_channels: int = 2
    bitrate_kbps: int = 2_000
    key_interval_s: float = 1.0
    """Clients joining mid-stream wait for a key frame; this bounds that wait."""

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2:
            raise ValueError(
                f"frame size must be positive and even, got {self.width}x{self.height}"
            )
        if self.fps <= 0 or self.bitrate_kbps <= 0 or self.key_interval_s <= 0:
            raise ValueError("fps, bitrate_kbps and key_interval_s must be positive")
        if self.audio_rate_hz < 0 or self.audio_channels not in (1, 2):
            raise ValueError("audio_rate_hz must be >= 0 and audio_channels 1 or 2")

    @property
    def has_audio(self) -> bool:
        """True when the mount carries an audio track."""
        return self.audio_rate_hz > 0


_MIN_VIDEO_STEP_NS = 1_000_000
_QUEUE_LIMIT_S = 2.0
"""How far the encoder may fall behind the frames pushed before new frames are refused (and
counted in ``RtspFeed.frames_overflowed``): a burst waits in the appsrc, only an encoder
starved of CPU for this long loses frames."""
_OVERFLOW_WARN_EVERY_S = 5.0


def _launch_line(fmt: FeedFormat) -> str:
    key_frames = max(1, round(float(fmt.fps) * fmt.key_interval_s))
    common = "is-live=true format=time block=false"
    video = (
        f"appsrc name=vsrc {common} "
        f'caps="video/x-raw,format=I420,width={fmt.width},height={fmt.height},'
        f'framerate={fmt.fps.numerator}/{fmt.fps.denominator}" '
        f"! x264enc name=venc tune=zerolatency speed-preset=ultrafast bitrate={fmt.bitrate_kbps} "
        f"key-int-max={key_frames} "
        # Constrained baseline: every player decodes it, and no B-frames means no reordering.
        "! video/x-h264,profile=constrained-baseline "
        # SPS/PPS once a second in-band; -1 (with every IDR) makes FFmpeg's RTSP client
        # output one frame twice per key frame.
        "! rtph264pay name=pay0 pt=96 config-interval=1"
    )
    if not fmt.has_audio:
        return f"( {video} )"
    audio = (
        # Audio is small: the appsrc itself drops the oldest beyond the limit. (By bytes: its
        # time level misreads our clamped timestamps and dropped audio that was on time.)
        f"appsrc name=asrc {common} max-time=0 leaky-type=downstream "
        f"max-bytes={round(_QUEUE_LIMIT_S * fmt.audio_rate_hz * fmt.audio_channels * 2)} "
        f'caps="audio/x-raw,format=S16LE,layout=interleaved,rate={fmt.audio_rate_hz},'
        f'channels={fmt.audio_channels}" '
        "! audioconvert ! avenc_aac ! rtpmp4gpay name=pay1 pt=97"
    )
    return f"( {video} {audio} )"


@dataclass
class _Media:
    """The appsrcs of one prepared media (one per connected audience) and its time origin."""

    media: Any
    vsrc: Any
    venc: Any
    asrc: Any | None
    offset_ns: int | None = None
    """pts = stream time + offset: set by the first buffer, lowered whenever a buffer would
    be ahead of the pipeline clock."""
    last_pts_ns: dict[str, int] = field(default_factory=dict)
    """Per appsrc: each stream's timestamps must keep increasing."""


class RtspFeed:
    """One mount point fed from Python. Push in presentation order; thread-safe."""

    def __init__(self, fmt: FeedFormat, gst: Any) -> None:
        self.format = fmt
        self._gst = gst
        self._lock = threading.Lock()
        self._media: _Media | None = None
        self.media_count = 0
        """How many times a media (an audience) was created: 1 + re-creations."""
        self.frames_sent = 0
        """Video frames pushed to a client's media (from its DESCRIBE on): the server queues
        the frames that arrive before the client's PLAY and sends them once it plays."""
        self.frames_overflowed = 0
        """Frames refused because the encoder was more than 2 s behind (CPU starvation)."""
        self._max_queued = max(2, round(float(fmt.fps) * _QUEUE_LIMIT_S))
        self._last_overflow_warning_s = -_OVERFLOW_WARN_EVERY_S

    @property
    def watched(self) -> bool:
        """True while at least one client has the stream open."""
        with self._lock:
            return self._media is not None

    def _on_configure(self, _factory: Any, media: Any) -> None:
        element = media.get_element()
        vsrc = element.get_by_name_recurse_up("vsrc")
        asrc = element.get_by_name_recurse_up("asrc") if self.format.has_audio else None
        venc = element.get_by_name_recurse_up("venc")
        with self._lock:
            self._media = _Media(media=media, vsrc=vsrc, venc=venc, asrc=asrc)
            self.media_count += 1
        media.connect("unprepared", self._on_unprepared)
        log.info("rtsp: a client opened the stream (media %d)", self.media_count)

    def _on_play(self, media: Any) -> None:
        """A client started playing ``media``: make the next frame a key frame so it sees a
        picture at once rather than at the next scheduled key frame."""
        with self._lock:
            current = self._media
            if current is None or current.media != media:
                return
        gst = self._gst
        structure = gst.Structure.new_from_string("GstForceKeyUnit, all-headers=(boolean)true")
        current.venc.send_event(gst.Event.new_custom(gst.EventType.CUSTOM_UPSTREAM, structure))

    def _on_unprepared(self, media: Any) -> None:
        vsrc = media.get_element().get_by_name_recurse_up("vsrc")
        with self._lock:
            if self._media is not None and self._media.vsrc is vsrc:
                self._media = None
        log.info("rtsp: the last client left the stream")

    def _pts_ns(self, media: _Media, time_s: float, stream: str) -> int:
        # The server's sinks pace buffers by the pipeline clock, and a buffer stamped ahead of
        # it stalls the send path until clients lose frames (measured: a reconnect's backlog
        # pushed at once made FFmpeg drop frames in growing gaps). So a buffer never gets a
        # pts later than "now": a burst is compressed onto the clock, late buffers go out at
        # once, and spacing otherwise follows the source timestamps.
        time_ns = round(time_s * _NS_PER_S)
        now_ns = _running_time_ns(media.vsrc)
        if media.offset_ns is None:
            media.offset_ns = (now_ns if now_ns is not None else 0) - time_ns
        pts_ns = time_ns + media.offset_ns
        if now_ns is not None and pts_ns > now_ns:
            media.offset_ns -= pts_ns - now_ns
            pts_ns = now_ns
        # Strictly increasing at the RTP clock's resolution (90 kHz for video), or a client
        # sees two frames with one timestamp.
        step_ns = _MIN_VIDEO_STEP_NS if stream == "video" else 1
        pts_ns = max(pts_ns, media.last_pts_ns.get(stream, -step_ns) + step_ns, 0)
        media.last_pts_ns[stream] = pts_ns
        return pts_ns

    def push_video(self, image: Image, time_s: float, duration_s: float) -> None:
        """Queue one BGR frame (``format.width`` x ``format.height``) at stream time
        ``time_s``. Dropped while nobody watches."""
        if image.shape[:2] != (self.format.height, self.format.width):
            raise ValueError(
                f"frame is {image.shape[1]}x{image.shape[0]}, the mount carries "
                f"{self.format.width}x{self.format.height}"
            )
        if not self.watched:
            return  # skip the colour conversion too
        data = _i420_bytes(image)
        with self._lock:
            media = self._media
            if media is None:
                return
            if media.vsrc.get_property("current-level-buffers") >= self._max_queued:
                self._overflow()
                return
            pts_ns = self._pts_ns(media, time_s, "video")
            self.frames_sent += 1
        self._push(media.vsrc, data, pts_ns, round(duration_s * _NS_PER_S))

    def _overflow(self) -> None:
        self.frames_overflowed += 1
        now_s = time.monotonic()
        if now_s - self._last_overflow_warning_s >= _OVERFLOW_WARN_EVERY_S:
            self._last_overflow_warning_s = now_s
            log.warning(
                "rtsp: the H.264 encoder is %.0f s behind (CPU starved?): %d frame(s) not "
                "served so far",
                _QUEUE_LIMIT_S,
                self.frames_overflowed,
            )

    def push_audio(self, samples: npt.NDArray[np.int16], time_s: float) -> None:
        """Queue interleaved S16 PCM, shape (n, ``format.audio_channels``), starting at
        stream time ``time_s``. Ignored for a mount without audio and while nobody watches."""
        if not self.format.has_audio or len(samples) == 0:
            return
        if samples.ndim != 2 or samples.shape[1] != self.format.audio_channels:
            raise ValueError(
                f"audio must be (n, {self.format.audio_channels}) int16, got {samples.shape}"
            )
        with self._lock:
            media = self._media
            if media is None or media.asrc is None:
                return
            pts_ns = self._pts_ns(media, time_s, "audio")
        duration_ns = round(len(samples) * _NS_PER_S / self.format.audio_rate_hz)
        data = np.ascontiguousarray(samples, dtype="<i2").tobytes()
        self._push(media.asrc, data, pts_ns, duration_ns)

    def _push(self, appsrc: Any, data: bytes, pts_ns: int, duration_ns: int) -> None:
        gst = self._gst
        buffer = gst.Buffer.new_wrapped(data)
        buffer.pts = pts_ns
        buffer.duration = duration_ns
        result = appsrc.emit("push-buffer", buffer)
        if result not in (gst.FlowReturn.OK, gst.FlowReturn.FLUSHING):
            log.debug("rtsp: appsrc refused a buffer: %s", result)


def _i420_bytes(image: Image) -> bytes:
    """BGR -> I420 in GStreamer's layout, whose rows start on 4-byte boundaries (OpenCV packs
    them tightly: the two differ whenever the width is not a multiple of 8)."""
    height, width = image.shape[:2]
    yuv = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
    luma_stride, chroma_stride = _round_up_4(width), _round_up_4(width // 2)
    if luma_stride == width and chroma_stride == width // 2:
        return yuv.tobytes()
    quarter = height * width // 4
    chroma = yuv[height:].reshape(-1)
    planes = (
        (yuv[:height], luma_stride),
        (chroma[:quarter].reshape(height // 2, width // 2), chroma_stride),
        (chroma[quarter:].reshape(height // 2, width // 2), chroma_stride),
    )
    return b"".join(
        np.pad(plane, ((0, 0), (0, stride - plane.shape[1]))).tobytes() for plane, stride in planes
    )


def _round_up_4(value: int) -> int:
    return (value + 3) // 4 * 4


def _running_time_ns(element: Any) -> int | None:
    clock = element.get_clock()
    if clock is None:  # not playing yet
        return None
    return int(clock.get_time() - element.get_base_time())


class RtspServer:
    """A GstRtspServer on ``host:port`` with its GLib main loop in a daemon thread.

    Use as a context manager; ``port=0`` picks a free port (read it from ``port``). Mounts:
    ``add_feed`` (fed from Python) and ``add_launch`` (a gst-launch pipeline, e.g. a file)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8554) -> None:
        self._gst, self._rtsp, self._glib = load_gst()
        self.host = host
        self._requested_port = port
        self._context: Any = None
        self._loop: Any = None
        self._server: Any = None
        self._source_id: int | None = None
        self._thread: threading.Thread | None = None
        self._bound_port: int | None = None
        self._feeds: list[RtspFeed] = []

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        """The port the server listens on (known after ``start``)."""
        if self._bound_port is None:
            raise RuntimeError("the RTSP server is not started")
        return self._bound_port

    def url(self, path: str) -> str:
        """``rtsp://host:port/path`` for a mount of this server."""
        return RtspAddress(self.host, self.port, _mount_path(path)).url

    def start(self) -> None:
        """Bind and start serving; raise ``OutputError`` when the address cannot be bound."""
        if self._thread is not None:
            return
        glib = self._glib
        self._context = glib.MainContext.new()
        self._loop = glib.MainLoop.new(self._context, False)
        self._server = self._rtsp.RTSPServer.new()
        self._server.set_address(self.host)
        self._server.set_service(str(self._requested_port))
        where = f"{self.host}:{self._requested_port}"
        try:
            source_id = int(self._server.attach(self._context))
        except glib.Error as exc:
            raise OutputError(f"cannot serve RTSP on {where}: {exc.message}") from exc
        # attach() reports a failed bind (port in use, no such address) only by returning 0.
        if source_id <= 0 or self._server.get_bound_port() <= 0:
            self._server = None
            raise OutputError(f"cannot serve RTSP on {where}: address in use or unavailable")
        self._source_id = source_id
        self._bound_port = int(self._server.get_bound_port())
        self._server.connect("client-connected", self._on_client)
        self._thread = threading.Thread(target=self._loop.run, name="avstream-rtsp", daemon=True)
        self._thread.start()
        log.info("rtsp: serving on %s:%d", self.host, self._bound_port)

    def _on_client(self, _server: Any, client: Any) -> None:
        client.connect("play-request", self._on_play_request)

    def _on_play_request(self, _client: Any, context: Any) -> None:
        for feed in list(self._feeds):
            feed._on_play(context.media)

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the server's main-loop thread and return its result."""
        if self._thread is None or self._context is None:
            raise RuntimeError("the RTSP server is not started")
        done = threading.Event()
        box: list[T] = []
        errors: list[BaseException] = []

        def run(*_args: Any) -> bool:
            try:
                box.append(fn())
            except BaseException as exc:  # handed to the caller's thread
                errors.append(exc)
            done.set()
            return False

        self._context.invoke_full(self._glib.PRIORITY_DEFAULT, run, None)
        if not done.wait(_LOOP_CALL_TIMEOUT_S):
            raise OutputError("the RTSP server's main loop does not respond")
        if errors:
            raise errors[0]
        return box[0]

    def add_feed(self, path: str, fmt: FeedFormat) -> RtspFeed:
        """Mount a stream fed with ``RtspFeed.push_video`` / ``push_audio`` at ``path``."""
        feed = RtspFeed(fmt, self._gst)
        self._feeds.append(feed)
        factory = self._rtsp.RTSPMediaFactory.new()
        factory.set_launch(_launch_line(fmt))
        factory.set_shared(True)
        factory.connect("media-configure", feed._on_configure)
        self._mount(path, factory)
        return feed

    def add_launch(self, path: str, launch: str, *, shared: bool = False) -> None:
        """Mount a gst-launch pipeline whose payloaders are named ``pay0``, ``pay1``...
        Unshared: every client gets its own pipeline (a file starts from its beginning)."""
        factory = self._rtsp.RTSPMediaFactory.new()
        factory.set_launch(launch if launch.lstrip().startswith("(") else f"( {launch} )")
        factory.set_shared(shared)
        self._mount(path, factory)

    def _mount(self, path: str, factory: Any) -> None:
        mount = _mount_path(path)

        def add() -> None:
            self._server.get_mount_points().add_factory(mount, factory)

        self._call(add)

    def disconnect_clients(self) -> int:
        """Close every client connection (their media are torn down); returns how many."""
        remove = self._rtsp.RTSPFilterResult.REMOVE

        def drop() -> int:
            return len(self._server.client_filter(lambda _server, _client: remove))

        return self._call(drop)

    def close(self) -> None:
        """Disconnect clients, stop listening and stop the main loop. Idempotent."""
        if self._thread is None:
            return
        try:
            self.disconnect_clients()

            def stop_listening() -> None:
                if self._source_id is not None:
                    source = self._context.find_source_by_id(self._source_id)
                    if source is not None:
                        source.destroy()
                    self._source_id = None

            self._call(stop_listening)
        finally:
            self._loop.quit()
            self._thread.join(timeout=_LOOP_CALL_TIMEOUT_S)
            self._thread = None
            self._server = None
            log.info("rtsp: server on %s:%s stopped", self.host, self._bound_port)


def _mount_path(path: str) -> str:
    mount = "/" + path.strip("/")
    if mount == "/":
        raise ValueError("a mount path is required, e.g. /restored")
    return mount


def file_launch(path: str, *, audio: bool = True) -> str:
    """A gst-launch line serving an MP4/MOV with H.264 video (and AAC audio) unchanged,
    at its native rate: a stand-in for a camera in tests and demos."""
    location = path.replace("\\", "\\\\").replace('"', '\\"')
    video = (
        f'filesrc location="{location}" ! qtdemux name=demux '
        "demux.video_0 ! queue ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1"
    )
    if not audio:
        return f"( {video} )"
    return f"( {video} demux.audio_0 ! queue ! aacparse ! rtpmp4gpay name=pay1 pt=97 )"
