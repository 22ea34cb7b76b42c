"""``dtlskit server|client`` reach two configuration fields by their own names:
``--verify-time`` (``verify_time``: certificate dates checked against a device clock, both
sides) and ``--new-port-after-lost-flights`` (``new_port_after_lost_flights``: client failover
to a new source port, issue 12). Real servers and real client child processes; the failover
peer is a real UDP socket that never answers (a dead node)."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
from datetime import datetime, timezone

import pytest

import dtlskit
from dtlskit.certs import PKIFiles
from tests.cli.test_client import server_with
from tests.cli.test_errors import echo, error_line, run_client, verifying
from tests.helpers import WAIT
from tests.peers import Peer
from tests.test_failover import silent_node

PAST = "2000-01-01T00:00:00Z"
FUTURE = "2100-01-01T00:00:00+00:00"


def dtlskit_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dtlskit", *args],
        capture_output=True,
        text=True,
        timeout=3 * WAIT,
        stdin=subprocess.DEVNULL,
    )


def test_client_verify_time_checks_the_server_certificate_against_that_time(
    pki: PKIFiles, server_config: dtlskit.DTLSConfiguration
) -> None:
    with server_with(echo, server_config) as port:
        before = error_line(run_client(port, *verifying(pki, "--verify-time", PAST)))
        after = error_line(run_client(port, *verifying(pki, "--verify-time", FUTURE)))
        now = str(int(datetime.now(timezone.utc).timestamp()))
        fine = run_client(port, *verifying(pki, "--verify-time", now))
    assert "not yet valid" in before and "2000-01-01 00:00:00 UTC (verify_time)" in before
    assert "expired" in after and "2100-01-01 00:00:00 UTC (verify_time)" in after
    assert fine.returncode == 0, fine.stderr
    assert fine.stdout.splitlines() == ["hi"]


def test_server_verify_time_checks_client_certificates_against_that_time(pki: PKIFiles) -> None:
    server = Peer(
        [
            sys.executable,
            "-m",
            "dtlskit",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--cert",
            str(pki.server_cert),
            "--key",
            str(pki.server_key),
            "--ca",
            str(pki.ca_cert),
            "--require-client-cert",
            "--verify-time",
            FUTURE,
        ],
        stdin=False,
    )
    try:
        banner = server.wait_for("dtlskit server: DTLS echo on", timeout=WAIT)
        port = int(re.search(r":(\d+) ", banner).group(1))  # type: ignore[union-attr]
        client_files = ("--cert", str(pki.client_cert), "--key", str(pki.client_key))
        line = error_line(run_client(port, *verifying(pki, *client_files)))
    finally:
        server.stop()
    assert f"the server rejected our certificate {pki.client_cert}" in line
    assert "expired" in line


def test_verify_time_values_are_checked_before_anything_runs() -> None:
    for value, words in [
        ("2026-01-01T00:00:00", "has no time zone"),
        ("yesterday", "takes POSIX seconds or an ISO 8601 time"),
        ("1e30", "after the year 9999"),
    ]:
        result = dtlskit_command("client", "127.0.0.1", "9", "--verify-time", value, "-m", "x")
        assert result.returncode == 2 and words in result.stderr, result.stderr
    refused = dtlskit_command("server", "--transport", "udp", "--verify-time", "0")
    assert refused.returncode == 2
    assert "--verify-time has no meaning with --transport udp" in refused.stderr
    quic = dtlskit_command("client", "127.0.0.1", "9", "--transport", "quic", "--verify-time", "0")
    assert quic.returncode == 2 and "--verify-time with --transport quic" in quic.stderr


@pytest.mark.parametrize(("flag", "min_ports"), [("1", 2), ("none", 1)])
def test_client_moves_to_a_new_port_after_lost_flights(flag: str, min_ports: int) -> None:
    """With ``--new-port-after-lost-flights 1`` each unanswered first flight and its one
    retransmission leave from one port, then the handshake starts again from a new one;
    ``none`` keeps a single port until ``--timeout``."""
    sock, ports, stop = silent_node()
    try:
        port = str(sock.getsockname()[1])
        result = dtlskit_command(
            "client", "127.0.0.1", port, "--timeout", "6", "-m", "x",
            "--new-port-after-lost-flights", flag,
        )  # fmt: skip
    finally:
        stop.set()
        sock.close()
    assert result.returncode == 1 and "timed out" in result.stderr, result.stderr
    distinct = list(dict.fromkeys(ports))
    assert len(distinct) >= min_ports
    if flag == "none":
        assert len(distinct) == 1
    else:
        for used in distinct[:-1]:
            assert ports.count(used) == 2


def test_new_port_after_lost_flights_values_are_checked() -> None:
    for value in ("0", "-1", "two"):
        result = dtlskit_command(
            "client", "127.0.0.1", "9", "--new-port-after-lost-flights", value, "-m", "x"
        )
        assert result.returncode == 2
        assert "takes a positive integer or none" in result.stderr
    for transport in ("udp", "tls", "quic"):
        result = dtlskit_command(
            "client", "127.0.0.1", "9", "--transport", transport,
            "--new-port-after-lost-flights", "3", "-m", "x",
        )  # fmt: skip
        assert result.returncode == 2 and "--new-port-after-lost-flights" in result.stderr


def test_tls_transport_honours_verify_time(
    pki: PKIFiles, server_config: dtlskit.DTLSConfiguration
) -> None:
    """``--transport tls`` speaks the same flag (TLS checks dates the same way)."""
    from dtlskit.sync import tls

    config = server_config.replace(verify_mode=ssl.CERT_NONE)
    with tls.serve(echo, "127.0.0.1", 0, config=config) as server:
        import threading

        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            port = int(server.addresses[0][1])
            line = error_line(
                run_client(port, "--transport", "tls", *verifying(pki, "--verify-time", PAST))
            )
        finally:
            server.close()
            thread.join(WAIT)
    assert "not yet valid" in line and "(verify_time)" in line
