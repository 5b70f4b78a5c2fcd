"""Audio-controlled identity (the AudioFace paper's Figure 7): restore the same covered face
with a female and a male voice and write the results side by side as one PNG.

    python scripts/swap_voices.py -o docs/images/swap_voices.png
    python scripts/swap_voices.py --model lite --face crop.png --female 2414 --male 3005

The voices are LibriSpeech readers whose gender ``SPEAKERS.TXT`` states; by default the
first female and the first male reader that the prepared dataset held out of training
(``splits.json``, identities ``libri<ID>``), so the network has never heard either voice.
The face is an aligned 256x256 crop: ``--face`` or, by default, a crop of the first held-out
identity of the dataset that has its own speech. The covered region is a box over the nose,
mouth and chin (``--box``). Speaker inputs come from ``avinpaint.speaker`` (the model's
encoder, GE2E for ``lite``) on the readers' speech, with long silences trimmed.

Figure: row 1 = masked input | female voice | male voice | no voice | ground truth;
row 2 = the audio faces (the network's voice-only face) under the three voice columns.
The mean absolute difference between the female and male restorations inside the hole is
printed (0 would mean the voice changes nothing). The fills are Poisson-blended into the face
as ``avstream`` does (``stream.blend``; ``--no-blend`` shows the network's composite).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import torch

import avinpaint
from avinpaint.ge2e import preprocess_wav
from avinpaint.model import Generator
from avinpaint.speaker import speaker_front_end
from stream.audio import read_audio_16k
from stream.blend import poisson_blend

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LIBRISPEECH = ROOT.parent / "shared" / "data" / "speech" / "librispeech"
DEFAULT_DATASET = Path("/tmp/avstream_dataset")
TILE = 256
LABEL_H = 28

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Reader:
    """A LibriSpeech reader: id, ``F`` or ``M``, and their utterance files."""

    speaker_id: str
    sex: str
    files: tuple[Path, ...]


def read_speakers_txt(path: Path) -> dict[str, str]:
    """``SPEAKERS.TXT`` -> reader id -> ``F``/``M``."""
    sexes: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(";") or "|" not in line:
            continue
        fields = [f.strip() for f in line.split("|")]
        if len(fields) >= 2 and fields[1] in ("F", "M"):
            sexes[fields[0]] = fields[1]
    return sexes


def find_readers(librispeech: Path) -> dict[str, Reader]:
    """Every reader with flac files under ``librispeech`` (any subset folder layout)."""
    sexes: dict[str, str] = {}
    for txt in sorted(librispeech.rglob("SPEAKERS.TXT")):
        sexes.update(read_speakers_txt(txt))
    files: dict[str, list[Path]] = {}
    for flac in sorted(librispeech.rglob("*.flac")):
        files.setdefault(flac.name.split("-", 1)[0], []).append(flac)
    return {
        sid: Reader(sid, sexes[sid], tuple(paths))
        for sid, paths in sorted(files.items())
        if sid in sexes
    }


def held_out_ids(dataset: Path) -> list[str]:
    """Identities of the dataset's test split (empty when there is no dataset)."""
    splits = dataset / "splits.json"
    if not splits.is_file():
        return []
    test: list[str] = json.loads(splits.read_text())["test"]
    return test


def pick_reader(
    readers: dict[str, Reader], sex: str, wanted: str | None, held: list[str]
) -> Reader:
    """The reader ``wanted``, else the first held-out reader of ``sex``, else the first one."""
    if wanted is not None:
        if wanted not in readers:
            raise SystemExit(
                f"LibriSpeech reader {wanted} not found (or has no sex in SPEAKERS.TXT)"
            )
        return readers[wanted]
    candidates = [r for r in readers.values() if r.sex == sex]
    held_set = {h.removeprefix("libri") for h in held if h.startswith("libri")}
    preferred = [r for r in candidates if r.speaker_id in held_set]
    chosen = (preferred or candidates)[:1]
    if not chosen:
        raise SystemExit(f"no LibriSpeech reader of sex {sex} found")
    return chosen[0]


def default_face(dataset: Path, identity: str | None = None) -> tuple[Path, str]:
    """The middle crop of ``identity`` or of the first held-out identity with its own
    speech."""
    held = set(held_out_ids(dataset))
    by_identity: dict[str, list[Path]] = {}
    with (dataset / "manifest.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            if row.get("kind") == "crop" and row["identity"] in held and row.get("audio"):
                by_identity.setdefault(row["identity"], []).append(dataset / row["image"])
    if not by_identity:
        raise SystemExit(f"no held-out crop with speech in {dataset}; pass --face")
    if identity is None:
        identity = sorted(by_identity)[0]
    elif identity not in by_identity:
        raise SystemExit(f"{identity} is not a held-out identity with speech in {dataset}")
    crops = sorted(by_identity[identity])
    return crops[len(crops) // 2], identity


def reader_speech(reader: Reader, seconds: float) -> torch.Tensor:
    """Up to ``seconds`` of the reader's speech (16 kHz), long silences trimmed."""
    parts: list[npt.NDArray[np.float32]] = []
    total = 0
    for path in reader.files:
        chunk = read_audio_16k(path)
        if chunk is None:
            continue
        parts.append(chunk.samples_16k)
        total += len(chunk.samples_16k)
        if total >= seconds * 16000:
            break
    if not parts:
        raise SystemExit(f"no audio decoded for reader {reader.speaker_id}")
    speech = torch.from_numpy(np.concatenate(parts)[: int(seconds * 16000)].copy())
    return preprocess_wav(speech)


def to_tensor(bgr: Image) -> torch.Tensor:
    """BGR uint8 (H, W, 3) -> RGB (1, 3, H, W) in [-1, 1]."""
    rgb = np.ascontiguousarray(bgr[..., ::-1]).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(rgb.transpose(2, 0, 1)).unsqueeze(0)


def to_image(t: torch.Tensor) -> Image:
    """RGB (1, 3, H, W) in [-1, 1] -> BGR uint8 (H, W, 3)."""
    rgb = ((t[0].clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).numpy().transpose(1, 2, 0)
    return np.ascontiguousarray(rgb[..., ::-1])


def label(tile: Image, text: str) -> Image:
    """``tile`` with a white caption bar above it."""
    bar = np.full((LABEL_H, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, tile])


def restore(
    model: Generator, face: torch.Tensor, mask: torch.Tensor, speaker_input: torch.Tensor
) -> tuple[Image, Image]:
    """(restored face, audio face) as BGR images."""
    with torch.inference_mode():
        out = model(face, mask, speaker_input)
    return to_image(out.inpainted), to_image(out.audio_face)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lite", help="checkpoint or preset (default: lite)")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--face", type=Path, default=None, help="aligned 256x256 face crop")
    parser.add_argument("--identity", default=None, help="held-out identity for the face")
    parser.add_argument("--librispeech", type=Path, default=DEFAULT_LIBRISPEECH)
    parser.add_argument("--female", default=None, help="LibriSpeech reader id")
    parser.add_argument("--male", default=None, help="LibriSpeech reader id")
    parser.add_argument("--seconds", type=float, default=6.0, help="speech per voice")
    parser.add_argument(
        "--box",
        type=int,
        nargs=4,
        default=(64, 112, 192, 236),
        metavar=("X0", "Y0", "X1", "Y1"),
        help="covered box in crop pixels (default: nose, mouth and chin)",
    )
    parser.add_argument(
        "--no-blend",
        action="store_true",
        help="show the network's composite without the Poisson blending avstream applies",
    )
    parser.add_argument("-o", "--output", type=Path, default=Path("swap_voices.png"))
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    if args.face is not None:
        face_path, who = args.face, args.face.stem
    else:
        face_path, who = default_face(args.dataset, args.identity)
    read = cv2.imread(str(face_path), cv2.IMREAD_COLOR)
    if read is None or read.shape[:2] != (TILE, TILE):
        raise SystemExit(f"{face_path}: not a 256x256 image")
    bgr: Image = np.asarray(read, dtype=np.uint8)

    readers = find_readers(args.librispeech)
    held = held_out_ids(args.dataset)
    female = pick_reader(readers, "F", args.female, held)
    male = pick_reader(readers, "M", args.male, held)

    model = avinpaint.load(args.model)
    front_end = speaker_front_end(model.config.speaker_encoder)
    with torch.inference_mode():
        inputs = {
            f"female voice ({female.speaker_id})": front_end.speaker_input(
                reader_speech(female, args.seconds)
            ),
            f"male voice ({male.speaker_id})": front_end.speaker_input(
                reader_speech(male, args.seconds)
            ),
        }
    zero = torch.zeros_like(next(iter(inputs.values())))
    inputs["no voice"] = zero

    x0, y0, x1, y1 = args.box
    mask_np = np.zeros((TILE, TILE), np.float32)
    mask_np[y0:y1, x0:x1] = 1.0
    mask = torch.from_numpy(mask_np)[None, None]
    face = to_tensor(bgr)
    masked = bgr.copy()
    masked[mask_np > 0] = 128

    restored: list[Image] = []
    audio_faces: list[Image] = []
    for speaker_input in inputs.values():
        out, audio_face = restore(model, face, mask, speaker_input)
        if not args.no_blend:
            out = poisson_blend(out, bgr, mask_np)
        restored.append(out)
        audio_faces.append(audio_face)

    hole = mask_np > 0
    diff = np.abs(restored[0].astype(np.float32) - restored[1].astype(np.float32))[hole].mean()
    names = list(inputs)
    top = [label(masked, "masked input")]
    top += [label(img, name) for img, name in zip(restored, names, strict=True)]
    top.append(label(bgr, f"ground truth ({who})"))
    blank = np.full((TILE + LABEL_H, TILE, 3), 255, np.uint8)
    bottom = [blank]
    bottom += [label(img, "audio face") for img in audio_faces]
    bottom.append(blank)
    figure = np.vstack([np.hstack(top), np.hstack(bottom)])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.output), figure, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise SystemExit(f"could not write {args.output}")
    print(
        f"{args.output}: face {face_path}, female {female.speaker_id}, male {male.speaker_id}; "
        f"mean |female - male| in the hole = {diff:.2f} / 255"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
