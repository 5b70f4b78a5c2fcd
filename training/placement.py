"""Training the covered-face placement network (``stream.align.PlacementNetwork``).

Under a face mask or a hand, YuNet guesses the hidden landmarks and the aligner places the
crop badly: zoomed in by up to 1.45x or out by 0.7x, moved up or down by tens of pixels
(docs/MODEL_CARD_occlusion.md). What stays visible (eyes, brows, hair line, ears, the
face's outline) still says where the well-placed crop lies. This network reads it: given
the crop of a covered face, it returns the similarity from the well-placed crop to this one
as ``stream.align.offset_matrix``'s four parameters (log scale, angle, x and y shift of the
crop centre), and the face is cropped again there.

Samples are made from clean photo faces aligned by our own detector and aligner (the
well-placed crop) with a 1.5x field around them (``prepare``), so that a zoomed-out crop
shows real surroundings rather than replicated borders. Each sample paints a fresh
occluder on the face (``training.segmenter``'s shapes and MaskTheFace templates), moves the
crop by a random similarity wider than the aligner's errors, and degrades it the way video
does; the target is that similarity. Only photo folders are used (LFW, Face Research Lab,
the unmasked FMD photos, deepface), training split by identity, so that every talking-head
clip of ``bench.false_flags`` stays held out for the evaluation.

    python -m training.placement prepare --data ../shared/data --out /tmp/pl/faces
    python -m training.placement train --data ../shared/data --faces /tmp/pl/faces \\
        --run /tmp/pl/run --steps 4000
    python -m training.placement export --run /tmp/pl/run \\
        --out avinpaint/weights/placement_v1.onnx

Training resumes from ``RUN/state.pt`` (written atomically every ``checkpoint_every``
steps); batches are drawn from a generator seeded by the step, so a resumed run draws the
same batches. Run it in the background on one thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from avinpaint.geometry import similarity_transform
from avinpaint.occlusion_net import export_crop_network
from avinpaint.spec import CROP_SIZE, CROP_TEMPLATE_256
from stream.align import PLACEMENT_INPUT_PX, PLACEMENT_TARGET_SCALE, landmark_weights, offset_matrix
from stream.detect import DetectorOptions, FaceDetector
from stream.types import Image
from training.segmenter import (
    SampleMaker,
    build_maker,
    collect_faces,
    degrade,
    find_face,
    real_look,
    save_with_index,
    small_face,
)

log = logging.getLogger(__name__)

PHOTO_SOURCES = (
    "faces/lfw",
    "faces/face_research_lab",
    "faces/unmasked/fmd",
    "identities/deepface",
)
"""Folders under the shared data root whose faces train the placement network (training
split by identity); no talking-head video, which evaluates it."""

BORDER_PX = 64
"""Crop pixels of surroundings kept on every side of the well-placed crop."""

WIDE_PX = CROP_SIZE + 2 * BORDER_PX
"""Side of a prepared face: the well-placed crop with ``BORDER_PX`` around it, same scale."""

MIN_INSIDE = 0.9
"""A photo whose wide view lies less than this share inside it is skipped: replicated
borders move with the sample's offset and would teach the network to read them."""


@dataclass(frozen=True)
class OffsetRange:
    """How far samples move the crop from the well-placed one: scale drawn log-uniform in
    ``scale``, angle normal with sd ``angle_sd_deg``, x normal with sd ``x_sd_px``, y uniform
    in ``y_px`` (crop pixels; positive: the crop lies lower, the face rides up in it). Wider
    than the aligner's errors on occluded faces (scale 0.7-1.45, the eye line up to 30 px
    off; docs/MODEL_CARD_occlusion.md)."""

    scale: tuple[float, float] = (0.75, 1.5)
    angle_sd_deg: float = 6.0
    x_sd_px: float = 10.0
    y_px: tuple[float, float] = (-15.0, 35.0)

    def draw(self, rng: np.random.Generator) -> npt.NDArray[np.float64]:
        """One offset: (log scale, angle in radians, x and y shift in crop pixels)."""
        return np.array(
            [
                rng.uniform(math.log(self.scale[0]), math.log(self.scale[1])),
                math.radians(rng.normal(0.0, self.angle_sd_deg)),
                rng.normal(0.0, self.x_sd_px),
                rng.uniform(*self.y_px),
            ]
        )


# --- faces -------------------------------------------------------------------------------


def wide_affine(landmarks5: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Frame -> wide view affine: the aligner's crop of these landmarks, ``BORDER_PX``
    further in on every side."""
    points = np.asarray(landmarks5, np.float64)
    affine = np.array(similarity_transform(points, CROP_TEMPLATE_256, landmark_weights(points)))
    affine[:, 2] += BORDER_PX
    return affine


def wide_view(image: Image, landmarks5: npt.ArrayLike) -> tuple[Image, float]:
    """The wide view of a face and the share of it that lies inside the image."""
    affine = wide_affine(landmarks5)
    size = (WIDE_PX, WIDE_PX)
    view = cv2.warpAffine(
        image, affine, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    inside = cv2.warpAffine(
        np.ones(image.shape[:2], np.uint8), affine, size, flags=cv2.INTER_NEAREST, borderValue=0
    )
    return np.asarray(view, np.uint8), float(np.mean(inside))


def prepare(data_root: Path, out_dir: Path, folders: Sequence[str] = PHOTO_SOURCES) -> int:
    """Detect every face of ``folders``, store its wide view (``wide.npy``) and its source,
    group and split (``index.json``); returns the number stored. Written under temporary
    names and renamed."""
    detector = FaceDetector(DetectorOptions(min_face_px=32.0))

    def usable_view(image: Image) -> Image | None:
        face = find_face(detector, image)
        if face is None:
            return None
        view, inside = wide_view(image, face.landmarks5)
        return view if inside >= MIN_INSIDE else None

    views, sources, skipped = collect_faces(data_root, folders, usable_view)
    if not views:
        raise RuntimeError(f"no usable face under {data_root} in {list(folders)}")
    rows = [
        {
            "path": str(source.path.relative_to(data_root)),
            "group": source.group,
            "split": source.split,
        }
        for source in sources
    ]
    save_with_index(out_dir, "wide", np.stack(views), {"skipped": skipped, "rows": rows})
    log.info("prepared %d wide faces (%d skipped) in %s", len(views), skipped, out_dir)
    return len(views)


# --- samples -------------------------------------------------------------------------------


def crop_from_wide(wide: Image, offset: npt.ArrayLike) -> Image:
    """The CROP_SIZE crop that ``offset`` (``offset_matrix``'s parameters) makes of the
    well-placed crop at the centre of a wide view."""
    inward = np.eye(3)
    inward[:2, 2] = -BORDER_PX
    matrix = (offset_matrix(offset) @ inward)[:2]
    size = (CROP_SIZE, CROP_SIZE)
    crop = cv2.warpAffine(
        wide, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return np.asarray(crop, np.uint8)


def make_sample(
    wide: Image,
    maker: SampleMaker,
    rng: np.random.Generator,
    offsets: OffsetRange = OffsetRange(),
) -> tuple[Image, npt.NDArray[np.float64]]:
    """A covered (90%), moved and degraded crop of a wide view, and its offset."""
    view = wide[:, ::-1].copy() if rng.random() < 0.5 else wide.copy()
    inner = slice(BORDER_PX, BORDER_PX + CROP_SIZE)
    face = np.ascontiguousarray(view[inner, inner])
    if rng.random() < 0.3:
        face = real_look(face, rng)
    if rng.random() < 0.9:
        face, _ = maker.occlude(face, rng)
        if rng.random() < 0.15:
            face, _ = maker.occlude(face, rng)
    view[inner, inner] = face
    offset = offsets.draw(rng)
    crop = crop_from_wide(view, offset)
    if rng.random() < 0.4:
        crop = small_face(crop, rng)
    return degrade(crop, rng), offset


# --- network -------------------------------------------------------------------------------


class PlacementNet(nn.Module):
    """Crop (N, 3, CROP_SIZE, CROP_SIZE), BGR 0..255 -> the offset (N, 4) in
    ``PLACEMENT_TARGET_SCALE`` units. The crop is pooled to ``PLACEMENT_INPUT_PX``; six
    stride-2 stages reach 2x2, whose features a small fully connected head reads (position
    matters here, so no global pooling)."""

    def __init__(self, widths: Sequence[int] = (24, 32, 48, 64, 96, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, 3, 2, 1),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, 1, 1),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        side = PLACEMENT_INPUT_PX // 2 ** len(widths)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side * side, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, 4),
        )

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.avg_pool2d(crops, CROP_SIZE // PLACEMENT_INPUT_PX)
        return self.head(self.features((pooled - 127.5) / 64.0))  # type: ignore[no-any-return]


def to_batch(crops: Sequence[Image] | npt.NDArray[np.uint8]) -> torch.Tensor:
    """uint8 BGR crops (N, H, W, 3) -> float NCHW."""
    return torch.from_numpy(np.stack(list(crops)).transpose(0, 3, 1, 2).astype(np.float32))


def export_onnx(net: PlacementNet, path: Path) -> None:
    """Write ``net`` as ONNX: input ``crops`` (N, 3, CROP_SIZE, CROP_SIZE) float32 BGR
    0..255, output ``offsets`` (N, 4) in ``PLACEMENT_TARGET_SCALE`` units; dynamic batch."""
    export_crop_network(net, path, CROP_SIZE, "offsets")


# --- training ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """AdamW at ``lr`` with a cosine decay to 2% of it over ``steps``; smooth L1 on the
    scaled offset; ``val_faces`` held-out faces (other splits) scored every
    ``checkpoint_every`` steps."""

    steps: int = 4000
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    checkpoint_every: int = 250
    val_faces: int = 300
    seed: int = 123


def _lr_at(config: TrainConfig, step: int) -> float:
    return config.lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * step / config.steps)))


def offset_errors(predicted: npt.ArrayLike, truth: npt.ArrayLike) -> dict[str, float]:
    """Median and 90th percentile of the absolute log-scale error and of the centre's
    shift error (crop pixels), and the median angle error (degrees)."""
    error = np.abs(np.asarray(predicted, np.float64) - np.asarray(truth, np.float64))
    shift = np.hypot(error[:, 2], error[:, 3])
    return {
        "median_log_scale": float(np.median(error[:, 0])),
        "p90_log_scale": float(np.percentile(error[:, 0], 90)),
        "median_angle_deg": math.degrees(float(np.median(error[:, 1]))),
        "median_shift_px": float(np.median(shift)),
        "p90_shift_px": float(np.percentile(shift, 90)),
    }


def train(faces_dir: Path, run_dir: Path, maker: SampleMaker, config: TrainConfig) -> Path:
    """Train (or resume) in ``run_dir``; returns the state file. ``RUN/log.jsonl`` gets one
    line per checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    wide = np.load(faces_dir / "wide.npy", mmap_mode="r")
    rows = json.loads((faces_dir / "index.json").read_text())["rows"]
    training = [i for i, r in enumerate(rows) if r["split"] == "train"]
    held_out = [i for i, r in enumerate(rows) if r["split"] != "train"][: config.val_faces]
    if not training or not held_out:
        raise RuntimeError(f"{faces_dir}: needs faces in the train split and in the others")
    val_rng = np.random.default_rng(config.seed)
    val = [make_sample(np.asarray(wide[i]), maker, val_rng) for i in held_out]
    val_crops = to_batch([c for c, _ in val])
    val_truth = np.stack([o for _, o in val])
    net = PlacementNet()
    optimiser = torch.optim.AdamW(net.parameters(), config.lr, weight_decay=config.weight_decay)
    state_file = run_dir / "state.pt"
    step = 0
    if state_file.is_file():
        state = torch.load(state_file)
        net.load_state_dict(state["net"])
        optimiser.load_state_dict(state["optimiser"])
        step = int(state["step"])
    scale = torch.from_numpy(np.asarray(PLACEMENT_TARGET_SCALE, np.float32))
    started = time.monotonic()
    while step < config.steps:
        for group in optimiser.param_groups:
            group["lr"] = _lr_at(config, step)
        rng = np.random.default_rng([config.seed, step])
        picks = rng.choice(training, config.batch_size)
        samples = [make_sample(np.asarray(wide[i]), maker, rng) for i in picks]
        target = torch.from_numpy(np.stack([o for _, o in samples]).astype(np.float32)) * scale
        net.train()
        loss = nn.functional.smooth_l1_loss(net(to_batch([c for c, _ in samples])), target)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        step += 1
        if step % config.checkpoint_every == 0 or step == config.steps:
            net.eval()
            with torch.no_grad():
                predicted = net(val_crops).numpy() / np.asarray(PLACEMENT_TARGET_SCALE)
            seconds = time.monotonic() - started
            line = {"step": step, "loss": float(loss.detach()), "seconds": seconds}
            line.update(offset_errors(predicted, val_truth))
            partial = run_dir / "state.partial.pt"
            torch.save(
                {"net": net.state_dict(), "optimiser": optimiser.state_dict(), "step": step},
                partial,
            )
            partial.replace(state_file)
            with (run_dir / "log.jsonl").open("a") as out:
                out.write(json.dumps(line) + "\n")
            log.info("%s", json.dumps(line))
    return state_file


def load_run(run_dir: Path) -> PlacementNet:
    """The network of a run's last checkpoint, in eval mode."""
    net = PlacementNet()
    net.load_state_dict(torch.load(run_dir / "state.pt")["net"])
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    """Command line: prepare, train, export."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="wide views of the photo faces")
    prep.add_argument("--data", type=Path, required=True)
    prep.add_argument("--out", type=Path, required=True)
    tr = sub.add_parser("train", help="train or resume a run")
    tr.add_argument("--data", type=Path, required=True)
    tr.add_argument("--faces", type=Path, required=True)
    tr.add_argument("--run", type=Path, required=True)
    tr.add_argument("--steps", type=int, default=TrainConfig.steps)
    exp = sub.add_parser("export", help="write the run's network as ONNX")
    exp.add_argument("--run", type=Path, required=True)
    exp.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.data, args.out)
    elif args.command == "train":
        train(args.faces, args.run, build_maker(args.data, "v3"), TrainConfig(steps=args.steps))
    else:
        export_onnx(load_run(args.run), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
