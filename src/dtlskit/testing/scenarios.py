"""The release scenarios of RELIABILITY.md as one runnable harness, each reporting its figure.

Run all of them, a selection, or CI-sized versions::

    python -m dtlskit.testing.scenarios                 # all, full size
    python -m dtlskit.testing.scenarios --quick         # CI-sized (what the test suite runs)
    python -m dtlskit.testing.scenarios --only 3,8 --json out.json
    python -m dtlskit.testing.scenarios --only 15 --soak-seconds 3600    # the 1-hour soak
    python -m dtlskit.testing.scenarios --only 19 --fuzz-cases 100000    # the 100k fuzz run

Scenarios 1-15 are RELIABILITY.md's table. 16-18 measure attacks on fairness (issue 8):
legitimate handshakes while attackers hold half-open slots from a few IPv4 addresses (real
sockets) or from one IPv6 /64 (engine level), and while a spoofer floods ClientHellos from the
victim's address. 19 fuzzes the record layer and the handshake after a valid cookie. 20 measures
the memory one peer can make the server hold (a handler that does not read).

Each scenario prints one row: number, PASS/FAIL, its figure, its wall time. The exit status is
1 when any scenario misses its pass criterion, 0 otherwise. ``docs/reliability.md`` lists the
figures of the last full run and what each scenario does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path

from . import _attack_scenarios, _engine_scenarios, _socket_scenarios, fuzz
from ._harness import SCENARIOS, Fixture, Options, Result

__all__ = ["Options", "Result", "format_table", "main", "run"]

_REGISTERED = (_engine_scenarios, _socket_scenarios, _attack_scenarios, fuzz)


def run(
    numbers: Iterable[int] | None = None,
    options: Options | None = None,
    *,
    fixture: Fixture | None = None,
    report: bool = False,
) -> list[Result]:
    """Run the given scenarios (default: all, or the quick selection with ``options.quick``)
    and return their results, in order. With ``report``, print each row as it finishes."""
    options = options or Options()
    if numbers is None:
        numbers = [n for n, s in sorted(SCENARIOS.items()) if s.quick or not options.quick]
    chosen = list(numbers)
    unknown = [n for n in chosen if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"no scenario numbered {unknown}; known: {sorted(SCENARIOS)}")
    own = fixture is None
    fixture = fixture or Fixture()
    results = []
    try:
        for number in chosen:
            spec = SCENARIOS[number]
            started = time.monotonic()
            try:
                outcome = spec.run(options, fixture)
                passed, figure, figures, notes = (
                    outcome.passed,
                    outcome.figure,
                    outcome.figures,
                    outcome.notes,
                )
            except Exception as exc:  # a scenario that breaks is a failed scenario, named
                passed, figure, figures = False, "error", {}
                notes = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            result = Result(
                number,
                spec.title,
                spec.criterion,
                passed,
                figure,
                figures,
                notes,
                time.monotonic() - started,
            )
            results.append(result)
            if report:
                print(format_row(result), flush=True)
                if not passed and notes:
                    print("      " + notes.replace("\n", "\n      "), flush=True)
    finally:
        if own:
            fixture.close()
    return results


def format_row(result: Result) -> str:
    status = "PASS" if result.passed else "FAIL"
    return f"{result.number:>3}  {status}  {result.seconds:6.1f}s  {result.title}\n" + (
        f"                      {result.figure}"
    )


def format_table(results: Sequence[Result]) -> str:
    """A Markdown table of results (as in docs/reliability.md)."""
    lines = ["| # | scenario | pass | result | figure | wall time |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r.number} | {r.title} | {r.criterion} | {'PASS' if r.passed else 'FAIL'} "
            f"| {r.figure} | {r.seconds:.1f} s |"
        )
    return "\n".join(lines)


def _numbers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--only takes numbers like 3,8, not {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dtlskit.testing.scenarios",
        description="Run the release scenarios (RELIABILITY.md) and print each one's figure. "
        "Exits 1 if any scenario misses its pass criterion.",
    )
    parser.add_argument("--only", type=_numbers, help="comma-separated scenario numbers, e.g. 3,8")
    parser.add_argument("--quick", action="store_true", help="CI-sized runs")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table at the end")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--soak-seconds", type=float, help="length of scenario 15")
    parser.add_argument("--soak-clients", type=int, help="clients of scenario 15")
    parser.add_argument("--fuzz-cases", type=int, help="mutated datagrams of scenario 19")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress lines")
    args = parser.parse_args(argv)
    if args.list:
        for number, spec in sorted(SCENARIOS.items()):
            print(f"{number:>3}  {spec.title}  [pass: {spec.criterion}]")
        return 0
    options = Options(
        quick=args.quick,
        seed=args.seed,
        soak_seconds=args.soak_seconds,
        soak_clients=args.soak_clients,
        fuzz_cases=args.fuzz_cases,
        verbose=args.verbose,
    )
    try:
        results = run(args.only, options, report=True)
    except ValueError as exc:
        parser.error(str(exc))
    failed = [r.number for r in results if not r.passed]
    print(
        f"\n{len(results) - len(failed)}/{len(results)} scenarios passed"
        + (f"; failed: {', '.join(map(str, failed))}" if failed else "")
    )
    if args.markdown:
        print("\n" + format_table(results))
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in results], indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
