"""A small run of the hibernated-session fuzzer (``python -m dtlskit.testing.fuzz --hibernated
--cases 100000`` is the big one, in docs/hibernation.md): no exception out of the engine, no
replayed or mutated record delivered, every case counted, every session still echoes."""

from __future__ import annotations

from dtlskit.testing.fuzz import HIBERNATED_SUITES, fuzz_hibernated, main


def test_mutated_records_at_hibernated_sessions():
    report = fuzz_hibernated(5_000, seed=3)
    assert report.cases == 5_000
    assert report.escaped == 0, report.first_escape
    assert report.delivered == 0
    assert report.uncounted == 0
    assert report.sessions_still_echo
    assert report.passed
    # Every suite family was a target on both sides, and bad records were seen and counted.
    assert len(report.per_target) == 2 * len(HIBERNATED_SUITES)
    assert sum(v for k, v in report.drops.items() if k.endswith(":bad_record")) > 500


def test_command_line(capsys):
    assert main(["--hibernated", "--cases", "200", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "200 cases at hibernated sessions" in out and "0 not counted" in out
