"""The sync front end against DTLS peers nobody here wrote: OpenSSL's ``s_server/s_client``
and GnuTLS's ``gnutls-serv/gnutls-cli``, as child processes on loopback, stopped by PID."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

import dtlskit
from dtlskit import sync
from dtlskit.certs import PKIFiles
from dtlskit.sync import Channel
from tests.helpers import WAIT
from tests.peers import (
    gnutls_cli,
    gnutls_serv,
    needs_gnutls,
    needs_openssl,
    openssl_s_client,
    openssl_s_server,
    running,
    serving,
)

pytestmark = pytest.mark.interop


class RecordingEcho:
    """An echo handler that remembers what it received."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, channel: Channel) -> None:
        for message in channel:
            with self.lock:
                self.received.append(message)
            channel.send(message)


@pytest.fixture
def recording_server(server_config) -> Iterator[tuple[sync.Server, RecordingEcho]]:
    handler = RecordingEcho()
    with sync.serve(handler, "127.0.0.1", 0, config=server_config) as server:
        yield server, handler


@needs_openssl
def test_client_against_openssl_s_server(pki: PKIFiles, client_config) -> None:
    def argv(port: int) -> list[str]:
        return openssl_s_server(port, str(pki.server_cert), str(pki.server_key))

    with (
        serving(argv, ready="ACCEPT") as (peer, port),
        sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as channel,
    ):
        assert channel.version == "DTLSv1.2"
        channel.send(b"hello from dtlskit\n")
        peer.wait_for("hello from dtlskit", timeout=WAIT)
        peer.write(b"hello from openssl\n")
        assert channel.recv(timeout=WAIT) == b"hello from openssl\n"


@needs_gnutls
def test_client_against_gnutls_serv(pki: PKIFiles, client_config) -> None:
    def argv(port: int) -> list[str]:
        return gnutls_serv(port, str(pki.server_cert), str(pki.server_key))

    with (
        serving(argv, ready="listening on IPv4") as (_, port),
        sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT) as channel,
    ):
        # gnutls-serv echoes through a buffer of about 254 bytes: keep messages short.
        for message in (b"hello\n", b"\x00binary\xff" * 20):
            channel.send(message)
            assert channel.recv(timeout=WAIT) == message


@needs_openssl
def test_openssl_s_client_against_server(
    pki: PKIFiles, recording_server: tuple[sync.Server, RecordingEcho]
) -> None:
    server, handler = recording_server
    port = server.addresses[0][1]
    argv = openssl_s_client(
        port,
        "-CAfile",
        str(pki.ca_cert),
        "-servername",
        "localhost",
        "-verify_hostname",
        "localhost",
        "-verify_return_error",
    )
    with running(argv) as peer:
        peer.wait_for("Verify return code: 0 (ok)", timeout=WAIT)
        peer.write(b"hello\n")
        assert peer.wait_for("hello", timeout=WAIT) == "hello"
    assert handler.received[:1] == [b"hello\n"]
    assert server.statistics().handshakes_completed == 1


@needs_gnutls
def test_gnutls_cli_against_server(
    pki: PKIFiles, recording_server: tuple[sync.Server, RecordingEcho]
) -> None:
    server, handler = recording_server
    port = server.addresses[0][1]
    argv = gnutls_cli(port, "--x509cafile", str(pki.ca_cert), "--verify-hostname=localhost")
    with running(argv) as peer:
        peer.wait_for("Handshake was completed", timeout=WAIT)
        peer.write(b"hello\n")
        assert peer.wait_for("hello", timeout=WAIT) == "hello"
    assert handler.received[:1] == [b"hello\n"]
    assert server.statistics().handshakes_completed == 1


@needs_openssl
def test_client_rejects_openssl_s_server_from_another_ca(
    pki: PKIFiles, other_pki: PKIFiles, client_config
) -> None:
    def argv(port: int) -> list[str]:
        return openssl_s_server(port, str(other_pki.server_cert), str(other_pki.server_key))

    with (
        serving(argv, ready="ACCEPT") as (_, port),
        pytest.raises(dtlskit.CertificateVerificationError) as info,
    ):
        sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT)
    assert "certificate" in str(info.value)
