"""Every script in examples/ runs with no arguments, exits 0 and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 60.0

#: A line each example must print; a new example needs an entry here.
EXPECTED = {
    "udp_echo.py": "client: sent 'bye', echoed 'bye'",
    "dtls_echo.py": "client: connected, server certificate CN=localhost verified by our CA",
    "dtls_echo_blocking.py": "done: 3 messages echoed over DTLS, blocking calls only",
    "threaded_server.py": "done: 3 clients served concurrently",
    "nonblocking.py": "done: 3 messages echoed in",
    "session_resumption.py": "done: the second connection resumed the saved session",
    "edgeros_style.py": "done: 2 clients accepted, 4 messages echoed",
    "edgeros_multitask.py": "done: 6 clients handshaken in 2 worker processes, 18 echoes checked",
    # QUIC, seed 002 (issue 11)
    "quic_echo_server.py": "done: seed 002's echo served over QUIC",
    "quic_echo_client.py": "done: one message echoed on one QUIC stream",
    # issue 13 (IoT)
    "coap_server.py": "done: two coaps requests answered, the client known by its certificate",
    "sntp_clock.py": "done: certificates checked against the SNTP time",
    "iot_gateway.py": "done: the gateway found the sensor by mDNS and read it over coaps",
}

#: More lines some examples must print, checked in order of appearance.
ALSO_EXPECTED = {
    "dtls_echo.py": ["client: sent 'bye', echoed 'bye'", "closed the session"],
    "threaded_server.py": ["client 3: got 'CLIENT 3 MESSAGE 2'"],
    "nonblocking.py": [
        "client: handshake completed (DTLSv1.2,",
        "client: got back b'third'",
        "sent close_notify",
    ],
    "session_resumption.py": [
        "session_reused=False",
        "session_reused=True",
        "dtlskit client (run 1): ['session reused: no']",
        "dtlskit client (run 2): ['session reused: yes']",
    ],
    "edgeros_style.py": ["server: new client", "closed the session"],
    "edgeros_multitask.py": ["to worker-0", "to worker-1", "served by worker-1"],
    "quic_echo_server.py": [
        "Accepted new connection (http/1.0)",
        "echoed 21 bytes on stream 0",
        "client said: connected (http/1.0); sending b'hello from the client'",
        "echo: 'hello from the client'",
    ],
    "quic_echo_client.py": ["echo: 'hello, seed 002'", "echoed 15 bytes on stream 0"],
    # issue 13 (IoT)
    "coap_server.py": ["client: GET /.well-known/core: 2.05 Content </sensors/temperature>"],
    "iot_gateway.py": [
        "advertised as sensor-1",
        "gateway: found sensor-1 at 127.0.0.1:",
        "sensor: GET /sensors/temperature from CN=dtlskit client",
        "gateway: CN=localhost (the advertised certificate) says",
    ],
    "sntp_clock.py": [
        "sntp: plain SNTP is unauthenticated",
        "device clock unset (1970): refused (certificate is not yet valid)",
        "verify_time from SNTP: connected, echoed b'hello'",
    ],
}


def test_every_example_is_checked() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,  # an example must not depend on, or write to, the working directory
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    out = result.stdout
    assert EXPECTED[name] in out, out
    position = 0
    for line in ALSO_EXPECTED.get(name, []):
        found = out.find(line, position)
        assert found >= 0, f"{line!r} missing (or out of order) in:\n{out}"
        position = found
    assert list(tmp_path.iterdir()) == []
