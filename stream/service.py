"""ZeroMQ frame service: analysis tools send frames (and audio) and get restored frames back.

``FrameService`` is the socket-free core: it turns one request into one reply and never
raises, so a bad message can only ever cost an error reply. ``serve`` runs it behind a
ROUTER socket, in-process (``workers=0``) or as a broker in front of worker processes
(the standard ROUTER/ROUTER load-balancing pattern, with each stream pinned to one worker
because tracking is stateful). A worker that dies costs only its in-flight requests: they
get ``worker_lost`` replies, its streams must be re-opened, and a new worker replaces it.

With a model (``serve(..., open_model=...)``) every worker process opens one
``ModelInpainter`` when it starts and closes it when it stops; all streams of that worker
share it. The voice is per stream: each stream's ``audio`` feeds its own speech window
(VAD), each new window becomes that stream's speaker features, and the service switches the
model to a stream's features before restoring that stream's frames.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.process
import os
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from stream.composite import FEATHER_PX
from stream.detect import DetectorOptions
from stream.errors import AvstreamError
from stream.inpaint import Inpainter, OpenCVInpainter
from stream.mask_detect import MaskDetectOptions, MaskDetector, Predictor, load_predictor
from stream.occlusion import FixedRegion, OcclusionModel
from stream.protocol import (
    ErrorCode,
    Limits,
    ProtocolError,
    decode_audio,
    decode_image,
    encode_image,
    error_reply,
    int_field,
    parse_header,
    peek_routing,
    pts_seconds,
    reply,
)
from stream.provenance import FaceProvenance, frame_provenance, marked
from stream.region import box_mask, parse_box
from stream.restore import (
    FaceAnalyser,
    RestoredFrame,
    ReuseCache,
    ReuseOptions,
    restore_frame,
)
from stream.track import TrackerOptions
from stream.types import AudioChunk, Mask, VideoFrame

if TYPE_CHECKING:
    from stream.model_inpainter import ModelInpainter, SpeakerFeatures
    from stream.speaker import SpeakerWindow

log = logging.getLogger(__name__)

Message = list[bytes]

InpainterChoice = Literal["model", "telea", "ns"]
"""The ``inpainter`` stream option: the audio-driven network or an OpenCV baseline."""

INPAINTER_CHOICES: tuple[InpainterChoice, ...] = get_args(InpainterChoice)

ModelOpener = Callable[[], "ModelInpainter"]
"""Opens the model a worker holds, e.g. ``functools.partial(open_model_inpainter, args)``.
Worker processes are spawned, so it must pickle: a module-level function or a partial of one."""


class ServiceStartError(AvstreamError):
    """A worker could not start (its model failed to open): the service stops."""


@dataclass
class _Session:
    analyser: FaceAnalyser
    region: OcclusionModel
    """The stream's own segmenter (``MaskDetector``: per-track smoothing and hysteresis
    live here, so a re-opened stream starts fresh) or the fixed box it asked for."""
    region_name: str
    mark_restored: bool
    method: InpainterChoice
    inpainter: Inpainter
    feather_px: float
    jpeg_quality: int
    last_seen_s: float
    reuse: ReuseCache | None
    frames: int = 0
    audio_samples: int = 0
    speech: SpeakerWindow | None = None
    """The stream's rolling window of voiced speech; model streams only, made on first audio."""
    speaker: SpeakerFeatures | None = None
    """The stream's latest speaker features; None: the model's neutral speaker."""
    speaker_windows: int = 0


@dataclass
class ServiceStats:
    """Counters a ``stats`` request returns."""

    requests: int = 0
    frames: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    expired_streams: int = 0
    speaker_windows: int = 0
    faces: int = 0
    """Faces tracked in all frames."""
    faces_covered: int = 0
    """Faces found covered (or inside a fixed region) and restored."""
    faces_passed: int = 0
    """Faces not covered: passed through with their pixels untouched."""


class FrameService:
    """Per-client streams and their restoration state; ``handle`` maps a request to a reply.

    ``model`` (owned by the caller, who closes it) is shared by every stream that restores
    with ``inpainter: model``; ``default_inpainter`` is what a stream gets when its ``open``
    does not say (default: ``model`` when there is one, else ``telea``)."""

    def __init__(
        self,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        model: ModelInpainter | None = None,
        default_inpainter: InpainterChoice | None = None,
        segmenter: Predictor | None = None,
    ) -> None:
        """``segmenter`` replaces the shipped occlusion segmenter (tests); it is shared by
        every stream (each keeps its own smoothing state) and loaded on the first stream
        that detects."""
        if default_inpainter is None:
            default_inpainter = "model" if model is not None else "telea"
        if default_inpainter not in INPAINTER_CHOICES:
            raise ValueError(f"default_inpainter must be one of {INPAINTER_CHOICES}")
        if default_inpainter == "model" and model is None:
            raise ValueError("default_inpainter 'model' needs a model")
        self.limits = limits or Limits()
        self._clock = clock
        self._model = model
        self.default_inpainter: InpainterChoice = default_inpainter
        self._sessions: dict[tuple[bytes, str], _Session] = {}
        self._segmenter = segmenter
        self.stats = ServiceStats()

    @property
    def open_streams(self) -> int:
        """Streams currently open over all clients."""
        return len(self._sessions)

    def handle(self, client: bytes, message: Message) -> Message:
        """One reply ``[header, payload]`` for one request ``[header, payload]``."""
        self.stats.requests += 1
        header: dict[str, Any] | None = None
        try:
            if len(message) != 2:
                raise ProtocolError(
                    ErrorCode.BAD_MESSAGE,
                    f"expected 2 frames [header, payload], got {len(message)}",
                )
            header = parse_header(message[0], self.limits)
            return self._dispatch(client, header, message[1])
        except ProtocolError as exc:
            self.stats.errors[str(exc.code)] = self.stats.errors.get(str(exc.code), 0) + 1
            return [error_reply(exc.code, str(exc), header), b""]
        except Exception as exc:  # a bug must not take the service down for every client
            log.exception("internal error handling a request")
            self.stats.errors["internal"] = self.stats.errors.get("internal", 0) + 1
            return [error_reply(ErrorCode.INTERNAL, f"internal error: {exc}", header), b""]

    def expire_idle(self) -> int:
        """Close streams idle for longer than the limit; returns how many."""
        now = self._clock()
        stale = [
            key
            for key, session in self._sessions.items()
            if now - session.last_seen_s > self.limits.idle_timeout_s
        ]
        for key in stale:
            del self._sessions[key]
        self.stats.expired_streams += len(stale)
        return len(stale)

    def _dispatch(self, client: bytes, header: dict[str, Any], payload: bytes) -> Message:
        kind = header["type"]
        if kind == "stats":
            return [self._stats_reply(header), b""]
        key = (client, header["stream"])
        if kind == "open":
            return [self._open(key, header), b""]
        session = self._sessions.get(key)
        if session is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_STREAM, f"stream {header['stream']!r} is not open; send 'open'"
            )
        session.last_seen_s = self._clock()
        if kind == "close":
            del self._sessions[key]
            return [reply("closed", header, frames=session.frames), b""]
        if kind == "audio":
            return [self._audio(session, header, payload), b""]
        return self._frame(session, header, payload)

    def _audio(self, session: _Session, header: dict[str, Any], payload: bytes) -> bytes:
        samples = decode_audio(header, payload, self.limits)
        time_s = pts_seconds(header)
        # Without a time, chunks are taken to follow each other with no gap.
        start_s = time_s if time_s is not None else session.audio_samples / _AUDIO_RATE_HZ
        session.audio_samples += len(samples)
        # Only the model hears the voice; OpenCV streams just acknowledge their audio.
        if session.method == "model" and len(samples):
            self._hear(session, AudioChunk(pts_s=start_s, samples_16k=samples))
        return reply(
            "audio_ack",
            header,
            samples=len(samples),
            speech_s=round(session.speech.speech_s, 3) if session.speech is not None else 0.0,
            speaker_windows=session.speaker_windows,
        )

    def _hear(self, session: _Session, chunk: AudioChunk) -> None:
        """Feed the stream's speech window; when a new window is due, turn it into the
        stream's speaker features (the model's current speaker is left alone: each stream's
        frames switch to their own features in ``_frame``)."""
        assert self._model is not None
        if session.speech is None:
            # Imported here: the VAD pulls in torch, which OpenCV-only services never need.
            from stream.speaker import SileroVad, SpeakerWindow

            session.speech = SpeakerWindow(SileroVad())
        session.speech.push(chunk)
        if not session.speech.due():
            return
        window = session.speech.take()
        if window is None:
            return
        session.speaker = self._model.speech_features(window)
        session.speaker_windows += 1
        self.stats.speaker_windows += 1

    def _open(self, key: tuple[bytes, str], header: dict[str, Any]) -> bytes:
        if key in self._sessions:
            raise ProtocolError(ErrorCode.STREAM_EXISTS, f"stream {key[1]!r} is already open")
        self.expire_idle()
        if len(self._sessions) >= self.limits.max_streams:
            raise ProtocolError(
                ErrorCode.TOO_MANY_STREAMS, f"{self.limits.max_streams} streams already open"
            )
        options = header.get("options", {})
        if not isinstance(options, dict):
            raise ProtocolError(ErrorCode.BAD_OPTION, "'options' must be an object")
        session = self._session_from_options(options)
        self._sessions[key] = session
        return reply(
            "opened",
            header,
            limits=_limits_json(self.limits),
            inpainter=session.method,
            reuse=session.reuse is not None,
            region=session.region_name,
        )

    def _session_from_options(self, options: dict[str, Any]) -> _Session:
        unknown = set(options) - _OPTIONS
        if unknown:
            raise ProtocolError(
                ErrorCode.BAD_OPTION, f"unknown options: {', '.join(sorted(unknown))}"
            )
        method = options.get("inpainter", self.default_inpainter)
        if method not in INPAINTER_CHOICES:
            raise ProtocolError(
                ErrorCode.BAD_OPTION,
                f"bad option: inpainter must be model, telea or ns, got {method!r}",
            )
        if method == "model" and self._model is None:
            raise ProtocolError(
                ErrorCode.BAD_OPTION,
                "bad option: this service runs without the model "
                "(start it with avstream serve --inpainter auto or model)",
            )
        settings = _parse_options(options)
        inpainter: Inpainter
        if method == "model":
            assert self._model is not None
            inpainter = self._model
        else:
            inpainter = OpenCVInpainter(method)
        return _Session(
            analyser=FaceAnalyser(
                DetectorOptions(), TrackerOptions(detect_every=settings.detect_every)
            ),
            region=self._region_model(settings),
            region_name="detect" if settings.region is None else "box",
            mark_restored=settings.mark_restored,
            method=method,
            inpainter=inpainter,
            feather_px=settings.feather_px,
            jpeg_quality=settings.jpeg_quality,
            last_seen_s=self._clock(),
            reuse=ReuseCache(ReuseOptions()) if settings.reuse else None,
        )

    def _region_model(self, settings: _Settings) -> OcclusionModel:
        if settings.region is not None:
            return FixedRegion(settings.region)
        options = MaskDetectOptions(covered_fraction=settings.mask_threshold)
        if self._segmenter is None:
            try:
                self._segmenter = load_predictor(options)
            except AvstreamError as exc:
                raise ProtocolError(
                    ErrorCode.BAD_OPTION, f"bad option: region detect is unavailable: {exc}"
                ) from None
        return MaskDetector(options, self._segmenter)

    def _frame(self, session: _Session, header: dict[str, Any], payload: bytes) -> Message:
        started = time.perf_counter()
        image = decode_image(header, payload, self.limits)
        time_s = pts_seconds(header)
        index = session.frames
        frame = VideoFrame(
            index=index,
            pts=round(time_s * 1000) if time_s is not None else index,
            time_base=_MS if time_s is not None else _PER_FRAME,
            image=image,
        )
        decoded = time.perf_counter()
        faces = session.analyser.analyse(frame)
        tracked = time.perf_counter()
        if session.method == "model":
            assert self._model is not None
            # One model serves every stream of this worker: give it this stream's voice.
            self._model.use_features(session.speaker)
        restored = restore_frame(
            faces, session.inpainter, session.region, session.feather_px, session.reuse
        )
        inpainted = time.perf_counter()
        shape = (restored.frame.image.shape[0], restored.frame.image.shape[1])
        record = frame_provenance(restored)
        if session.mark_restored:
            restored = marked(restored)
        image = restored.frame.image
        encoding = header.get("encoding", "raw")
        body = encode_image(image, encoding, session.jpeg_quality)
        session.frames += 1
        self.stats.frames += 1
        self.stats.faces += len(restored.decisions)
        self.stats.faces_covered += len(restored.faces)
        self.stats.faces_passed += len(restored.decisions) - len(restored.faces)
        done = time.perf_counter()
        return [
            reply(
                "restored",
                header,
                encoding=encoding,
                shape=[shape[0], shape[1], 3],
                faces=[_face_json(face, restored) for face in record.faces],
                speaker_windows=session.speaker_windows,
                timings_ms={
                    "decode": round((decoded - started) * 1000, 3),
                    "track_align": round((tracked - decoded) * 1000, 3),
                    "inpaint_composite": round((inpainted - tracked) * 1000, 3),
                    "encode": round((done - inpainted) * 1000, 3),
                    "total": round((done - started) * 1000, 3),
                },
            ),
            body,
        ]

    def _stats_reply(self, header: dict[str, Any]) -> bytes:
        return reply(
            "stats",
            header,
            streams=self.open_streams,
            requests=self.stats.requests,
            frames=self.stats.frames,
            errors=dict(self.stats.errors),
            expired_streams=self.stats.expired_streams,
            speaker_windows=self.stats.speaker_windows,
            faces=self.stats.faces,
            faces_covered=self.stats.faces_covered,
            faces_passed=self.stats.faces_passed,
            inpainter=self.default_inpainter,
            model=self._model.name if self._model is not None else None,
            pid=os.getpid(),
        )


# Frames carry the client's time in milliseconds; without one, frame numbers at a nominal
# 25 fps (the tracker's smoothing needs some clock).
_MS = Fraction(1, 1000)
_PER_FRAME = Fraction(1, 25)


_AUDIO_RATE_HZ = 16_000

_OPTIONS = frozenset(
    {
        "region",
        "mask_box",
        "mask_threshold",
        "mark_restored",
        "inpainter",
        "detect_every",
        "feather_px",
        "jpeg_quality",
        "reuse",
    }
)


@dataclass(frozen=True)
class _Settings:
    region: Mask | None
    """A fixed crop-space region; None: detect what covers each face."""
    mask_threshold: float
    mark_restored: bool
    detect_every: int
    feather_px: float
    jpeg_quality: int
    reuse: bool


def _parse_options(options: dict[str, Any]) -> _Settings:
    """The stream options other than ``inpainter``, checked."""
    try:
        region = _parse_region(options)
        threshold = options.get("mask_threshold", MaskDetectOptions.covered_fraction)
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not 0 < threshold <= 1
        ):
            raise ValueError("mask_threshold must be a number in (0, 1]")
        if region is not None and "mask_threshold" in options:
            raise ValueError("mask_threshold applies to region detect, not to a box")
        mark = options.get("mark_restored", False)
        if not isinstance(mark, bool):
            raise ValueError("mark_restored must be true or false")
        detect_every = int_field({"d": options.get("detect_every", 5)}, "d", 1, 1000)
        feather = options.get("feather_px", FEATHER_PX)
        if (
            isinstance(feather, bool)
            or not isinstance(feather, int | float)
            or not 0 <= feather <= 64
        ):
            raise ValueError("feather_px must be a number in 0..64")
        quality = int_field({"q": options.get("jpeg_quality", 90)}, "q", 1, 100)
        reuse = options.get("reuse", True)
        if not isinstance(reuse, bool):
            raise ValueError("reuse must be true or false")
    except (ValueError, TypeError, ProtocolError) as exc:
        raise ProtocolError(ErrorCode.BAD_OPTION, f"bad option: {exc}") from None
    except Exception as exc:  # e.g. UsageError from parse_box
        raise ProtocolError(ErrorCode.BAD_OPTION, f"bad option: {exc}") from None
    return _Settings(region, float(threshold), mark, detect_every, float(feather), quality, reuse)


def _parse_region(options: dict[str, Any]) -> Mask | None:
    """``region``: "detect" (the default) or {"box": [x, y, w, h]}; v1's ``mask_box``
    (a box, or null for the paper's box) still asks for a fixed region."""
    if "region" in options and "mask_box" in options:
        raise ValueError("give region or mask_box, not both")
    if "mask_box" in options:
        box = options["mask_box"]
        return box_mask(_box(box) if box is not None else None)
    region = options.get("region", "detect")
    if region == "detect":
        return None
    if region == "paper":
        return box_mask(None)
    if isinstance(region, dict) and set(region) == {"box"}:
        return box_mask(_box(region["box"]))
    raise ValueError('region must be "detect", "paper" or {"box": [x, y, w, h]}')


def _box(value: object) -> tuple[int, int, int, int]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ValueError("a box must be a list of four integers [x, y, w, h]")
    return parse_box(",".join(str(v) for v in value))


def _face_json(face: FaceProvenance, restored: RestoredFrame) -> dict[str, Any]:
    """A reply's per-face object: the provenance record (as in the sidecar) and the fill's
    latency."""
    latency = next(
        (f.result.latency_ms for f in restored.faces if f.track_id == face.track_id), 0.0
    )
    return {**face.to_json(), "inpaint_ms": round(latency, 3)}


def _limits_json(limits: Limits) -> dict[str, float]:
    return {
        "max_frame_bytes": limits.max_frame_bytes,
        "max_pixels": limits.max_pixels,
        "max_streams": limits.max_streams,
        "idle_timeout_s": limits.idle_timeout_s,
    }


# --- sockets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurveKeys:
    """CURVE material: the server's secret key file and a folder of authorised clients'
    public key files (``zmq.auth.create_certificates`` format)."""

    server_secret_file: Path
    authorized_clients_dir: Path

    @classmethod
    def from_dir(cls, directory: Path) -> CurveKeys:
        """``DIR/server.key_secret`` and ``DIR/authorized_clients/*.key``."""
        keys = cls(directory / "server.key_secret", directory / "authorized_clients")
        if not keys.server_secret_file.is_file():
            raise FileNotFoundError(f"no server.key_secret in {directory} (run avstream keygen)")
        if not keys.authorized_clients_dir.is_dir():
            raise FileNotFoundError(f"no authorized_clients/ folder in {directory}")
        return keys


def generate_keys(directory: Path, client_names: tuple[str, ...] = ("client",)) -> None:
    """Write a server key pair and client key pairs; authorise the clients' public keys."""
    directory.mkdir(parents=True, exist_ok=True)
    authorized = directory / "authorized_clients"
    authorized.mkdir(exist_ok=True)
    zmq.auth.create_certificates(str(directory), "server")
    for name in client_names:
        public, _ = zmq.auth.create_certificates(str(directory), name)
        Path(public).replace(authorized / Path(public).name)


def is_loopback(endpoint: str) -> bool:
    """True for ipc:// and inproc:// endpoints and tcp on 127.0.0.0/8 or ::1."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _frontend(
    context: zmq.Context[zmq.Socket[bytes]], bind: str, limits: Limits, curve: CurveKeys | None
) -> zmq.Socket[bytes]:
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
    if curve is not None:
        public, secret = zmq.auth.load_certificate(str(curve.server_secret_file))
        assert secret is not None
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True
    socket.bind(bind)
    return socket


def serve(
    bind: str,
    *,
    workers: int = 0,
    limits: Limits | None = None,
    curve: CurveKeys | None = None,
    open_model: ModelOpener | None = None,
    inpainter: InpainterChoice | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the service until ``should_stop()`` is true (checked every 100 ms) or interrupted.

    ``workers=0`` handles requests in this process; ``workers=N`` starts N worker processes
    behind a broker. ``open_model``: each worker (or this process) opens one model with it at
    start and closes it at the end; ``inpainter``: the streams' default (default: ``model``
    with ``open_model``, else ``telea``). ``on_ready`` gets the bound endpoint once clients
    can connect. Raises ``ServiceStartError`` (or the opener's error in-process) when the
    model cannot be opened."""
    limits = limits or Limits()
    if inpainter is None:
        inpainter = "model" if open_model is not None else "telea"
    if inpainter == "model" and open_model is None:
        raise ValueError("inpainter 'model' needs open_model")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    auth: ThreadAuthenticator | None = None
    try:
        if curve is not None:
            auth = ThreadAuthenticator(context)
            auth.start()
            auth.configure_curve(domain="*", location=str(curve.authorized_clients_dir))
        frontend = _frontend(context, bind, limits, curve)
        endpoint = frontend.getsockopt_string(zmq.LAST_ENDPOINT)
        if workers <= 0:
            model = open_model() if open_model is not None else None
            try:
                service = FrameService(
                    limits,
                    model=model,
                    default_inpainter=inpainter,
                    segmenter=_preload_segmenter(),
                )
                _serve_inprocess(frontend, service, should_stop, on_ready, endpoint)
            finally:
                if model is not None:
                    model.close()
        else:
            broker = _Broker(
                context, frontend, workers, _WorkerSetup(limits, inpainter, open_model)
            )
            broker.run(should_stop, on_ready, endpoint)
    finally:
        if auth is not None:
            auth.stop()
        context.destroy(linger=0)


def _serve_inprocess(
    frontend: zmq.Socket[bytes],
    service: FrameService,
    should_stop: Callable[[], bool],
    on_ready: Callable[[str], None] | None,
    endpoint: str,
) -> None:
    poller = zmq.Poller()
    poller.register(frontend, zmq.POLLIN)
    if on_ready is not None:
        on_ready(endpoint)
    last_sweep = time.monotonic()
    while not should_stop():
        if poller.poll(100):
            parts = frontend.recv_multipart()
            client, message = parts[0], parts[1:]
            frontend.send_multipart([client, *service.handle(client, message)])
        if time.monotonic() - last_sweep > 1.0:
            service.expire_idle()
            last_sweep = time.monotonic()


@dataclass(frozen=True)
class _WorkerSetup:
    """What every worker process is started with (pickled into it)."""

    limits: Limits
    inpainter: InpainterChoice
    open_model: ModelOpener | None


def _preload_segmenter() -> Predictor | None:
    """The occlusion segmenter, loaded before the first stream asks for it (``region:
    detect`` is the default, and an ``open`` should not stall on a load); None when it
    cannot be loaded: detect streams then get the load error as a ``bad_option``."""
    try:
        return load_predictor(MaskDetectOptions())
    except AvstreamError as exc:
        log.warning("occlusion segmenter unavailable: %s", exc)
        return None


def _worker_main(backend: str, identity: bytes, setup: _WorkerSetup) -> None:
    """A worker process: one ``FrameService`` (and one model, opened here once and shared by
    all its streams) behind a DEALER connected to the broker."""
    import cv2

    cv2.setNumThreads(1)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.IDENTITY, identity)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(backend)
    model: ModelInpainter | None = None
    try:
        if setup.open_model is not None:
            try:
                model = setup.open_model()
            except Exception as exc:  # reported to the broker, which stops the service
                socket.send_multipart([b"FAILED", str(exc).encode("utf-8", "replace")])
                # LINGER 0 would drop the report when the context is destroyed below.
                socket.close(linger=5000)
                return
        segmenter = _preload_segmenter()
        socket.send_multipart([b"READY"])
        service = FrameService(
            setup.limits, model=model, default_inpainter=setup.inpainter, segmenter=segmenter
        )
        _worker_loop(socket, service)
    except KeyboardInterrupt:
        return
    finally:
        if model is not None:
            model.close()
        context.destroy(linger=0)


def _worker_loop(socket: zmq.Socket[bytes], service: FrameService) -> None:
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    while True:
        if poller.poll(1000):
            parts = socket.recv_multipart()
            if parts == [b"STOP"]:
                return
            client, message = parts[0], parts[1:]
            socket.send_multipart([client, *service.handle(client, message)])
        service.expire_idle()


@dataclass
class _WorkerState:
    process: multiprocessing.process.BaseProcess
    ready: bool = False
    in_flight: deque[tuple[bytes, bytes]] = field(default_factory=deque)
    """(client, request header) of requests sent and not yet answered, in order."""


class _Broker:
    """ROUTER frontend for clients, ROUTER backend for workers, streams pinned to workers."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        frontend: zmq.Socket[bytes],
        workers: int,
        setup: _WorkerSetup,
    ) -> None:
        self._frontend = frontend
        self._setup = setup
        self._backend = context.socket(zmq.ROUTER)
        self._backend.setsockopt(zmq.LINGER, 0)
        self._backend_endpoint = f"ipc:///tmp/avstream-{uuid.uuid4().hex}.sock"
        self._backend.bind(self._backend_endpoint)
        self._mp = multiprocessing.get_context("spawn")
        self._workers: dict[bytes, _WorkerState] = {}
        self._routes: dict[tuple[bytes, str], bytes] = {}
        self._next = 0
        self.restarts = 0
        self.worker_lost_replies = 0
        self.faces = Counter[str]()
        """Faces in the workers' ``restored`` replies: all, covered (restored), passed."""
        for _ in range(workers):
            self._spawn()

    def _spawn(self) -> None:
        identity = f"w{self._next}".encode()
        self._next += 1
        process = self._mp.Process(
            target=_worker_main,
            args=(self._backend_endpoint, identity, self._setup),
            daemon=True,
        )
        process.start()
        self._workers[identity] = _WorkerState(process=process)

    def run(
        self,
        should_stop: Callable[[], bool],
        on_ready: Callable[[str], None] | None,
        endpoint: str,
    ) -> None:
        poller = zmq.Poller()
        poller.register(self._frontend, zmq.POLLIN)
        poller.register(self._backend, zmq.POLLIN)
        announced = False
        try:
            while not should_stop():
                events = dict(poller.poll(100))
                if self._backend in events:
                    self._from_worker(self._backend.recv_multipart())
                if self._frontend in events:
                    parts = self._frontend.recv_multipart()
                    self._from_client(parts[0], parts[1:])
                self._reap()
                if (
                    not announced
                    and on_ready is not None
                    and any(w.ready for w in self._workers.values())
                ):
                    on_ready(endpoint)
                    announced = True
        finally:
            self._stop_workers()

    def _from_worker(self, parts: list[bytes]) -> None:
        identity, rest = parts[0], parts[1:]
        if rest[:1] == [b"FAILED"]:
            # Checked before the lookup: ``_reap`` may already have replaced the worker, which
            # exits right after sending this. Its replacement would fail the same way.
            reason = b"".join(rest[1:]).decode("utf-8", "replace")
            raise ServiceStartError(f"worker {identity.decode()} could not start: {reason}")
        worker = self._workers.get(identity)
        if worker is None:
            return
        if rest == [b"READY"]:
            worker.ready = True
            return
        if worker.in_flight:
            worker.in_flight.popleft()
        self._count_faces(rest)
        self._frontend.send_multipart(rest)

    def _count_faces(self, rest: list[bytes]) -> None:
        """Tally the faces of a ``restored`` reply ([client, header, payload]) for ``stats``
        (the workers' own counters live in other processes)."""
        if len(rest) != 3 or b'"restored"' not in rest[1][:64]:
            return
        try:
            faces = json.loads(rest[1]).get("faces", [])
        except ValueError:
            return
        restored = sum(1 for face in faces if face.get("restored"))
        self.faces.update(all=len(faces), covered=restored, passed=len(faces) - restored)

    def _from_client(self, client: bytes, message: list[bytes]) -> None:
        kind, stream = peek_routing(message[0]) if message else (None, None)
        if kind == "stats":
            self._frontend.send_multipart([client, self._stats(message[0]), b""])
            return
        key = (client, stream or "")
        identity = self._routes.get(key)
        if identity is None or identity not in self._workers:
            identity = self._least_loaded()
            if identity is None:
                self._frontend.send_multipart(
                    [client, error_reply(ErrorCode.INTERNAL, "no worker is ready", None), b""]
                )
                return
            if kind == "open" and stream:
                self._routes[key] = identity
        if kind == "close":
            self._routes.pop(key, None)
        worker = self._workers[identity]
        worker.in_flight.append((client, message[0] if message else b""))
        self._backend.send_multipart([identity, client, *message])

    def _least_loaded(self) -> bytes | None:
        ready = [(len(w.in_flight), i) for i, w in self._workers.items() if w.ready]
        if not ready:
            return None
        load = {i: 0 for _, i in ready}
        for worker_id in self._routes.values():
            if worker_id in load:
                load[worker_id] += 1
        return min(ready, key=lambda item: (load[item[1]], item[0]))[1]

    def _reap(self) -> None:
        for identity, worker in list(self._workers.items()):
            if worker.process.is_alive():
                continue
            log.warning("worker %s died (exit %s); replacing it", identity, worker.process.exitcode)
            for client, raw in worker.in_flight:
                request = _header_or_none(raw)
                message = f"worker {identity.decode()} died; open the stream again"
                self._frontend.send_multipart(
                    [client, error_reply(ErrorCode.WORKER_LOST, message, request), b""]
                )
                self.worker_lost_replies += 1
            self._routes = {k: v for k, v in self._routes.items() if v != identity}
            del self._workers[identity]
            self.restarts += 1
            self._spawn()

    def _stats(self, raw: bytes) -> bytes:
        return reply(
            "stats",
            _header_or_none(raw),
            workers={i.decode(): w.process.pid for i, w in self._workers.items()},
            streams=len(self._routes),
            in_flight=sum(len(w.in_flight) for w in self._workers.values()),
            worker_restarts=self.restarts,
            worker_lost_replies=self.worker_lost_replies,
            faces=self.faces["all"],
            faces_covered=self.faces["covered"],
            faces_passed=self.faces["passed"],
            inpainter=self._setup.inpainter,
        )

    def _stop_workers(self) -> None:
        for identity, worker in self._workers.items():
            if worker.process.is_alive():
                self._backend.send_multipart([identity, b"STOP"])
        deadline = time.monotonic() + 2.0
        for worker in self._workers.values():
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(1.0)
        Path(self._backend_endpoint.removeprefix("ipc://")).unlink(missing_ok=True)


def _header_or_none(raw: bytes) -> dict[str, Any] | None:
    try:
        return parse_header(raw, Limits())
    except ProtocolError:
        return None
