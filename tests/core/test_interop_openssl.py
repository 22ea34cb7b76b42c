"""The engine against OpenSSL's own DTLS (the `openssl` command) over real loopback UDP."""

from __future__ import annotations

import threading

import pytest

import dtlskit
from dtlskit.core import DTLSConnection, ServerEngine
from dtlskit.core import events as ev

from ..peers import (
    needs_openssl,
    openssl_s_client,
    openssl_s_server,
    running,
    serving,
)
from .loop import ClientLoop, ServerLoop

pytestmark = [pytest.mark.interop, needs_openssl]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_engine_client_against_openssl_s_server(pki, client_config, host):
    def argv(port: int) -> list[str]:
        return openssl_s_server(port, str(pki.server_cert), str(pki.server_key), host=host)

    with serving(argv, host=host, ready="ACCEPT") as (server, port):
        engine = DTLSConnection(client_config, server=False, peer_address=(host, port))
        loop = ClientLoop(engine, (host, port))
        try:
            loop.connect()
            completed = [e for e in loop.events if isinstance(e, ev.HandshakeCompleted)]
            assert completed, f"handshake failed: {engine.error}"
            assert completed[0].version == "DTLSv1.2"
            loop.send(b"hello from dtlskit\n")
            server.wait_for("hello from dtlskit")
            server.write(b"hello from openssl\n")
            assert loop.run_until(lambda: b"hello from openssl\n" in loop.messages())
        finally:
            engine.close()
            loop.close()


def test_engine_client_rejects_openssl_server_with_wrong_ca(pki, other_pki):
    def argv(port: int) -> list[str]:
        return openssl_s_server(port, str(other_pki.server_cert), str(other_pki.server_key))

    with serving(argv, ready="ACCEPT") as (_, port):
        config = dtlskit.DTLSConfiguration.client(pki.ca_cert, "localhost")
        engine = DTLSConnection(config, server=False, peer_address=("127.0.0.1", port))
        loop = ClientLoop(engine, ("127.0.0.1", port))
        try:
            loop.connect()
        finally:
            loop.close()
        assert isinstance(engine.error, dtlskit.CertificateVerificationError)
        assert engine.error.reason is dtlskit.VerificationReason.UNKNOWN_ISSUER


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_openssl_s_client_against_engine_server(pki, server_config, host):
    loop = ServerLoop(ServerEngine(server_config), host=host)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run_until, args=(stop.is_set, 30.0), daemon=True)
    thread.start()
    try:
        argv = openssl_s_client(
            loop.port,
            "-CAfile",
            str(pki.ca_cert),
            "-servername",
            "localhost",
            "-verify_hostname",
            "localhost",
            "-verify_return_error",
            host=host,
        )
        with running(argv) as client:
            client.wait_for("Verify return code: 0 (ok)")
            client.write(b"echo me please\n")
            # s_client prints what it receives: our server echoed the line back.
            lines = []
            client.wait_for("echo me please")
            lines = [line for line in client.seen if "echo me please" in line]
            assert lines
    finally:
        stop.set()
        thread.join(timeout=10)
        loop.close()
    stats = loop.engine.statistics()
    assert stats.hello_verify_requests_sent >= 1
    assert stats.handshakes_completed == 1
