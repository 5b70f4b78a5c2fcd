"""``training.trainer``: overfitting, exact resume, DDP on CPU, config files and the CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist

from avinpaint.checkpoint import load as load_generator
from avinpaint.config import ModelConfig, preset
from avinpaint.discriminator import DiscriminatorConfig
from avinpaint.spec import AUDIO_SAMPLE_RATE_HZ, CROP_SIZE, CROP_TEMPLATE_256, SPEAKER_WINDOW_S
from stream.errors import UsageError
from training.__main__ import main
from training.augment import AugmentOptions
from training.config import (
    DataConfig,
    LogConfig,
    Stage1Config,
    Stage2Config,
    TrainConfig,
    load_config,
)
from training.data import (
    GE2E_CACHE,
    GE2E_CACHE_INDEX,
    GE2E_CACHE_NAME,
    SPEAKER_DIR,
    DatasetIndex,
    FaceVoiceDataset,
    SampleOptions,
    SpeakerInputs,
    ensure_ge2e_cache,
)
from training.manifest import AudioRecord, CropRecord, Split, write_manifest
from training.trainer import (
    LOG_FILE,
    Trainer,
    augment_options,
    init_distributed,
    latest_checkpoint,
    loss_factor,
)

torch.set_num_threads(1)
cv2.setNumThreads(1)

TINY_MODEL = replace(
    preset("lite"),
    face_widths=(8, 8, 16, 16, 16, 16, 16, 16),
    audio_widths=(16, 16, 8, 8, 4, 4, 4),
    identity_hidden=16,
)
"""A lite-shaped generator small enough to train a few steps in a second."""

PSI_DIM = 128


# --- a tiny generated dataset -----------------------------------------------------------------


def synthetic_face(seed: int) -> np.ndarray:
    """A cartoon face on the crop template: skin ellipse, eyes, nose and mouth whose colours
    and sizes depend on ``seed`` (one seed per identity, a little jitter per frame)."""
    rng = np.random.default_rng(seed)
    image = np.full((CROP_SIZE, CROP_SIZE, 3), rng.integers(30, 90, 3), np.uint8)
    skin = tuple(int(v) for v in rng.integers(90, 230, 3))
    cv2.ellipse(image, (128, 130), (78, 105), 0, 0, 360, skin, -1, cv2.LINE_AA)
    eye = tuple(int(v) for v in rng.integers(0, 120, 3))
    radius = int(rng.integers(7, 14))
    for x, y in CROP_TEMPLATE_256[:2]:
        cv2.circle(image, (int(x), int(y)), radius, eye, -1, cv2.LINE_AA)
    nose = CROP_TEMPLATE_256[2]
    cv2.circle(image, (int(nose[0]), int(nose[1])), 6, (60, 80, 160), -1, cv2.LINE_AA)
    (x0, y0), (x1, y1) = CROP_TEMPLATE_256[3], CROP_TEMPLATE_256[4]
    lips = tuple(int(v) for v in rng.integers(40, 200, 3))
    cv2.line(image, (int(x0), int(y0)), (int(x1), int(y1)), lips, int(rng.integers(4, 14)))
    return image


def make_tiny_dataset(
    root: Path,
    paired: dict[Split, int],
    face_only: dict[Split, int],
    crops_per_identity: int = 3,
    audio_per_identity: int = 2,
    seed: int = 0,
) -> Path:
    """A prepared dataset (the layout ``training.prepare`` writes) of cartoon faces, noise
    "speech" and random psi rows, with a GE2E cache of random unit vectors so no speaker
    network runs."""
    rng = np.random.default_rng(seed)
    records: list[CropRecord | AudioRecord] = []
    psi_rows: list[np.ndarray] = []
    speakers: dict[str, np.ndarray] = {}
    splits: dict[str, list[str]] = {"train": [], "test": []}
    n = 0
    groups = [(split, count, True) for split, count in paired.items()]
    groups += [(split, count, False) for split, count in face_only.items()]
    for split, count, with_voice in groups:
        for _ in range(count):
            identity = f"id{n:02d}"
            splits[split].append(identity)
            (root / "crops" / identity).mkdir(parents=True)
            audio_paths: list[str] = []
            if with_voice:
                (root / "audio" / identity).mkdir(parents=True)
                for k in range(audio_per_identity):
                    path = f"audio/{identity}/{identity}_{k:03d}.npy"
                    samples = rng.normal(0, 0.1, round(SPEAKER_WINDOW_S * AUDIO_SAMPLE_RATE_HZ))
                    np.save(root / path, samples.astype(np.float32))
                    vector = rng.random(256).astype(np.float32)
                    speakers[path] = vector / np.linalg.norm(vector)
                    audio_paths.append(path)
            base = rng.normal(0, 1, PSI_DIM)
            for k in range(crops_per_identity):
                image_path = f"crops/{identity}/{identity}_{k:06d}.png"
                cv2.imwrite(str(root / image_path), synthetic_face(1000 * n + 7))
                records.append(
                    CropRecord(
                        identity=identity,
                        split=split,
                        source=f"/videos/{identity}.mp4",
                        source_kind="video" if with_voice else "image",
                        image=image_path,
                        frame_index=k,
                        time_s=0.2 * k,
                        landmarks=tuple((float(x), float(y)) for x, y in CROP_TEMPLATE_256),
                        source_affine=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
                        detection_score=0.9,
                        inside_fraction=1.0,
                        psi_row=len(psi_rows),
                        audio=tuple(audio_paths),
                    )
                )
                psi_rows.append(base + rng.normal(0, 0.1, PSI_DIM))
            for k, path in enumerate(audio_paths):
                records.append(
                    AudioRecord(
                        identity=identity,
                        split=split,
                        source=f"/videos/{identity}.mp4",
                        source_kind="video",
                        audio=path,
                        segment_index=k,
                        speech_s=SPEAKER_WINDOW_S,
                        paired=True,
                    )
                )
            n += 1
    write_manifest(root / "manifest.jsonl", records)
    np.save(root / "psi.npy", np.stack(psi_rows).astype(np.float32))
    (root / "splits.json").write_text(json.dumps({"seed": 0, **splits}))
    folder = root / SPEAKER_DIR
    folder.mkdir()
    paths = sorted(speakers)
    np.save(folder / GE2E_CACHE, np.stack([speakers[p] for p in paths]))
    (folder / GE2E_CACHE_INDEX).write_text(json.dumps({"encoder": GE2E_CACHE_NAME, "audio": paths}))
    return root


def tiny_config(dataset: Path, **changes: object) -> TrainConfig:
    """Tiny model, no augmentation, the paper's fixed box: a fixed batch every step."""
    config = TrainConfig(
        seed=3,
        device="cpu",
        threads=1,
        model=TINY_MODEL,
        discriminator=DiscriminatorConfig(base_width=4),
        data=DataConfig(
            dataset=str(dataset), holes="paper_box", flip=False, grayscale_probability=0.0
        ),
        stage1=Stage1Config(steps=0, batch_size=4),
        stage2=Stage2Config(steps=0, batch_size=4),
        log=LogConfig(every=1, images_every=0, checkpoint_every=1000),
    )
    return replace(config, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def four_faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 paired training identities (one crop each: a batch of 4 is the whole set)."""
    root = tmp_path_factory.mktemp("four_faces")
    return make_tiny_dataset(root, {"train": 4}, {}, crops_per_identity=1, audio_per_identity=1)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Paired and face-only identities in both splits."""
    root = tmp_path_factory.mktemp("mixed")
    return make_tiny_dataset(root, {"train": 3, "test": 2}, {"train": 2, "test": 1})


# --- training -----------------------------------------------------------------------------


def test_stage1_overfits_a_fixed_batch(four_faces: Path, tmp_path: Path) -> None:
    config = tiny_config(
        four_faces, stage1=Stage1Config(steps=100, batch_size=4, lr=1e-2, beta1=0.9)
    )
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.run()
    stage1 = [r for r in trainer.rows if r["stage"] == 1]
    assert len(stage1) == 100
    # Voice -> face from scratch through a 4-channel decoder: the audio face's L1 to the 4
    # faces falls at least 2.5x (measured: 0.47 -> 0.14, 3.3x).
    assert loss_factor(stage1, "audio_face") > 2.5


def test_stage2_overfits_a_fixed_batch(four_faces: Path, tmp_path: Path) -> None:
    config = tiny_config(
        four_faces, stage2=Stage2Config(steps=40, batch_size=4, lr=5e-3, beta1=0.9)
    )
    config = replace(config, losses=replace(config.losses, identity_consistency=0.0))
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.run()
    rows = [r for r in trainer.rows if r["stage"] == 2]
    assert len(rows) == 40
    # The L1 of the inpainted crop falls at least 3x on the same 4 faces and box.
    assert loss_factor(rows, "l1") > 3.0
    assert all(np.isfinite(r["d_loss"]) and np.isfinite(r["gan"]) for r in rows)


def test_stage2_without_gan_leaves_the_discriminator_untouched(
    four_faces: Path, tmp_path: Path
) -> None:
    config = tiny_config(four_faces, stage2=Stage2Config(steps=3, batch_size=4))
    config = replace(
        config,
        losses=replace(config.losses, identity_consistency=0.0, gan=0.0, ssim=0.5),
    )
    trainer = Trainer(config, tmp_path / "run", progress=False)
    before = {k: v.clone() for k, v in trainer.discriminator.state_dict().items()}
    trainer.run()
    after = trainer.discriminator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    rows = [r for r in trainer.rows if r["stage"] == 2]
    assert [r["d_loss"] for r in rows] == [0.0, 0.0, 0.0]
    assert all(0.0 < r["ssim"] < 1.0 for r in rows)


def _log_rows(run: Path) -> list[dict[str, str]]:
    with (run / LOG_FILE).open(newline="") as f:
        return list(csv.DictReader(f))


def test_resume_gives_the_identical_next_steps(mixed: Path, tmp_path: Path) -> None:
    config = tiny_config(
        mixed,
        data=DataConfig(dataset=str(mixed)),  # flips, grey, hole mixture: all seeded
        stage1=Stage1Config(steps=3, batch_size=2),
        stage2=Stage2Config(steps=5, batch_size=2),
        log=LogConfig(every=1, images_every=2, checkpoint_every=2, keep_checkpoints=0),
    )
    whole = Trainer(config, tmp_path / "whole", progress=False)
    whole.run()

    # The same run stopped after stage-2 step 2 (its checkpoint), then resumed.
    stopped = replace(config, stage2=replace(config.stage2, steps=2))
    Trainer(stopped, tmp_path / "parts", progress=False).run()
    resumed = Trainer(config, tmp_path / "parts", progress=False)
    assert (resumed.stage, resumed.step) == (2, 2)
    resumed.run()

    whole_rows = [r for r in whole.rows if r["stage"] == 2]
    assert [r["step"] for r in resumed.rows] == [3, 4, 5]
    for got, expected in zip(resumed.rows, whole_rows[2:], strict=True):
        for key in ("total", "l1", "audio_face", "identity_consistency", "gan", "d_loss"):
            assert got[key] == expected[key], key  # bit-identical, not approximately equal
    assert _log_rows(tmp_path / "parts") == [
        {**r, "wall_s": r2["wall_s"], "samples_per_s": r2["samples_per_s"]}
        for r, r2 in zip(_log_rows(tmp_path / "whole"), _log_rows(tmp_path / "parts"), strict=True)
    ]
    a = load_generator(tmp_path / "whole/checkpoints/stage2_0000005/generator.safetensors")
    b = load_generator(tmp_path / "parts/checkpoints/stage2_0000005/generator.safetensors")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    # Checkpoints carry the resolved config, and grids were drawn.
    saved = json.loads((tmp_path / "parts/checkpoints/stage2_0000004/config.json").read_text())
    assert saved == config.to_dict()
    assert (tmp_path / "whole/images/stage1_0000002.png").is_file()
    assert (tmp_path / "whole/images/stage2_0000004.png").is_file()
    assert latest_checkpoint(tmp_path / "whole") == tmp_path / "whole/checkpoints/stage2_0000005"


def test_cosine_schedule_and_weight_average_resume_exactly(mixed: Path, tmp_path: Path) -> None:
    stage2 = Stage2Config(steps=5, batch_size=2, lr=1e-3, lr_schedule="cosine", ema_decay=0.5)
    assert stage2.lr_at(0) == 1e-3
    assert stage2.lr_at(5) == pytest.approx(0.0, abs=1e-18)
    assert stage2.lr_at(1) > stage2.lr_at(2) > stage2.lr_at(3) > stage2.lr_at(4) > 0.0
    config = tiny_config(
        mixed,
        stage2=stage2,
        log=LogConfig(every=1, images_every=0, checkpoint_every=2, keep_checkpoints=0),
    )
    whole = Trainer(config, tmp_path / "whole", progress=False)
    whole.run()
    assert whole.opt_g.param_groups[0]["lr"] == stage2.lr_at(4)

    # The shipped file is the average, not the trained weights it was made from.
    final = tmp_path / "whole/checkpoints/stage2_0000005"
    shipped = load_generator(final / "generator.safetensors").state_dict()
    state = torch.load(final / "state.pt", weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in state["ema"].items()}
    assert all(torch.equal(shipped[k], averaged[k]) for k in shipped)
    assert any(not torch.equal(shipped[k], state["generator"][k]) for k in shipped)

    # A run killed after step 2 and resumed ends on the same bits (schedule and average).
    parts = tmp_path / "parts"
    shutil.copytree(tmp_path / "whole", parts)
    for later in ("stage2_0000004", "stage2_0000005"):
        shutil.rmtree(parts / "checkpoints" / later)
    (parts / "checkpoints/latest.json").write_text(json.dumps({"checkpoint": "stage2_0000002"}))
    resumed = Trainer(config, parts, progress=False)
    assert resumed.step == 2
    resumed.run()
    again = load_generator(parts / "checkpoints/stage2_0000005/generator.safetensors").state_dict()
    assert all(torch.equal(shipped[k], again[k]) for k in shipped)


def test_resume_refuses_a_changed_experiment(four_faces: Path, tmp_path: Path) -> None:
    config = tiny_config(four_faces, stage1=Stage1Config(steps=1, batch_size=4))
    Trainer(config, tmp_path / "run", progress=False).run()
    changed = replace(config, seed=4)
    with pytest.raises(UsageError, match="seed"):
        Trainer(changed, tmp_path / "run", progress=False)
    # More steps is a continuation, not another experiment.
    longer = replace(config, stage1=Stage1Config(steps=2, batch_size=4))
    assert Trainer(longer, tmp_path / "run", progress=False).step == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, config: dict[str, object], run: Path) -> None:
    # What torchrun gives each process: the rendezvous and this process's place.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    distributed = init_distributed("cpu")
    trainer = Trainer(TrainConfig.from_dict(config), run, distributed, progress=False)
    trainer.run()
    state = {
        "generator": trainer.generator.state_dict(),
        "discriminator": trainer.discriminator.state_dict(),
        "rows": trainer.rows,
    }
    torch.save(state, run / f"final_rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_on_cpu(mixed: Path, tmp_path: Path) -> None:
    config = tiny_config(
        mixed,
        data=DataConfig(dataset=str(mixed)),
        stage1=Stage1Config(steps=2, batch_size=2),
        stage2=Stage2Config(steps=2, batch_size=2),
    )
    run = tmp_path / "run"
    run.mkdir()
    args = (2, _free_port(), config.to_dict(), run)
    torch.multiprocessing.spawn(_ddp_worker, args=args, nprocs=2, join=True)

    states = [torch.load(run / f"final_rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in ("generator", "discriminator"):
        for name, tensor in states[0][key].items():
            assert torch.equal(tensor, states[1][key][name]), f"{key}.{name}"
    # Every process logs the same (averaged) losses; the main one writes the CSV.
    assert states[0]["rows"] == [
        {**r, "wall_s": a["wall_s"], "samples_per_s": a["samples_per_s"]}
        for a, r in zip(states[0]["rows"], states[1]["rows"], strict=True)
    ]
    rows = _log_rows(run)
    assert [(r["stage"], r["step"]) for r in rows] == [
        ("1", "1"),
        ("1", "2"),
        ("2", "1"),
        ("2", "2"),
    ]
    assert latest_checkpoint(run) == run / "checkpoints/stage2_0000002"


# --- data ---------------------------------------------------------------------------------


def test_samples_are_seeded_and_follow_the_audio_policy(mixed: Path) -> None:
    index = DatasetIndex.load(mixed)
    speakers = SpeakerInputs(index, TINY_MODEL, ensure_ge2e_cache(index, progress=False))
    options = SampleOptions(seed=1)
    stage2 = FaceVoiceDataset(index, "train", speakers, options, stage=2)
    stage1 = FaceVoiceDataset(index, "train", speakers, options, stage=1)
    assert len(stage2) == 5 * 3 and len(stage1) == 3 * 3  # face-only crops only in stage 2
    first, again = stage2[4], stage2[4]
    for key in first:
        assert torch.equal(first[key], again[key])
    stage2.set_epoch(1)
    assert not torch.equal(stage2[4]["mask"], first["mask"])
    face_only = [stage2[i] for i, name in enumerate(stage2.identities()) if name >= "id05"]
    assert face_only and all(
        s["has_audio"] == 0 and s["speaker"].abs().sum() == 0 for s in face_only
    )
    other = FaceVoiceDataset(
        index, "train", speakers, replace(options, face_only_audio="other_speaker"), stage=2
    )
    swapped = [other[i] for i, name in enumerate(other.identities()) if name >= "id05"]
    assert all(abs(float(s["speaker"].norm()) - 1.0) < 1e-5 for s in swapped)
    mixed_policy = FaceVoiceDataset(
        index, "train", speakers, replace(options, face_only_audio="mixed"), stage=2
    )
    norms: set[float] = set()
    for epoch in range(4):
        mixed_policy.set_epoch(epoch)
        names = mixed_policy.identities()
        norms |= {
            round(float(mixed_policy[i]["speaker"].norm()), 4)
            for i, n in enumerate(names)
            if n >= "id05"
        }
    assert norms == {0.0, 1.0}  # both regimes are drawn for face-only people
    skip = FaceVoiceDataset(index, "train", speakers, replace(options, face_only_audio="skip"), 2)
    assert len(skip) == 9
    sample = stage1[0]
    assert sample["face"].shape == (3, CROP_SIZE, CROP_SIZE) and "mask" not in sample
    assert sample["face"].min() >= -1 and sample["face"].max() <= 1
    assert sample["speaker"].shape == (256,) and sample["has_audio"] == 1
    assert sample["identity_target"].shape == (PSI_DIM,)


def test_augmented_samples_are_seeded_and_differ_from_plain_ones(mixed: Path) -> None:
    index = DatasetIndex.load(mixed)
    speakers = SpeakerInputs(index, TINY_MODEL, ensure_ge2e_cache(index, progress=False))
    plain = SampleOptions(seed=1, flip=False, grayscale_probability=0.0)
    augmented = replace(plain, augment=AugmentOptions(colour_probability=1.0))
    base = FaceVoiceDataset(index, "train", speakers, plain, stage=2)
    aug = FaceVoiceDataset(index, "train", speakers, augmented, stage=2)
    first, again = aug[2], aug[2]
    assert torch.equal(first["face"], again["face"]) and torch.equal(first["mask"], again["mask"])
    assert not torch.equal(first["face"], base[2]["face"])
    assert first["face"].shape == base[2]["face"].shape


def test_ge2e_cache_embeds_new_segments_once(four_faces: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    for name in ("manifest.jsonl", "psi.npy", "audio", "crops"):
        src = four_faces / name
        (root / name).symlink_to(src, target_is_directory=src.is_dir())
    index = DatasetIndex.load(root)
    rows = ensure_ge2e_cache(index, progress=False)  # the real GE2E network
    assert rows.shape == (4, 256)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    stamp = (root / SPEAKER_DIR / GE2E_CACHE).stat().st_mtime_ns
    np.testing.assert_array_equal(ensure_ge2e_cache(index, progress=False), rows)
    assert (root / SPEAKER_DIR / GE2E_CACHE).stat().st_mtime_ns == stamp


# --- config and command line -------------------------------------------------------------------


def test_config_files_reject_unknown_keys_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "train.toml"
    path.write_text(
        'seed = 5\n[model]\npreset = "lite"\nidentity_hidden = 64\n[stage1]\nsteps = 7\n'
    )
    config = load_config(path, ["stage2.batch_size=2", "data.dataset=/data/x"])
    assert (config.seed, config.stage1.steps, config.stage2.batch_size) == (5, 7, 2)
    assert config.model == replace(preset("lite"), identity_hidden=64)
    assert config.data.dataset == "/data/x"
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for text, message in [
        ("[stage1]\nstepz = 1\n", "stepz"),
        ("learning_rate = 1\n", "learning_rate"),
        ("[model]\nwidth = 3\n", "width"),
        ('[data]\nholes = "circle"\n', "holes"),
        ("[stage2]\nbatch_size = 0\n", "batch_size"),
        ("[losses]\ngan = true\n", "gan"),
        ("[data]\njitter_probability = 2.0\n", "jitter_probability"),
    ]:
        path.write_text(text)
        with pytest.raises(UsageError, match=message):
            load_config(path)


def test_jitter_ranges_reach_the_augmentation(tmp_path: Path) -> None:
    path = tmp_path / "train.toml"
    path.write_text("[data]\naugment = true\njitter_shift_px = 8.0\njitter_probability = 0.75\n")
    options = augment_options(load_config(path).data)
    assert options is not None
    assert (options.jitter_shift_px, options.jitter_probability) == (8.0, 0.75)
    assert (options.jitter_scale, options.jitter_rotation_deg) == (0.05, 4.0)  # the defaults
    assert options.colour_probability == AugmentOptions().colour_probability
    assert augment_options(TrainConfig().data) is None  # augment = false


def test_cli_train_prints_config_and_runs(
    four_faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert TrainConfig.from_dict(printed) == TrainConfig()
    config_path = tmp_path / "tiny.json"
    config_path.write_text(json.dumps(tiny_config(four_faces).to_dict()))
    run = tmp_path / "run"
    code = main(
        [
            *("train", "--config", str(config_path), "--run-dir", str(run), "--no-progress"),
            *("--set", "stage1.steps=2", "--set", "stage2.steps=1"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "generator.safetensors" in out
    model = load_generator(run / "checkpoints/stage2_0000001/generator.safetensors")
    assert model.config == TINY_MODEL
    assert main(["train", "--run-dir", str(run), "--set", "nope=1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_train_saves_and_exits_on_sigterm(four_faces: Path, tmp_path: Path) -> None:
    # As `kill` or a scheduler would stop a background run: it must checkpoint, not just die.
    config_path = tmp_path / "tiny.json"
    config_path.write_text(json.dumps(tiny_config(four_faces).to_dict()))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "training", "train", "--config", str(config_path)]
    command += ["--run-dir", str(run), "--no-progress", "--set", "stage1.steps=100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 120
        while len(_log_rows(run) if (run / LOG_FILE).is_file() else []) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; run it again to resume" in err
    saved = sorted((run / "checkpoints").glob("stage1_*"))
    assert saved and int(saved[-1].name.split("_")[1]) >= 3


def test_cli_export_writes_float16_weights_with_provenance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from avinpaint.checkpoint import read_metadata, save
    from avinpaint.model import Generator

    torch.manual_seed(0)
    source = save(Generator(TINY_MODEL).eval(), tmp_path / "gen.safetensors", {"step": "5"})
    out = tmp_path / "ship.safetensors"
    assert main(["export", str(source), "-o", str(out), "--meta", "trained_steps=5"]) == 0
    assert "sha256" in capsys.readouterr().out
    metadata = read_metadata(out)
    assert (metadata["precision"], metadata["step"], metadata["trained_steps"]) == (
        "float16",
        "5",
        "5",
    )
    assert load_generator(out).config == TINY_MODEL
    assert out.stat().st_size < 0.6 * source.stat().st_size
    assert main(["export", str(source), "-o", str(source)]) == 2
    assert main(["export", str(source), "-o", str(out), "--meta", "novalue"]) == 2


def test_identity_dim_must_match_psi(four_faces: Path, tmp_path: Path) -> None:
    model = ModelConfig.from_dict({**TINY_MODEL.to_dict(), "identity_dim": 64})
    with pytest.raises(UsageError, match="identity_dim"):
        Trainer(tiny_config(four_faces, model=model), tmp_path / "run", progress=False)
