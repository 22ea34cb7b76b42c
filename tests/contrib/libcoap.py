"""libcoap's example tools (Debian ``libcoap3-bin``) as independent CoAP-over-DTLS peers:
``coap-client-{openssl,gnutls}`` and ``coap-server-{openssl,gnutls}``.

Found while writing the tests (libcoap 4.3.1):

* ``coap-server -p N`` serves plain CoAP on N and DTLS on N+1; with ``-v 7`` it prints
  ``created DTLS endpoint ADDRESS:PORT`` once bound, or ``cannot create DTLS endpoint`` (and runs
  on without it) when the port is taken.
* ``coap-client`` exits 0 even when the handshake fails; it then prints the reason
  (``unknown CA``, ``CA is unknown``) and ``cannot send CoAP pdu``, and no payload.
* With ``-C ca.pem`` the server asks for and verifies client certificates, and refuses a client
  that sends none.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence

import pytest

from tests.peers import Peer, free_udp_port

BACKENDS = ("openssl", "gnutls")


def tool(kind: str, backend: str) -> str:
    return f"coap-{kind}-{backend}"


def needs_libcoap(backend: str) -> pytest.MarkDecorator:
    missing = [t for t in (tool("client", backend), tool("server", backend)) if not shutil.which(t)]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"{', '.join(missing)} not installed (Debian libcoap3-bin; .ci/run installs it)",
    )


def client_argv(backend: str, uri: str, *options: str) -> list[str]:
    """A single GET that gives up after 10 s (``-B``)."""
    return [tool("client", backend), "-B", "10", *options, uri]


@contextlib.contextmanager
def server(backend: str, *options: str, attempts: int = 5) -> Iterator[tuple[Peer, int]]:
    """A libcoap server on 127.0.0.1; yields it and its DTLS port. The port pair was free a
    moment ago; a server that could not bind (someone took it meanwhile) is tried again on
    another pair (bounded)."""
    failures: list[str] = []
    for _ in range(attempts):
        port = free_udp_port()
        argv: Sequence[str] = [
            tool("server", backend),
            "-v",
            "7",
            "-A",
            "127.0.0.1",
            "-p",
            str(port),
            *options,
        ]
        peer = Peer(argv)
        try:
            # "created DTLS endpoint 127.0.0.1:N+1", or "cannot create DTLS endpoint" when
            # another process holds N+1 (the server then runs on without DTLS).
            line = peer.wait_for("DTLS endpoint", timeout=15)
            if line.find(f"created DTLS endpoint 127.0.0.1:{port + 1}") < 0:
                failures.append(line)
                continue
            yield peer, port + 1
            return
        finally:
            peer.stop()
    raise AssertionError(f"{argv[0]} could not start: {failures}")
