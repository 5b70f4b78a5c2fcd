"""The training harness: stage 1 (voice -> face), then stage 2 (the full model with a GAN).

Stage 1 trains the audio face decoder alone on (speech, face) pairs: whole-image L1 between
the audio face and the face at 256 px (and optionally a psi identity term; see
``training.config.Stage1Config`` for how this relates to the official code). Stage 2 trains
the whole generator with every loss of ``avinpaint.losses.total_generator_loss`` (masked L1,
audio-face L1, identity embedding, identity consistency through SFace, relativistic LSGAN)
against the patch discriminator, updating G then D each step. Unlike the official code the
fake is detached for the D step, so D's loss does not train G.

One process, or one process per device under ``torchrun`` (DistributedDataParallel over
gloo on CPU and nccl on GPU; each process draws its share of every batch through
``DistributedSampler``). Mixed precision on CUDA only.

A run directory holds everything::

    config.json                   the resolved config the run was started with
    log.csv                       one row per ``log.every`` steps
    images/stage{1,2}_STEP.png    grids of the current batch every ``log.images_every`` steps
    checkpoints/latest.json       names the newest complete checkpoint
    checkpoints/stageS_STEP/      state.pt (everything to resume), generator.safetensors
                                  (what ``avinpaint.load`` reads) and config.json

Running the same command on the same directory resumes from the newest checkpoint with the
identical next step: weights, optimiser moments, loss scaler, RNG states, stage and step are
restored, and the data order and every sample's randomness are functions of (seed, epoch,
index) alone (``training.data``), so the batches after a resume are the ones the
uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from avinpaint.checkpoint import load as load_generator
from avinpaint.checkpoint import save as save_generator
from avinpaint.discriminator import PatchDiscriminator
from avinpaint.identity import SFace, cosine_distance
from avinpaint.losses import (
    PairScores,
    audio_face_loss,
    ralsgan_discriminator_loss,
    total_generator_loss,
)
from avinpaint.model import Generator
from stream.errors import UsageError
from training.augment import AugmentOptions
from training.config import RESUMABLE_KEYS, DataConfig, TrainConfig, config_differences
from training.data import (
    DatasetIndex,
    FaceVoiceDataset,
    Sample,
    SampleOptions,
    SpeakerInputs,
    Stage,
    collate,
    describe,
    ensure_ge2e_cache,
    image_grid,
    tensor_to_bgr,
)
from training.manifest import write_text_atomic

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
LOG_FILE = "log.csv"
CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest.json"
STATE_FILE = "state.pt"
GENERATOR_FILE = "generator.safetensors"

LOG_COLUMNS = (
    "stage",
    "step",
    "epoch",
    "wall_s",
    "samples_per_s",  # since the previous row, all processes together
    "total",
    "l1",
    "audio_face",
    "identity_embedding",
    "identity_consistency",
    "gan",
    "ssim",
    "identity_target",
    "identity_features",
    "d_loss",
    "audio_identity",
)
"""Columns of ``log.csv``; a loss a stage does not compute is left empty. Losses are the
unweighted parts (``total`` is the weighted objective), averaged over processes."""

GRID_ROWS = 4


# --- processes and devices ----------------------------------------------------------------


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run (``torchrun`` sets the environment)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that writes logs, images and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this process's CUDA device when there is one, else the CPU."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UsageError("device cuda was asked for but CUDA is not available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_name: str) -> Distributed:
    """Join the process group ``torchrun`` describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a single process when WORLD_SIZE is unset or 1.
    The backend is nccl for CUDA and gloo for the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank
    )


def _barrier(distributed: Distributed) -> None:
    if distributed.enabled:
        dist.barrier()


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run left its results."""

    run_dir: Path
    checkpoint: Path | None  # the newest checkpoint folder
    generator: Path | None  # its generator.safetensors (load with avinpaint.load)
    stage1_steps: int
    stage2_steps: int
    wall_s: float


class _AudioFaceNet(nn.Module):
    """Stage 1's network: speaker input -> audio face, through the generator's own modules
    (so stage 2 continues with exactly what stage 1 trained)."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, speaker_input: Tensor) -> Tensor:
        return self.generator.speaker_features(speaker_input).audio_face


def _pair_scores(discriminator: nn.Module, fake: Tensor, real: Tensor) -> PairScores:
    """``avinpaint.losses.pair_scores`` in ONE discriminator call: (fake, real) and
    (real, fake) stacked on the batch axis. Instance norm is per sample, so the scores are
    the same; one call is what DistributedDataParallel can synchronise."""
    scores = discriminator(torch.cat([real, fake]), torch.cat([fake, real]))
    real_first, fake_first = scores.chunk(2)
    return PairScores(real_first=real_first, fake_first=fake_first)


# --- the trainer ------------------------------------------------------------------------------


class Trainer:
    """Runs (or resumes) stage 1 then stage 2 of one run directory.

    ``rows`` collects every logged row (also written to ``log.csv`` by the main process).
    """

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        distributed: Distributed | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.dist = distributed if distributed is not None else Distributed()
        self.progress = progress and self.dist.is_main
        self.device = resolve_device(config.device, self.dist.local_rank)
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        self.amp_dtype = _amp_dtype(config.amp, self.device)
        self.rows: list[dict[str, float]] = []

        self.index = DatasetIndex.load(Path(config.data.dataset))
        self.speakers = self._speaker_inputs()
        self._check_identity_target()

        # Same seed on every process: identical initial weights (DDP also broadcasts them).
        torch.manual_seed(config.seed)
        self.generator = Generator(config.model).to(self.device)
        self.discriminator = PatchDiscriminator(config.discriminator).to(self.device)
        if config.init_generator:
            self._load_init_generator(Path(config.init_generator))
        self.psi: SFace | None = None
        s1, s2 = config.stage1, config.stage2
        self.opt_audio = torch.optim.Adam(
            _trainable(self.generator.audio_decoder, self.generator.voice),
            lr=s1.lr,
            betas=(s1.beta1, s1.beta2),
        )
        self.opt_g = torch.optim.Adam(
            _trainable(self.generator), lr=s2.lr, betas=(s2.beta1, s2.beta2)
        )
        self.opt_d = torch.optim.Adam(
            _trainable(self.discriminator), lr=s2.d_lr, betas=(s2.beta1, s2.beta2)
        )
        # Made after the warm start, so the average starts from the warm-start weights.
        self.ema: AveragedModel | None = None
        if s2.ema_decay > 0:
            self.ema = AveragedModel(
                self.generator,
                multi_avg_fn=get_ema_multi_avg_fn(s2.ema_decay),  # type: ignore[no-untyped-call]
                use_buffers=True,
            )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.stage: Stage = 1
        self.step = 0
        self.wall_s = 0.0
        self.checkpoint: Path | None = None
        self._stage1_net: nn.Module | None = None
        self._stage2_nets: tuple[nn.Module, nn.Module] | None = None
        self._last_outputs: tuple[Tensor, Tensor] | None = None
        self._resume_or_start()
        self._last_log = (self.step, self.wall_s)

    # --- setup ----------------------------------------------------------------------------

    def _speaker_inputs(self) -> SpeakerInputs:
        ge2e = None
        if self.config.model.speaker_encoder == "ge2e":
            # One process embeds the segments; the others wait and read its cache.
            if self.dist.is_main:
                ensure_ge2e_cache(self.index, progress=self.progress)
            _barrier(self.dist)
            ge2e = ensure_ge2e_cache(self.index, progress=False)
        return SpeakerInputs(self.index, self.config.model, ge2e)

    def _check_identity_target(self) -> None:
        if self.config.losses.identity_embedding == 0.0:
            return
        psi = self.index.psi
        if psi is None:
            raise UsageError(
                "the dataset has no psi embeddings (prepared with --no-psi): set "
                "losses.identity_embedding = 0"
            )
        if psi.shape[1] != self.config.model.identity_dim:
            raise UsageError(
                f"model.identity_dim is {self.config.model.identity_dim} but the dataset's psi "
                f"embeddings are {psi.shape[1]}-d: set model.identity_dim = {psi.shape[1]} "
                "or losses.identity_embedding = 0"
            )

    def _load_init_generator(self, path: Path) -> None:
        source = load_generator(path)
        if source.config != self.config.model:
            diff = config_differences(source.config.to_dict(), self.config.model.to_dict())
            raise UsageError(f"init_generator {path} has another model config: {', '.join(diff)}")
        self.generator.load_state_dict(source.state_dict())

    def _psi(self) -> SFace:
        if self.psi is None:
            self.psi = SFace.from_onnx().to(self.device)
        return self.psi

    def _resume_or_start(self) -> None:
        config_path = self.run_dir / CONFIG_FILE
        new = self.config.to_dict()
        if config_path.is_file():
            old = json.loads(config_path.read_text(encoding="utf-8"))
            changed = [k for k in config_differences(old, new) if k not in RESUMABLE_KEYS]
            if changed:
                raise UsageError(
                    f"{self.run_dir} was started with another config ({', '.join(changed)} "
                    "differ); use a new run directory"
                )
        latest = latest_checkpoint(self.run_dir)
        if latest is not None:
            self._load_checkpoint(latest)
            log.info("resuming %s at stage %d step %d", latest, self.stage, self.step)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(config_path, json.dumps(new, indent=2) + "\n")
            self._truncate_log()
        _barrier(self.dist)

    # --- running -----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train the remaining steps of stage 1, then of stage 2."""
        if self.stage == 1:
            self._run_stage(1, self.config.stage1.steps, self._stage1_step)
            self.stage, self.step = 2, 0
            self._last_log = (0, self.wall_s)
        self._run_stage(2, self.config.stage2.steps, self._stage2_step)
        generator = self.checkpoint / GENERATOR_FILE if self.checkpoint is not None else None
        return TrainResult(
            run_dir=self.run_dir,
            checkpoint=self.checkpoint,
            generator=generator,
            stage1_steps=self.config.stage1.steps,
            stage2_steps=self.step,
            wall_s=self.wall_s,
        )

    def _run_stage(
        self, stage: Stage, steps: int, step_fn: Callable[[Sample], dict[str, float]]
    ) -> None:
        if self.step >= steps:
            return
        batch_size = self.config.stage1.batch_size if stage == 1 else self.config.stage2.batch_size
        dataset = self._dataset(stage)
        if self.dist.is_main:
            log.info("stage %d data: %s", stage, describe(dataset))
        self.generator.train()
        self.discriminator.train()
        bar = tqdm(
            total=steps,
            initial=self.step,
            desc=f"stage {stage}",
            disable=not self.progress,
            mininterval=5.0,
        )
        start = time.perf_counter()
        wall_at_start = self.wall_s
        last_saved = self.step
        try:
            for epoch, batch in self._batches(dataset, batch_size, self.step):
                losses = step_fn(_to_device(batch, self.device))
                self.step += 1
                self.wall_s = wall_at_start + time.perf_counter() - start
                bar.update(1)
                if self.step % self.config.log.every == 0 or self.step == steps:
                    self._log_row(stage, epoch, losses, batch_size)
                images_every = self.config.log.images_every
                if images_every and (self.step % images_every == 0 or self.step == steps):
                    self._save_grid(stage, batch)
                if self.step % self.config.log.checkpoint_every == 0 or self.step == steps:
                    self._save_checkpoint()
                    last_saved = self.step
                if self.step >= steps:
                    break
        except KeyboardInterrupt:
            # One process: keep the work done so far; the next run resumes from here.
            if not self.dist.enabled and self.step > last_saved:
                self._save_checkpoint()
            raise
        finally:
            bar.close()

    def _dataset(self, stage: Stage) -> FaceVoiceDataset:
        data = self.config.data
        options = SampleOptions(
            seed=self.config.seed,
            holes=data.holes,
            face_only_audio=data.face_only_audio,
            flip=data.flip,
            grayscale_probability=data.grayscale_probability,
            augment=augment_options(data),
        )
        return FaceVoiceDataset(self.index, "train", self.speakers, options, stage)

    def _batches(
        self, dataset: FaceVoiceDataset, batch_size: int, done_steps: int
    ) -> Iterator[tuple[int, Sample]]:
        """(epoch, batch) forever, starting after ``done_steps`` batches: the position in the
        data is a function of the step count alone."""
        sampler: DistributedSampler[int] = DistributedSampler(
            dataset,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=True,
            seed=self.config.seed,
            drop_last=True,
        )
        per_epoch = len(sampler) // batch_size
        if per_epoch == 0:
            raise UsageError(
                f"{len(dataset)} training samples cannot fill one batch of {batch_size} on "
                f"{self.dist.world_size} process(es)"
            )
        epoch, skip = divmod(done_steps, per_epoch)
        while True:
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            order = list(sampler)[skip * batch_size : per_epoch * batch_size]
            loader = DataLoader(
                dataset,
                batch_size=batch_size,
                sampler=order,
                drop_last=True,
                num_workers=self.config.data.workers,
                collate_fn=collate,
                worker_init_fn=_worker_init,
            )
            for batch in loader:
                yield epoch, batch
            epoch, skip = epoch + 1, 0

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _stage1_step(self, batch: Sample) -> dict[str, float]:
        net = self._wrap_stage1()
        weight = self.config.stage1.identity_weight
        with self._autocast():
            audio_face = net(batch["speaker"]).float()
            l1 = audio_face_loss(audio_face, batch["face"])
            identity = audio_face.new_zeros(())
            if weight > 0:
                psi = self._psi()
                identity = cosine_distance(
                    psi.embed_crop256(audio_face), psi.embed_crop256(batch["face"])
                ).mean()
            total = l1 + weight * identity
        self.opt_audio.zero_grad(set_to_none=True)
        _backward(self.scaler.scale(total))
        self.scaler.step(self.opt_audio)
        self.scaler.update()
        return self._mean_over_processes(
            {"total": total, "audio_face": l1, "audio_identity": identity}
        )

    def _stage2_step(self, batch: Sample) -> dict[str, float]:
        generator, discriminator = self._wrap_stage2()
        weights = self.config.losses
        face, mask = batch["face"], batch["mask"]
        psi = self._psi().embed_crop256 if weights.identity_consistency > 0 else None
        needs_features = weights.identity_target > 0 or weights.identity_features > 0
        psi_features = self._psi().features_crop256 if needs_features else None
        # With no adversarial weight the discriminator is neither run nor trained: it would
        # cost a third of each step and change nothing in the generator.
        adversarial = weights.gan > 0
        no_sync = (
            discriminator.no_sync()
            if isinstance(discriminator, DistributedDataParallel)
            else contextlib.nullcontext()
        )
        with self._autocast():
            out = generator(face, mask, batch["speaker"])
            inpainted, audio_face = out.inpainted.float(), out.audio_face.float()
            scores = None
            if adversarial:
                # G's adversarial term must not synchronise D's gradients: they are thrown away.
                with no_sync:
                    raw = _pair_scores(discriminator, inpainted, face)
                scores = PairScores(raw.real_first.float(), raw.fake_first.float())
            identity_target = batch["identity_target"]
            if weights.identity_embedding == 0.0:
                identity_target = out.identity_code.detach().float()
            g = total_generator_loss(
                output=inpainted,
                audio_face=audio_face,
                target=face,
                mask=mask,
                identity_pred=out.identity_code.float(),
                identity_target=identity_target,
                scores=scores,
                psi=psi,
                weights=weights,
                psi_features=psi_features,
            )
        self.opt_g.zero_grad(set_to_none=True)
        _backward(self.scaler.scale(g.total))
        lr = self.config.stage2.lr_at(self.step)
        for group in self.opt_g.param_groups:
            group["lr"] = lr
        self.scaler.step(self.opt_g)
        if self.ema is not None:
            self.ema.update_parameters(self.generator)

        d_loss = g.total.new_zeros(())
        if adversarial:
            self.opt_d.zero_grad(set_to_none=True)
            with self._autocast():
                d_scores = _pair_scores(discriminator, inpainted.detach(), face)
                d_loss = ralsgan_discriminator_loss(
                    PairScores(d_scores.real_first.float(), d_scores.fake_first.float())
                )
            _backward(self.scaler.scale(d_loss))
            self.scaler.step(self.opt_d)
        self.scaler.update()
        self._last_outputs = (inpainted.detach(), audio_face.detach())
        return self._mean_over_processes({**g._asdict(), "d_loss": d_loss})

    def _wrap_stage1(self) -> nn.Module:
        if self._stage1_net is None:
            net: nn.Module = _AudioFaceNet(self.generator)
            if self.dist.enabled:
                # The face side of the generator takes no part in stage 1.
                net = DistributedDataParallel(net, find_unused_parameters=True)
            self._stage1_net = net
        return self._stage1_net

    def _wrap_stage2(self) -> tuple[nn.Module, nn.Module]:
        if self._stage2_nets is None:
            generator: nn.Module = self.generator
            discriminator: nn.Module = self.discriminator
            if self.dist.enabled:
                generator = DistributedDataParallel(generator)
                discriminator = DistributedDataParallel(discriminator)
            self._stage2_nets = (generator, discriminator)
        return self._stage2_nets

    def _mean_over_processes(self, losses: dict[str, Tensor]) -> dict[str, float]:
        values = torch.stack([v.detach().float() for v in losses.values()])
        if self.dist.enabled:
            dist.all_reduce(values)
            values /= self.dist.world_size
        return dict(zip(losses, values.tolist(), strict=True))

    # --- logs, images, checkpoints -----------------------------------------------------------

    def _log_row(self, stage: Stage, epoch: int, losses: dict[str, float], batch: int) -> None:
        # Throughput since the previous row (or the start of this process's work).
        last_step, last_wall = self._last_log
        steps = self.step - last_step
        seconds = max(self.wall_s - last_wall, 1e-9)
        self._last_log = (self.step, self.wall_s)
        row: dict[str, float] = {
            "stage": stage,
            "step": self.step,
            "epoch": epoch,
            "wall_s": round(self.wall_s, 3),
            "samples_per_s": round(steps * batch * self.dist.world_size / seconds, 3),
            **{k: v for k, v in losses.items() if k in LOG_COLUMNS},
        }
        self.rows.append(row)
        if not self.dist.is_main:
            return
        path = self.run_dir / LOG_FILE
        new_file = not path.is_file()
        with path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
            if new_file:
                writer.writeheader()
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
        log.info(
            "stage %d step %d: %s",
            stage,
            self.step,
            " ".join(f"{k}={v:.4g}" for k, v in losses.items()),
        )

    def _truncate_log(self) -> None:
        """Drop log rows past the checkpoint being resumed (they will be redone)."""
        path = self.run_dir / LOG_FILE
        if not path.is_file():
            return
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if (int(r["stage"]), int(r["step"])) <= (self.stage, self.step)]
        if len(keep) == len(rows):
            return
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(keep)

    def _save_grid(self, stage: Stage, batch: Sample) -> None:
        if not self.dist.is_main:
            return
        rows = min(GRID_ROWS, batch["face"].shape[0])
        face = batch["face"][:rows]
        with torch.no_grad():
            if stage == 1:
                audio_face = self.generator.speaker_features(
                    batch["speaker"][:rows].to(self.device)
                ).audio_face
                columns = [("audio face", audio_face), ("ground truth", face)]
            else:
                assert self._last_outputs is not None  # set by the step that made this batch
                inpainted, audio_face = (t[:rows] for t in self._last_outputs)
                mask = batch["mask"][:rows]
                columns = [
                    ("masked input", face * (1 - mask)),
                    ("audio face", audio_face),
                    ("output", inpainted),
                    ("ground truth", face),
                ]
        grid = image_grid([(name, tensor_to_bgr(images)) for name, images in columns])
        folder = self.run_dir / "images"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"stage{stage}_{self.step:07d}.png"), grid)

    def _save_checkpoint(self) -> None:
        self._sync_buffers()
        if self.dist.is_main:
            folder = self.run_dir / CHECKPOINT_DIR / f"stage{self.stage}_{self.step:07d}"
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            torch.save(self._state(), partial / STATE_FILE)
            save_generator(
                self._shipped_generator(),
                partial / GENERATOR_FILE,
                metadata={"stage": str(self.stage), "step": str(self.step)},
            )
            (partial / CONFIG_FILE).write_text(
                json.dumps(self.config.to_dict(), indent=2) + "\n", encoding="utf-8"
            )
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)
            # latest.json last: it only ever names a complete checkpoint.
            write_text_atomic(
                folder.parent / LATEST_FILE, json.dumps({"checkpoint": folder.name}) + "\n"
            )
            self._prune_checkpoints(folder.parent)
            self.checkpoint = folder
        else:
            self.checkpoint = self.run_dir / CHECKPOINT_DIR / f"stage{self.stage}_{self.step:07d}"
        _barrier(self.dist)

    def _shipped_generator(self) -> Generator:
        """What a checkpoint's generator.safetensors holds: the weight average in stage 2
        when there is one, else the trained weights."""
        if self.ema is not None and self.stage == 2:
            module = self.ema.module
            assert isinstance(module, Generator)
            return module
        return self.generator

    def _sync_buffers(self) -> None:
        """Give every process the main process's BatchNorm running statistics.

        Each process normalises with its own batch (DistributedDataParallel's default), and
        DDP copies the main process's buffers to the others at the start of every forward;
        after the last forward of a stretch they differ. Copying them here changes nothing
        the next forward would not, and leaves every process with what the checkpoint holds.
        """
        if not self.dist.enabled:
            return
        for module in (self.generator, self.discriminator):
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def _prune_checkpoints(self, folder: Path) -> None:
        keep = self.config.log.keep_checkpoints
        if keep == 0:
            return
        done = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.endswith(".partial"))
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def _state(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "step": self.step,
            "wall_s": self.wall_s,
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "opt_audio": self.opt_audio.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def _load_checkpoint(self, folder: Path) -> None:
        # weights_only: a checkpoint is data, never code.
        state = torch.load(folder / STATE_FILE, map_location=self.device, weights_only=True)
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_audio.load_state_dict(state["opt_audio"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        _set_rng_state(state["rng"])
        self.stage = 1 if int(state["stage"]) == 1 else 2
        self.step = int(state["step"])
        self.wall_s = float(state["wall_s"])
        self.checkpoint = folder
        if self.stage == 1 and self.step >= self.config.stage1.steps:
            self.stage, self.step = 2, 0


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    path = run_dir / CHECKPOINT_DIR / LATEST_FILE
    if not path.is_file():
        return None
    folder = path.parent / str(json.loads(path.read_text(encoding="utf-8"))["checkpoint"])
    return folder if (folder / STATE_FILE).is_file() else None


def train(config: TrainConfig, run_dir: Path, progress: bool = True) -> TrainResult:
    """Run (or resume) a training run; under ``torchrun`` every process calls this."""
    distributed = init_distributed(config.device)
    try:
        return Trainer(config, run_dir, distributed, progress=progress).run()
    finally:
        if distributed.enabled and dist.is_initialized():
            dist.destroy_process_group()


# --- helpers -------------------------------------------------------------------------------


def augment_options(data: DataConfig) -> AugmentOptions | None:
    """The video-gap augmentation ``data`` asks for (None: off), with its jitter ranges."""
    if not data.augment:
        return None
    return AugmentOptions(
        jitter_probability=data.jitter_probability,
        jitter_rotation_deg=data.jitter_rotation_deg,
        jitter_scale=data.jitter_scale,
        jitter_shift_px=data.jitter_shift_px,
    )


def _trainable(*modules: nn.Module | None) -> list[nn.Parameter]:
    return [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]


def _backward(loss: Tensor) -> None:
    loss.backward()  # type: ignore[no-untyped-call]


def _amp_dtype(enabled: bool, device: torch.device) -> torch.dtype | None:
    # CPU autocast would change the numbers of the reference runs for little speed: GPU only.
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _to_device(batch: Sample, device: torch.device) -> Sample:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _worker_init(worker_id: int) -> None:
    # Workers decode PNGs and draw masks; one thread each keeps them off the training cores.
    del worker_id
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(numpy_state["state"]["pos"]),
        "python": list(random.getstate()[1]),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {
                "key": state["numpy_key"].numpy().astype(np.uint32),
                "pos": state["numpy_pos"],
            },
            "has_gauss": 0,
            "gauss": 0.0,
        }
    )
    random.setstate((3, tuple(int(v) for v in state["python"]), None))


def loss_factor(rows: list[dict[str, float]], key: str = "total", window: int = 3) -> float:
    """First ``window`` logged values of ``key`` over the last ``window`` (mean / mean):
    how many times a loss fell during a run."""
    values = [r[key] for r in rows if key in r and not math.isnan(r[key])]
    if len(values) < 2 * window:
        raise ValueError(f"need at least {2 * window} logged values of {key}")
    return float(np.mean(values[:window]) / np.mean(values[-window:]))
