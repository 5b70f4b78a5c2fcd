"""The engine cache: key digests, one build across real processes, atomic entries, locks,
list and clean. Uses a fake builder (no TensorRT), and imports no torch so the spawned
processes start quickly."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from engines.cache import (
    BatchProfile,
    CacheLockTimeoutError,
    Create,
    EngineCache,
    EngineKey,
    atomic_write_bytes,
    file_lock,
    key_digest,
)

PAYLOAD = b"engine bytes " * 1000


def _writes(content: bytes) -> Create:
    def create(directory: Path) -> None:
        (directory / "engine.plan").write_bytes(content)

    return create


def _key(**changes: object) -> EngineKey:
    key = EngineKey(
        graph="inpaint",
        onnx_sha256="ab" * 32,
        tensorrt_version="10.3.0",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability=(9, 0),
        precision="fp16",
        profile=BatchProfile(1, 1, 8),
    )
    return dataclasses.replace(key, **changes)  # type: ignore[arg-type]


def _slow_create(log_path: Path, delay_s: float) -> Create:
    def create(directory: Path) -> Mapping[str, str]:
        # O_APPEND: concurrent builders would each add a line, never overwrite one.
        with log_path.open("a") as log:
            log.write(f"{os.getpid()}\n")
        with (directory / "engine.plan").open("wb") as f:
            for i in range(0, len(PAYLOAD), 1000):  # written slowly, in pieces
                f.write(PAYLOAD[i : i + 1000])
                f.flush()
                time.sleep(delay_s / 13)
        return {"graph": "inpaint"}

    return create


def build_in_process(root: str, log: str, start: float, result: str) -> None:
    """Child process: wait for the common start time, then get-or-build the same key."""
    time.sleep(max(0.0, start - time.time()))
    entry = EngineCache(Path(root)).get_or_create(_key(), _slow_create(Path(log), 0.5))
    data = (entry.path / "engine.plan").read_bytes()
    Path(result).write_text(json.dumps({"path": str(entry.path), "ok": data == PAYLOAD}))


def test_two_processes_build_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    log = tmp_path / "builds.log"
    start = time.time() + 1.5  # both children are up by then (spawn takes ~0.2 s here)
    results = [tmp_path / f"result{i}.json" for i in range(2)]
    workers = [
        context.Process(
            target=build_in_process, args=(str(tmp_path / "cache"), str(log), start, str(r))
        )
        for r in results
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert len(log.read_text().splitlines()) == 1  # exactly one build
    outcomes = [json.loads(r.read_text()) for r in results]
    assert all(o["ok"] for o in outcomes)  # both read the whole engine
    assert outcomes[0]["path"] == outcomes[1]["path"]
    cache = EngineCache(tmp_path / "cache")
    [entry] = cache.entries()
    assert entry.key == _key().describe()
    assert entry.info == {"graph": "inpaint"}
    leftovers = [p.name for p in (tmp_path / "cache" / "tensorrt").iterdir()]
    assert not [n for n in leftovers if n.startswith((".tmp-", ".trash-"))]


def read_while_building(root: str, log: str) -> None:
    """Child process: build slowly."""
    EngineCache(Path(root)).get_or_create(_key(), _slow_create(Path(log), 1.0))


def test_readers_never_see_a_partial_entry(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    root = tmp_path / "cache"
    builder = context.Process(target=read_while_building, args=(str(root), str(tmp_path / "l")))
    builder.start()
    cache = EngineCache(root)
    seen_missing = seen_complete = 0
    deadline = time.monotonic() + 60
    while builder.is_alive() and time.monotonic() < deadline:
        entry = cache.lookup(_key())
        if entry is None:
            seen_missing += 1
        else:
            assert (entry.path / "engine.plan").read_bytes() == PAYLOAD
            seen_complete += 1
        time.sleep(0.01)
    builder.join(timeout=10)
    assert builder.exitcode == 0
    assert seen_missing > 0  # the build was observed in progress
    entry = cache.lookup(_key())
    assert entry is not None and (entry.path / "engine.plan").read_bytes() == PAYLOAD


def test_digest_depends_on_every_field() -> None:
    base = _key()
    changes: list[dict[str, object]] = [
        {"graph": "speaker"},
        {"onnx_sha256": "cd" * 32},
        {"tensorrt_version": "10.4.0"},
        {"gpu_name": "NVIDIA A100-SXM4-40GB"},
        {"compute_capability": (8, 0)},
        {"precision": "fp32"},
        {"profile": BatchProfile(1, 1, 4)},
        {"profile": BatchProfile(1, 2, 8)},
    ]
    digests = {key_digest(base)} | {key_digest(_key(**c)) for c in changes}
    assert len(digests) == len(changes) + 1
    assert key_digest(_key()) == key_digest(base)  # stable
    assert len(key_digest(base)) == 64


def test_key_validation() -> None:
    with pytest.raises(ValueError, match="precision"):
        _key(precision="int8")
    with pytest.raises(ValueError, match="sha256"):
        _key(onnx_sha256="abc")
    with pytest.raises(ValueError, match="min <= opt <= max"):
        BatchProfile(2, 1, 8)
    assert BatchProfile.up_to(8) == BatchProfile(1, 1, 8)


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)

    def broken(directory: Path) -> None:
        (directory / "engine.plan").write_bytes(b"half")
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        cache.get_or_create(_key(), broken)
    assert cache.lookup(_key()) is None
    assert cache.entries() == []
    assert not [p for p in (tmp_path / "tensorrt").iterdir() if p.name.startswith(".tmp-")]
    entry = cache.get_or_create(_key(), _writes(b"ok"))
    assert (entry.path / "engine.plan").read_bytes() == b"ok"


def test_damaged_entry_is_rebuilt(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    entry = cache.get_or_create(_key(), _writes(b"1"))
    (entry.path / "entry.json").write_text("{not json")
    assert cache.lookup(_key()) is None
    rebuilt = cache.get_or_create(_key(), _writes(b"2"))
    assert (rebuilt.path / "engine.plan").read_bytes() == b"2"


def test_lock_times_out_while_another_holder_builds(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path, lock_timeout_s=0.3)
    lock = tmp_path / "tensorrt" / f".{key_digest(_key())}.lock"
    lock.parent.mkdir(parents=True)
    with file_lock(lock, timeout_s=1.0):  # a second open file description: flock conflicts
        began = time.monotonic()
        with pytest.raises(CacheLockTimeoutError, match="another process"):
            cache.get_or_create(_key(), lambda d: None)
        assert time.monotonic() - began >= 0.3


def test_list_and_clean(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    for precision in ("fp16", "fp32"):
        cache.get_or_create(_key(precision=precision), lambda d: {"graph": "inpaint"})
    # Leftovers of a crashed build: a temporary folder whose lock nobody holds.
    crashed = tmp_path / "tensorrt" / f".tmp-{'ef' * 32}-999-abcd"
    crashed.mkdir()
    timing = cache.timing_cache_path("trt10-gpu")
    atomic_write_bytes(timing, b"timing")
    entries = cache.entries()
    assert [e.key["precision"] for e in entries] == ["fp16", "fp32"]
    assert all(e.size_bytes > 0 for e in entries)
    assert cache.entries(["onnx"]) == []
    # An entry being built right now (its lock held) is left alone.
    busy = cache.entry_path(_key(precision="fp32"))
    with file_lock(busy.parent / f".{busy.name}.lock", timeout_s=1.0):
        removed = cache.clean()
    assert crashed in removed and busy not in removed
    assert [e.key["precision"] for e in cache.entries()] == ["fp32"]
    assert timing.read_bytes() == b"timing"  # timing caches survive a plain clean
    removed = cache.clean(shared=True)
    assert cache.entries() == [] and not timing.exists()
    assert not [p for p in (tmp_path / "tensorrt").iterdir()]  # lock files too


def test_atomic_write_bytes_replaces_whole(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]
