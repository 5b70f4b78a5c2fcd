"""On a CUDA GPU (``gpu`` marker; skipped elsewhere): the torch backend agrees with the CPU,
autocast stays close to FP32, and training runs with autocast and the GradScaler, resumes,
and learns. These are the paths no development machine here can run; ``scripts/gpu_run.sh``
runs them on the GPU machine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training_trainer import TINY_MODEL, make_tiny_dataset, tiny_config

from avinpaint.config import preset
from avinpaint.model import Generator
from engines.backends import TorchBackend
from engines.export import example_faces, example_speaker_input, max_relative_error
from training.config import Stage2Config
from training.trainer import Trainer, latest_checkpoint, loss_factor

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
]


@pytest.mark.parametrize("name", ["lite", "paper"])
def test_cuda_backend_matches_cpu(name: str) -> None:
    torch.manual_seed(0)
    model = Generator(preset(name)).eval()
    speaker_input = example_speaker_input(model.config, seed=1)
    face, mask = example_faces(model.config, 4, seed=2)
    with TorchBackend(model, "cpu") as cpu:
        want = cpu.inpaint(face, mask, cpu.speaker_features(speaker_input)).inpainted
    # TF32 convolutions (cuDNN's default on Ampere and later) keep about 10 bits of mantissa.
    tolerance = {None: 5e-3, torch.float16: 3e-2, torch.bfloat16: 6e-2}
    for autocast, limit in tolerance.items():
        with TorchBackend(model, "cuda", autocast) as gpu:
            assert gpu.name.startswith("torch-cuda")
            got = gpu.inpaint(face, mask, gpu.speaker_features(speaker_input)).inpainted
        error = max_relative_error(got, want)
        assert np.isfinite(got).all() and error <= limit, (name, autocast, error)
        known = np.broadcast_to(mask == 0, face.shape)
        assert np.abs(got[known] - face[known]).max() <= limit  # known pixels kept


def test_training_on_cuda_with_autocast_learns_and_resumes(tmp_path: Path) -> None:
    dataset = make_tiny_dataset(tmp_path / "data", {"train": 4}, {}, 1, 1)
    config = tiny_config(dataset, stage2=Stage2Config(steps=40, batch_size=4, lr=5e-3, beta1=0.9))
    config = replace(
        config,
        device="cuda",
        amp=True,
        model=TINY_MODEL,
        losses=replace(config.losses, identity_consistency=0.0),
    )
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.run()
    rows = [r for r in trainer.rows if r["stage"] == 2]
    assert len(rows) == 40 and all(np.isfinite(r["total"]) for r in rows)
    assert loss_factor(rows, "l1") > 2.0  # it learns under autocast (CPU FP32: > 3x)
    assert latest_checkpoint(tmp_path / "run") is not None
    longer = replace(config, stage2=replace(config.stage2, steps=45))
    resumed = Trainer(longer, tmp_path / "run", progress=False)
    resumed.run()
    assert [r["step"] for r in resumed.rows if r["stage"] == 2][-1] == 45
