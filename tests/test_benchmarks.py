"""The benchmark harness (benchmarks/): it runs end to end and reports what it measured.

Nothing here asserts a speed. A benchmark's figures depend on the machine and on whatever else
runs on it; what can be checked is that every figure was measured (present, positive), that
the ratios are computed from figures of the same run (``ratio == value / reference``), that the
load generators count what they claim to (a reply, a loss), and that the helpers the harness
relies on (quantiles, addresses, kernel drop counters, pinning, the environment of a server
process) are right.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import dtlskit

ROOT = Path(__file__).resolve().parents[1]
RUN_SCRIPT = ROOT / "benchmarks" / "run.py"
QUICK_TIMEOUT = 300  # seconds; the quick run takes under a minute on an idle machine


def _benchmarks() -> tuple[ModuleType, ...]:
    """(run, report, common, cload, servers), installed as dtlskit.benchmarks or from the
    checkout."""
    try:
        from dtlskit.benchmarks import cload, common, report, run, servers
    except ImportError:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from benchmarks import cload, common, report, run, servers
    return run, report, common, cload, servers


run, report, common, cload, servers = _benchmarks()

ACCELERATOR = getattr(dtlskit, "ACCELERATOR", "python")
C_TOOLCHAIN = shutil.which("cc") is not None and Path("/usr/include/openssl/ssl.h").exists()
MULTICORE = hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1

ECHO_MEASURES = {
    "CPU/msg 64 B vs plain UDP",
    "CPU/msg 1 KiB vs plain UDP",
    "msgs/s 64 B vs plain UDP",
    "p99 RTT 64 B vs plain UDP",
    "CPU/msg 64 B vs pyOpenSSL floor",
    "CPU/handshake vs pyOpenSSL floor",
}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """One ``--quick`` run of the whole harness, as a user would start it, bounded in time."""
    directory = tmp_path_factory.mktemp("bench")
    output, picture = directory / "x.json", directory / "x.png"
    command = [sys.executable, str(RUN_SCRIPT), "--quick", "--json", str(output)]
    process = subprocess.run(
        [*command, "--plot", str(picture)],
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT,
        cwd=directory,
    )
    document = json.loads(output.read_text()) if output.exists() else None
    return process, document, picture


def _dtlskit_rows(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in document["rows"].items() if r["role"] == "dtlskit"}


@pytest.mark.slow
def test_quick_run_succeeds_and_reports_progress(quick: Any) -> None:
    process, document, _ = quick
    assert process.returncode == 0, process.stderr[-4000:]
    assert document is not None
    assert document["errors"] == {}
    steps = [line for line in process.stderr.splitlines() if line.startswith("[")]
    for key in document["rows"]:
        assert any(line.split("] ", 1)[1].startswith(f"{key}: ") for line in steps), key
    assert any("newcomer's program" in line for line in steps)
    for section in ("Figures", "Ratios", "Memory per established session", "Summary: "):
        assert section in process.stdout, section
    assert "The newcomer's program" in process.stdout
    assert "Issue 14 figures to reach" in process.stdout
    # The active path is named, in the table and in the document.
    assert f"accelerator installed: {ACCELERATOR}" in process.stdout
    assert document["meta"]["accelerator_installed"] == ACCELERATOR


@pytest.mark.slow
def test_quick_run_uses_the_c_load_generator_where_it_can_be_built(quick: Any) -> None:
    _, document, _ = quick
    if C_TOOLCHAIN:
        assert document["meta"]["load_generator"] == "c"
        assert "system OpenSSL" in document["meta"]["load_generator_description"]
    else:
        assert document["meta"]["load_generator"] == "python"
        assert "fallback" in document["meta"]["load_generator_description"]


@pytest.mark.slow
def test_quick_run_measured_every_row(quick: Any) -> None:
    _, document, _ = quick
    rows = document["rows"]
    expected = {"udp-asyncio-protocol", "udp-asyncio-drain", "udp-blocking", "pyopenssl-floor"}
    loops = ["asyncio", "sync"]
    if "uvloop" in document["skipped"]:
        assert importlib.util.find_spec("uvloop") is None
    else:
        expected.add("udp-uvloop")
        loops.append("uvloop")
    if "trio" in document["skipped"]:
        assert importlib.util.find_spec("trio") is None
    else:
        expected.add("trio")
    if "python-mbedtls" in document["skipped"]:
        assert importlib.util.find_spec("mbedtls") is None
    else:
        expected.add("mbedtls")
    switches = ["on", "off"] if ACCELERATOR != "python" else ["off"]
    if ACCELERATOR == "python":
        assert "accelerator on" in document["skipped"]
    for loop in loops:
        for switch in switches:
            for style in servers.STYLES:
                expected.add(f"dtlskit-{loop}-{style}-accel-{switch}")
    expected.add(f"dtlskit-asyncio-callback-accel-{switches[0]}-hibernated")  # issue 15
    assert set(rows) == expected
    for key, figures in rows.items():
        if MULTICORE:
            assert figures["server_cpus"] == [servers.SERVER_CPU], key
        assert set(figures["echo"]) == {"64", "1024"}, key
        for echo in figures["echo"].values():
            assert echo["replies"] > 0 and echo["msgs_per_s"] > 0, key
            assert echo["server_cpu_s"] > 0 and echo["server_cpu_us_per_op"] > 0, key
            assert math.isclose(
                echo["server_cpu_us_per_op"],
                1e6 * echo["server_cpu_s"] / echo["replies"],
                rel_tol=1e-3,
                abs_tol=1e-3,
            )
            assert 0 < echo["rtt_p50_ms"] <= echo["rtt_p99_ms"], key
            assert isinstance(echo["lost"], int) and echo["lost"] <= echo["sent"], key
            assert echo["sent"] >= echo["replies"], key
            assert echo["in_flight"] == document["meta"]["in_flight"] == 32
        if figures["role"] in ("floor", "peer", "dtlskit"):
            handshakes = figures["handshakes"]
            assert handshakes["completed"] > 0 and handshakes["per_s"] > 0, key
            assert isinstance(handshakes["failed"], int), key
            assert handshakes["failed"] < handshakes["completed"], key
            assert handshakes["server_cpu_ms_per_op"] > 0, key
        if figures["role"] == "dtlskit":
            assert figures["accelerator"] == (
                ACCELERATOR if figures["accelerator_switch"] == "on" else "python"
            )
            # The server's own counters agree that the handshakes had the cookie exchange.
            statistics = figures["statistics"]
            assert statistics["hello_verify_requests_sent"] >= statistics["handshakes_completed"]
            assert statistics["handshakes_completed"] > 0
    # The handshakes of every DTLS row negotiated the same suite (a fair comparison).
    ciphers = {
        figures["handshakes"].get("cipher")
        for figures in rows.values()
        if "handshakes" in figures and figures["handshakes"].get("generator") == "c"
    }
    assert len(ciphers) <= 1


@pytest.mark.slow
def test_quick_run_measured_memory_against_the_floor(quick: Any) -> None:
    _, document, _ = quick
    sessions = document["meta"]["sessions"]
    assert sessions == 1000  # --quick
    measured = [k for k, r in document["rows"].items() if "memory" in r]
    loops = {document["rows"][k]["loop"] for k in measured if k != "pyopenssl-floor"}
    assert "pyopenssl-floor" in measured and loops == {"asyncio", "sync"}
    for key in measured:
        memory = document["rows"][key]["memory"]
        assert memory["established"] == sessions and memory["failed"] == 0, key
        # The server really held them all (and the warm-up's).
        assert memory["server_sessions"] == sessions + document["meta"]["concurrency"], key
        assert memory["after_kib"] > memory["before_kib"] > 0
        assert memory["kib_per_session"] == (memory["after_kib"] - memory["before_kib"]) / sessions
    floor = document["rows"]["pyopenssl-floor"]["memory"]["kib_per_session"]
    assert {entry["row"] for entry in document["memory"]} == set(measured) - {"pyopenssl-floor"}
    for entry in document["memory"]:
        assert entry["floor_kib_per_session"] == floor
        assert entry["adds_kib"] == entry["kib_per_session"] - floor
        assert (
            entry["target"] == {"asyncio": 3.0, "sync": 8.0}[document["rows"][entry["row"]]["loop"]]
        )


@pytest.mark.slow
def test_quick_run_ran_the_newcomers_program(quick: Any) -> None:
    _, document, _ = quick
    newcomer = document["newcomer"]
    assert newcomer["sent"] == 10_000 == newcomer["clients"] * newcomer["messages_per_client"]
    assert 0 < newcomer["delivered"] <= newcomer["sent"]
    assert newcomer["missing"] == newcomer["sent"] - newcomer["delivered"]
    counted = newcomer["counted_in_statistics"] + newcomer["unsent_after_client_error"]
    assert newcomer["uncounted"] == max(0, newcomer["missing"] - counted)
    assert isinstance(newcomer["kernel_socket_drops"], int)
    assert newcomer["statistics_has_kernel_drops"] == (
        newcomer["statistics_kernel_drops"] is not None
    )


@pytest.mark.slow
def test_quick_run_ratios_come_from_its_own_figures(quick: Any) -> None:
    _, document, _ = quick
    seen: dict[str, set[str]] = {}
    for entry in document["ratios"]:
        value = report.lookup(document, entry["value_path"])
        reference = report.lookup(document, entry["reference_path"])
        assert entry["value"] == value and value > 0
        assert entry["reference"] == reference and reference > 0
        assert math.isclose(entry["ratio"], value / reference, rel_tol=1e-12)
        assert entry["value_path"][:2] == ["rows", entry["row"]]
        assert entry["reference_path"][1] == entry["reference_row"]
        assert entry["better"] in ("lower", "higher")
        if entry["target"] is not None:
            good = (
                entry["ratio"] <= entry["target"]
                if entry["better"] == "lower"
                else (entry["ratio"] >= entry["target"])
            )
            assert entry["meets"] is good
        if document["rows"][entry["row"]]["role"] == "hibernated":
            continue  # issue 15's own ratios (test_quick_run_held_many_hibernated_sessions)
        seen.setdefault(entry["row"], set()).add(entry["measure"])
    dtlskit_rows = _dtlskit_rows(document)
    assert set(seen) == set(dtlskit_rows)
    for key, measures in seen.items():
        expected = set(ECHO_MEASURES)
        if "trio" in document["rows"]:
            expected.add("CPU/msg 64 B vs trio")
        if "mbedtls" in document["rows"]:
            expected.add("CPU/msg 64 B vs python-mbedtls")
        if document["rows"][key]["loop"] == "asyncio":  # the other candidate ceiling too
            (other,) = {"udp-asyncio-protocol", "udp-asyncio-drain"} - {
                document["ceilings"]["asyncio"]["row"]
            }
            expected.add(f"CPU/msg 64 B vs {other}")
        assert measures == expected, key
    # Each loop against its own plain UDP ceiling; asyncio against issue 14's reference, its
    # DatagramProtocol echo (the draining reader's ratio is informative).
    ceilings = document["ceilings"]
    assert ceilings["asyncio"]["row"] == "udp-asyncio-protocol"
    for entry in document["ratios"]:
        loop = document["rows"][entry["row"]]["loop"]
        if entry["measure"].endswith("vs plain UDP"):
            assert entry["reference_row"] == ceilings[loop]["row"]
        elif "udp-asyncio" in entry["measure"]:  # the candidate that was not the ceiling
            assert loop == "asyncio" and entry["target"] is None
            assert entry["measure"].endswith(entry["reference_row"])
            assert entry["reference_row"] != ceilings["asyncio"]["row"]


@pytest.mark.slow
def test_quick_run_lists_the_issue_targets_and_a_summary(quick: Any) -> None:
    _, document, _ = quick
    figures = [entry["figure"] for entry in document["targets"]]
    assert any("newcomer's program: delivered" in f for f in figures)
    assert any("beyond OpenSSL's SSL object" in f for f in figures)
    assert any("CPU/handshake vs pyOpenSSL floor" in f for f in figures)
    assert all(isinstance(entry["meets"], bool) for entry in document["targets"])
    summary = document["summary"]
    assert "us of server CPU per 64-byte message" in summary
    assert "handshake costs" in summary and "newcomer's program delivered" in summary


@pytest.mark.slow
def test_quick_run_measured_quic_against_aioquic(quick: Any) -> None:
    process, document, _ = quick
    figures = document["quic"]
    for key in ("streams_per_cpu_second", "connections_per_cpu_second"):
        ours, theirs = figures["dtlskit"][key], figures["aioquic"][key]
        assert ours > 0 and theirs > 0
        rounds = zip(figures["rounds"]["dtlskit"], figures["rounds"]["aioquic"], strict=True)
        ratios = sorted(mine[key] / other[key] for mine, other in rounds)
        assert ratios[0] <= figures["ratio"][key] <= ratios[-1]  # the median of the rounds
    assert "QUIC (seed 002 echo" in process.stdout


def test_quick_run_plots_two_panels(quick: Any) -> None:
    _, _, picture = quick
    assert picture.read_bytes().startswith(b"\x89PNG")


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


@pytest.mark.slow
def test_quick_run_held_many_hibernated_sessions(quick: Any) -> None:
    process, document, _ = quick
    many = document["many_sessions"]
    assert many["handshakes"]["completed"] == 2000  # --quick
    assert many["sessions_held"] == many["sessions_hibernated"] >= 2000
    assert many["echo"]["sent"] == many["sessions_held"]
    assert many["echo"]["lost"] == 0 and many["echo"]["replies"] == many["echo"]["sent"]
    assert many["kib_per_session_idle"] == (
        (many["rss_idle_kib"] - many["rss_warm_kib"]) / many["handshakes"]["completed"]
    )
    assert "Many sessions (hibernated" in process.stdout
    figures = [t["figure"] for t in document["targets"]]
    assert any(f.startswith("many sessions: KiB per idle session") for f in figures)
    # The hibernated echo row is compared with the same server keeping OpenSSL's objects.
    hibernated = [r for r in document["ratios"] if r["row"].endswith("-hibernated")]
    assert {r["measure"] for r in hibernated} == {
        "CPU/msg 64 B vs SSL objects",
        "CPU/msg 1 KiB vs SSL objects",
    }
    for ratio in hibernated:
        assert ratio["reference_row"] == ratio["row"].removesuffix("-hibernated")


def test_bad_flavour_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as raised:
        run.main(["--flavour", "trio"])
    assert raised.value.code == 2


def test_plan_makes_the_accelerator_and_the_style_parameters() -> None:
    rows = run.plan(["asyncio", "uvloop", "sync"], ["on", "off"], True, True, True)
    keys = [row.key for row in rows]
    for loop in ("asyncio", "uvloop", "sync"):
        for switch in ("on", "off"):
            for style in servers.STYLES:
                key = f"dtlskit-{loop}-{style}-accel-{switch}"
                spec = rows[keys.index(key)].spec
                assert (spec.loop, spec.accelerator, spec.style) == (loop, switch, style)
                assert spec.environment() == ({"DTLSKIT_NATIVE": "0"} if switch == "off" else {})
    memory = {row.key for row in rows if row.memory}
    assert memory == {
        "pyopenssl-floor",
        "dtlskit-asyncio-iterator-accel-on",
        "dtlskit-asyncio-callback-accel-on",
        "dtlskit-sync-callback-accel-on",
    }
    assert "trio" in keys and "udp-uvloop" in keys and "mbedtls" in keys
    hibernated = rows[keys.index("dtlskit-asyncio-callback-accel-on-hibernated")]
    assert hibernated.spec.hibernate_after == 0 and hibernated.role == "hibernated"
    assert "trio" not in [row.key for row in run.plan(["asyncio"], ["off"], False, True)]


# -- report ------------------------------------------------------------------------------------


def _echo(cost: float, rate: float = 1000.0, p99: float = 1.0) -> dict[str, Any]:
    return {"server_cpu_us_per_op": cost, "msgs_per_s": rate, "rtt_p99_ms": p99}


def test_ratios_take_the_issue_reference_as_asyncio_ceiling_skip_what_was_not_measured() -> None:
    # The default loop's ceiling is issue 14's reference, asyncio's DatagramProtocol echo, even
    # when the draining reader is cheaper; the drain's ratio is informative (no target).
    document: dict[str, Any] = {
        "rows": {
            "udp-asyncio-protocol": {"role": "ceiling", "echo": {"64": _echo(40.0)}},
            "udp-asyncio-drain": {"role": "ceiling", "echo": {"64": _echo(10.0, 4000.0, 0.5)}},
            "pyopenssl-floor": {
                "role": "floor",
                "echo": {"64": _echo(25.0)},
                "handshakes": {"server_cpu_ms_per_op": 0.5},
                "memory": {"kib_per_session": 70.0, "established": 10},
            },
            "dtlskit-asyncio-iterator-accel-off": {
                "role": "dtlskit",
                "loop": "asyncio",
                "label": "dtlskit asyncio",
                "accelerator": "python",
                "accelerator_switch": "off",
                "echo": {"64": _echo(100.0, 1000.0, 1.5)},
                "handshakes": {"server_cpu_ms_per_op": 0.6},
                "memory": {"kib_per_session": 72.0, "established": 10},
            },
        },
        "newcomer": {"sent": 100, "delivered": 99, "delivered_share": 0.99, "uncounted": 1},
    }
    report.add_ratios(document)
    assert document["ceilings"]["asyncio"]["row"] == "udp-asyncio-protocol"
    assert "issue 14's reference" in document["ceilings"]["asyncio"]["why"]
    assert "udp-asyncio-drain is shown for information" in document["ceilings"]["asyncio"]["why"]
    got = {e["measure"]: (e["ratio"], e["meets"]) for e in document["ratios"]}
    assert got == {
        "CPU/msg 64 B vs plain UDP": (2.5, False),  # target 1.0 on the default asyncio loop
        "CPU/msg 64 B vs udp-asyncio-drain": (10.0, None),  # the draining reader, informative
        "msgs/s 64 B vs plain UDP": (1.0, None),
        "p99 RTT 64 B vs plain UDP": (1.5, True),
        "CPU/msg 64 B vs pyOpenSSL floor": (4.0, None),
        "CPU/handshake vs pyOpenSSL floor": (1.2, True),
    }
    (memory,) = document["memory"]
    assert memory["adds_kib"] == 2.0 and memory["meets"] is True
    verdicts = {t["figure"]: t["meets"] for t in document["targets"]}
    assert verdicts["newcomer's program: delivered"] is True
    assert verdicts["newcomer's program: messages lost with no count anywhere"] is False
    assert "60 us more than plain UDP echo" in document["summary"]
    assert "1.20x a minimal pyOpenSSL server" in document["summary"]


def test_ratios_fall_back_to_the_draining_reader_when_the_reference_was_not_measured() -> None:
    document: dict[str, Any] = {
        "rows": {
            "udp-asyncio-drain": {"role": "ceiling", "echo": {"64": _echo(10.0)}},
            "dtlskit-asyncio-callback-accel-off": {
                "role": "dtlskit",
                "loop": "asyncio",
                "label": "dtlskit asyncio",
                "accelerator": "python",
                "accelerator_switch": "off",
                "echo": {"64": _echo(15.0)},
            },
        },
    }
    report.add_ratios(document)
    ceiling = document["ceilings"]["asyncio"]
    assert ceiling["row"] == "udp-asyncio-drain"
    assert "udp-asyncio-protocol was not measured" in ceiling["why"]
    (cpu,) = [e for e in document["ratios"] if e["measure"] == "CPU/msg 64 B vs plain UDP"]
    assert cpu["ratio"] == 1.5 and cpu["meets"] is False


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
    assert common.rss_kib(os.getpid()) > 1000
    assert common.cpu_seconds(os.getpid()) > 0
    assert common.machine_busy_seconds() > 0


# -- the server processes ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("switch", ["on", "off"])
def test_server_process_is_pinned_and_gets_the_accelerator_switch(
    switch: str, tmp_path: Path
) -> None:
    from dtlskit.certs import create_pki

    pki = create_pki(tmp_path)
    before = os.environ.get("DTLSKIT_NATIVE")
    spec = servers.ServerSpec(
        "dtlskit",
        "asyncio",
        accelerator=switch,
        certfile=str(pki.server_cert),
        keyfile=str(pki.server_key),
    )
    child, port, info = servers.start_server(spec)
    try:
        assert port > 0
        assert info["DTLSKIT_NATIVE"] == ("0" if switch == "off" else before)
        assert info["accelerator"] == ("python" if switch == "off" else ACCELERATOR)
        if MULTICORE:
            assert info["cpus"] == [servers.SERVER_CPU]
            assert os.sched_getaffinity(child.pid) == {servers.SERVER_CPU}
    finally:
        child.end()
    assert os.environ.get("DTLSKIT_NATIVE") == before  # the parent's is left as it was


# -- the C load generator ----------------------------------------------------------------------


needs_c = pytest.mark.skipif(not C_TOOLCHAIN, reason="cc or the OpenSSL headers are missing")


@needs_c
def test_c_load_generator_is_built_once_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    binary, how = cload.build()
    assert binary is not None and how.startswith("built ")
    assert Path(binary).parent == tmp_path / "dtlskit-bench"
    again, how = cload.build()
    assert again == binary and how.startswith("cached ")


def _udp_server(answer: bool) -> tuple[socket.socket, threading.Thread, list[int]]:
    """A plain UDP socket that echoes everything (``answer``) or nothing, until it gets b""."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    count = [0]

    def serve() -> None:
        while True:
            data, address = sock.recvfrom(65536)
            if not data:
                return
            count[0] += 1
            if answer:
                sock.sendto(data, address)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return sock, thread, count


def _stop(sock: socket.socket, thread: threading.Thread) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as waker:
        waker.sendto(b"", sock.getsockname())
    thread.join(10)
    sock.close()


def _c_echo(port: int, loss_timeout: float, min_work: int | None = None) -> dict[str, Any]:
    binary, how = cload.build()
    assert binary is not None, how
    load = cload.CLoad(binary, how)
    return load.echo(
        protocol="udp",
        port=port,
        server_pid=os.getpid(),
        sessions=2,
        window=4,
        size=64,
        warmup=0.0,
        seconds=0.3,
        loss_timeout=loss_timeout,
        socket_buffer=None,
        min_work=min_work,
    )


@needs_c
def test_c_load_generator_counts_every_unanswered_message_lost() -> None:
    sock, thread, count = _udp_server(answer=False)
    try:
        # A window of wall time only (min_work=0): this server never answers.
        result = _c_echo(sock.getsockname()[1], loss_timeout=0.1, min_work=0)
    finally:
        _stop(sock, thread)
    assert result["replies"] == 0 and result["msgs_per_s"] == 0
    assert result["sent"] > 2 * 4  # lost slots were re-used during the measured interval
    assert result["lost"] == result["sent"] == count[0]


@needs_c
def test_c_load_generator_counts_replies_and_round_trips() -> None:
    sock, thread, count = _udp_server(answer=True)
    try:
        result = _c_echo(sock.getsockname()[1], loss_timeout=30.0)
    finally:
        _stop(sock, thread)
    assert result["generator"] == "c" and result["in_flight"] == 8
    assert 0 < result["replies"] <= result["sent"] == count[0]
    assert result["lost"] == 0 and result["late"] == 0 and result["errors"] == 0
    assert 0 < result["rtt_p50_ms"] <= result["rtt_p99_ms"]
    assert isinstance(result["server_cpu_s"], float) and isinstance(result["load_cpu_s"], float)


# The window rule (common.window_state, and window_state in cload.c): readings in, verdict out.
# (elapsed s, wanted s, work, min work, server ticks, min ticks) -> verdict
WINDOW_CASES = [
    ((0.0, 0.5, 0, 200, 0, 5), "open"),  # nothing yet
    ((0.49, 0.5, 10_000, 200, 50, 5), "open"),  # plenty of work, but the wall time is not over
    ((0.5, 0.5, 200, 200, 5, 5), "done"),  # every minimum met exactly
    ((0.5, 0.5, 0, 0, 0, 0), "done"),  # no minimums: a window of wall time only
    ((0.6, 0.5, 199, 200, 9, 5), "open"),  # one reply short: goes on
    ((0.6, 0.5, 5000, 200, 4, 5), "open"),  # one tick short: goes on
    ((0.6, 0.5, 0, 200, 0, 5), "open"),  # nothing seen (the failure seen under load): goes on
    ((4.99, 0.5, 0, 200, 0, 5), "open"),  # still within ten times the seconds asked
    ((2.0, 0.5, 200, 200, 5, 5), "done"),  # met late: done, not starved
    ((5.0, 0.5, 200, 200, 5, 5), "done"),  # met at the limit: done
    ((5.0, 0.5, 199, 200, 5, 5), "starved"),  # the limit, short of replies
    ((5.0, 0.5, 200, 200, 4, 5), "starved"),  # the limit, short of ticks
    ((45.0, 5.0, 0, 32, 0, 5), "open"),  # a full run's handshakes window, carried on
]


@pytest.mark.parametrize(("readings", "verdict"), WINDOW_CASES)
def test_window_rule(readings: tuple[float, float, int, int, int, int], verdict: str) -> None:
    assert common.window_state(*readings) == verdict


@needs_c
def test_c_window_rule_is_the_same_rule() -> None:
    binary, how = cload.build()
    assert binary is not None, how
    for (elapsed, wanted, work, min_work, ticks, min_ticks), verdict in WINDOW_CASES:
        options = {
            "--elapsed": elapsed,
            "--seconds": wanted,
            "--work": work,
            "--min-work": min_work,
            "--ticks": ticks,
            "--min-ticks": min_ticks,
        }
        command = [binary, "window", *(str(x) for item in options.items() for x in item)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
        assert done.stdout.strip() == verdict, options


def test_server_ticks_are_whole_clock_ticks() -> None:
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert common.server_ticks(0.0) == 0
    assert common.server_ticks(5 * tick) == 5
    assert common.server_ticks(cpu_difference := 7 * tick + tick / 10) == 7, cpu_difference


@needs_c
def test_c_load_generator_reports_a_starved_window_as_failed_naming_the_load() -> None:
    # A server that never answers: the window goes on to ten times its seconds, then the figure
    # fails with the reason, instead of reporting 0 replies or dividing by them.
    sock, thread, count = _udp_server(answer=False)
    try:
        with pytest.raises(common.BenchmarkError, match="too loaded to measure") as caught:
            _c_echo(sock.getsockname()[1], loss_timeout=0.1, min_work=1)
    finally:
        _stop(sock, thread)
    message = str(caught.value)
    assert "load average" in message and "0 replies" in message and "at least 1 wanted" in message
    assert count[0] > 2 * 4  # it kept sending through the carried-on window


def test_without_a_compiler_the_python_load_generator_stands_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    binary, why = cload.build()
    assert binary is None and "no-such-cc" in why
    with pytest.raises(common.BenchmarkError, match="not available"):
        cload.open_load("c", "ca.pem")
    load = cload.open_load("auto", "ca.pem")
    try:
        assert load.kind == "python" and "fallback" in load.description
    finally:
        load.close()
