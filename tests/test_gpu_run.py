"""``scripts/gpu_run.sh`` end to end in test mode (CPU, tiny sizes), and its pieces.

The GPU machine comes rarely and briefly: every stage of the run (environment probe, gpu
tests, benchmark, process, fine-tune with its SIGTERM checkpoint, export, split, report)
runs here first, so its first GPU run cannot fail on a path no one ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_training_trainer import make_tiny_dataset

from avinpaint.checkpoint import load, read_metadata
from avinpaint.config import preset
from stream.testclip import ClipSpec, make_talking_head_clip
from training.pack import PackOptions, pack_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_run  # noqa: E402  (a script, not a package: imported from its folder)


@pytest.mark.slow
def test_gpu_run_script_in_test_mode(tmp_path: Path) -> None:
    dataset = make_tiny_dataset(tmp_path / "dataset", {"train": 3}, {"train": 2})
    pack = tmp_path / "pack"
    pack_dataset(dataset, pack, PackOptions(max_bytes=4 * 2**20))
    clip = make_talking_head_clip(tmp_path / "clip.mp4", ClipSpec(duration_s=1.0)).path
    out = tmp_path / "out"
    env = {
        **os.environ,
        "AVSTREAM_GPU_RUN_TEST": "1",
        "AVSTREAM_GPU_BUDGET_S": "45",
        "AVSTREAM_GPU_PACK": str(pack),
        "AVSTREAM_GPU_CLIP": str(clip),
        "AVSTREAM_GPU_WORK": str(tmp_path / "work"),
        # The venv's Python, as the script would find python3 with torch on the GPU machine.
        "AVSTREAM_PYTHON": sys.executable,
    }
    result = subprocess.run(
        [str(ROOT / "scripts" / "gpu_run.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = json.loads((out / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    summary = {name: (s["status"], s["reason"]) for name, s in stages.items()}
    assert result.returncode == 0, (summary, result.stdout, result.stderr[-2000:])
    assert [s["name"] for s in report["stages"]] == [
        "environment",
        "gpu_tests",
        "bench",
        "process",
        "finetune",
        "finetune_export",
    ]
    assert all(s["status"] == "ok" for s in report["stages"]), summary
    assert report["elapsed_s"] <= 45 + 5  # the budget holds
    # Environment: the venv has every dependency.
    assert all(stages["environment"]["details"]["modules"].values())
    # Benchmark: faces/s for every case, bf16 compared with fp32.
    cases = json.loads((out / "bench.json").read_text())["cases"]
    assert [(c["dtype"], c["batch"]) for c in cases] == [
        ("fp32", 1),
        ("fp32", 2),
        ("bf16", 1),
        ("bf16", 2),
    ]
    assert all(c["faces_per_s"] > 0 for c in cases)
    assert 0 < cases[2]["max_relative_error_vs_fp32"] < 0.1
    # process wrote a video.
    assert stages["process"]["details"]["output_bytes"] > 1000
    # Fine-tune: stopped by the deadline after some steps, exported, split under 16 MiB.
    training = stages["finetune"]["details"]["training"]
    assert training["last_step"] >= 1 and training["rows"] >= 1
    assert "deadline" in stages["finetune"]["reason"]
    parts = stages["finetune"]["details"]["weights_files"]
    assert len(parts) == 2 and all(p.startswith("lite_finetuned.safetensors.part") for p in parts)
    assert all(size <= gpu_run.PART_BYTES for size in report["files"].values())
    joined = gpu_run.join_parts(out / "finetune" / "lite_finetuned.safetensors.parts.json")
    assert read_metadata(joined)["gpu_run_device"] == "cpu"
    assert load(joined).config == preset("lite")


def test_split_and_join(tmp_path: Path) -> None:
    data = os.urandom(2500)
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    parts = gpu_run.split_file(path, part_bytes=1000)
    assert [p.name for p in parts] == [f"weights.bin.part0{i}" for i in range(3)]
    assert [p.stat().st_size for p in parts] == [1000, 1000, 500] and not path.exists()
    manifest = tmp_path / "weights.bin.parts.json"
    assert gpu_run.join_parts(manifest).read_bytes() == data
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 10)
    assert gpu_run.split_file(small, part_bytes=1000) == [small]  # fits: left alone
    parts[1].write_bytes(b"y" * 1000)  # a damaged part
    with pytest.raises(ValueError, match="sha256"):
        gpu_run.join_parts(manifest, tmp_path / "joined.bin")
    assert not (tmp_path / "joined.bin").exists()


def test_settings_from_the_environment(tmp_path: Path) -> None:
    gpu = gpu_run.Settings.from_env(tmp_path, {})
    assert (gpu.test_mode, gpu.budget_s, gpu.batch_size) == (False, 480.0, 16)
    assert gpu.pack == ROOT / "out" / "gpu_pack" / "dataset"
    test = gpu_run.Settings.from_env(tmp_path, {"AVSTREAM_GPU_RUN_TEST": "1"})
    assert (test.test_mode, test.budget_s, test.batch_size) == (True, 50.0, 2)
    assert sum(test.caps_s.values()) < sum(gpu.caps_s.values())
    with pytest.raises(ValueError, match="BUDGET"):
        gpu_run.Settings.from_env(tmp_path, {"AVSTREAM_GPU_BUDGET_S": "0"})


def test_stages_without_their_modules_are_skipped() -> None:
    environment = {"modules": {"torch": "2.11", "numpy": "2.0", "cv2": None}}
    assert gpu_run.missing_modules("bench", environment) == []
    assert "cv2" in gpu_run.missing_modules("process", environment)


def test_training_summary(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    rows = ["stage,step,epoch,wall_s,samples_per_s,total,l1"]
    rows += [f"2,{s},0,{s},{10 + s},{1.0 - s / 100},{0.5 - s / 200}" for s in range(1, 21)]
    log.write_text("\n".join(rows) + "\n")
    summary = gpu_run.training_summary(log)
    assert summary["rows"] == 20 and summary["last_step"] == 20
    assert summary["first_window"]["total"] == pytest.approx(0.985)  # steps 1-2
    assert summary["last_window"]["total"] == pytest.approx(0.805)  # steps 19-20
    assert summary["samples_per_s_median"] == pytest.approx(20.5)
    assert gpu_run.training_summary(tmp_path / "missing.csv") == {}
