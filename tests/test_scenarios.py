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

from dtlskit.testing import _harness
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
