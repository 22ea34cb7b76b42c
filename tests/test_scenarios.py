"""The release scenarios (RELIABILITY.md, issue 8) at CI size: each scenario of
``python -m dtlskit.testing.scenarios --quick`` is one test here, so a failure names its scenario
and its figure. Select them with ``pytest -m scenarios`` (``-s`` prints the figures).

Scenarios that measure a defect still open on another branch are ``xfail(strict=True)`` with the
defect named: once the fix merges they pass, the strict xfail turns red, and the marker goes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dtlskit.testing import _harness, _socket_scenarios
from dtlskit.testing.fuzz import mutate
from dtlskit.testing.impairment import ImpairmentProxy
from dtlskit.testing.scenarios import SCENARIOS, Fixture, Options, format_table, run

OPEN_DEFECTS: dict[int, str] = {}
"""Scenario number -> the open defect it measures (strict xfail until the fix merges)."""
pytestmark = pytest.mark.scenarios  # pytest -m scenarios

SLOW = {3, 15}  # real time on real sockets: tens of seconds each


@pytest.fixture(scope="module")
def fixture():  # type: ignore[no-untyped-def]
    shared = Fixture()
    yield shared
    shared.close()


def params() -> list[object]:
    out: list[object] = []
    for number, spec in sorted(SCENARIOS.items()):
        if not spec.quick:
            continue
        marks = []
        if number in OPEN_DEFECTS:
            marks.append(pytest.mark.xfail(reason=OPEN_DEFECTS[number], strict=True))
        if number in SLOW:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(number, marks=marks, id=f"scenario-{number}"))
    return out


@pytest.mark.parametrize("number", params())
def test_scenario(number: int, fixture: Fixture) -> None:
    (result,) = run([number], Options(quick=True), fixture=fixture)
    print(f"\n{format_table([result])}")
    assert result.passed, f"scenario {number} ({result.title}): {result.figure}\n{result.notes}"


def test_every_table_row_is_a_scenario() -> None:
    assert set(range(1, 21)) == set(SCENARIOS)


def test_harness_reports_a_failing_scenario_and_exits_non_zero(tmp_path, monkeypatch) -> None:
    """A failing scenario makes the CLI exit 1 and names it; JSON carries the figures."""

    def failing(options: _harness.Options, fixture: _harness.Fixture) -> _harness.Outcome:
        return _harness.Outcome(False, "0/1", {"completed": 0}, "on purpose")

    def broken(options: _harness.Options, fixture: _harness.Fixture) -> _harness.Outcome:
        raise RuntimeError("scenario crashed")

    monkeypatch.setitem(SCENARIOS, 98, _harness.Scenario(98, "fails", "never", failing, False))
    monkeypatch.setitem(SCENARIOS, 99, _harness.Scenario(99, "breaks", "never", broken, False))
    from dtlskit.testing.scenarios import main

    out = tmp_path / "out.json"
    assert main(["--only", "1,98,99", "--json", str(out)]) == 1
    results = json.loads(out.read_text())
    assert [(r["number"], r["passed"]) for r in results] == [(1, True), (98, False), (99, False)]
    assert "RuntimeError: scenario crashed" in results[2]["notes"]
    assert results[0]["figures"]["retransmits_per_flight"]


def test_cli_lists_and_refuses_unknown_numbers() -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "dtlskit.testing.scenarios", "--list"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert all(f"{n:>3}  " in listing for n in SCENARIOS)
    refused = subprocess.run(
        [sys.executable, "-m", "dtlskit.testing.scenarios", "--only", "42"],
        capture_output=True, text=True,
    )
    assert refused.returncode == 2 and "no scenario numbered [42]" in refused.stderr


def test_slope_and_percentile() -> None:
    assert _harness.linear_slope([(0, 10), (1, 12), (2, 14)]) == pytest.approx(2.0)
    assert _harness.percentile([5, 1, 4, 2, 3], 0.95) == 5
    assert _harness.median([3, 1, 2]) == 2


def test_mutations_stay_bounded_and_vary() -> None:
    import random

    rng = random.Random(0)
    seed = bytes(range(60))
    outputs = {mutate(rng, seed, seed[::-1]) for _ in range(500)}
    assert len(outputs) > 200  # record-field mutations have few values each
    assert all(len(o) <= 65535 for o in outputs)


def test_impairment_proxy_delivers_duplicates_and_limits_size() -> None:
    """The proxy between two real UDP sockets: everything through both ways when unimpaired;
    two copies each way with duplicate=1; nothing over max_size (a small datagram sent after
    the big ones arrives, so the proxy has read them all)."""
    import socket

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(10.0)
    try:
        for settings, copies in (({}, 1), ({"duplicate": 1.0}, 2)):
            with ImpairmentProxy(server.getsockname(), seed=1, **settings) as proxy:
                client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                client.settimeout(10.0)
                for n in range(5):
                    client.sendto(b"m%d" % n, proxy.address)
                received = []
                for _ in range(5 * copies):
                    data, source = server.recvfrom(100)
                    received.append(data)
                    server.sendto(b"echo " + data, source)
                echoed = [client.recv(100) for _ in range(5 * copies * copies)]
                client.close()
            assert sorted(received) == sorted([b"m%d" % n for n in range(5)] * copies)
            assert sorted(set(echoed)) == [b"echo m%d" % n for n in range(5)]
            assert proxy.counters["to_server"] == 5
        with ImpairmentProxy(server.getsockname(), max_size=10) as proxy:
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for _ in range(5):
                client.sendto(b"x" * 20, proxy.address)
            client.sendto(b"small", proxy.address)
            assert server.recvfrom(100)[0] == b"small"
            client.close()
        assert proxy.counters["too_big"] == 5
    finally:
        server.close()


class _LeakyServer(_socket_scenarios.ServerProcess):
    """The soak's server, with an echo handler that keeps every channel it served."""

    def __init__(self, fixture, limits=None, arguments=None):  # type: ignore[no-untyped-def]
        super().__init__(fixture, limits, [*(arguments or []), "--leak-closed-sessions"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "quick, seconds", [(True, None), (False, 20.0)], ids=["quick", "full-mode-20s"]
)
def test_soak_fails_on_a_leak(quick, seconds, fixture, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Scenario 15 catches a server that keeps every ended session: in the CI-sized run and in
    full mode (100 clients, no tracemalloc shortcuts; 20 s instead of 120 to keep the suite
    short), the exact signals grow with every session served and the scenario fails."""
    monkeypatch.setattr(_socket_scenarios, "ServerProcess", _LeakyServer)
    (result,) = run([15], Options(quick=quick, soak_seconds=seconds), fixture=fixture)
    print(f"\n{format_table([result])}\n{result.notes}")
    assert not result.passed
    figures = result.figures
    assert figures["checkpoints"][-1]["kept"] == figures["checkpoints"][-1]["handlers_finished"]
    assert "gc_objects grew" in result.notes
    assert figures["gc_objects"]["per_session"]["second"] >= 1


def _checkpoint(served: int, **signals: int) -> dict[str, object]:
    base = {"gc_objects": 1000, "allocated_blocks": 5000, "traced_bytes": 10**6, "rss_kib": 40000}
    return {
        **base,
        **signals,
        "handlers_finished": served,
        "fds": 8,
        "tables": {"engine0._connections": 0},
        "quiet": True,
    }


def test_soak_judgement_compares_growth_with_sessions_served() -> None:
    """High-water in the first half passes; the same growth per session in the second half as
    in the first (a leak) fails; so do an open fd, a growing table and a checkpoint that never
    went quiet."""
    judge = _socket_scenarios.soak_judgement
    high_water = [
        _checkpoint(0),
        _checkpoint(5000, rss_kib=60000),
        _checkpoint(10000, rss_kib=60100),
    ]
    figures, problems = judge(high_water)
    assert problems == []
    assert figures["rss_kib"]["growth"] == {"first": 20000, "second": 100}
    leak = [
        _checkpoint(0),
        _checkpoint(5000, gc_objects=6000),
        _checkpoint(10000, gc_objects=11000),
    ]
    _, problems = judge(leak)
    assert problems == ["gc_objects grew +5,000 over 5,000 sessions (bound 450)"]
    fd = [_checkpoint(0), _checkpoint(10), {**_checkpoint(20), "fds": 9}]
    assert judge(fd)[1] == ["open fds 8 -> 9"]
    table = [_checkpoint(0), _checkpoint(10), {**_checkpoint(20), "tables": {"t": 3}}]
    assert judge(table)[1] == ["server table t grew [0, 0, 3]"]
    loud = [_checkpoint(0), {**_checkpoint(10), "quiet": False}, _checkpoint(20)]
    assert judge(loud)[1] == [
        f"sessions still open {_socket_scenarios.SOAK_QUIET_SECONDS:g} s after checkpoints [1]"
    ]


def test_soak_segments_keep_the_hour_long_run() -> None:
    """A warm-up quarter, then equal halves: one checkpoint per half at CI size, about one
    every 5 minutes in the 1-hour soak (progress lines)."""
    assert _socket_scenarios.soak_segments(30.0) == [7.5, 11.25, 11.25]
    hour = _socket_scenarios.soak_segments(3600.0)
    assert hour[0] == 900.0 and sum(hour) == pytest.approx(3600.0)
    assert len(hour) == 11 and len(set(hour[1:])) == 1
