"""Command-line glue for ``avstream engines build|list|clean`` and the ``--backend`` options
of every command that runs the model. ``stream.cli`` wires these in; this module prints only
from ``run_engines`` and turns library errors into ``stream.errors`` exceptions, which the
CLI reports as one line with exit code 1 (failure) or 2 (bad usage).

It lives in ``stream``, not ``engines``: opening a model for the CLI needs ``ModelInpainter``
and the CLI's errors, and the runtime layer must not import the video layer above it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from engines.cache import EngineCache, default_cache_dir
from stream.blend import BLEND_MODES
from stream.errors import AvstreamError, UsageError

if TYPE_CHECKING:
    from avinpaint.model import Generator
    from engines.backends import BackendOptions
    from stream.model_inpainter import ModelInpainter

# Spelled out rather than imported from engines.backends, which imports torch: building the
# parser must stay cheap for `avstream --help`. A test checks they match.
BACKEND_CHOICES: tuple[str, ...] = (
    "auto",
    "tensorrt",
    "onnxruntime",
    "torch",
    "onnxruntime-tensorrt",
    "onnxruntime-cuda",
    "onnxruntime-cpu",
)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--backend``, ``--blend`` (``--no-blend``), ``--no-guard``, ``--precision``,
    ``--max-batch``, ``--engine-cache``."""
    group = parser.add_argument_group("model and backend")
    group.add_argument(
        "--model",
        default="lite",
        metavar="NAME_OR_PATH",
        help="generator checkpoint (.safetensors) or shipped preset name (default: lite)",
    )
    group.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="runtime: auto tries tensorrt, onnxruntime (TensorRT, CUDA, CPU), torch in that "
        "order and logs why each is skipped (-v) (default: auto)",
    )
    group.add_argument(
        "--blend",
        choices=BLEND_MODES,
        default="auto",
        help="how the network's fill meets the visible face: auto shows it as drawn unless "
        "the fill guard fails it, then Poisson-blends it; always blends every fill (the "
        "blend takes the surrounding colour, which tints a face over a coloured shirt or "
        "background); never composites it as drawn (default: auto)",
    )
    group.add_argument(
        "--no-blend",
        action="store_const",
        const="never",
        dest="blend",
        help="the same as --blend never",
    )
    group.add_argument(
        "--no-guard",
        action="store_true",
        help="show every fill of the network as drawn: do not check it against the visible "
        "face nor replace a broken one (dark blotches, foreign colours, noise) by the safe "
        "Telea fill (stream.guard)",
    )
    group.add_argument(
        "--precision",
        choices=["auto", "fp16", "fp32"],
        default="auto",
        help="TensorRT precision; auto = FP16 where the GPU has fast FP16 (default: auto)",
    )
    group.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="most faces per network call; TensorRT profiles cover 1..N (default: 8)",
    )
    group.add_argument(
        "--engine-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"exported graphs and engines (default: {default_cache_dir()}; "
        "$AVSTREAM_CACHE_DIR overrides)",
    )


def parse_backend_arguments(argv: list[str]) -> argparse.Namespace:
    """The arguments of ``add_backend_arguments`` parsed from ``argv``, every other one at its
    default: what benchmarks and tests pass to ``open_model_inpainter``."""
    parser = argparse.ArgumentParser()
    add_backend_arguments(parser)
    return parser.parse_args(argv)


def backend_options(args: argparse.Namespace, threads: int = 0) -> BackendOptions:
    """``BackendOptions`` from the arguments of ``add_backend_arguments``."""
    from engines.backends import BackendOptions

    if args.max_batch < 1:
        raise UsageError(f"--max-batch must be >= 1, got {args.max_batch}")
    return BackendOptions(
        cache_dir=args.engine_cache or default_cache_dir(),
        max_batch=args.max_batch,
        precision=args.precision,
        threads=threads,
    )


def open_model_inpainter(args: argparse.Namespace, threads: int = 0) -> ModelInpainter:
    """A ``ModelInpainter`` for ``--model`` on ``--backend``; use it
    as a context manager. Raises ``AvstreamError`` when the model or no backend can load."""
    from engines.backends import BackendError, select_backend
    from stream.guard import DEFAULT_GUARD
    from stream.model_inpainter import ModelInpainter

    options = backend_options(args, threads)
    model = _load_model(args.model)
    try:
        selection = select_backend(args.backend, model, options)
    except BackendError as exc:
        raise AvstreamError(str(exc)) from exc
    guard = None if args.no_guard else DEFAULT_GUARD
    return ModelInpainter(
        selection.backend, max_batch=options.max_batch, blend=args.blend, guard=guard
    )


def add_engines_subparser(
    sub: argparse._SubParsersAction[Any], parser_class: type[argparse.ArgumentParser]
) -> None:
    """The ``engines`` command with ``build``, ``list`` and ``clean``."""
    engines = sub.add_parser(
        "engines",
        help="export ONNX graphs and build TensorRT engines ahead of time; list or clean them",
        description="Manage the engine cache: exported ONNX graphs (used by onnxruntime) and "
        "TensorRT engines, built once per model, GPU type and TensorRT version.",
    )
    actions = engines.add_subparsers(
        dest="engines_command", required=True, parser_class=parser_class
    )
    build = actions.add_parser(
        "build",
        help="export the ONNX graphs and build TensorRT engines for this GPU",
        description="Export --model to ONNX and build its TensorRT engines (FP16 with "
        "normalisation in FP32, batch 1..--max-batch) into the cache. Another process "
        "building the same engine is waited for, not duplicated.",
    )
    add_backend_arguments(build)
    build.add_argument(
        "--onnx-only",
        action="store_true",
        help="export the ONNX graphs only (hosts without TensorRT)",
    )
    listing = actions.add_parser("list", help="list cached graphs and engines")
    _add_cache_argument(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    clean = actions.add_parser("clean", help="remove cached graphs and engines")
    _add_cache_argument(clean)
    clean.add_argument(
        "--kind",
        choices=["onnx", "tensorrt", "all"],
        default="all",
        help="what to remove (default: all)",
    )
    clean.add_argument(
        "--timing",
        action="store_true",
        help="also remove TensorRT timing caches and onnxruntime's TensorRT engine cache",
    )


def run_engines(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``avstream engines ...``; returns the exit code (0)."""
    if args.engines_command == "build":
        _build(args, out)
    elif args.engines_command == "list":
        _list(args, out)
    elif args.engines_command == "clean":
        _clean(args, out)
    else:
        raise UsageError(f"unknown engines command {args.engines_command!r}")
    return 0


def _add_cache_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"cache folder (default: {default_cache_dir()})",
    )


def _load_model(name_or_path: str) -> Generator:
    from avinpaint.checkpoint import CheckpointError, load

    try:
        return load(name_or_path)
    except CheckpointError as exc:
        raise AvstreamError(str(exc)) from exc


def _build(args: argparse.Namespace, out: TextIO) -> None:
    from engines.backends import BackendError
    from engines.export import ExportOptions, export_cached
    from engines.tensorrt import build_engines, unavailable_reason

    options = backend_options(args)
    if not args.onnx_only:
        reason = unavailable_reason(options.device_id)
        if reason is not None:
            raise AvstreamError(
                f"cannot build TensorRT engines here: {reason} (--onnx-only exports the "
                "ONNX graphs alone)"
            )
    model = _load_model(args.model)
    try:
        # The FP32 graphs always (onnxruntime on the CPU); the mixed FP16 ones as well when
        # FP16 is asked for (the GPU providers and TensorRT build from those).
        variants = [False, True] if options.precision == "fp16" else [False]
        for fp16 in variants:
            exported = export_cached(
                model, EngineCache(options.cache_dir), ExportOptions(fp16=fp16)
            )
            precision = exported.inpaint.precision
            print(
                f"onnx {precision}: {exported.speaker.path} and {exported.inpaint.path.name}",
                file=out,
            )
        if not args.onnx_only:
            speaker, inpaint, precision, gpu = build_engines(model, options)
            print(f"tensorrt {precision} for {gpu.name}: {speaker}", file=out)
            print(f"tensorrt {precision} for {gpu.name}: {inpaint}", file=out)
    except BackendError as exc:
        raise AvstreamError(str(exc)) from exc


def _list(args: argparse.Namespace, out: TextIO) -> None:
    cache = EngineCache(args.engine_cache or default_cache_dir())
    entries = cache.entries()
    if args.json:
        rows = [
            {
                "kind": e.kind,
                "digest": e.digest,
                "path": str(e.path),
                "key": dict(e.key),
                "info": dict(e.info),
                "created_unix": e.created_unix,
                "size_bytes": e.size_bytes,
            }
            for e in entries
        ]
        print(json.dumps(rows, indent=2), file=out)
        return
    if not entries:
        print(f"no cached graphs or engines in {cache.root}", file=out)
        return
    for e in entries:
        created = datetime.datetime.fromtimestamp(e.created_unix).strftime("%Y-%m-%d %H:%M")
        what = e.info.get("graph", "?")
        detail = f" {e.info.get('precision', 'fp32')}" if e.kind == "onnx" else ""
        if e.kind == "tensorrt":
            detail = (
                f" {e.key.get('precision')} batch {e.key.get('profile')} "
                f"{e.key.get('gpu_name')} sm{e.key.get('compute_capability')} "
                f"TensorRT {e.key.get('tensorrt_version')}"
            )
        size_mb = e.size_bytes / 1e6
        print(f"{e.kind:9} {what:16} {size_mb:8.1f} MB {created}{detail}  {e.path}", file=out)


def _clean(args: argparse.Namespace, out: TextIO) -> None:
    cache = EngineCache(args.engine_cache or default_cache_dir())
    kinds = None if args.kind == "all" else [args.kind]
    removed = cache.clean(kinds, shared=args.timing)
    print(f"removed {len(removed)} item(s) from {cache.root}", file=out)
