"""Python client for the avstream frame service (see docs/protocol.md).

A DEALER socket with a timeout on every request: a restarted or stuck service never hangs
the caller (the REQ/REP trap), and after a timeout the socket is rebuilt so a late reply
cannot be mistaken for the next one. Streams lost to a worker restart or an idle expiry are
re-opened transparently, once, with the options they were opened with."""

from __future__ import annotations

import contextlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq
import zmq.auth

from stream.protocol import PROTOCOL_VERSION, ErrorCode


class ServiceError(Exception):
    """The service answered with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True, eq=False)
class Restored:
    """A restored frame and what the service did to it."""

    image: npt.NDArray[np.uint8]
    faces: list[dict[str, Any]]
    timings_ms: dict[str, float]
    seq: int
    speaker_windows: int = 0
    """Speaker windows the stream's audio has given the model so far (0 before 2 s of speech,
    for OpenCV streams, and from services that predate the field)."""


@dataclass(frozen=True)
class ClientCurve:
    """CURVE keys for the client: the server's public key file and the client's secret one."""

    server_public_file: Path
    client_secret_file: Path


class FrameClient:
    """Send frames to a running ``avstream serve`` and get restored frames back."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 10.0,
        curve: ClientCurve | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._curve = curve
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._socket = self._connect()
        self._seq = itertools.count(1)
        self._streams: dict[str, dict[str, Any]] = {}

    def _connect(self) -> zmq.Socket[bytes]:
        socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        if self._curve is not None:
            server_public, _ = zmq.auth.load_certificate(str(self._curve.server_public_file))
            public, secret = zmq.auth.load_certificate(str(self._curve.client_secret_file))
            assert secret is not None
            socket.curve_serverkey = server_public
            socket.curve_publickey = public
            socket.curve_secretkey = secret
        socket.connect(self.endpoint)
        return socket

    def reconnect(self) -> None:
        """Drop the socket (and any late replies on it) and connect afresh."""
        self._socket.close(linger=0)
        self._socket = self._connect()

    def __enter__(self) -> FrameClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the streams this client opened (best effort) and the socket."""
        for stream in list(self._streams):
            with contextlib.suppress(ServiceError, TimeoutError):
                self.close_stream(stream)
        self._context.destroy(linger=0)

    def request(self, header: dict[str, Any], payload: bytes = b"") -> tuple[dict[str, Any], bytes]:
        """Send one message and wait for its reply; raises ``TimeoutError`` or
        ``ServiceError``."""
        seq = next(self._seq)
        message = {"v": PROTOCOL_VERSION, "seq": seq, **header}
        self._socket.send_multipart([json.dumps(message).encode(), payload], copy=False)
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        deadline_ms = round(self.timeout_s * 1000.0)
        while True:
            if not poller.poll(deadline_ms):
                self.reconnect()
                raise TimeoutError(f"no reply from {self.endpoint} in {self.timeout_s} s")
            parts = self._socket.recv_multipart()
            reply = json.loads(parts[0])
            if reply.get("seq") not in (seq, None):
                continue  # a late reply to a request that already timed out
            if reply.get("type") == "error":
                raise ServiceError(str(reply.get("code")), str(reply.get("message")))
            return reply, parts[1] if len(parts) > 1 else b""

    def open_stream(self, stream: str, **options: Any) -> dict[str, Any]:
        """Open a stream; ``options``: mask_box=[x, y, w, h], inpainter ("model", "telea" or
        "ns"; default: the service's), reuse, detect_every, feather_px, jpeg_quality. The reply
        says which ``inpainter`` the stream got."""
        reply, _ = self.request({"type": "open", "stream": stream, "options": options})
        self._streams[stream] = options
        return reply

    def close_stream(self, stream: str) -> None:
        """Close a stream and free its state in the service."""
        self._streams.pop(stream, None)
        self.request({"type": "close", "stream": stream})

    def restore(
        self,
        stream: str,
        image: npt.NDArray[np.uint8],
        *,
        time_s: float | None = None,
        jpeg: bool = False,
    ) -> Restored:
        """Restore one BGR frame of ``stream``."""
        import cv2

        header: dict[str, Any] = {"type": "frame", "stream": stream}
        if time_s is not None:
            header["time_s"] = time_s
        if jpeg:
            ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                raise ValueError("cannot encode the frame as JPEG")
            header["encoding"] = "jpeg"
            payload = bytes(data)
        else:
            contiguous = np.ascontiguousarray(image, dtype=np.uint8)
            header.update(encoding="raw", shape=list(contiguous.shape), dtype="uint8")
            payload = contiguous.tobytes()
        reply, body = self._stream_request(stream, header, payload)
        return Restored(
            image=_decode_reply_image(reply, body),
            faces=list(reply.get("faces", [])),
            timings_ms=dict(reply.get("timings_ms", {})),
            seq=int(reply["seq"]),
            speaker_windows=int(reply.get("speaker_windows", 0)),
        )

    def send_audio(
        self, stream: str, samples_16k: npt.NDArray[np.float32], *, time_s: float | None = None
    ) -> dict[str, Any]:
        """Send mono 16 kHz float32 audio of the stream, in time order, up to the time of the
        next frame: a ``model`` stream hears the speaker's voice in it. Returns the
        ``audio_ack`` reply (``samples``, ``speech_s``, ``speaker_windows``)."""
        header: dict[str, Any] = {
            "type": "audio",
            "stream": stream,
            "sample_rate": 16_000,
            "dtype": "float32",
        }
        if time_s is not None:
            header["time_s"] = time_s
        payload = np.ascontiguousarray(samples_16k, dtype="<f4").tobytes()
        reply, _ = self._stream_request(stream, header, payload)
        return reply

    def _stream_request(
        self, stream: str, header: dict[str, Any], payload: bytes
    ) -> tuple[dict[str, Any], bytes]:
        """``request``, re-opening the stream once when the service lost it (a re-opened
        stream starts afresh: new tracks, and the neutral speaker until it hears speech)."""
        try:
            return self.request(header, payload)
        except ServiceError as exc:
            lost = exc.code in (ErrorCode.UNKNOWN_STREAM, ErrorCode.WORKER_LOST)
            if not lost or stream not in self._streams:
                raise
            self.open_stream(stream, **self._streams[stream])
            return self.request(header, payload)

    def stats(self) -> dict[str, Any]:
        """The service's counters."""
        reply, _ = self.request({"type": "stats"})
        return reply


def _decode_reply_image(reply: dict[str, Any], body: bytes) -> npt.NDArray[np.uint8]:
    if reply.get("encoding") == "jpeg":
        import cv2

        image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        return np.asarray(image, dtype=np.uint8)
    height, width, channels = reply["shape"]
    return np.frombuffer(body, dtype=np.uint8).reshape(height, width, channels)
