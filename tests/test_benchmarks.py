"""The benchmark harness (benchmarks/): it runs end to end and reports what it measured.

Nothing here asserts a speed. A benchmark's figures depend on the machine and on whatever else
runs on it; what can be checked is that every figure was measured (present, positive), that
the ratios are computed from figures of the same run (``ratio == value / ceiling``), and that
the helpers the harness relies on (quantiles, addresses, kernel drop counters) are right.
"""

from __future__ import annotations

import importlib.util
import json
import math
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_SCRIPT = ROOT / "benchmarks" / "run.py"
QUICK_TIMEOUT = 300  # seconds; the quick run takes well under a minute on an idle machine


def _benchmarks() -> tuple[ModuleType, ModuleType, ModuleType]:
    """(run, report, common), installed as dtlskit.benchmarks or from the checkout."""
    try:
        from dtlskit.benchmarks import common, report, run
    except ImportError:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from benchmarks import common, report, run
    return run, report, common


run, report, common = _benchmarks()

EXPECTED_MEASURES = {
    "handshakes/s",
    *(
        f"echo {size} {what}"
        for size in ("64 B", "1 KiB")
        for what in ("msgs/s", "RTT p50 ms", "RTT p99 ms")
    ),
}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Any]:
    """One ``--quick`` run of the whole harness, as a user would start it, bounded in time."""
    directory = tmp_path_factory.mktemp("bench")
    output = directory / "x.json"
    process = subprocess.run(
        [sys.executable, str(RUN_SCRIPT), "--quick", "--json", str(output), "--flavour", "both"],
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT,
        cwd=directory,
    )
    document = json.loads(output.read_text()) if output.exists() else None
    return process, document


@pytest.mark.slow
def test_quick_run_succeeds_and_reports_progress(quick: Any) -> None:
    process, document = quick
    assert process.returncode == 0, process.stderr[-4000:]
    assert document is not None
    assert document["errors"] == {}
    # One progress line per step on stderr; the table on stdout.
    steps = [line for line in process.stderr.splitlines() if line.startswith("[")]
    assert any("in-memory" in line for line in steps)
    for flavour in ("asyncio", "sync"):
        assert any(line.split("] ", 1)[1].startswith(f"{flavour}: ") for line in steps)
        assert flavour in process.stdout
    assert "Ceilings measured in this run" in process.stdout
    assert "RSS KiB/session" in process.stdout


@pytest.mark.slow
def test_quick_run_measured_every_figure(quick: Any) -> None:
    _, document = quick
    memory = document["ceilings"]["in_memory"]
    for key in (
        "raw_pyopenssl_handshakes_per_s",
        "raw_pyopenssl_records_per_s",
        "dtlskit_engine_handshakes_per_s",
        "dtlskit_engine_records_per_s",
    ):
        assert memory[key] > 0, key
    flavours = {"asyncio", "sync"}
    if "uvloop" in document["servers"]:
        flavours.add("uvloop")
    else:
        assert "uvloop" in document["skipped"]
    assert set(document["servers"]) == flavours
    assert set(document["ceilings"]["plain_udp"]) == flavours
    sessions = document["meta"]["sessions"]
    assert sessions == 100  # --quick
    for flavour in flavours:
        figures = document["servers"][flavour]
        handshakes = figures["handshakes"]
        assert handshakes["completed"] > 0 and handshakes["per_s"] > 0
        assert handshakes["failed"] >= 0 and handshakes["server_cpu_ms_per_op"] > 0
        for source in (figures["echo"], document["ceilings"]["plain_udp"][flavour]):
            assert set(source) == {"64", "1024"}
            for echo in source.values():
                assert echo["msgs_per_s"] > 0 and echo["replies"] > 0
                assert 0 < echo["rtt_p50_ms"] <= echo["rtt_p99_ms"]
                assert echo["lost"] >= 0 and echo["socket_drops"] >= 0
                assert echo["sent"] >= echo["replies"]
                assert echo["server_cpu_s"] > 0 and echo["server_cpu_us_per_op"] > 0
        rss = figures["rss"]
        assert rss["established"] == sessions and rss["failed"] == 0
        assert rss["server_sessions"] == sessions  # the server really held them all
        assert rss["after_kib"] > rss["before_kib"] > 0
        assert rss["kib_per_session"] == (rss["after_kib"] - rss["before_kib"]) / sessions
        assert rss["kib_per_session"] > 0
        # The server's own counters agree that handshakes happened with cookies.
        statistics = figures["statistics"]
        assert statistics["hello_verify_requests_sent"] >= statistics["handshakes_completed"] > 0


@pytest.mark.slow
def test_quick_run_ratios_come_from_its_own_figures(quick: Any) -> None:
    _, document = quick
    seen: dict[str, set[str]] = {}
    for entry in document["ratios"]:
        value = report.lookup(document, entry["value_path"])
        ceiling = report.lookup(document, entry["ceiling_path"])
        assert entry["value"] == value and value > 0
        assert entry["ceiling"] == ceiling and ceiling > 0
        assert math.isclose(entry["ratio"], value / ceiling, rel_tol=1e-12)
        assert entry["value_path"][:2] == ["servers", entry["server"]]
        assert entry["ceiling_path"][0] == "ceilings"
        seen.setdefault(entry["server"], set()).add(entry["measure"])
    assert set(seen) == set(document["servers"])
    for measures in seen.values():
        assert measures == EXPECTED_MEASURES
    # Handshakes against the in-memory pyOpenSSL ceiling, echo against plain UDP on its loop.
    for entry in document["ratios"]:
        if entry["measure"] == "handshakes/s":
            assert entry["ceiling_path"] == [
                "ceilings",
                "in_memory",
                "raw_pyopenssl_handshakes_per_s",
            ]
        else:
            assert entry["ceiling_path"][:3] == ["ceilings", "plain_udp", entry["server"]]


@pytest.mark.slow
def test_plot_draws_the_ratios_when_matplotlib_is_installed(quick: Any, tmp_path: Path) -> None:
    _, document = quick
    assert report.can_plot(), "matplotlib is a test dependency: pip install -e '.[test]'"
    target = tmp_path / "ratios.png"
    report.plot(document, target)
    assert target.read_bytes().startswith(b"\x89PNG")


def test_plot_without_matplotlib_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # matplotlib is a test dependency: simulate a machine without it.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a),
    )
    status = run.main(["--quick", "--json", str(tmp_path / "x.json"), "--plot", "x.png"])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert "matplotlib" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "x.json").exists()  # nothing was run


def test_bad_flavour_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as raised:
        run.main(["--flavour", "trio"])
    assert raised.value.code == 2


def test_ratios_skip_what_was_not_measured() -> None:
    document: dict[str, Any] = {
        "ceilings": {
            "in_memory": {"raw_pyopenssl_handshakes_per_s": 400.0},
            "plain_udp": {"sync": {"64": {"msgs_per_s": 1000.0}}},
        },
        "servers": {
            "sync": {"handshakes": {"per_s": 100.0}, "echo": {"64": {"msgs_per_s": 250.0}}}
        },
    }
    report.add_ratios(document)
    got = {(e["measure"], e["ratio"]) for e in document["ratios"]}
    assert got == {("handshakes/s", 0.25), ("echo 64 B msgs/s", 0.25)}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert common.percentile(values, 0.5) == 50.0
    assert common.percentile(values, 0.99) == 99.0
    assert common.percentile(values, 1.0) == 100.0
    assert common.percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError):
        common.percentile([], 0.5)


def test_source_addresses_are_distinct_loopback_hosts() -> None:
    addresses = [common.source_address(i) for i in range(70_000)]
    assert len(set(addresses)) == len(addresses)
    for address in addresses[:300] + addresses[-300:]:
        octets = [int(part) for part in address.split(".")]
        assert octets[0] == 127 and 1 <= octets[1] <= 254 and 1 <= octets[3] <= 254
        assert address != "127.0.0.1"


def test_source_addresses_can_be_bound() -> None:
    for index in (0, 253, 254, 65_000):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((common.source_address(index), 0))


def test_udp_drops_counts_what_the_kernel_dropped() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind(("127.0.0.1", 0))
        address = receiver.getsockname()
        assert common.udp_drops([address]) == 0
        for _ in range(100):  # nobody reads: the small buffer overflows
            sender.sendto(b"x" * 1000, address)
        dropped = common.udp_drops([address])
        assert 0 < dropped < 100
        assert common.udp_drops([("127.0.0.1", 9)]) == 0  # another port counts nothing


def test_process_readings_of_this_process() -> None:
    import os

    assert common.rss_kib(os.getpid()) > 1000
    assert common.cpu_seconds(os.getpid()) > 0
    assert common.machine_busy_seconds() > 0
