"""The TLS examples (examples/tls/) run with no arguments, exit 0 and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..peers import needs_openssl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tls"
TIMEOUT = 120.0

CASES = {
    "seed_client_server.py --ca openssl": [
        "client (openssl CA): connected with TLSv1.3",
        "server: CN=seed001 client said 'Hello from the TLS client'",
        "client: server replied 'Hello from the TLS server'",
        "done: mutual authentication with the openssl CA (pass-phrase-protected keys)",
    ],
    "seed_client_server.py --ca dtlskit": [
        "client (dtlskit CA): connected with TLSv1.3",
        "server: CN=dtlskit client said 'Hello from the TLS client'",
        "done: mutual authentication with the dtlskit CA (pass-phrase-protected keys)",
    ],
    "nonblocking.py": [
        "client: connect() returned EINPROGRESS",
        "server: listening socket readable; accept() gave a socket from",
        "client: socket writable and SO_ERROR is 0: TCP connection established",
        "client: handshake completed (TLSv1.3,",
        "client: got back b'third'",
        "server: the client sent close_notify; answered with ours",
        "done: 3 messages echoed over TLS, non-blocking connect and accept",
    ],
    "https_get.py": [
        "GET https://localhost:",
        "connected to localhost:",
        "status: 200 ok",
        "header: content-type: text/html",
        "body: 3326 bytes",
    ],
}


def test_every_tls_example_is_checked() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(
        {case.split()[0] for case in CASES}
    )


@needs_openssl
@pytest.mark.parametrize("case", sorted(CASES))
def test_tls_example_runs(case: str, tmp_path: Path) -> None:
    name, *args = case.split()
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,  # an example must not depend on, or write to, the working directory
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    position = 0
    for line in CASES[case]:
        found = result.stdout.find(line, position)
        assert found >= 0, f"{line!r} missing (or out of order) in:\n{result.stdout}"
        position = found
    assert list(tmp_path.iterdir()) == []
