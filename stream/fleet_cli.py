"""Command-line glue for ``avstream fleet`` (``stream.fleet`` does the work): the parser and
the aggregated stats line / JSON. ``stream.cli`` wires it in and turns errors into one line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from stream.batch_cli import GPU_BACKENDS
from stream.errors import UsageError


def add_fleet_subparser(
    sub: argparse._SubParsersAction[Any], parser_class: type[argparse.ArgumentParser]
) -> None:
    """The ``fleet`` command."""
    fleet = sub.add_parser(
        "fleet",
        help="restore many live cameras, each a Ray actor that is restarted when it fails",
        description=(
            "Run every camera of a TOML file as an 'avstream live' session in a Ray actor of "
            "its own: [defaults] holds live options for every camera, each [[camera]] its "
            "name, source and own live options (serve, record, region, inpainter, ...). A "
            "camera whose process dies, or whose source fails for good, is started again. "
            "One stats line for all cameras every --stats-every-s. Stop with Ctrl-C or "
            "SIGTERM: every recording is finalised. See docs/scale-out.md."
        ),
    )
    fleet.add_argument("cameras", type=Path, help="cameras.toml")
    fleet.add_argument(
        "--address",
        metavar="auto|HOST:PORT|ray://HOST:PORT",
        help="join this Ray cluster (default: start a local Ray in this process)",
    )
    fleet.add_argument(
        "--local-cpus",
        type=int,
        metavar="N",
        help="CPUs of the local Ray (no --address) (default: all of this machine's)",
    )
    fleet.add_argument(
        "--cpus-per-camera",
        type=float,
        default=1.0,
        metavar="N",
        help="CPUs Ray reserves for each camera (default: 1)",
    )
    fleet.add_argument(
        "--gpus-per-camera",
        type=float,
        metavar="N",
        help="GPUs Ray reserves for each camera (default: 1 when a camera's backend needs a "
        "GPU, else 0)",
    )
    fleet.add_argument(
        "--stats-every-s",
        type=float,
        default=5.0,
        help="print the fleet's stats this often (default: 5)",
    )
    fleet.add_argument(
        "--restart-delay-s",
        type=float,
        default=2.0,
        help="wait this long before restarting a camera's failed session (default: 2)",
    )
    fleet.add_argument(
        "--json",
        action="store_true",
        help="print each stats report as one JSON line on stdout (the text line goes to "
        "stderr either way)",
    )


def run_fleet_command(args: argparse.Namespace) -> int:
    """``avstream fleet``: run until Ctrl-C / SIGTERM, then stop every camera cleanly."""
    from stream.fleet import FleetSettings, FleetStats, live_arguments, parse_fleet, run_fleet

    try:
        text = args.cameras.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {args.cameras}: {exc.strerror}") from None
    cameras = parse_fleet(text, str(args.cameras))
    gpus = args.gpus_per_camera
    if gpus is None:
        backends = {live_arguments(c.argv).backend for c in cameras}
        gpus = 1.0 if backends & GPU_BACKENDS else 0.0
    settings = FleetSettings(
        address=args.address,
        local_cpus=args.local_cpus,
        cpus_per_camera=args.cpus_per_camera,
        gpus_per_camera=gpus,
        stats_every_s=args.stats_every_s,
        restart_delay_s=args.restart_delay_s,
    )
    names = ", ".join(c.name for c in cameras)
    print(f"avstream fleet: starting {len(cameras)} cameras ({names}); Ctrl-C to stop", flush=True)

    def on_stats(stats: FleetStats) -> None:
        print(f"avstream fleet: {stats.line()}", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps(stats.to_dict(), sort_keys=True, default=str), flush=True)

    report = run_fleet(cameras, settings, on_stats=on_stats)
    restarts = ", ".join(f"{name} {count}" for name, count in report.restarts.items())
    print(
        f"avstream fleet: stopped after {report.wall_s:.0f} s; restarts: {restarts}; "
        f"recordings finalised: {len(report.recordings)}",
        flush=True,
    )
    for path in report.recordings:
        print(f"avstream fleet: wrote {path}", flush=True)
    return 0
