"""The avstream frame-service wire protocol (version 1): message parsing and building.

Every message is two ZeroMQ frames, ``[header, payload]``: a UTF-8 JSON object and raw
bytes (possibly empty). See docs/protocol.md for the full description. Everything here is
pure: parse functions raise ``ProtocolError`` with a machine-readable code, never anything
else, so the service can answer every bad message with an error reply.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

PROTOCOL_VERSION = 1


class ErrorCode(StrEnum):
    """Codes of error replies; clients switch on these, the message is for humans."""

    BAD_MESSAGE = "bad_message"
    """Not two frames, header not a JSON object, or a field of the wrong type."""
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_STREAM = "unknown_stream"
    """No open stream of that id for this client (never opened, closed, or expired)."""
    STREAM_EXISTS = "stream_exists"
    TOO_MANY_STREAMS = "too_many_streams"
    TOO_LARGE = "too_large"
    """A header, payload or claimed image size beyond the service's limits."""
    BAD_PAYLOAD = "bad_payload"
    """The payload does not match the header (size, shape, undecodable JPEG)."""
    BAD_OPTION = "bad_option"
    WORKER_LOST = "worker_lost"
    """The worker holding the request died; the stream must be opened again."""
    INTERNAL = "internal"


class ProtocolError(Exception):
    """A message the service must refuse, with the code to send back."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Limits:
    """Hard limits that bound the service's memory and work per message and per client.

    ``max_frame_bytes``: largest payload (a 4K BGR frame is 24.9 MB); ``max_pixels``: largest
    claimed image (checked before anything is allocated or decoded); ``max_streams``: open
    streams over all clients; ``idle_timeout_s``: a stream with no message for this long is
    closed and its memory freed."""

    max_header_bytes: int = 16 * 1024
    max_frame_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 3840 * 2160
    max_audio_samples: int = 16_000 * 10
    max_streams: int = 64
    idle_timeout_s: float = 60.0

    @property
    def max_message_bytes(self) -> int:
        """Largest whole message; ZeroMQ drops peers that send more (ZMQ_MAXMSGSIZE)."""
        return self.max_frame_bytes + self.max_header_bytes


MESSAGE_TYPES = frozenset({"open", "frame", "audio", "close", "stats"})


def parse_header(raw: bytes, limits: Limits) -> dict[str, Any]:
    """Decode and check the common fields of a request header."""
    if len(raw) > limits.max_header_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"header over {limits.max_header_bytes} bytes")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "header must be a JSON object")
    version = header.get("v")
    if isinstance(version, bool) or version != PROTOCOL_VERSION:  # JSON true == 1 in Python
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {version!r} not supported; this service speaks {PROTOCOL_VERSION}",
        )
    kind = header.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}")
    if kind != "stats":
        stream = header.get("stream")
        if not isinstance(stream, str) or not 0 < len(stream) <= 128:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "'stream' must be a string of 1-128 chars")
    seq = header.get("seq", 0)
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "'seq' must be an integer")
    return header


def int_field(header: dict[str, Any], name: str, low: int, high: int) -> int:
    """An integer field within [low, high]."""
    value = header.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"'{name}' must be an integer in {low}..{high}")
    return value


def decode_image(header: dict[str, Any], payload: bytes, limits: Limits) -> npt.NDArray[np.uint8]:
    """The BGR uint8 image a ``frame`` message carries (raw pixels or JPEG)."""
    if len(payload) > limits.max_frame_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"payload over {limits.max_frame_bytes} bytes")
    encoding = header.get("encoding", "raw")
    if encoding == "raw":
        shape = header.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
        ):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "'shape' must be [height, width, 3]")
        height, width, channels = shape
        if header.get("dtype", "uint8") != "uint8" or channels != 3:
            raise ProtocolError(ErrorCode.BAD_PAYLOAD, "raw frames must be uint8 BGR, 3 channels")
        _check_size(height, width, limits)
        if len(payload) != height * width * 3:
            raise ProtocolError(
                ErrorCode.BAD_PAYLOAD,
                f"payload has {len(payload)} bytes; shape {shape} needs {height * width * 3}",
            )
        return np.frombuffer(payload, dtype=np.uint8).reshape(height, width, 3)
    if encoding == "jpeg":
        size = jpeg_size(payload)
        if size is None:
            raise ProtocolError(ErrorCode.BAD_PAYLOAD, "payload is not a baseline/progressive JPEG")
        _check_size(size[0], size[1], limits)
        image = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ProtocolError(ErrorCode.BAD_PAYLOAD, "JPEG could not be decoded")
        return np.asarray(image, dtype=np.uint8)
    raise ProtocolError(ErrorCode.BAD_MESSAGE, f"unknown encoding {encoding!r} (raw or jpeg)")


def encode_image(image: npt.NDArray[np.uint8], encoding: str, jpeg_quality: int) -> bytes:
    """Payload bytes of a reply image in the request's encoding."""
    if encoding == "jpeg":
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise ProtocolError(ErrorCode.INTERNAL, "JPEG encoding failed")
        return bytes(data)
    return np.ascontiguousarray(image).tobytes()


def decode_audio(header: dict[str, Any], payload: bytes, limits: Limits) -> npt.NDArray[np.float32]:
    """Mono 16 kHz samples of an ``audio`` message as float32 in [-1, 1]."""
    if header.get("sample_rate") != 16_000:
        raise ProtocolError(ErrorCode.BAD_PAYLOAD, "audio must be 16000 Hz mono")
    dtype = header.get("dtype", "float32")
    width = {"float32": 4, "int16": 2}.get(dtype) if isinstance(dtype, str) else None
    if width is None:
        raise ProtocolError(ErrorCode.BAD_PAYLOAD, "audio dtype must be float32 or int16")
    if len(payload) % width or len(payload) // width > limits.max_audio_samples:
        raise ProtocolError(
            ErrorCode.BAD_PAYLOAD if len(payload) % width else ErrorCode.TOO_LARGE,
            f"audio payload of {len(payload)} bytes is not a whole number of samples "
            f"or over {limits.max_audio_samples} samples",
        )
    if dtype == "int16":
        return (np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0).copy()
    samples = np.frombuffer(payload, dtype="<f4").astype(np.float32)
    if not np.isfinite(samples).all():
        raise ProtocolError(ErrorCode.BAD_PAYLOAD, "audio samples must be finite")
    return np.clip(samples, -1.0, 1.0)


def pts_seconds(header: dict[str, Any]) -> float | None:
    """The frame's presentation time in seconds (``time_s``), when the client gives it."""
    value = header.get("time_s")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "'time_s' must be a finite number")
    return float(value)


def _check_size(height: int, width: int, limits: Limits) -> None:
    if height < 1 or width < 1:
        raise ProtocolError(ErrorCode.BAD_PAYLOAD, f"image size {width}x{height} is empty")
    if height * width > limits.max_pixels:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"image {width}x{height} over {limits.max_pixels} pixels"
        )


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's start-of-frame marker, without decoding anything.

    Lets the service refuse a small file that claims a gigapixel image before OpenCV
    allocates it."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            return None
        if marker in (0xC0, 0xC1, 0xC2) and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return (height, width)
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        pos += 2 + length
    return None


def reply(kind: str, request: dict[str, Any] | None, **fields: Any) -> bytes:
    """A reply header echoing the request's stream and seq."""
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": kind}
    if request is not None:
        for key in ("stream", "seq"):
            if key in request:
                header[key] = request[key]
    header.update(fields)
    return json.dumps(header, separators=(",", ":")).encode("utf-8")


def error_reply(code: ErrorCode, message: str, request: dict[str, Any] | None) -> bytes:
    """An error reply header."""
    return reply("error", request, code=str(code), message=message)


def peek_routing(raw: bytes) -> tuple[str | None, str | None]:
    """(type, stream) of a header for routing, or Nones when it does not parse; the worker
    that gets it will send the proper error."""
    try:
        header = json.loads(raw.decode("utf-8")) if len(raw) <= 16 * 1024 else None
    except (UnicodeDecodeError, ValueError):
        return (None, None)
    if not isinstance(header, dict):
        return (None, None)
    kind, stream = header.get("type"), header.get("stream")
    return (
        kind if isinstance(kind, str) else None,
        stream if isinstance(stream, str) else None,
    )
