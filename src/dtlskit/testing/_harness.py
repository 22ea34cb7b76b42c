"""What every release scenario shares: options, results, the registry, a PKI, small statistics.

A scenario is a function ``(options, fixture) -> Outcome`` registered under its number in
RELIABILITY.md's table with :func:`scenario`. It reports its figure (a short text for the table
and machine-readable numbers for ``--json``) and whether its pass criterion held. The runner in
:mod:`dtlskit.testing.scenarios` times it and turns an exception into a failure naming it.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..certs import PKIFiles, create_pki
from ..config import DTLSConfiguration

__all__ = [
    "SCENARIOS",
    "Fixture",
    "Options",
    "Outcome",
    "Result",
    "linear_slope",
    "median",
    "percentile",
    "rss_kib",
    "scenario",
]


@dataclass(frozen=True)
class Options:
    """How to run the scenarios."""

    quick: bool = False
    """CI-sized runs: fewer handshakes and cases, scaled-down timers where a scenario says so."""
    seed: int = 0
    """Seed of every random choice (network impairments, fuzz mutations)."""
    soak_seconds: float | None = None
    """Length of scenario 15 (default: 120 s, or 30 s with ``quick``)."""
    soak_clients: int | None = None
    """Clients of scenario 15 (default: 1,000; 100 for runs of 2 minutes or less)."""
    fuzz_cases: int | None = None
    """Mutated datagrams of scenario 19 (default: 100,000, or 10,000 with ``quick``)."""
    verbose: bool = False
    """Print progress lines while a scenario runs."""


@dataclass
class Outcome:
    """What a scenario function returns."""

    passed: bool
    figure: str
    """One line for the table, e.g. ``"100/100, median 1.0 s"``."""
    figures: dict[str, Any] = field(default_factory=dict)
    """Machine-readable figures (for ``--json``)."""
    notes: str = ""
    """Why it failed, or what the figure means."""


@dataclass
class Result:
    """One scenario's outcome, as the runner reports it."""

    number: int
    title: str
    criterion: str
    passed: bool
    figure: str
    figures: dict[str, Any]
    notes: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Fixture:
    """Material shared by the scenarios of one run: a throwaway PKI and configurations."""

    def __init__(self, directory: Path | None = None) -> None:
        self._tmp = None if directory is not None else tempfile.TemporaryDirectory()
        self.directory = directory if directory is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self._pki: PKIFiles | None = None

    @property
    def pki(self) -> PKIFiles:
        if self._pki is None:
            self._pki = create_pki(self.directory / "pki")
        return self._pki

    def server_config(self, **changes: Any) -> DTLSConfiguration:
        return DTLSConfiguration.server(self.pki.server_cert, self.pki.server_key, **changes)

    def client_config(self, **changes: Any) -> DTLSConfiguration:
        return DTLSConfiguration.client(
            cafile=self.pki.ca_cert, server_hostname="localhost", **changes
        )

    def path(self, name: str) -> Path:
        """A fresh directory for one scenario's files."""
        target = self.directory / name
        target.mkdir(parents=True, exist_ok=True)
        return target

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


ScenarioFunction = Callable[[Options, Fixture], Outcome]


@dataclass(frozen=True)
class Scenario:
    number: int
    title: str
    criterion: str
    run: ScenarioFunction
    quick: bool
    """Part of the ``--quick`` selection when no ``--only`` is given."""


SCENARIOS: dict[int, Scenario] = {}


def scenario(
    number: int, title: str, criterion: str, *, quick: bool = True
) -> Callable[[ScenarioFunction], ScenarioFunction]:
    """Register a scenario function under ``number``."""

    def register(function: ScenarioFunction) -> ScenarioFunction:
        if number in SCENARIOS:
            raise ValueError(f"scenario {number} registered twice")
        SCENARIOS[number] = Scenario(number, title, criterion, function, quick)
        return function

    return register


# -- small statistics -------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)


def linear_slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points; 0 with fewer than two distinct x."""
    if len(points) < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size of a process, in KiB (Linux ``/proc``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")
