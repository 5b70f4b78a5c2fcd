"""``python -m training SUBCOMMAND``: the training command line.

Subcommands register themselves in ``build_parser`` with ``set_defaults(run=...)``; each
runner returns the exit code. Exit codes: 0 success, 1 failure, 2 bad usage, 130 interrupted.
Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

from avinpaint.checkpoint import CheckpointError
from stream.blend import BLEND_MODES
from stream.errors import AvstreamError, UsageError
from training.prepare import (
    IdentityOptions,
    IdentityRule,
    PrepareInputs,
    PrepareOptions,
    prepare,
)

PROG = "python -m training"

Runner = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints the whole usage block; one line is easier to read in scripts.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = _Parser(prog=PROG, description="Prepare data, train, evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    _add_prepare(commands)
    _add_train(commands)
    _add_eval(commands)
    _add_export(commands)
    _add_pack(commands)
    return parser


def _add_prepare(commands: argparse._SubParsersAction[_Parser]) -> None:
    defaults = PrepareOptions()
    p = commands.add_parser(
        "prepare",
        help="videos, face images and speech -> a training dataset",
        description=(
            "Aligned face crops, VAD-trimmed 6 s speech segments, identity labels, psi "
            "embeddings, a JSONL manifest and a train/test split by identity. Resumable: "
            "run the same command again to continue after an interruption."
        ),
    )
    p.add_argument(
        "--videos",
        nargs="+",
        type=Path,
        default=[],
        metavar="DIR",
        help="talking-head videos (and folders of numbered frames); paired with their own audio",
    )
    p.add_argument(
        "--images",
        nargs="+",
        type=Path,
        default=[],
        metavar="DIR",
        help="face photos; identity from the parent folder unless a rule matches",
    )
    p.add_argument(
        "--speech",
        nargs="+",
        type=Path,
        default=[],
        metavar="DIR",
        help="speech files (flac, wav, mp3, ...); speaker from the parent folder "
        "unless a rule matches",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="DATASET",
        help="dataset folder (created; an existing one is resumed)",
    )
    p.add_argument(
        "--frame-step",
        type=int,
        default=defaults.frame_step,
        metavar="N",
        help="keep every N-th video frame (default %(default)s)",
    )
    p.add_argument(
        "--frames-fps",
        type=float,
        default=defaults.frames_fps,
        metavar="FPS",
        help="frame rate of folders of numbered frames (default %(default)s)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=defaults.test_fraction,
        metavar="F",
        help="fraction of identities in the test split (default %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of the split (default %(default)s)"
    )
    p.add_argument(
        "--identity-regex",
        action="append",
        default=[],
        metavar="REGEX",
        help="regex searched in 'INPUT_FOLDER_NAME/relative/path'; its group 'id' "
        "or first group is the identity; repeatable, tried before the built-in "
        "rules (VoxCeleb 9-digit ids -> voxNNNN, LibriSpeech -> libriNNN)",
    )
    p.add_argument(
        "--no-default-identity-rules",
        action="store_true",
        help="use only --identity-regex rules, then the folder/stem fallback",
    )
    p.add_argument(
        "--identity-alias",
        action="append",
        default=[],
        metavar="FROM=TO",
        help="rename an identity (e.g. two labels of one person); repeatable",
    )
    p.add_argument(
        "--min-speech-s",
        type=float,
        default=defaults.min_speech_s,
        metavar="S",
        help="a last piece of speech shorter than this makes no segment (default %(default)s)",
    )
    p.add_argument("--no-psi", action="store_true", help="skip the psi (SFace) embeddings")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    if not (args.videos or args.images or args.speech):
        raise UsageError("give at least one of --videos, --images, --speech")
    options = PrepareOptions(
        frame_step=args.frame_step,
        frames_fps=args.frames_fps,
        test_fraction=args.test_fraction,
        seed=args.seed,
        identity=IdentityOptions(
            rules=tuple(IdentityRule(pattern) for pattern in args.identity_regex),
            use_defaults=not args.no_default_identity_rules,
            aliases=tuple(_alias(text) for text in args.identity_alias),
        ),
        min_speech_s=args.min_speech_s,
        with_psi=not args.no_psi,
    )
    inputs = PrepareInputs(
        videos=tuple(args.videos), images=tuple(args.images), speech=tuple(args.speech)
    )
    summary = prepare(inputs, args.output, options, progress=not args.no_progress)
    print(f"prepared {summary.line()}")
    return 0


def _add_train(commands: argparse._SubParsersAction[_Parser]) -> None:
    p = commands.add_parser(
        "train",
        help="train the generator (stage 1 voice -> face, stage 2 inpainting)",
        description=(
            "Train or resume a run. The config (TOML or JSON; unknown keys are errors) is "
            "saved in the run folder; running the same command again resumes from the newest "
            "checkpoint. Without --config, an existing run folder's own config is used. For "
            "several processes, start it with torchrun (gloo on CPU, nccl on GPU)."
        ),
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="training config (.toml or .json)")
    p.add_argument("--run-dir", type=Path, metavar="DIR", help="run folder (created or resumed)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. stage1.steps=500 or data.dataset=DIR; repeatable",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as JSON and exit (a template for --config)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.trainer import CONFIG_FILE, train

    config_path: Path | None = args.config
    if config_path is None and args.run_dir is not None and (args.run_dir / CONFIG_FILE).is_file():
        config_path = args.run_dir / CONFIG_FILE
    config = load_config(config_path, args.set)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    if args.run_dir is None:
        raise UsageError("give --run-dir (or --print-config)")
    if not config.data.dataset:
        raise UsageError(
            "the config names no dataset: set data.dataset (e.g. --set data.dataset=DIR)"
        )
    with _stop_signals_interrupt():
        result = train(config, args.run_dir, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"trained {result.stage1_steps} stage-1 and {result.stage2_steps} stage-2 steps "
            f"in {result.wall_s:.0f} s; generator: {result.generator}"
        )
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGINT stop training the way Ctrl-C does: checkpoint, exit 130.

    ``kill``, ``timeout`` and schedulers send SIGTERM, and a shell starts ``cmd &`` with SIGINT
    ignored; without this a background run would die without saving, or not stop at all.
    """
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _add_eval(commands: argparse._SubParsersAction[_Parser]) -> None:
    p = commands.add_parser(
        "eval",
        help="compare a model with OpenCV baselines on held-out identities",
        description=(
            "Restore the same faces and masks of the held-out identities with the model (true "
            "speaker's audio, another speaker's audio, no audio) and OpenCV Telea and "
            "Navier-Stokes; write report.md, report.json and grid.png."
        ),
    )
    p.add_argument("model", help="generator checkpoint (.safetensors) or a shipped preset name")
    p.add_argument("--dataset", type=Path, required=True, metavar="DIR", help="prepared dataset")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="report folder")
    p.add_argument("--split", choices=["test", "train"], default="test", help="default: test")
    p.add_argument(
        "--people",
        choices=["with-speech", "all"],
        default="with-speech",
        help="the split's identities with their own speech (the talking heads; default), or "
        "all of them (the photo people too: many more strangers)",
    )
    p.add_argument(
        "--holes",
        choices=["mixture", "paper_box", "strokes", "face_mask"],
        default="mixture",
        help="hole masks (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the masks (default 0)")
    p.add_argument(
        "--max-faces", type=int, default=0, metavar="N", help="at most N faces (default: all)"
    )
    p.add_argument(
        "--grid-rows", type=int, default=8, metavar="N", help="faces in the grid (default 8)"
    )
    p.add_argument(
        "--dlib",
        choices=["auto", "on", "off"],
        default="auto",
        help="dlib descriptor and landmark metrics (auto: when the eval extra is installed)",
    )
    p.add_argument(
        "--blend",
        choices=BLEND_MODES,
        default="auto",
        help="how each fill is finished, as avstream's --blend: auto (as drawn unless the "
        "fill guard fails it, then Poisson-blended), always, never (default: auto)",
    )
    p.add_argument(
        "--no-blend", action="store_const", const="never", dest="blend", help="--blend never"
    )
    p.add_argument(
        "--no-guard",
        action="store_true",
        help="score every fill as finished, without the fill guard's safe fallback",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from training.evaluate import EvalOptions, evaluate

    if args.max_faces < 0 or args.grid_rows < 1:
        raise UsageError("--max-faces must be >= 0 and --grid-rows >= 1")
    report = evaluate(
        EvalOptions(
            dataset=args.dataset,
            model=args.model,
            output=args.output,
            split=args.split,
            people="all" if args.people == "all" else "with_speech",
            holes=args.holes,
            seed=args.seed,
            max_faces=args.max_faces,
            grid_rows=args.grid_rows,
            dlib=args.dlib,
            device=args.device,
            progress=not args.no_progress,
            blend=args.blend,
            guard=not args.no_guard,
        )
    )
    print(
        f"evaluated {report.faces} faces of {report.identities} identities in "
        f"{report.seconds:.0f} s: {report.report_md}, {report.report_json}, {report.grid_png}"
    )
    return 0


def _add_export(commands: argparse._SubParsersAction[_Parser]) -> None:
    p = commands.add_parser(
        "export",
        help="write a trained generator as weights to ship (float16 by default)",
        description=(
            "Copy a checkpoint's generator.safetensors to OUTPUT (atomically) with its config, "
            "float16 tensors unless --float32, and KEY=VALUE provenance metadata; prints the "
            "size, the sha256 and the largest output change float16 makes on a random face."
        ),
    )
    p.add_argument("model", type=Path, help="generator checkpoint (.safetensors)")
    p.add_argument("-o", "--output", type=Path, required=True, help="weights file to write")
    p.add_argument("--float32", action="store_true", help="keep float32 tensors")
    p.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="provenance metadata, e.g. trained_steps=...; repeatable",
    )
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    import hashlib

    import torch

    from avinpaint.checkpoint import load as load_generator
    from avinpaint.checkpoint import read_metadata, save
    from engines.export import speaker_input_shape

    metadata = {k: v for k, v in read_metadata(args.model).items() if k not in _RESERVED}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--meta takes KEY=VALUE, got {item!r}")
        metadata[key] = value
    if args.output.resolve() == args.model.resolve():
        raise UsageError("the output must not be the input checkpoint")
    model = load_generator(args.model)
    dtype = None if args.float32 else torch.float16
    save(model, args.output, metadata, dtype=dtype)
    shipped = load_generator(args.output)
    generator = torch.Generator().manual_seed(0)
    face = torch.rand(1, 3, 256, 256, generator=generator) * 2 - 1
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 120:220, 60:196] = 1.0
    speaker = torch.randn(speaker_input_shape(model.config), generator=generator)
    with torch.no_grad():
        change = model(face, mask, speaker).inpainted - shipped(face, mask, speaker).inpainted
    digest = hashlib.sha256(args.output.read_bytes()).hexdigest()
    print(
        f"wrote {args.output}: {args.output.stat().st_size:,} bytes, sha256 {digest}, "
        f"largest output change {float(change.abs().max()):.5f} in [-1, 1] units"
    )
    return 0


_RESERVED = frozenset({"format", "format_version", "config", "precision"})


def _add_pack(commands: argparse._SubParsersAction[_Parser]) -> None:
    from training.pack import PackOptions

    defaults = PackOptions()
    p = commands.add_parser(
        "pack",
        help="cut a prepared dataset down to a size budget (to carry it to a GPU machine)",
        description="Copy one split of a prepared dataset into a new folder of at most "
        "--max-mib: a seeded uniform sample of its crops as JPEG, "
        "their psi rows, the speech records and GE2E d-vectors (not the speech samples: "
        "GE2E models only). See training/pack.py.",
    )
    p.add_argument("dataset", type=Path, help="prepared dataset")
    p.add_argument("-o", "--output", type=Path, required=True, help="new folder to write")
    p.add_argument(
        "--max-mib",
        type=float,
        default=defaults.max_bytes / 2**20,
        help="size budget of the whole folder (default %(default)s)",
    )
    p.add_argument(
        "--jpeg-quality",
        type=int,
        default=defaults.jpeg_quality,
        help="JPEG quality of the crops; 0 keeps PNG (default %(default)s)",
    )
    p.add_argument("--split", choices=["train", "test"], default=defaults.split)
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the crop sample")
    p.set_defaults(run=_run_pack)


def _run_pack(args: argparse.Namespace) -> int:
    from training.pack import PackOptions, pack_dataset

    try:
        options = PackOptions(
            max_bytes=int(args.max_mib * 2**20),
            jpeg_quality=args.jpeg_quality,
            split=args.split,
            seed=args.seed,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    summary = pack_dataset(args.dataset, args.output, options, progress=True)
    print(f"packed {summary.line()} -> {args.output}")
    return 0


def _alias(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old or not new:
        raise UsageError(f"--identity-alias takes FROM=TO, got {text!r}")
    return old, new


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    run: Runner = args.run
    try:
        return run(args)
    except UsageError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (AvstreamError, OSError, CheckpointError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted; run it again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
