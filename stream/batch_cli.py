"""Command-line glue for ``avstream batch`` (``stream.batch`` does the work): the parser,
the progress bar and the summary. ``stream.cli`` wires it in and turns errors into one line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream.batch import (
    LEDGER_NAME,
    SUMMARY_NAME,
    BatchSettings,
    BatchSummary,
    FileRecord,
    Job,
    WorkerInfo,
    check_jobs,
    expand_inputs,
    option_values,
    read_manifest,
    run_batch,
)
from stream.engines_cli import add_backend_arguments
from stream.errors import OutputError, UsageError

GPU_BACKENDS = frozenset({"tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda"})
"""Backends that cannot run without a GPU: their workers ask Ray for one by default."""
_NOT_RECORDED = frozenset({"engine_cache"})
"""Process options that do not change the output (a done file is not redone for them)."""


def add_batch_subparser(
    sub: argparse._SubParsersAction[Any],
    parser_class: type[argparse.ArgumentParser],
    add_process_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """The ``batch`` command: inputs, ``-o DIR``, every ``process`` option (added by
    ``add_process_options``) and the Ray options."""
    batch = sub.add_parser(
        "batch",
        help="restore faces in many files, on this machine or a Ray cluster",
        description=(
            "Restore many files with the process pipeline, one Ray task per file on a pool "
            "of workers that each open the model once. Outputs mirror the inputs' names "
            f"under -o DIR; DIR/{LEDGER_NAME} records every file, so a re-run skips what is "
            "done and redoes what changed or failed. A worker that dies is restarted and its "
            "file retried; a file that cannot be read is recorded as failed and the others "
            "go on. Every process option applies to every file."
        ),
    )
    batch.add_argument(
        "inputs", nargs="*", help="video files, folders (searched recursively) or globs"
    )
    batch.add_argument(
        "--manifest",
        type=Path,
        metavar="CSV|JSONL",
        help="also take the files listed here: columns/keys 'input' and optional 'output' "
        "(relative outputs are under -o DIR)",
    )
    batch.add_argument(
        "-o", "--output-dir", type=Path, required=True, metavar="DIR", help="output folder"
    )
    add_process_options(batch)
    add_backend_arguments(batch)
    ray_group = batch.add_argument_group("Ray")
    ray_group.add_argument(
        "--address",
        metavar="auto|HOST:PORT|ray://HOST:PORT",
        help="join this Ray cluster (default: start a local Ray in this process)",
    )
    ray_group.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes, each with its own model (default: as many as the cluster's "
        "CPUs and GPUs allow)",
    )
    ray_group.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        metavar="N",
        help="CPUs Ray reserves for each worker (default: 1)",
    )
    ray_group.add_argument(
        "--gpus-per-worker",
        type=float,
        metavar="N",
        help="GPUs Ray reserves for each worker (default: 1 for the tensorrt and "
        "onnxruntime-cuda/-tensorrt backends, else 0)",
    )
    ray_group.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="attempts after the first for a file whose worker died (default: 2)",
    )
    ray_group.add_argument(
        "--local-cpus",
        type=int,
        metavar="N",
        help="CPUs of the local Ray (no --address) (default: all of this machine's)",
    )
    batch.add_argument("--force", action="store_true", help="redo files the ledger says are done")
    batch.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    batch.add_argument(
        "--json", action="store_true", help="print the summary as JSON instead of a line"
    )
    scratch = argparse.ArgumentParser(add_help=False)
    add_process_options(scratch)
    add_backend_arguments(scratch)
    dests = tuple(a.dest for a in scratch._actions if a.dest not in _NOT_RECORDED)
    batch.set_defaults(process_dests=dests)


def batch_settings(args: argparse.Namespace) -> BatchSettings:
    """``BatchSettings`` from the parsed ``batch`` arguments."""
    gpus = args.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if args.backend in GPU_BACKENDS else 0.0
    if args.address is not None and args.local_cpus is not None:
        raise UsageError("--local-cpus is for a local Ray; not with --address")
    return BatchSettings(
        address=args.address,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=gpus,
        retries=args.retries,
        force=args.force,
        local_cpus=args.local_cpus,
    )


def batch_jobs(args: argparse.Namespace) -> tuple[Job, ...]:
    """The jobs of the positional inputs and ``--manifest``."""
    if not args.inputs and args.manifest is None:
        raise UsageError("give input files, folders or globs, or --manifest")
    jobs = expand_inputs(args.inputs, args.output_dir)
    if args.manifest is not None:
        jobs += read_manifest(args.manifest, args.output_dir)
    check_jobs(jobs)
    return jobs


def run_batch_command(args: argparse.Namespace) -> int:
    """``avstream batch``: run, show progress, print and save the summary; exit 1 when any
    file failed."""
    from tqdm import tqdm

    from stream import cli

    settings = batch_settings(args)
    # Fail on a bad option here, once, rather than in every worker.
    cli.process_options(args)
    cli.occlusion_model(args)
    jobs = batch_jobs(args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    options = option_values(args, args.process_dests)
    started = time.perf_counter()
    frames = 0
    with tqdm(
        total=len(jobs),
        unit="file",
        desc="batch",
        disable=args.no_progress or None,  # None: hide when stderr is not a terminal
        dynamic_ncols=True,
    ) as bar:

        def on_plan(pending: int, skipped: int) -> None:
            bar.update(skipped)

        def on_workers(infos: list[WorkerInfo]) -> None:
            nodes = len({i.node_id for i in infos})
            bar.write(f"avstream batch: {len(infos)} workers on {nodes} node(s)", file=sys.stderr)

        def on_record(record: FileRecord) -> None:
            nonlocal frames
            frames += record.frames
            rate = frames / max(time.perf_counter() - started, 1e-6)
            bar.set_postfix_str(f"{rate:.1f} frames/s", refresh=False)
            bar.update(1)
            if record.status == "failed":
                bar.write(f"avstream batch: failed {record.input}: {record.error}", file=sys.stderr)

        try:
            summary = run_batch(
                jobs,
                args,
                options,
                args.output_dir / LEDGER_NAME,
                settings,
                on_plan=on_plan,
                on_record=on_record,
                on_workers=on_workers,
            )
        except KeyboardInterrupt:
            bar.close()
            print(
                "avstream batch: interrupted; finished files are kept and in the ledger, "
                "files in progress were removed; run the same command to resume",
                file=sys.stderr,
            )
            return 130
    _save_summary(summary, args.output_dir / SUMMARY_NAME)
    if args.json:
        print(json.dumps(summary.to_dict(), sort_keys=True))
    else:
        print(f"avstream batch: {summary.line()}; ledger {summary.ledger}")
    return 1 if summary.failed else 0


def _save_summary(summary: BatchSummary, path: Path) -> None:
    try:
        path.write_text(json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
