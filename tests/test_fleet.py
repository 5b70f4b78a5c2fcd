"""``avstream fleet`` on a real two-node Ray cluster: two generated RTSP cameras, one camera's
process killed and restarted, then a clean stop on SIGTERM with every recording finalised.
Also the fleet file's checks (no Ray needed)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from raycluster import LocalCluster, cluster_env, local_cluster

from stream.errors import UsageError
from stream.fleet import parse_fleet, session_recording
from stream.testclip import ClipSpec, ClipTruth, make_talking_head_clip


def test_fleet_file_defaults_and_overrides() -> None:
    cameras = parse_fleet(
        """
        [defaults]
        inpainter = "telea"
        max_latency_ms = 400
        no-speaker = true

        [[camera]]
        name = "lobby"
        source = "rtsp://10.0.0.5/stream1"
        serve = "rtsp://0.0.0.0:8554/lobby"
        max-latency-ms = 800
        no_speaker = false
        """
    )
    [lobby] = cameras
    assert lobby.name == "lobby"
    assert lobby.argv == (
        "rtsp://10.0.0.5/stream1",
        "--inpainter",
        "telea",
        "--max-latency-ms",
        "800",
        "--serve",
        "rtsp://0.0.0.0:8554/lobby",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[camera]]\nname = "a"', "needs a source"),
        ('[[camera]]\nsource = "x.mp4"', "needs a name"),
        ('[[camera]]\nname = "a"\nsource = "rtsp://h/x"\nserve = "rtsp://h:1/a"\n' * 2, "twice"),
        ('[[camera]]\nname = "a"\nsource = "rtsp://h/x"', "needs an output"),
        (
            '[[camera]]\nname = "a"\nsource = "rtsp://h/x"\nserve = "rtsp://h:1/a"\nbogus = 1',
            "bogus",
        ),
        ('[[camera]]\nname = "a"\nsource = "rtsp://h/x"\nserve = "rtsp://h:1/a"\ncrf = 99', "crf"),
        ("[cameras]\n", "unknown table"),
        ("camera = [", "fleet file"),
    ],
)
def test_fleet_file_errors_name_the_camera(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_fleet(text)


def test_each_session_records_to_its_own_file() -> None:
    import datetime

    first = datetime.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)
    assert session_recording(Path("/r/lobby.mp4"), first) == Path(
        "/r/lobby-20260102T030405000006Z.mp4"
    )


# --- live: real RTSP cameras and a real cluster -----------------------------------------


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory: pytest.TempPathFactory) -> ClipTruth:
    path = tmp_path_factory.mktemp("fleet") / "camera.mp4"
    return make_talking_head_clip(path, ClipSpec(width=320, height=240, duration_s=4.0))


@contextlib.contextmanager
def cameras(clip: Path, count: int) -> Iterator[list[str]]:
    """``count`` RTSP "cameras" playing ``clip`` once per connection at its native rate."""
    from stream.rtsp import GstUnavailableError, RtspServer, file_launch, load_gst

    try:
        load_gst()
    except GstUnavailableError as exc:
        pytest.skip(f"GStreamer RTSP server unavailable: {exc}")
    with contextlib.ExitStack() as stack:
        urls = []
        for _ in range(count):
            server = stack.enter_context(RtspServer(port=0))
            server.add_launch("/camera", file_launch(str(clip)))
            urls.append(server.url("/camera"))
        yield urls


class StatsReader:
    """Collects the JSON stats lines of a running ``avstream fleet --json``."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.reports: list[dict[str, Any]] = []
        self.text: list[str] = []
        self._process = process
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.text.append(line)
            if line.startswith("{"):
                self.reports.append(json.loads(line))

    def camera(self, name: str) -> dict[str, Any] | None:
        if not self.reports:
            return None
        [item] = [c for c in self.reports[-1]["cameras"] if c["name"] == name]
        return dict(item)

    def join(self) -> None:
        self._thread.join(30)


def wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def flowing(reader: StatsReader, name: str, pid: int | None = None) -> bool:
    """The camera's session is up and has put frames out (in a process other than ``pid``)."""
    camera = reader.camera(name)
    if camera is None or camera["state"] != "running" or camera.get("stats") is None:
        return False
    return camera["stats"]["frames_out"] >= 10 and camera["pid"] != pid


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with local_cluster(nodes=2, cpus_per_node=1) as running:
        yield running


@pytest.mark.live
@pytest.mark.slow
def test_fleet_restarts_a_killed_camera_and_stops_cleanly_on_sigterm(
    camera_clip: ClipTruth, cluster: LocalCluster, tmp_path: Path
) -> None:
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    with cameras(camera_clip.path, 2) as urls:
        config = tmp_path / "cameras.toml"
        config.write_text(
            '[defaults]\ninpainter = "telea"\nmax-latency-ms = 1000\nno-speaker = true\n'
            "reconnect-max-s = 1\n"
            + "".join(
                f'\n[[camera]]\nname = "{name}"\nsource = "{url}"\n'
                f'record = "{recordings / name}.mp4"\n'
                for name, url in zip(("north", "south"), urls, strict=True)
            )
        )
        command = [sys.executable, "-m", "stream.cli", "fleet", str(config), "--json"]
        command += ["--address", cluster.address, "--stats-every-s", "1"]
        command += ["--restart-delay-s", "0.5"]
        fleet = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster_env()
        )
        reader = StatsReader(fleet)
        try:
            assert wait_for(lambda: flowing(reader, "north") and flowing(reader, "south"), 90), (
                reader.reports[-1:] if reader.reports else "no stats"
            )
            # One camera per one-CPU node.
            nodes = {reader.camera(n)["node_id"] for n in ("north", "south")}  # type: ignore[index]
            assert len(nodes) == 2
            victim = reader.camera("north")
            assert victim is not None
            os.kill(victim["pid"], signal.SIGKILL)
            assert wait_for(lambda: flowing(reader, "north", pid=victim["pid"]), 90), (
                reader.reports[-1:]
            )
            north = reader.camera("north")
            assert north is not None and north["restarts"] == 1
            south = reader.camera("south")
            assert south is not None and south["restarts"] == 0
            fleet.send_signal(signal.SIGTERM)
            rc = fleet.wait(timeout=60)
        finally:
            if fleet.poll() is None:
                fleet.kill()
                fleet.wait()
        reader.join()
    stderr = fleet.stderr.read() if fleet.stderr else ""
    assert rc == 0, stderr[-3000:]
    output = "".join(reader.text)
    assert "restarts: north 1, south 0" in output
    written = [
        Path(line.split("wrote ", 1)[1].strip()) for line in reader.text if " wrote " in line
    ]
    # Each camera's session at the stop was finalised (the killed process's could not be).
    for name in ("north", "south"):
        mine = [p for p in written if p.name.startswith(f"{name}-")]
        assert mine, (name, output)
        assert all(p.is_file() and decoded_frames(p) > 0 for p in mine)
    assert not [p for p in recordings.iterdir() if ".partial" in p.name]
