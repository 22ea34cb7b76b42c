"""Fail unless every module of src/dtlskit/core has at least MINIMUM % branch coverage.

Reads the data of ``coverage run --branch --source=dtlskit.core ...`` (the file given as the
first argument, default ``.coverage``) and prints one line per module.
"""

from __future__ import annotations

import io
import sys

import coverage

MINIMUM = 95.0


def main(argv: list[str]) -> int:
    data_file = argv[1] if len(argv) > 1 else ".coverage"
    cov = coverage.Coverage(data_file=data_file)
    cov.load()
    failed = []
    measured = sorted(
        path for path in cov.get_data().measured_files() if "/dtlskit/core/" in path
    )
    if not measured:
        print("coverage gate: no module of dtlskit/core was measured", file=sys.stderr)
        return 1
    for path in measured:
        percent = cov.report(morfs=[path], file=io.StringIO())  # statements and branches
        name = path[path.index("dtlskit/core/") :]
        mark = "ok" if percent >= MINIMUM else "BELOW"
        print(f"{name:32} {percent:6.1f}%  {mark}")
        if percent < MINIMUM:
            failed.append(name)
    if failed:
        print(f"coverage gate: below {MINIMUM:g}% branch coverage: {', '.join(failed)}")
        return 1
    print(f"coverage gate: every core module has at least {MINIMUM:g}% branch coverage")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
