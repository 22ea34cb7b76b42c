"""The helpers that start foreign servers do not race other processes for a port (issue 8,
defect 10): the port a test talks to is the port the server bound."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from dtlskit.certs import PKIFiles

from . import peers


@peers.needs_gnutls
def test_gnutls_serv_given_a_taken_port_gets_another(
    pki: PKIFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port that was free a moment ago can be taken before gnutls-serv binds it (another
    test process did). gnutls-serv then prints "bind() failed" and keeps running; the helper
    must notice and move to another port, not hand the test a port nobody serves."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("0.0.0.0", 0))
        port = taken.getsockname()[1]
        offered: list[int] = []
        real = peers.free_udp_port

        def free_udp_port(host: str = "127.0.0.1") -> int:
            offered.append(port if not offered else real(host))  # the taken one first
            return offered[-1]

        monkeypatch.setattr(peers, "free_udp_port", free_udp_port)

        def argv(p: int) -> list[str]:
            return peers.gnutls_serv(p, str(pki.server_cert), str(pki.server_key))

        with peers.serving(argv) as (server, bound):
            # It moved on from the taken port; other processes on the machine may have taken
            # the next port offered too, so it may have needed more than one more.
            assert offered[0] == port and len(offered) >= 2
            assert bound == offered[-1] and bound != port
            line = server.wait_for(f"listening on IPv4 0.0.0.0 port {bound}")
            assert line.endswith("done")


@peers.needs_openssl
def test_openssl_s_server_reports_the_port_it_bound(pki: PKIFiles) -> None:
    def argv(p: int) -> list[str]:
        return peers.openssl_s_server(p, str(pki.server_cert), str(pki.server_key))

    with peers.serving(argv) as (_, port):
        assert port > 0
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with probe, pytest.raises(OSError):  # it is really bound: the port is not free
            probe.bind(("127.0.0.1", port))


def test_our_server_process_given_a_taken_port_gets_another(
    pki: PKIFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers need a fixed port; a server child that finds it taken exits saying so, and the
    helper starts it again on another port."""
    script = Path(__file__).parent / "asyncio" / "server_process.py"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        offered: list[int] = []
        real = peers.free_udp_port

        def free_udp_port(host: str = "127.0.0.1") -> int:
            offered.append(port if not offered else real(host))  # the taken one first
            return offered[-1]

        monkeypatch.setattr(peers, "free_udp_port", free_udp_port)

        def argv(p: int) -> list[str]:
            return [
                sys.executable,
                str(script),
                "--mode=workers",
                "--workers=2",
                f"--port={p}",
                f"--cert={pki.server_cert}",
                f"--key={pki.server_key}",
            ]

        with peers.serving(argv, ready="listening on", ready_count=2) as (server, bound):
            assert offered[0] == port and len(offered) == 2 and bound == offered[1]
            assert len(server.wait_for_lines(f":{bound}", 2)) == 2
