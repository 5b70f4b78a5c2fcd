"""The ZeroMQ frame service: protocol core, bad input, CURVE, brokered workers, load."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from helpers import video_frames
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.client import ClientCurve, FrameClient, ServiceError
from stream.protocol import Limits, jpeg_size
from stream.service import CurveKeys, FrameService, generate_keys, is_loopback, serve
from stream.testclip import ClipTruth


def _header(**fields: Any) -> bytes:
    return json.dumps({"v": 1, "seq": 1, **fields}).encode()


def _frame_msg(image: np.ndarray, stream: str = "s") -> list[bytes]:
    header = _header(type="frame", stream=stream, encoding="raw", shape=list(image.shape))
    return [header, image.tobytes()]


def _reply(parts: list[bytes]) -> dict[str, Any]:
    assert len(parts) == 2
    value: dict[str, Any] = json.loads(parts[0])
    return value


@pytest.fixture(scope="module")
def frames(clip: ClipTruth) -> list[np.ndarray]:
    images, _ = video_frames(clip.path)
    return images[:12]


def _opened(service: FrameService, client: bytes = b"c1", stream: str = "s") -> None:
    reply = _reply(service.handle(client, [_header(type="open", stream=stream), b""]))
    assert reply["type"] == "opened", reply


def test_round_trip_restores_the_face_and_keeps_the_rest(
    frames: list[np.ndarray], clip: ClipTruth
) -> None:
    service = FrameService()
    _opened(service)
    for i, image in enumerate(frames):
        parts = service.handle(b"c1", _frame_msg(image))
        reply = _reply(parts)
        assert reply["type"] == "restored" and reply["seq"] == 1
        out = np.frombuffer(parts[1], np.uint8).reshape(image.shape)
        assert [f["track_id"] for f in reply["faces"]] == [1]
        assert set(reply["timings_ms"]) >= {"decode", "track_align", "inpaint_composite", "total"}
        changed = np.any(out != image, axis=-1)
        x, y, w, h = clip.face_boxes[i]
        assert changed[int(y) : int(y + h), int(x) : int(x + w)].any()
        outside = np.ones_like(changed)
        outside[
            max(0, int(y - h * 0.3)) : int(y + h * 1.3), max(0, int(x - w * 0.3)) : int(x + w * 1.3)
        ] = False
        assert not changed[outside].any()  # bit-exact away from the face
    closed = _reply(service.handle(b"c1", [_header(type="close", stream="s"), b""]))
    assert closed == {"v": 1, "type": "closed", "stream": "s", "seq": 1, "frames": len(frames)}
    assert service.open_streams == 0


def test_jpeg_frames(frames: list[np.ndarray]) -> None:
    service = FrameService()
    _opened(service)
    ok, data = cv2.imencode(".jpg", frames[0])
    assert ok and jpeg_size(bytes(data)) == frames[0].shape[:2]
    parts = service.handle(b"c1", [_header(type="frame", stream="s", encoding="jpeg"), bytes(data)])
    assert _reply(parts)["encoding"] == "jpeg"
    out = cv2.imdecode(np.frombuffer(parts[1], np.uint8), cv2.IMREAD_COLOR)
    assert out.shape == frames[0].shape


def _huge_jpeg() -> bytes:
    ok, data = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    assert ok
    raw = bytearray(bytes(data))
    pos = raw.index(b"\xff\xc0")
    raw[pos + 5 : pos + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
    return bytes(raw)


BAD_MESSAGES: list[tuple[str, list[bytes], str]] = [
    ("one frame", [b"{}"], "bad_message"),
    ("three frames", [b"{}", b"", b""], "bad_message"),
    ("not json", [b"\xff\xfe garbage", b""], "bad_message"),
    ("json list", [b"[1, 2]", b""], "bad_message"),
    ("old version", [json.dumps({"v": 0, "type": "stats"}).encode(), b""], "unsupported_version"),
    ("version true", [b'{"v": true, "type": "stats"}', b""], "unsupported_version"),
    ("type list", [b'{"v": 1, "type": []}', b""], "unknown_type"),
    ("unknown type", [_header(type="explode", stream="s"), b""], "unknown_type"),
    ("no stream", [_header(type="frame"), b""], "bad_message"),
    ("unknown stream", [_header(type="frame", stream="nope"), b""], "unknown_stream"),
    ("bad seq", [json.dumps({"v": 1, "type": "stats", "seq": "x"}).encode(), b""], "bad_message"),
    (
        "huge claimed size",
        [_header(type="frame", stream="s", encoding="raw", shape=[100000, 100000, 3]), b"123"],
        "too_large",
    ),
    (
        "short payload",
        [_header(type="frame", stream="s", encoding="raw", shape=[10, 10, 3]), b"\0" * 299],
        "bad_payload",
    ),
    (
        "four channels",
        [_header(type="frame", stream="s", encoding="raw", shape=[10, 10, 4]), b"\0" * 400],
        "bad_payload",
    ),
    ("bad shape", [_header(type="frame", stream="s", shape="10x10"), b""], "bad_message"),
    (
        "garbage jpeg",
        [_header(type="frame", stream="s", encoding="jpeg"), b"\xff\xd8xx"],
        "bad_payload",
    ),
    ("jpeg bomb", [_header(type="frame", stream="s", encoding="jpeg"), _huge_jpeg()], "too_large"),
    ("bad encoding", [_header(type="frame", stream="s", encoding="png"), b""], "bad_message"),
    ("audio rate", [_header(type="audio", stream="s", sample_rate=8000), b"\0" * 8], "bad_payload"),
    (
        "audio bytes",
        [_header(type="audio", stream="s", sample_rate=16000), b"\0" * 7],
        "bad_payload",
    ),
    (
        "audio nan",
        [_header(type="audio", stream="s", sample_rate=16000), np.full(4, np.nan, "<f4").tobytes()],
        "bad_payload",
    ),
    ("reopen", [_header(type="open", stream="s"), b""], "stream_exists"),
    ("bad option", [_header(type="open", stream="t", options={"warp": 9}), b""], "bad_option"),
    (
        "bad box",
        [_header(type="open", stream="t", options={"mask_box": [0, 0, 999, 5]}), b""],
        "bad_option",
    ),
    ("options not object", [_header(type="open", stream="t", options=[1]), b""], "bad_option"),
]


@pytest.mark.parametrize(
    ("name", "message", "code"), BAD_MESSAGES, ids=[m[0] for m in BAD_MESSAGES]
)
def test_bad_messages_get_error_replies(
    frames: list[np.ndarray], name: str, message: list[bytes], code: str
) -> None:
    service = FrameService(Limits(max_pixels=4000 * 4000))
    _opened(service)
    reply = _reply(service.handle(b"c1", message))
    assert reply["type"] == "error" and reply["code"] == code, reply
    assert reply["message"]
    # the stream still works afterwards
    assert _reply(service.handle(b"c1", _frame_msg(frames[0])))["type"] == "restored"


def test_streams_are_isolated_per_client(frames: list[np.ndarray]) -> None:
    service = FrameService()
    _opened(service, b"alice", "cam")
    _opened(service, b"bob", "cam")  # same stream name, different client: a different stream
    assert _reply(service.handle(b"mallory", _frame_msg(frames[0], "cam")))["code"] == (
        "unknown_stream"
    )
    bad = [_header(type="frame", stream="cam", encoding="raw", shape=[10, 10, 3]), b"x"]
    assert _reply(service.handle(b"alice", bad))["type"] == "error"
    assert _reply(service.handle(b"bob", _frame_msg(frames[0], "cam")))["type"] == "restored"
    assert _reply(service.handle(b"alice", _frame_msg(frames[0], "cam")))["type"] == "restored"


def test_stream_limit_and_idle_expiry() -> None:
    now = [0.0]
    service = FrameService(Limits(max_streams=2, idle_timeout_s=10.0), clock=lambda: now[0])
    _opened(service, stream="a")
    _opened(service, stream="b")
    reply = _reply(service.handle(b"c1", [_header(type="open", stream="c"), b""]))
    assert reply["code"] == "too_many_streams"
    now[0] = 11.0
    _opened(service, stream="c")  # opening sweeps the idle ones first
    assert service.open_streams == 1
    assert service.stats.expired_streams == 2
    stats = _reply(service.handle(b"c1", [_header(type="stats"), b""]))
    assert stats["streams"] == 1 and stats["expired_streams"] == 2


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.one_of(
        st.binary(max_size=200),
        st.dictionaries(
            st.sampled_from(
                [
                    "v",
                    "type",
                    "stream",
                    "seq",
                    "encoding",
                    "shape",
                    "dtype",
                    "sample_rate",
                    "options",
                    "time_s",
                ]
            ),
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(-5, 5_000_000),
                st.floats(),
                st.text(max_size=8),
                st.lists(st.integers(-3, 70_000), max_size=4),
                st.sampled_from(
                    ["frame", "open", "audio", "close", "stats", "raw", "jpeg", "s", "uint8"]
                ),
            ),
        ).map(lambda d: json.dumps(d).encode()),
    ),
    payload=st.binary(max_size=300),
)
def test_random_messages_never_break_the_service(header: bytes, payload: bytes) -> None:
    service = FrameService(Limits(max_pixels=64 * 64, max_streams=4))
    _opened(service, stream="s")
    parts = service.handle(b"c1", [header, payload])
    reply = _reply(parts)
    assert reply["type"] in {"error", "opened", "closed", "audio_ack", "stats", "restored"}
    if reply["type"] == "error":
        assert reply["code"] != "internal", reply


# --- over sockets ----------------------------------------------------------------------------


class _Server:
    def __init__(self, **kwargs: Any) -> None:
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.endpoint = ""
        self.error: BaseException | None = None

        def ready(endpoint: str) -> None:
            self.endpoint = endpoint
            self._ready.set()

        def run() -> None:
            try:
                serve("tcp://127.0.0.1:*", should_stop=self._stop.is_set, on_ready=ready, **kwargs)
            except BaseException as exc:
                self.error = exc
                self._ready.set()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert self._ready.wait(60), "service did not start"
        assert self.error is None, self.error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture
def inprocess_server() -> Iterator[_Server]:
    server = _Server()
    yield server
    server.stop()


def test_client_round_trip_over_tcp(inprocess_server: _Server, frames: list[np.ndarray]) -> None:
    with FrameClient(inprocess_server.endpoint, timeout_s=10) as client:
        client.open_stream("cam", inpainter="ns", mask_box=[32, 128, 192, 128])
        result = client.restore("cam", frames[0], time_s=0.0)
        assert result.image.shape == frames[0].shape and result.faces
        assert not np.array_equal(result.image, frames[0])
        client.send_audio("cam", np.zeros(1600, np.float32), time_s=0.0)
        with pytest.raises(ServiceError, match="unknown_stream"):
            client.restore("other", frames[0])
        assert client.stats()["frames"] == 1


def test_unknown_stream_is_reopened_after_expiry(frames: list[np.ndarray]) -> None:
    server = _Server(limits=Limits(idle_timeout_s=0.2))
    try:
        with FrameClient(server.endpoint) as client:
            client.open_stream("cam")
            client.restore("cam", frames[0])
            time.sleep(1.5)  # the service sweeps idle streams once a second
            assert client.restore("cam", frames[1]).image.shape == frames[1].shape
    finally:
        server.stop()


def test_loopback_detection() -> None:
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("ipc:///tmp/x")
    assert is_loopback("tcp://[::1]:5") and is_loopback("tcp://localhost:5")
    assert not is_loopback("tcp://0.0.0.0:5555") and not is_loopback("tcp://*:5555")


def test_curve_refuses_unauthenticated_clients(tmp_path: Path, frames: list[np.ndarray]) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys, ("client", "stranger"))
    (keys / "authorized_clients" / "stranger.key").unlink()  # generated but not authorised
    server = _Server(curve=CurveKeys.from_dir(keys))
    try:
        good = ClientCurve(keys / "server.key", keys / "client.key_secret")
        with FrameClient(server.endpoint, curve=good) as client:
            client.open_stream("cam")
            assert client.restore("cam", frames[0]).image.shape == frames[0].shape
        for curve in (None, ClientCurve(keys / "server.key", keys / "stranger.key_secret")):
            with (
                FrameClient(server.endpoint, timeout_s=1.0, curve=curve) as stranger,
                pytest.raises(TimeoutError),
            ):
                stranger.stats()
    finally:
        server.stop()


def _load(endpoint: str, name: str, n: int, image: np.ndarray, out: dict[str, Any]) -> None:
    latencies, lost = [], 0
    with FrameClient(endpoint, timeout_s=30) as client:
        client.open_stream(name)
        for i in range(n):
            start = time.perf_counter()
            try:
                result = client.restore(name, image, time_s=i / 25)
                assert result.image.shape == image.shape
            except ServiceError as exc:
                assert exc.code == "worker_lost", exc
                lost += 1
                client.open_stream(name)
                continue
            latencies.append(time.perf_counter() - start)
    out[name] = {"latencies": latencies, "lost": lost}


def test_load_four_clients_with_brokered_workers(frames: list[np.ndarray]) -> None:
    # A small frame without a face: this measures the service's plumbing, not inpainting.
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    server = _Server(workers=2)
    try:
        results: dict[str, Any] = {}
        threads = [
            threading.Thread(target=_load, args=(server.endpoint, f"c{i}", 500, image, results))
            for i in range(4)
        ]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        wall_s = time.perf_counter() - start
        assert set(results) == {"c0", "c1", "c2", "c3"}
        replies = [len(r["latencies"]) for r in results.values()]
        assert replies == [500] * 4  # zero lost replies
        all_ms = np.array([v for r in results.values() for v in r["latencies"]]) * 1000
        print(
            f"\nload: 2000 frames in {wall_s:.2f} s ({2000 / wall_s:.0f} fps), "
            f"p50 {np.percentile(all_ms, 50):.1f} ms, p95 {np.percentile(all_ms, 95):.1f} ms"
        )
    finally:
        server.stop()


def test_a_killed_worker_costs_only_its_in_flight_requests(frames: list[np.ndarray]) -> None:
    image = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    server = _Server(workers=2)
    try:
        with FrameClient(server.endpoint) as probe:
            victim = next(iter(probe.stats()["workers"].values()))
        results: dict[str, Any] = {}
        threads = [
            threading.Thread(target=_load, args=(server.endpoint, f"k{i}", 300, image, results))
            for i in range(4)
        ]
        for t in threads:
            t.start()
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        for t in threads:
            t.join(300)
        lost = sum(r["lost"] for r in results.values())
        answered = sum(len(r["latencies"]) for r in results.values())
        assert 0 <= lost <= 4  # at most one in-flight request per client
        assert answered + lost == 1200
        # The broker notices the death on its next loop turn; give it a moment.
        deadline = time.monotonic() + 10
        with FrameClient(server.endpoint) as probe:
            stats = probe.stats()
            while stats["worker_restarts"] == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
                stats = probe.stats()
        assert stats["worker_restarts"] == 1 and len(stats["workers"]) == 2
        assert victim not in stats["workers"].values()
    finally:
        server.stop()


def test_serve_command_and_the_example_client(make_clip: Any, tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from helpers import audio_packets, video_times

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import zmq_restore

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    command = [sys.executable, "-m", "stream.cli", "serve", "--bind", endpoint, "--workers", "1"]
    # telea: the OpenCV path, with no model to load (test_service_model.py runs the model).
    command += ["--inpainter", "telea"]
    server = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert "listening on" in server.stdout.readline()
        truth: ClipTruth = make_clip("zmq.mp4", duration_s=1.0)
        out = tmp_path / "restored.mp4"
        assert zmq_restore.main([str(truth.path), "-o", str(out), "--endpoint", endpoint]) == 0
        assert video_times(out) == pytest.approx(video_times(truth.path), abs=1e-6)
        assert [p for _, p in audio_packets(out)] == [p for _, p in audio_packets(truth.path)]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    assert server.returncode == 0
