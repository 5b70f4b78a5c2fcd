"""Shared fixtures: generated clips (made once per session) and the real-data folder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

from avinpaint.checkpoint import shipped_path
from stream.testclip import (
    ClipSpec,
    ClipTruth,
    MultiClipSpec,
    MultiClipTruth,
    make_multi_face_clip,
    make_talking_head_clip,
)

# Shared, noisy cores: one thread keeps the suite fast and its timings meaningful.
os.environ.setdefault("OMP_NUM_THREADS", "1")
cv2.setNumThreads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

_SESSION = pytest.StashKey[pytest.Session]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SESSION] = session


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process with pytest's exit status, skipping the interpreter's teardown.

    Why: CI on 2026-12-06 saw all 792 tests pass and then the process die of SIGSEGV (exit
    139) while Python tore itself down, with onnxruntime, torch, Ray, pyzmq, PyAV and OpenCV
    loaded in one process, their threads and native destructors running in no fixed order.
    Nothing a test checks happens after this hook (reports are written and the summary is
    printed before it); the CLI's own exits are tested in subprocesses, which finalize
    normally. ``AVSTREAM_TEST_FINALIZE=1`` keeps the teardown, to look for the crash."""
    session = config.stash.get(_SESSION, None)
    if session is None or os.environ.get("AVSTREAM_TEST_FINALIZE") == "1":
        return
    config.get_terminal_writer().flush()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    os._exit(int(session.exitstatus))


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> ClipTruth:
    """A 2 s 640x480 talking-head clip with an occluder and speech (H.264 + AAC)."""
    path = tmp_path_factory.mktemp("clips") / "talking.mp4"
    return make_talking_head_clip(path, ClipSpec(duration_s=2.0, crf=12))


@pytest.fixture(scope="session")
def make_clip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Factory for variant clips: ``make_clip(name, **ClipSpec fields)``."""
    root = tmp_path_factory.mktemp("variants")

    def make(name: str, **fields: object) -> ClipTruth:
        return make_talking_head_clip(root / name, ClipSpec(**fields))  # type: ignore[arg-type]

    yield make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests using it are marked ``realdata`` and skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


SHARED_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """``../shared/fixtures`` (numeric parity fixtures); tests skip where it is absent."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip("../shared/fixtures is not present")
    return SHARED_FIXTURES


@pytest.fixture(scope="session")
def lite_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An engine cache holding the shipped ``lite`` model's ONNX graphs, exported in a
    subprocess: torch.onnx export aborts in a process that has loaded GStreamer."""
    if not shipped_path("lite").is_file():
        pytest.skip("no shipped lite weights")
    cache = tmp_path_factory.mktemp("engines")
    command = [sys.executable, "-m", "stream.cli", "engines", "build", "--onnx-only"]
    command += ["--model", "lite", "--engine-cache", str(cache)]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return cache


@pytest.fixture(scope="session")
def multi_clip(tmp_path_factory: pytest.TempPathFactory) -> MultiClipTruth:
    """Two people crossing, 2.4 s 640x360 25 fps, no audio: person 0 (near) wears the
    occluder, person 1 (far, mirrored, another skin tone) does not."""
    path = tmp_path_factory.mktemp("multi") / "people.mp4"
    return make_multi_face_clip(path, MultiClipSpec(crf=12))


@pytest.fixture(scope="session")
def make_multi_clip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Factory for multi-face variants: ``make_multi_clip(name, **MultiClipSpec fields)``."""
    root = tmp_path_factory.mktemp("multi-variants")

    def make(name: str, **fields: object) -> MultiClipTruth:
        return make_multi_face_clip(root / name, MultiClipSpec(**fields))  # type: ignore[arg-type]

    yield make
