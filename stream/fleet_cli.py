"""Command-line glue for ``avstream fleet`` (``stream.fleet`` does the work)."""

from __future__ import annotations

import argparse
from typing import Any


def add_fleet_subparser(
    sub: argparse._SubParsersAction[Any], parser_class: type[argparse.ArgumentParser]
) -> None:
    """The ``fleet`` command."""


def run_fleet_command(args: argparse.Namespace) -> int:
    """``avstream fleet``."""
    return 1
