"""``dtlskit bench``: the benchmark harness, imported only when the command runs (it is an
optional part of the installation, ``benchmarks/`` of the repository installed as
``dtlskit.benchmarks``)."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any


def run(argv: list[str]) -> int:
    # benchmarks/ of the repository, installed as the subpackage dtlskit.benchmarks.
    run = importlib.import_module("dtlskit.benchmarks.run")
    return int(run.main(argv))


def add_parser(commands: Any) -> None:
    commands.add_parser(
        "bench",
        help="measure server CPU per message and per handshake, round trips, memory per "
        "session and silent loss against ceilings and floors measured in the same run "
        "(see: dtlskit bench --help)",
        add_help=False,
    )
