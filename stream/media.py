"""PyAV demux, decode, H.264 encode and remux with the original audio packets.

Timestamps always come from the demuxer. The output video keeps the input's presentation
timestamps (variable frame rate survives), and the audio stream is copied packet for packet
whenever the output container accepts its codec.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import av
import av.container
import av.error
import cv2
import numpy as np

from stream.errors import InputError, OutputError, UsageError
from stream.types import Image, VideoFrame

log = logging.getLogger(__name__)

AudioMode = Literal["copy", "transcode", "none"]


@dataclass(frozen=True)
class MediaInfo:
    """What the demuxer says about an input file."""

    path: Path
    width: int
    height: int
    time_base: Fraction
    average_rate: Fraction | None
    frame_count: int | None
    """Frames the container declares (None where it does not say; then only an estimate)."""
    duration_s: float | None
    audio_codec: str | None

    @property
    def expected_frames(self) -> int | None:
        """Declared frame count, else duration times average rate."""
        if self.frame_count:
            return self.frame_count
        if self.duration_s and self.average_rate:
            return round(self.duration_s * float(self.average_rate))
        return None


@dataclass(frozen=True)
class EncodeOptions:
    """H.264 encoder settings. ``crf``: lower is better quality (0-51, 18 is visually
    transparent for most content); ``preset``: libx264 speed/size trade-off; ``threads``:
    0 lets FFmpeg choose."""

    crf: int = 18
    preset: str = "medium"
    threads: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.crf <= 51:
            raise UsageError(f"crf must be within 0-51, got {self.crf}")
        if self.preset not in _X264_PRESETS:
            raise UsageError(f"unknown preset {self.preset!r}; one of {', '.join(_X264_PRESETS)}")
        if self.threads < 0:
            raise UsageError(f"threads must be >= 0, got {self.threads}")


def x264_options(options: EncodeOptions) -> dict[str, str]:
    """libx264's options for ``options``. ``cpu-independent`` makes the same frames encode to
    the same bytes on every run: without it, on the 2-core development machine, 12 encodes
    of the same 30 frames on one thread gave 12 different files, differing by up to 38
    levels from the 17th frame on (which alone moved ``bench.quality``'s score of a clip by
    up to 1 dB between runs); with it all 12 were identical, for about 5% more encode time
    (0.67 -> 0.71 s for 100 frames of 384x384) and 0.3% more bytes."""
    return {"crf": str(options.crf), "preset": options.preset, "x264-params": "cpu-independent=1"}


_X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)


def _open_input(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if not path.is_file():
        raise InputError(f"input is not a file: {path}")
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:
        raise InputError(f"cannot read {path}: not a media file FFmpeg can open ({exc})") from exc


def probe(path: Path) -> MediaInfo:
    """Read stream facts of ``path``; raise ``InputError`` when it holds no decodable video."""
    with _open_input(path) as container:
        if not container.streams.video:
            raise InputError(f"no video stream in {path}")
        vs = container.streams.video[0]
        ctx = vs.codec_context
        if not ctx.width or not ctx.height:
            raise InputError(f"video stream of {path} has no frame size (damaged header?)")
        duration_s: float | None = None
        if vs.duration is not None and vs.time_base is not None:
            duration_s = float(vs.duration * vs.time_base)
        elif container.duration is not None:
            duration_s = container.duration / av.time_base
        audio = container.streams.audio
        return MediaInfo(
            path=path,
            width=ctx.width,
            height=ctx.height,
            time_base=vs.time_base or Fraction(1, 90_000),
            average_rate=vs.average_rate,
            frame_count=vs.frames or None,
            duration_s=duration_s,
            audio_codec=audio[0].codec_context.name if audio else None,
        )


@dataclass
class DecodeStats:
    """Filled in by ``VideoReader`` while it runs (read after iteration ends)."""

    frames: int = 0
    corrupt_packets: int = 0
    stopped_early: str | None = None
    """Why demuxing stopped before a clean end of file, when it did."""


class VideoReader:
    """Decode the first video stream of a file into ``VideoFrame``s (BGR, demuxer pts).

    Damaged packets are skipped and counted rather than aborting the run, so a truncated or
    partly corrupt file yields every frame that decodes; ``stats`` says what was lost.
    """

    def __init__(self, path: Path, *, threads: int = 0) -> None:
        self._container = _open_input(path)
        if not self._container.streams.video:
            self._container.close()
            raise InputError(f"no video stream in {path}")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._stream.codec_context.thread_count = threads
        self._time_base = self._stream.time_base or Fraction(1, 90_000)
        self.stats = DecodeStats()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._container.close()

    def __iter__(self) -> Iterator[VideoFrame]:
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                self.stats.stopped_early = f"demuxer stopped: {exc}"
                break
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                self.stats.corrupt_packets += 1
                continue
            for frame in frames:
                yield self._to_video_frame(frame)
        if self.stats.stopped_early is not None:
            # The demuxer's flush packet never came: drain the decoder's delayed frames.
            with contextlib.suppress(av.error.FFmpegError):
                for frame in self._stream.codec_context.decode(None):
                    yield self._to_video_frame(frame)

    def _to_video_frame(self, frame: av.VideoFrame) -> VideoFrame:
        image = frame_to_bgr(frame)
        index = self.stats.frames
        self.stats.frames += 1
        return VideoFrame(index=index, pts=frame.pts, time_base=self._time_base, image=image)


def frame_to_bgr(frame: av.VideoFrame) -> Image:
    """Decoded frame to a BGR array.

    For 8-bit 4:2:0 video OpenCV's I420 conversion is used: its round trip back to I420 is
    exact to within 0.003 levels on average, whereas swscale's bgr24 round trip shifts luma by
    ~1.1 levels, which would alter every untouched pixel of the output."""
    if frame.format.name == "yuv420p" and frame.width % 2 == 0 and frame.height % 2 == 0:
        planes = frame.to_ndarray(format="yuv420p")
        return np.asarray(cv2.cvtColor(planes, cv2.COLOR_YUV2BGR_I420), dtype=np.uint8)
    return np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)


def bgr_to_frame(image: Image, pix_fmt: str | None) -> av.VideoFrame:
    """BGR array to a frame in the encoder's pixel format (the inverse of ``frame_to_bgr``)."""
    height, width = image.shape[:2]
    if pix_fmt == "yuv420p" and width % 2 == 0 and height % 2 == 0:
        planes = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
        return av.VideoFrame.from_ndarray(planes, format="yuv420p")
    return av.VideoFrame.from_ndarray(image, format="bgr24")


def check_output_path(input_path: Path, output_path: Path) -> None:
    """Refuse outputs that would overwrite the input or cannot be created."""
    if output_path.exists() and input_path.exists() and output_path.samefile(input_path):
        raise UsageError(f"output {output_path} is the input file; choose another path")
    if output_path.resolve() == input_path.resolve():
        raise UsageError(f"output {output_path} is the input file; choose another path")
    parent = output_path.parent
    if not parent.is_dir():
        raise UsageError(f"output directory does not exist: {parent}")
    if output_path.is_dir():
        raise UsageError(f"output path is a directory: {output_path}")
    if not output_path.suffix:
        raise UsageError(
            f"output {output_path} has no extension to choose a container (.mp4, .mkv)"
        )
    if output_path.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise UsageError(
            f"unsupported output container {output_path.suffix!r}; use one of "
            + ", ".join(sorted(OUTPUT_EXTENSIONS))
        )


# Containers that carry H.264 and the usual audio codecs.
OUTPUT_EXTENSIONS = frozenset({".mp4", ".mkv", ".mov", ".m4v"})


class AtomicOutput:
    """A temporary file beside ``final_path``, renamed onto it only by ``commit()``.

    Leaving the context without committing deletes the temporary file, so a failed run never
    leaves a partial output behind.
    """

    def __init__(self, final_path: Path) -> None:
        self.final_path = final_path
        # A unique name rather than mkstemp: mkstemp creates the file 0600, and the output
        # should get the usual permissions (umask) when the muxer creates it.
        self.temp_path = final_path.parent / (
            f".{final_path.stem}.{uuid.uuid4().hex[:12]}.partial{final_path.suffix}"
        )
        self._committed = False

    def __enter__(self) -> AtomicOutput:
        return self

    def commit(self) -> None:
        """Atomically move the finished temporary file onto the final path."""
        self.temp_path.replace(self.final_path)
        self._committed = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._committed:
            self.temp_path.unlink(missing_ok=True)


def _container_format_for(path: Path) -> str | None:
    # The temporary name ends in ".partial.mp4"; FFmpeg guesses from the last suffix, which is
    # the user's, so no explicit format is needed except for suffixes FFmpeg maps oddly.
    return {".mkv": "matroska", ".m4v": "mp4"}.get(path.suffix.lower())


_MAX_MOVIE_TIMESCALE = 2**31 - 1
"""The largest timescale an MP4 header holds (a signed 32-bit field)."""


def _container_options(time_base: Fraction) -> dict[str, str]:
    """Muxer options that keep the input's timestamps exactly.

    ``avoid_negative_ts``: by default Matroska shifts everything later by the B-frame delay
    to avoid negative decode timestamps. ``movie_timescale``: MP4 and MOV write the edit list
    (where the first frame starts) in the movie's timescale, 1000 by default, so a first
    frame at a time that is no whole millisecond (a clip cut from the middle of a file, 1/15824
    s ticks) came back up to half a millisecond early; in the stream's own timescale it is
    exact."""
    options = {"avoid_negative_ts": "disabled"}
    if 0 < time_base.denominator <= _MAX_MOVIE_TIMESCALE and time_base.numerator == 1:
        options["movie_timescale"] = str(time_base.denominator)
    return options


class VideoWriter:
    """Encode frames to H.264 and interleave the input's audio packets into the output.

    Audio is copied packet for packet (no re-encode) when the output container accepts the
    input's audio codec; otherwise it is transcoded to AAC and ``audio_mode`` says so.
    """

    def __init__(
        self,
        path: Path,
        source: MediaInfo,
        options: EncodeOptions,
        *,
        copy_audio_from: Path | None,
    ) -> None:
        self._path = path
        try:
            self._out = av.open(
                str(path),
                mode="w",
                format=_container_format_for(path),
                container_options=_container_options(source.time_base),
            )
        except av.error.FFmpegError as exc:
            raise OutputError(f"cannot create {path}: {exc}") from exc
        self._time_base = source.time_base
        odd = source.width % 2 == 1 or source.height % 2 == 1
        # 4:2:0 needs even dimensions; 4:4:4 keeps odd-sized frames exactly as they are.
        pix_fmt = "yuv444p" if odd else "yuv420p"
        if odd:
            log.warning(
                "odd frame size %dx%d: encoding H.264 4:4:4 to keep every pixel",
                source.width,
                source.height,
            )
        rate = source.average_rate or Fraction(25)
        self._video = self._out.add_stream("libx264", rate=rate, options=x264_options(options))
        self._video.width = source.width
        self._video.height = source.height
        self._video.pix_fmt = pix_fmt
        self._video.time_base = self._time_base
        self._video.codec_context.time_base = self._time_base
        self._video.codec_context.thread_count = options.threads
        self._audio_in: av.container.InputContainer | None = None
        self._audio_packets: Iterator[av.Packet[Any]] | None = None
        self._pending_audio: av.Packet[Any] | None = None
        self._audio_out: av.audio.stream.AudioStream | None = None
        self._resampler: av.AudioResampler | None = None
        self.audio_mode: AudioMode = "none"
        self.audio_packets_written = 0
        if copy_audio_from is not None and source.audio_codec is not None:
            self._open_audio(copy_audio_from, source.audio_codec)
        self._last_pts: int | None = None

    def _open_audio(self, path: Path, codec: str) -> None:
        self._audio_in = av.open(str(path), mode="r")
        in_stream = self._audio_in.streams.audio[0]
        if codec in self._out.supported_codecs:
            self._audio_out = self._out.add_stream_from_template(in_stream)
            self.audio_mode = "copy"
        else:
            log.warning(
                "%s cannot hold %s audio: transcoding it to AAC (use .mkv to copy it unchanged)",
                self._path.suffix,
                codec,
            )
            self._audio_out = self._out.add_stream("aac", rate=in_stream.rate or 48_000)
            self._audio_out.layout = in_stream.layout
            self.audio_mode = "transcode"
            self._resampler = av.AudioResampler(format="fltp", layout=in_stream.layout)
        self._audio_packets = self._audio_in.demux(in_stream)

    def __enter__(self) -> VideoWriter:
        return self

    def write(self, frame: VideoFrame) -> None:
        """Encode one frame at its original pts, muxing audio up to that time first."""
        pts = frame.pts
        if pts is None or (self._last_pts is not None and pts <= self._last_pts):
            # A missing or repeated pts would make the muxer fail; nudge it one tick on.
            pts = 0 if self._last_pts is None else self._last_pts + 1
        self._last_pts = pts
        av_frame = bgr_to_frame(frame.image, self._video.pix_fmt)
        av_frame.pts = pts
        av_frame.time_base = self._time_base
        for packet in self._video.encode(av_frame):
            self._mux_audio_until(_packet_time_s(packet))
            self._out.mux(packet)

    def _mux_audio_until(self, time_s: float | None) -> None:
        if self._audio_packets is None or self._audio_out is None:
            return
        while True:
            if self._pending_audio is None:
                try:
                    self._pending_audio = next(self._audio_packets)
                except (StopIteration, av.error.FFmpegError):
                    self._audio_packets = None
                    return
            packet = self._pending_audio
            packet_time = _packet_time_s(packet)
            if time_s is not None and packet_time is not None and packet_time > time_s:
                return
            self._pending_audio = None
            self._mux_audio_packet(packet)

    def _mux_audio_packet(self, packet: av.Packet[Any]) -> None:
        assert self._audio_out is not None
        if self._resampler is None:
            if packet.dts is None:  # the demuxer's end-of-stream flush packet
                return
            packet.stream = self._audio_out
            self._out.mux(packet)
            self.audio_packets_written += 1
            return
        decoded = packet.decode()
        for audio_frame in decoded:
            for resampled in self._resampler.resample(audio_frame):  # type: ignore[arg-type]
                resampled.pts = None
                self._out.mux(self._audio_out.encode(resampled))
                self.audio_packets_written += 1

    def finish(self) -> None:
        """Flush the encoder and the remaining audio, and write the trailer."""
        for packet in self._video.encode(None):
            self._mux_audio_until(_packet_time_s(packet))
            self._out.mux(packet)
        self._mux_audio_until(None)
        if self._resampler is not None and self._audio_out is not None:
            self._out.mux(self._audio_out.encode(None))
        self._out.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._audio_in is not None:
            self._audio_in.close()
        if exc_type is not None:
            with contextlib.suppress(Exception):
                self._out.close()


def _packet_time_s(packet: av.Packet[Any]) -> float | None:
    ts = packet.dts if packet.dts is not None else packet.pts
    if ts is None or packet.time_base is None:
        return None
    return float(ts * packet.time_base)
